package enc

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"outpost/configs/modbus"
	"outpost/firmware-sim/signal"
)

func bit(n int) *int { return &n }

func TestEncode(t *testing.T) {
	type tc struct {
		name  string
		reg   modbus.Register
		v     signal.Value
		words []uint16
		want  signal.Value
	}
	reg := func(typ modbus.DataType, o modbus.ByteOrder, scale, offset float64) modbus.Register {
		return modbus.Register{Signal: "s", Table: modbus.Holding, Type: typ, Order: o, Scale: scale, Offset: offset}
	}
	str := func(o modbus.ByteOrder, n int) modbus.Register {
		r := reg(modbus.TypeString, o, 1, 0)
		r.Length = n
		return r
	}
	cases := []tc{
		// 16-bit: only the byte swap applies.
		{"int16 ABCD scaled", reg(modbus.TypeInt16, modbus.ABCD, 0.1, 0), signal.Num(21.3), []uint16{0x00D5}, signal.Num(21.3)},
		{"int16 CDAB scaled", reg(modbus.TypeInt16, modbus.CDAB, 0.1, 0), signal.Num(21.3), []uint16{0x00D5}, signal.Num(21.3)},
		{"int16 BADC scaled", reg(modbus.TypeInt16, modbus.BADC, 0.1, 0), signal.Num(21.3), []uint16{0xD500}, signal.Num(21.3)},
		{"int16 DCBA scaled", reg(modbus.TypeInt16, modbus.DCBA, 0.1, 0), signal.Num(21.3), []uint16{0xD500}, signal.Num(21.3)},
		{"int16 negative", reg(modbus.TypeInt16, modbus.ABCD, 1, 0), signal.Num(-12), []uint16{0xFFF4}, signal.Num(-12)},
		{"int16 negative BADC", reg(modbus.TypeInt16, modbus.BADC, 1, 0), signal.Num(-12), []uint16{0xF4FF}, signal.Num(-12)},
		{"int16 rounds half away", reg(modbus.TypeInt16, modbus.ABCD, 1, 0), signal.Num(-2.5), []uint16{0xFFFD}, signal.Num(-3)},
		{"int16 clamps low", reg(modbus.TypeInt16, modbus.ABCD, 1, 0), signal.Num(-40000), []uint16{0x8000}, signal.Num(-32768)},
		{"int16 scale and offset", reg(modbus.TypeInt16, modbus.ABCD, 0.5, -40), signal.Num(25), []uint16{0x0082}, signal.Num(25)},
		{"uint16 scaled", reg(modbus.TypeUint16, modbus.ABCD, 0.1, 0), signal.Num(55.5), []uint16{0x022B}, signal.Num(55.5)},
		{"uint16 rounds", reg(modbus.TypeUint16, modbus.ABCD, 1, 0), signal.Num(2.5), []uint16{0x0003}, signal.Num(3)},
		{"uint16 clamps high", reg(modbus.TypeUint16, modbus.ABCD, 1, 0), signal.Num(70000), []uint16{0xFFFF}, signal.Num(65535)},
		{"uint16 clamps negative", reg(modbus.TypeUint16, modbus.ABCD, 1, 0), signal.Num(-1), []uint16{0x0000}, signal.Num(0)},
		{"uint16 offset", reg(modbus.TypeUint16, modbus.DCBA, 0.01, 10), signal.Num(12.34), []uint16{0xEA00}, signal.Num(float64(234*0.01) + 10)},
		{"uint16 from bool", reg(modbus.TypeUint16, modbus.ABCD, 1, 0), signal.B(true), []uint16{0x0001}, signal.Num(1)},
		// 32-bit: 0xFFFE7960 is -100000.
		{"int32 ABCD", reg(modbus.TypeInt32, modbus.ABCD, 1, 0), signal.Num(-100000), []uint16{0xFFFE, 0x7960}, signal.Num(-100000)},
		{"int32 CDAB", reg(modbus.TypeInt32, modbus.CDAB, 1, 0), signal.Num(-100000), []uint16{0x7960, 0xFFFE}, signal.Num(-100000)},
		{"int32 BADC", reg(modbus.TypeInt32, modbus.BADC, 1, 0), signal.Num(-100000), []uint16{0xFEFF, 0x6079}, signal.Num(-100000)},
		{"int32 DCBA", reg(modbus.TypeInt32, modbus.DCBA, 1, 0), signal.Num(-100000), []uint16{0x6079, 0xFEFF}, signal.Num(-100000)},
		{"int32 scaled", reg(modbus.TypeInt32, modbus.ABCD, 0.001, 0), signal.Num(-100), []uint16{0xFFFE, 0x7960}, signal.Num(float64(-100000 * 0.001))},
		{"uint32 ABCD", reg(modbus.TypeUint32, modbus.ABCD, 1, 0), signal.Num(0x12345678), []uint16{0x1234, 0x5678}, signal.Num(0x12345678)},
		{"uint32 CDAB", reg(modbus.TypeUint32, modbus.CDAB, 1, 0), signal.Num(0x12345678), []uint16{0x5678, 0x1234}, signal.Num(0x12345678)},
		{"uint32 BADC", reg(modbus.TypeUint32, modbus.BADC, 1, 0), signal.Num(0x12345678), []uint16{0x3412, 0x7856}, signal.Num(0x12345678)},
		{"uint32 DCBA", reg(modbus.TypeUint32, modbus.DCBA, 1, 0), signal.Num(0x12345678), []uint16{0x7856, 0x3412}, signal.Num(0x12345678)},
		{"uint32 clamps", reg(modbus.TypeUint32, modbus.ABCD, 1, 0), signal.Num(-5), []uint16{0, 0}, signal.Num(0)},
		{"uint32 offset", reg(modbus.TypeUint32, modbus.ABCD, 0.5, 100), signal.Num(150), []uint16{0, 100}, signal.Num(150)},
		// float32: 229.5 is 0x43658000, -3.75 is 0xC0700000.
		{"float32 ABCD", reg(modbus.TypeFloat32, modbus.ABCD, 1, 0), signal.Num(229.5), []uint16{0x4365, 0x8000}, signal.Num(229.5)},
		{"float32 CDAB", reg(modbus.TypeFloat32, modbus.CDAB, 1, 0), signal.Num(229.5), []uint16{0x8000, 0x4365}, signal.Num(229.5)},
		{"float32 BADC", reg(modbus.TypeFloat32, modbus.BADC, 1, 0), signal.Num(229.5), []uint16{0x6543, 0x0080}, signal.Num(229.5)},
		{"float32 DCBA", reg(modbus.TypeFloat32, modbus.DCBA, 1, 0), signal.Num(-3.75), []uint16{0x0000, 0x70C0}, signal.Num(-3.75)},
		// A float32 reads as its shortest decimal: 0x3DCCCCCD is 0.1, not
		// its widening 0.10000000149011612.
		{"float32 rounds to float32", reg(modbus.TypeFloat32, modbus.ABCD, 1, 0), signal.Num(0.1), []uint16{0x3DCC, 0xCCCD}, signal.Num(0.1)},
		// 0x43657FDF is 229.4995: ×2 + 1 is 459.999.
		{"float32 scale and offset", reg(modbus.TypeFloat32, modbus.ABCD, 2, 1), signal.Num(459.999), []uint16{0x4365, 0x7FDF}, signal.Num(459.999)},
		{"uint16 tenths", reg(modbus.TypeUint16, modbus.ABCD, 0.1, 0), signal.Num(23.4), []uint16{234}, signal.Num(23.4)},
		{"int16 hundredths offset", reg(modbus.TypeInt16, modbus.ABCD, 0.01, -40), signal.Num(-29.99), []uint16{1001}, signal.Num(-29.99)},
		// float64: 12345.678 is 0x40C81CD6C8B43958.
		{"float64 ABCD", reg(modbus.TypeFloat64, modbus.ABCD, 1, 0), signal.Num(12345.678), []uint16{0x40C8, 0x1CD6, 0xC8B4, 0x3958}, signal.Num(12345.678)},
		{"float64 CDAB", reg(modbus.TypeFloat64, modbus.CDAB, 1, 0), signal.Num(12345.678), []uint16{0x3958, 0xC8B4, 0x1CD6, 0x40C8}, signal.Num(12345.678)},
		{"float64 BADC", reg(modbus.TypeFloat64, modbus.BADC, 1, 0), signal.Num(12345.678), []uint16{0xC840, 0xD61C, 0xB4C8, 0x5839}, signal.Num(12345.678)},
		{"float64 DCBA", reg(modbus.TypeFloat64, modbus.DCBA, 1, 0), signal.Num(12345.678), []uint16{0x5839, 0xB4C8, 0xD61C, 0xC840}, signal.Num(12345.678)},
		{"float64 scaled", reg(modbus.TypeFloat64, modbus.ABCD, 0.5, -1), signal.Num(10), []uint16{0x4036, 0, 0, 0}, signal.Num(10)},
		// strings: two characters per register, the first in the high byte.
		{"string ABCD", str(modbus.ABCD, 4), signal.Str("UPS-3K"), []uint16{0x5550, 0x532D, 0x334B, 0x0000}, signal.Str("UPS-3K")},
		{"string BADC", str(modbus.BADC, 4), signal.Str("UPS-3K"), []uint16{0x5055, 0x2D53, 0x4B33, 0x0000}, signal.Str("UPS-3K")},
		{"string truncated", str(modbus.ABCD, 2), signal.Str("ABCDEF"), []uint16{0x4142, 0x4344}, signal.Str("ABCD")},
		{"string odd length", str(modbus.ABCD, 2), signal.Str("ABC"), []uint16{0x4142, 0x4300}, signal.Str("ABC")},
		// bools.
		{"bool bit 3 on", modbus.Register{Signal: "s", Table: modbus.Holding, Type: modbus.TypeBool, Bit: bit(3)}, signal.B(true), []uint16{0x0008}, signal.B(true)},
		{"bool bit 15 on", modbus.Register{Signal: "s", Table: modbus.Input, Type: modbus.TypeBool, Bit: bit(15)}, signal.Num(1), []uint16{0x8000}, signal.B(true)},
		{"bool bit off", modbus.Register{Signal: "s", Table: modbus.Holding, Type: modbus.TypeBool, Bit: bit(3)}, signal.B(false), []uint16{0x0000}, signal.B(false)},
		{"bool register no bit", modbus.Register{Signal: "s", Table: modbus.Holding, Type: modbus.TypeBool}, signal.B(true), []uint16{0x0001}, signal.B(true)},
		{"bool coil", modbus.Register{Signal: "s", Table: modbus.Coil, Type: modbus.TypeBool}, signal.B(true), nil, signal.B(true)},
		{"bool discrete from number", modbus.Register{Signal: "s", Table: modbus.Discrete, Type: modbus.TypeBool}, signal.Num(0), nil, signal.B(false)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			words, want, err := Encode(&c.reg, c.v)
			if err != nil {
				t.Fatalf("Encode(%v): %v", c.v, err)
			}
			if !slices.Equal(words, c.words) {
				t.Errorf("Encode(%v) words = %s, want %s", c.v, hex(words), hex(c.words))
			}
			if want != c.want {
				t.Errorf("Encode(%v) decoded value = %v, want %v", c.v, want, c.want)
			}
			if c.reg.Table.IsBits() {
				return
			}
			// The simulator's own decoder (used after a master writes)
			// reads back the same value.
			got, err := Decode(&c.reg, words)
			if err != nil {
				t.Fatalf("Decode(%s): %v", hex(words), err)
			}
			if got != c.want {
				t.Errorf("Decode(%s) = %v, want %v", hex(words), got, c.want)
			}
		})
	}
}

func hex(ws []uint16) string {
	s := "["
	for i, w := range ws {
		if i > 0 {
			s += " "
		}
		s += fmt.Sprintf("%04X", w)
	}
	return s + "]"
}

func TestEncodeErrors(t *testing.T) {
	cases := []struct {
		reg  modbus.Register
		want string
	}{
		{modbus.Register{Signal: "s", Table: modbus.Holding, Type: "int8"}, `signal s: unknown type "int8"`},
		{modbus.Register{Signal: "s", Table: modbus.Holding, Type: modbus.TypeString}, "signal s: string without a length"},
	}
	for _, c := range cases {
		_, _, err := Encode(&c.reg, signal.Num(1))
		if err == nil || err.Error() != c.want {
			t.Errorf("Encode(%+v) error = %v, want %q", c.reg, err, c.want)
		}
	}
	r := modbus.Register{Signal: "s", Table: modbus.Holding, Type: modbus.TypeFloat32}
	if _, err := Decode(&r, []uint16{1}); err == nil || err.Error() != "signal s: 1 registers, need 2" {
		t.Errorf("Decode(short) error = %v", err)
	}
}

// FuzzDecode feeds registers a master could write: decoding never panics and
// re-encoding a decoded integer gives the same registers.
func FuzzDecode(f *testing.F) {
	f.Add(uint16(0xFFFE), uint16(0x7960), uint16(0), uint16(0), uint8(0), uint8(0))
	f.Add(uint16(0x7FC0), uint16(0x0000), uint16(1), uint16(2), uint8(5), uint8(3))
	types := []modbus.DataType{modbus.TypeBool, modbus.TypeInt16, modbus.TypeUint16, modbus.TypeInt32, modbus.TypeUint32, modbus.TypeFloat32, modbus.TypeFloat64, modbus.TypeString}
	orders := []modbus.ByteOrder{modbus.ABCD, modbus.CDAB, modbus.BADC, modbus.DCBA}
	f.Fuzz(func(t *testing.T, a, b, c, d uint16, ti, oi uint8) {
		r := modbus.Register{Signal: "s", Table: modbus.Holding, Type: types[int(ti)%len(types)], Order: orders[int(oi)%len(orders)], Scale: 1, Length: 4}
		if r.Type != modbus.TypeString {
			r.Length = 0
		}
		words := []uint16{a, b, c, d}
		v, err := Decode(&r, words)
		if err != nil {
			t.Fatal(err)
		}
		switch r.Type {
		case modbus.TypeInt16, modbus.TypeUint16, modbus.TypeInt32, modbus.TypeUint32:
			back, _, err := Encode(&r, v)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(back, words[:r.Words()]) {
				t.Fatalf("%s %s: %s decodes to %v, encodes to %s", r.Type, r.Order, hex(words), v, hex(back))
			}
		case modbus.TypeFloat32, modbus.TypeFloat64:
			if math.IsNaN(v.Num) || v.Num == 0 {
				return // NaN payloads and the sign of zero are not kept
			}
			back, _, err := Encode(&r, v)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(back, words[:r.Words()]) {
				t.Fatalf("%s %s: %s decodes to %v, encodes to %s", r.Type, r.Order, hex(words), v, hex(back))
			}
		}
	})
}

// TestNumberMatchesRat: number's int64 arithmetic gives, bit for bit, what
// the big.Rat reference gives, over raws of every register type and the
// scales and offsets templates use, and some they do not.
func TestNumberMatchesRat(t *testing.T) {
	scales := []float64{1, 0.1, 0.01, 0.001, 0.0001, 1e-5, 1e-7, 2.5e-7, 0.5, 0.125, 1.2, 3.6, 10, 100, 1e6, 1e15, 1e20, 6.103515625e-05}
	offsets := []float64{0, -40, 0.5, -273.15, 1e-9, 32, -0.05, 1e12, 123456.789, math.Inf(1), math.NaN()}
	rng := rand.New(rand.NewPCG(1, 2))
	raws := []string{"0", "-0", "1", "-1", "65535", "-32768", "4294967295", "-2147483648", "NaN", "+Inf", "1e+38", "3.4028235e+38", "1e-45", "9007199254740993"}
	for range 60 {
		raws = append(raws,
			strconv.FormatInt(rng.Int64N(1<<32)-1<<31, 10),
			strconv.FormatFloat(float64(float32(rng.NormFloat64()*math.Pow(10, float64(rng.IntN(20)-10)))), 'g', -1, 32),
			strconv.FormatFloat(rng.NormFloat64()*1e3, 'g', -1, 64))
	}
	n := 0
	for _, raw := range raws {
		for _, s := range scales {
			for _, o := range offsets {
				got, want := number(raw, s, o), numberRat(raw, s, o)
				if math.Float64bits(got.Float()) != math.Float64bits(want.Float()) {
					t.Fatalf("number(%s, %v, %v) = %v (%x), big.Rat gives %v (%x)", raw, s, o,
						got.Float(), math.Float64bits(got.Float()), want.Float(), math.Float64bits(want.Float()))
				}
				n++
			}
		}
	}
	t.Logf("%d values alike", n)
}
