// Package enc puts simulated values onto Modbus registers the way device
// firmware does, and says which value a correct master must decode from them.
//
// It is written apart from the gateway's decoders on purpose: a byte-order or
// scaling bug cannot hide by living on both sides of the wire.
package enc

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"

	"outpost/configs/modbus"
	"outpost/firmware-sim/signal"
)

// Encode converts v into the registers of r. words holds r.Words() registers
// in address order starting at r.Address (for a bool on a bit table it is nil
// and want.Bool is the bit; for a bool on a register it is the one register
// with only r's bit set or clear, to be OR-ed with the other bits).
//
// want is the value a correct decoder reads back: for numbers exactly
// float64(raw)*scale + offset, with raw converted to float64 first.
func Encode(r *modbus.Register, v signal.Value) (words []uint16, want signal.Value, err error) {
	scale := r.Scale
	if scale == 0 {
		scale = 1
	}
	switch r.Type {
	case modbus.TypeBool:
		b := v.Truth()
		if r.Table.IsBits() {
			return nil, signal.B(b), nil
		}
		var w uint16
		if b {
			w = 1 << bitOf(r)
		}
		return []uint16{w}, signal.B(b), nil
	case modbus.TypeInt16:
		raw := toInt(v, scale, r.Offset, math.MinInt16, math.MaxInt16)
		var be [2]byte
		binary.BigEndian.PutUint16(be[:], uint16(int16(raw)))
		return order(be[:], r.Order), number(strconv.FormatInt(raw, 10), scale, r.Offset), nil
	case modbus.TypeUint16:
		raw := toInt(v, scale, r.Offset, 0, math.MaxUint16)
		var be [2]byte
		binary.BigEndian.PutUint16(be[:], uint16(raw))
		return order(be[:], r.Order), number(strconv.FormatInt(raw, 10), scale, r.Offset), nil
	case modbus.TypeInt32:
		raw := toInt(v, scale, r.Offset, math.MinInt32, math.MaxInt32)
		var be [4]byte
		binary.BigEndian.PutUint32(be[:], uint32(int32(raw)))
		return order(be[:], r.Order), number(strconv.FormatInt(raw, 10), scale, r.Offset), nil
	case modbus.TypeUint32:
		raw := toInt(v, scale, r.Offset, 0, math.MaxUint32)
		var be [4]byte
		binary.BigEndian.PutUint32(be[:], uint32(raw))
		return order(be[:], r.Order), number(strconv.FormatInt(raw, 10), scale, r.Offset), nil
	case modbus.TypeFloat32:
		raw := float32((v.Float() - r.Offset) / scale)
		var be [4]byte
		binary.BigEndian.PutUint32(be[:], math.Float32bits(raw))
		return order(be[:], r.Order), number(strconv.FormatFloat(float64(raw), 'g', -1, 32), scale, r.Offset), nil
	case modbus.TypeFloat64:
		raw := (v.Float() - r.Offset) / scale
		var be [8]byte
		binary.BigEndian.PutUint64(be[:], math.Float64bits(raw))
		return order(be[:], r.Order), number(strconv.FormatFloat(raw, 'g', -1, 64), scale, r.Offset), nil
	case modbus.TypeString:
		if r.Length <= 0 {
			return nil, signal.Value{}, fmt.Errorf("signal %s: string without a length", r.Signal)
		}
		text := v.Text
		if v.Kind != signal.Text {
			text = v.String()
		}
		b := make([]byte, 2*r.Length)
		copy(b, text)
		words := make([]uint16, r.Length)
		for i := range words {
			hi, lo := b[2*i], b[2*i+1]
			if r.Order.SwapBytes() {
				hi, lo = lo, hi
			}
			words[i] = uint16(hi)<<8 | uint16(lo)
		}
		return words, signal.Str(cString(b)), nil
	}
	return nil, signal.Value{}, fmt.Errorf("signal %s: unknown type %q", r.Signal, r.Type)
}

// number is the value a correct master decodes from a register holding
// raw, the register's integer or the shortest decimal of its float, as the
// hub contract says: raw × scale + offset in exact decimal arithmetic (scale
// and offset as the template writes them), as the nearest float64. Past 15
// significant digits, which a float64 cannot tell apart, the contract has
// the master compute raw*scale + offset in float64 arithmetic instead.
//
// Most values are done in int64 arithmetic; numberRat, which number must
// equal, is the reference for the rest.
func number(raw string, scale, offset float64) signal.Value {
	ss, os := strconv.FormatFloat(scale, 'g', -1, 64), strconv.FormatFloat(offset, 'g', -1, 64)
	r, rp, ok1 := decimal(raw)
	s, sp, ok2 := decimal(ss)
	o, op, ok3 := decimal(os)
	if !ok1 || !ok2 || !ok3 {
		return numberRat(raw, scale, offset)
	}
	// exact × 10^places = r×s×10^(places-rp-sp) + o×10^(places-op): each
	// term is checked to fit before it is computed.
	places := max(rp+sp, op)
	if places > 18 || math.Abs(float64(r))*math.Abs(float64(s))*pow10[places-rp-sp] >= 1e17 ||
		math.Abs(float64(o))*pow10[places-op] >= 1e17 {
		return numberRat(raw, scale, offset)
	}
	digits := r*s*int64(pow10[places-rp-sp]) + o*int64(pow10[places-op])
	if places > 15 || digits >= 1e15 || digits <= -1e15 {
		f, _ := strconv.ParseFloat(raw, 64)
		return signal.Num(float64(f*scale) + offset)
	}
	// Both exact in a float64 (below 2^53, and 10^15): the quotient is
	// the nearest float64 to exact, as big.Rat's Float64 gives it.
	return signal.Num(float64(digits) / pow10[places])
}

// pow10[i] is 10^i, exact in a float64 up to 10^22.
var pow10 = func() (p [23]float64) {
	p[0] = 1
	for i := 1; i < len(p); i++ {
		p[i] = p[i-1] * 10
	}
	return p
}()

// decimal reads the decimal text s (as strconv writes a number, maybe with
// an exponent) as m / 10^places, with places >= 0, when m has at most 18
// digits.
func decimal(s string) (m int64, places int, ok bool) {
	mant, exp, _ := strings.Cut(s, "e")
	e, err := strconv.Atoi(exp)
	if exp == "" {
		e, err = 0, nil
	}
	whole, frac, _ := strings.Cut(mant, ".")
	if err != nil || len(whole)+len(frac) > 18 {
		return 0, 0, false
	}
	m, err = strconv.ParseInt(whole+frac, 10, 64)
	places = len(frac) - e
	for ; places < 0 && err == nil; places++ {
		if m >= 1e16 || m <= -1e16 {
			return 0, 0, false
		}
		m *= 10
	}
	return m, places, err == nil && places < len(pow10)
}

// numberRat is number in big.Rat arithmetic.
func numberRat(raw string, scale, offset float64) signal.Value {
	rs, ss, os := raw, strconv.FormatFloat(scale, 'g', -1, 64), strconv.FormatFloat(offset, 'g', -1, 64)
	f, _ := strconv.ParseFloat(rs, 64)
	r, ok1 := new(big.Rat).SetString(rs)
	s, ok2 := new(big.Rat).SetString(ss)
	o, ok3 := new(big.Rat).SetString(os)
	if !ok1 || !ok2 || !ok3 {
		return signal.Num(float64(f*scale) + offset)
	}
	exact := new(big.Rat).Add(new(big.Rat).Mul(r, s), o)
	places := max(fraction(rs)+fraction(ss), fraction(os))
	// exact × 10^places is the decimal's digits as an integer.
	digits := new(big.Rat).Mul(exact, new(big.Rat).SetInt(new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(places)), nil)))
	if places > 15 || digits.Abs(digits).Cmp(new(big.Rat).SetFloat64(1e15)) >= 0 {
		// The explicit conversion rounds the product, so that no
		// compiler fuses the multiply and the add.
		return signal.Num(float64(f*scale) + offset)
	}
	v, _ := exact.Float64()
	return signal.Num(v)
}

// fraction is how many fraction digits the decimal text (as strconv
// writes it, maybe with an exponent) has.
func fraction(s string) int {
	mant, exp, _ := strings.Cut(s, "e")
	e, _ := strconv.Atoi(exp)
	n := 0
	if _, frac, ok := strings.Cut(mant, "."); ok {
		n = len(frac)
	}
	return max(n-e, 0)
}

// toInt scales v to the integer raw value, rounded half away from zero and
// clamped to [lo, hi]. NaN becomes 0.
func toInt(v signal.Value, scale, offset float64, lo, hi int64) int64 {
	f := math.Round((v.Float() - offset) / scale)
	switch {
	case math.IsNaN(f):
		return 0
	case f <= float64(lo):
		return lo
	case f >= float64(hi):
		return hi
	}
	return int64(f)
}

// bitOf is the register bit of a bool, 0 when unset.
func bitOf(r *modbus.Register) int {
	if r.Bit == nil {
		return 0
	}
	return *r.Bit & 15
}

// order turns big-endian bytes into registers in address order under o.
func order(be []byte, o modbus.ByteOrder) []uint16 {
	n := len(be) / 2
	words := make([]uint16, n)
	for i := range n {
		hi, lo := be[2*i], be[2*i+1]
		if o.SwapBytes() {
			hi, lo = lo, hi
		}
		j := i
		if o.SwapWords() {
			j = n - 1 - i
		}
		words[j] = uint16(hi)<<8 | uint16(lo)
	}
	return words
}

// unorder is the inverse of order.
func unorder(words []uint16, o modbus.ByteOrder) []byte {
	n := len(words)
	be := make([]byte, 2*n)
	for i := range n {
		j := i
		if o.SwapWords() {
			j = n - 1 - i
		}
		hi, lo := byte(words[j]>>8), byte(words[j])
		if o.SwapBytes() {
			hi, lo = lo, hi
		}
		be[2*i], be[2*i+1] = hi, lo
	}
	return be
}

// cString is b up to its first NUL.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// Decode reads the value of r from its registers, e.g. after a master wrote
// them. For a bool on a bit table pass the bit as words[0] (0 or 1).
func Decode(r *modbus.Register, words []uint16) (signal.Value, error) {
	if len(words) < max(r.Words(), 1) {
		return signal.Value{}, fmt.Errorf("signal %s: %d registers, need %d", r.Signal, len(words), r.Words())
	}
	scale := r.Scale
	if scale == 0 {
		scale = 1
	}
	switch r.Type {
	case modbus.TypeBool:
		if r.Table.IsBits() {
			return signal.B(words[0] != 0), nil
		}
		return signal.B(words[0]>>bitOf(r)&1 == 1), nil
	case modbus.TypeInt16:
		return number(strconv.Itoa(int(int16(binary.BigEndian.Uint16(unorder(words[:1], r.Order))))), scale, r.Offset), nil
	case modbus.TypeUint16:
		return number(strconv.Itoa(int(binary.BigEndian.Uint16(unorder(words[:1], r.Order)))), scale, r.Offset), nil
	case modbus.TypeInt32:
		return number(strconv.Itoa(int(int32(binary.BigEndian.Uint32(unorder(words[:2], r.Order))))), scale, r.Offset), nil
	case modbus.TypeUint32:
		return number(strconv.Itoa(int(binary.BigEndian.Uint32(unorder(words[:2], r.Order)))), scale, r.Offset), nil
	case modbus.TypeFloat32:
		f := math.Float32frombits(binary.BigEndian.Uint32(unorder(words[:2], r.Order)))
		return number(strconv.FormatFloat(float64(f), 'g', -1, 32), scale, r.Offset), nil
	case modbus.TypeFloat64:
		f := math.Float64frombits(binary.BigEndian.Uint64(unorder(words[:4], r.Order)))
		return number(strconv.FormatFloat(f, 'g', -1, 64), scale, r.Offset), nil
	case modbus.TypeString:
		b := make([]byte, 0, 2*r.Length)
		for _, w := range words[:r.Length] {
			hi, lo := byte(w>>8), byte(w)
			if r.Order.SwapBytes() {
				hi, lo = lo, hi
			}
			b = append(b, hi, lo)
		}
		return signal.Str(cString(b)), nil
	}
	return signal.Value{}, fmt.Errorf("signal %s: unknown type %q", r.Signal, r.Type)
}
