package modbus

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strings"

	"outpost/configs"
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
// Numbers are float64(raw)*Scale + Offset (a Scale of 0 counts as 1, the
// default). Bools take bit Bit of the register, or the register != 0 when Bit
// is unset. Strings are Length registers of bytes in order, trailing NULs and
// spaces trimmed. The byte order applies to every type: BADC and DCBA swap the
// bytes of each register, CDAB and DCBA reverse the order of the registers of
// a 32- or 64-bit value.
func Decode(reg *configs.Register, words []uint16) (model.Value, error) {
	n := reg.Words()
	if n <= 0 {
		return model.Value{}, fmt.Errorf("signal %s: type %q on table %q has no register width", reg.Signal, reg.Type, reg.Table)
	}
	if len(words) < n {
		return model.Value{}, fmt.Errorf("signal %s: need %d registers, have %d", reg.Signal, n, len(words))
	}
	order := reg.Order
	if order == "" {
		order = configs.ABCD
	}
	switch order {
	case configs.ABCD, configs.CDAB, configs.BADC, configs.DCBA:
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
	if order.SwapWords() && reg.Type != configs.TypeString {
		for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
			w[i], w[j] = w[j], w[i]
		}
	}
	var raw float64
	switch reg.Type {
	case configs.TypeBool:
		if reg.Bit != nil {
			if *reg.Bit < 0 || *reg.Bit > 15 {
				return model.Value{}, fmt.Errorf("signal %s: bit %d out of range 0..15", reg.Signal, *reg.Bit)
			}
			return model.Bool(w[0]>>uint(*reg.Bit)&1 == 1), nil
		}
		return model.Bool(w[0] != 0), nil
	case configs.TypeString:
		b := make([]byte, 0, 2*n)
		for _, v := range w {
			b = append(b, byte(v>>8), byte(v))
		}
		s := strings.TrimRight(string(b), "\x00 ")
		return model.String(strings.ToValidUTF8(s, "\uFFFD")), nil
	case configs.TypeUint16:
		raw = float64(w[0])
	case configs.TypeInt16:
		raw = float64(int16(w[0]))
	case configs.TypeUint32:
		raw = float64(uint32(w[0])<<16 | uint32(w[1]))
	case configs.TypeInt32:
		raw = float64(int32(uint32(w[0])<<16 | uint32(w[1])))
	case configs.TypeFloat32:
		raw = float64(math.Float32frombits(uint32(w[0])<<16 | uint32(w[1])))
	case configs.TypeFloat64:
		raw = math.Float64frombits(uint64(w[0])<<48 | uint64(w[1])<<32 | uint64(w[2])<<16 | uint64(w[3]))
	default:
		return model.Value{}, fmt.Errorf("signal %s: unknown type %q", reg.Signal, reg.Type)
	}
	return scaled(reg, raw)
}

func scaled(reg *configs.Register, raw float64) (model.Value, error) {
	scale := reg.Scale
	if scale == 0 {
		scale = 1
	}
	// The explicit conversion rounds the product before the addition, so no
	// platform fuses them into one FMA: the value is the same on every
	// machine, and the same as the simulator computes.
	v := float64(raw*scale) + reg.Offset
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return model.Value{}, fmt.Errorf("signal %s: %w", reg.Signal, ErrNotFinite)
	}
	return model.Number(v), nil
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
func DecodeSignal(reg *configs.Register, data []byte, start int) (model.Value, error) {
	off := reg.Address - start
	if off < 0 {
		return model.Value{}, fmt.Errorf("signal %s: address %d before block start %d", reg.Signal, reg.Address, start)
	}
	if reg.Table.IsBits() {
		if reg.Type != configs.TypeBool {
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
