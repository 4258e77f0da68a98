package modbus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	mb "outpost/configs/modbus"
	"outpost/gateway/model"
)

// ErrNotFinite is returned for a float that is NaN or infinite, before or
// after scaling; the reading is then of bad quality.
var ErrNotFinite = errors.New("value is not a finite number")

// Words turns the data bytes of a register read response into registers,
// big-endian as they travel on the wire.
func Words(data []byte) ([]uint16, error) {
	if len(data)%2 != 0 {
		return nil, fmt.Errorf("odd register data length %d", len(data))
	}
	w := make([]uint16, len(data)/2)
	for i := range w {
		w[i] = uint16(data[2*i])<<8 | uint16(data[2*i+1])
	}
	return w, nil
}

// Decode turns the registers of one signal on a register table (input or
// holding) into a value. words starts at the signal's address and must hold
// at least reg.Words() registers.
//
// Numbers are the value the device means (see Meant): raw*Scale + Offset
// in decimal, where raw is the register's integer or the shortest decimal
// of its float32 or float64 (a Scale of 0 counts as 1, the default). Bools take bit Bit of the register, or the register != 0 when Bit
// is unset. Strings are Length registers of bytes in order, trailing NULs and
// spaces trimmed. The byte order applies to every type: BADC and DCBA swap the
// bytes of each register, CDAB and DCBA reverse the order of the registers of
// a 32- or 64-bit value.
func Decode(reg *mb.Register, words []uint16) (model.Value, error) {
	n := reg.Words()
	if n <= 0 {
		return model.Value{}, fmt.Errorf("signal %s: type %q on table %q has no register width", reg.Signal, reg.Type, reg.Table)
	}
	if len(words) < n {
		return model.Value{}, fmt.Errorf("signal %s: need %d registers, have %d", reg.Signal, n, len(words))
	}
	order := reg.Order
	if order == "" {
		order = mb.ABCD
	}
	switch order {
	case mb.ABCD, mb.CDAB, mb.BADC, mb.DCBA:
	default:
		return model.Value{}, fmt.Errorf("signal %s: unknown byte order %q", reg.Signal, order)
	}
	// w holds the value's registers in big-endian order, bytes fixed.
	var buf [4]uint16
	var w []uint16
	if n <= 4 {
		w = buf[:n]
	} else {
		w = make([]uint16, n)
	}
	for i := 0; i < n; i++ {
		v := words[i]
		if order.SwapBytes() {
			v = v<<8 | v>>8
		}
		w[i] = v
	}
	if order.SwapWords() && reg.Type != mb.TypeString {
		for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
			w[i], w[j] = w[j], w[i]
		}
	}
	var raw float64
	places := 0 // of raw's decimal form
	switch reg.Type {
	case mb.TypeBool:
		if reg.Bit != nil {
			if *reg.Bit < 0 || *reg.Bit > 15 {
				return model.Value{}, fmt.Errorf("signal %s: bit %d out of range 0..15", reg.Signal, *reg.Bit)
			}
			return model.Bool(w[0]>>uint(*reg.Bit)&1 == 1), nil
		}
		return model.Bool(w[0] != 0), nil
	case mb.TypeString:
		b := make([]byte, 0, 2*n)
		for _, v := range w {
			b = append(b, byte(v>>8), byte(v))
		}
		s := strings.TrimRight(string(b), "\x00 ")
		return model.String(strings.ToValidUTF8(s, "\uFFFD")), nil
	case mb.TypeUint16:
		raw = float64(w[0])
	case mb.TypeInt16:
		raw = float64(int16(w[0]))
	case mb.TypeUint32:
		raw = float64(uint32(w[0])<<16 | uint32(w[1]))
	case mb.TypeInt32:
		raw = float64(int32(uint32(w[0])<<16 | uint32(w[1])))
	case mb.TypeFloat32:
		raw, places = shortest(float64(math.Float32frombits(uint32(w[0])<<16|uint32(w[1]))), 32)
	case mb.TypeFloat64:
		raw, places = shortest(math.Float64frombits(uint64(w[0])<<48|uint64(w[1])<<32|uint64(w[2])<<16|uint64(w[3])), 64)
	default:
		return model.Value{}, fmt.Errorf("signal %s: unknown type %q", reg.Signal, reg.Type)
	}
	scale := reg.Scale
	if scale == 0 {
		scale = 1
	}
	v := Meant(raw, places, scale, reg.Offset)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return model.Value{}, fmt.Errorf("signal %s: %w", reg.Signal, ErrNotFinite)
	}
	return model.Number(v), nil
}

// maxDigits is how many significant decimal digits Meant keeps exact: a
// float64 holds 15 of them whatever their value.
const maxDigits = 15

var pow10 = [...]float64{1, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22}

// Meant is the number a device means by a register value: raw*scale +
// offset computed in decimal, raw having places fraction digits (0 for an
// integer register, those of its shortest form for a float) and scale and
// offset those of their shortest forms, as the template writes them. It
// returns the float64 nearest to that decimal, so that a register of 234
// at ×0.1 reads 23.4, not 23.400000000000002. Past maxDigits significant
// digits (or places < 0), where a float64 cannot tell the decimal apart,
// it is raw*scale + offset in float64 arithmetic. The hub contract states
// this rule; the simulator computes it apart, with exact rationals.
func Meant(raw float64, places int, scale, offset float64) float64 {
	if scale == 1 && offset == 0 {
		return raw
	}
	// The explicit conversion rounds the product before the addition, so
	// no platform fuses them into one FMA.
	x := float64(raw*scale) + offset
	_, ps := shortest(scale, 64)
	_, po := shortest(offset, 64)
	d := max(places+ps, po)
	if places < 0 || ps < 0 || po < 0 || d > maxDigits {
		return x
	}
	y := x * pow10[d]
	if math.IsNaN(y) || math.Abs(y) >= pow10[maxDigits] {
		return x
	}
	// Both operands are exact, so the quotient is the float64 nearest to
	// the decimal.
	return math.Round(y) / pow10[d]
}

// shortest returns the float64 nearest to the shortest decimal that reads
// back as f in its own precision (bits 32 or 64) and the decimal's count of
// fraction digits, or -1 for that count when the decimal is beyond what a
// float64 can tell apart. For bits 64 the value is f itself.
func shortest(f float64, bits int) (float64, int) {
	if f == 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return f, 0
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], f, 'e', -1, bits)
	// b is [-]d[.ddd]e±XX: gather the digits into n.
	i, neg := 0, b[0] == '-'
	if neg {
		i++
	}
	var n int64
	digits := 0
	for ; i < len(b) && b[i] != 'e'; i++ {
		if b[i] != '.' {
			n = n*10 + int64(b[i]-'0')
			digits++
		}
	}
	if digits > 17 || i+2 >= len(b) {
		return f, -1
	}
	exp := 0
	for _, c := range b[i+2:] {
		exp = exp*10 + int(c-'0')
	}
	if b[i+1] == '-' {
		exp = -exp
	}
	frac := digits - 1 - exp // fraction digits of n × 10^-frac
	v := float64(n)
	switch {
	case frac <= 0 && -frac < len(pow10):
		v *= pow10[-frac]
		frac = 0
	case frac > 0 && frac < len(pow10) && n < 1<<53:
		v /= pow10[frac]
	default:
		// Beyond the exact fast path: parse the decimal (rare; it
		// allocates).
		if bits == 32 {
			if p, err := strconv.ParseFloat(string(b), 64); err == nil {
				return p, -1
			}
		}
		return f, -1
	}
	if neg {
		v = -v
	}
	if bits == 64 {
		return f, frac
	}
	return v, frac
}

// Quality of a decoded value: uncertain when the template gives the
// device's measuring range and the value lies outside it (a wrong template
// or unit id, or a failing sensor), good otherwise.
func Quality(reg *mb.Register, v model.Value) model.Quality {
	if f, ok := v.Float(); ok && reg.Range != nil && !reg.Range.Contains(f) {
		return model.Uncertain
	}
	return model.Good
}

// DecodeBit returns bit i of the data bytes of a coil or discrete input read
// response (bit 0 is the least significant bit of the first byte).
func DecodeBit(data []byte, i int) (model.Value, error) {
	if i < 0 || i/8 >= len(data) {
		return model.Value{}, fmt.Errorf("bit %d beyond %d bytes of data", i, len(data))
	}
	return model.Bool(data[i/8]>>uint(i%8)&1 == 1), nil
}

// DecodeSignal decodes one signal from the data bytes of the read response
// that covered it; start is the first address the request read.
func DecodeSignal(reg *mb.Register, data []byte, start int) (model.Value, error) {
	off := reg.Address - start
	if off < 0 {
		return model.Value{}, fmt.Errorf("signal %s: address %d before block start %d", reg.Signal, reg.Address, start)
	}
	if reg.Table.IsBits() {
		if reg.Type != mb.TypeBool {
			return model.Value{}, fmt.Errorf("signal %s: type %q on bit table %q", reg.Signal, reg.Type, reg.Table)
		}
		return DecodeBit(data, off)
	}
	n := reg.Words()
	if 2*(off+n) > len(data) {
		return model.Value{}, fmt.Errorf("signal %s: registers %d..%d beyond %d bytes of data", reg.Signal, reg.Address, reg.Address+n-1, len(data))
	}
	var buf [4]uint16 // no allocation for the values of up to 64 bits
	words := buf[:0]
	for i := off; i < off+n; i++ {
		words = append(words, binary.BigEndian.Uint16(data[2*i:]))
	}
	return Decode(reg, words)
}
