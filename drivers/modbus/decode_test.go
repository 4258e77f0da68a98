package modbus

import (
	"errors"
	"fmt"
	"math"
	"testing"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/gateway/model"
)

func bit(i int) *int { return &i }

// wire holds one logical value as it travels in each byte order.
type wire map[mb.ByteOrder][]uint16

// TestDecodeNumbers decodes every numeric type in every byte order under
// four scales, and wants the value the device means: the decimal raw ×
// scale + offset (a float32 as its shortest decimal), as the nearest
// float64, written out as literals.
func TestDecodeNumbers(t *testing.T) {
	scales := []struct{ scale, offset float64 }{{1, 0}, {0.1, 0}, {0.01, -40}, {10, 2.5}}
	cases := []struct {
		typ  mb.DataType
		wire wire
		want [4]float64 // under each of scales
	}{
		{mb.TypeUint16, wire{"ABCD": {0x1234}, "CDAB": {0x1234}, "BADC": {0x3412}, "DCBA": {0x3412}}, [4]float64{4660, 466, 6.6, 46602.5}},
		{mb.TypeUint16, wire{"ABCD": {0xFFFE}, "CDAB": {0xFFFE}, "BADC": {0xFEFF}, "DCBA": {0xFEFF}}, [4]float64{65534, 6553.4, 615.34, 655342.5}},
		{mb.TypeInt16, wire{"ABCD": {0xFFFE}, "CDAB": {0xFFFE}, "BADC": {0xFEFF}, "DCBA": {0xFEFF}}, [4]float64{-2, -0.2, -40.02, -17.5}},
		{mb.TypeInt16, wire{"ABCD": {0x1234}, "CDAB": {0x1234}, "BADC": {0x3412}, "DCBA": {0x3412}}, [4]float64{4660, 466, 6.6, 46602.5}},
		{mb.TypeUint32, wire{"ABCD": {0x1234, 0x5678}, "CDAB": {0x5678, 0x1234}, "BADC": {0x3412, 0x7856}, "DCBA": {0x7856, 0x3412}}, [4]float64{305419896, 30541989.6, 3054158.96, 3054198962.5}},
		{mb.TypeUint32, wire{"ABCD": {0xFFFE, 0x7960}, "CDAB": {0x7960, 0xFFFE}, "BADC": {0xFEFF, 0x6079}, "DCBA": {0x6079, 0xFEFF}}, [4]float64{4294867296, 429486729.6, 42948632.96, 42948672962.5}},
		{mb.TypeInt32, wire{"ABCD": {0xFFFE, 0x7960}, "CDAB": {0x7960, 0xFFFE}, "BADC": {0xFEFF, 0x6079}, "DCBA": {0x6079, 0xFEFF}}, [4]float64{-100000, -10000, -1040, -999997.5}},
		{mb.TypeInt32, wire{"ABCD": {0x1234, 0x5678}, "CDAB": {0x5678, 0x1234}, "BADC": {0x3412, 0x7856}, "DCBA": {0x7856, 0x3412}}, [4]float64{305419896, 30541989.6, 3054158.96, 3054198962.5}},
		// 230.5 is 0x43668000.
		{mb.TypeFloat32, wire{"ABCD": {0x4366, 0x8000}, "CDAB": {0x8000, 0x4366}, "BADC": {0x6643, 0x0080}, "DCBA": {0x0080, 0x6643}}, [4]float64{230.5, 23.05, -37.695, 2307.5}},
		// 0x3DCCCCCD is the float32 nearest 0.1: it reads as 0.1, not as
		// its widening 0.10000000149011612.
		{mb.TypeFloat32, wire{"ABCD": {0x3DCC, 0xCCCD}, "CDAB": {0xCCCD, 0x3DCC}, "BADC": {0xCC3D, 0xCDCC}, "DCBA": {0xCDCC, 0xCC3D}}, [4]float64{0.1, 0.01, -39.999, 3.5}},
		// 0x4365CCCD is the float32 nearest 229.8 (229.8000030517578).
		{mb.TypeFloat32, wire{"ABCD": {0x4365, 0xCCCD}, "CDAB": {0xCCCD, 0x4365}, "BADC": {0x6543, 0xCDCC}, "DCBA": {0xCDCC, 0x6543}}, [4]float64{229.8, 22.98, -37.702, 2300.5}},
		// 1234.5 is 0x40934A0000000000.
		{mb.TypeFloat64, wire{
			"ABCD": {0x4093, 0x4A00, 0x0000, 0x0000}, "CDAB": {0x0000, 0x0000, 0x4A00, 0x4093},
			"BADC": {0x9340, 0x004A, 0x0000, 0x0000}, "DCBA": {0x0000, 0x0000, 0x004A, 0x9340}}, [4]float64{1234.5, 123.45, -27.655, 12347.5}},
		// The double whose bytes are 01 02 03 04 05 06 07 08: its decimal
		// has 318 places, beyond a float64, so the scale is applied in
		// float64 arithmetic.
		{mb.TypeFloat64, wire{
			"ABCD": {0x0102, 0x0304, 0x0506, 0x0708}, "CDAB": {0x0708, 0x0506, 0x0304, 0x0102},
			"BADC": {0x0201, 0x0403, 0x0605, 0x0807}, "DCBA": {0x0807, 0x0605, 0x0403, 0x0201}},
			[4]float64{8.20788039913184e-304, 8.20788039913184e-305, -40, 2.5}},
	}
	for _, c := range cases {
		for _, order := range []mb.ByteOrder{mb.ABCD, mb.CDAB, mb.BADC, mb.DCBA} {
			for i, s := range scales {
				name := fmt.Sprintf("%s/%04x/%s/x%v%+v", c.typ, c.wire["ABCD"], order, s.scale, s.offset)
				t.Run(name, func(t *testing.T) {
					reg := &mb.Register{Signal: "x", Table: mb.Holding, Type: c.typ, Order: order, Scale: s.scale, Offset: s.offset}
					got, err := Decode(reg, c.wire[order])
					if err != nil {
						t.Fatalf("Decode(% x): %v", c.wire[order], err)
					}
					if want := model.Number(c.want[i]); !got.Equal(want) {
						t.Fatalf("Decode(%04x) = %v, want %v", c.wire[order], got, want)
					}
				})
			}
		}
	}
}

// arith is raw*scale + offset in float64 arithmetic, at run time (Go
// computes constant expressions exactly).
func arith(raw, scale, offset float64) float64 { return float64(raw*scale) + offset }

// TestMeantDecimals holds the rounding rule of the hub contract on values
// that float64 arithmetic gets wrong.
func TestMeantDecimals(t *testing.T) {
	cases := []struct {
		raw           float64
		places        int
		scale, offset float64
		want          float64
	}{
		{234, 0, 0.1, 0, 23.4}, // 234*0.1 = 23.400000000000002
		{3, 0, 0.1, 0, 0.3},    // 3*0.1 = 0.30000000000000004
		{1001, 0, 0.01, -40, -29.99},
		{229.8, 1, 0.1, 0, 22.98}, // 22.980000000000004 in float64
		{65535, 0, 0.001, 0, 65.535},
		{-1, 0, 0.1, 0.05, -0.05},
		{4294967295, 0, 1e-9, 0, 4.294967295},
		// 16 significant digits: beyond the rule, float64 arithmetic.
		{4294967295, 0, 1e-6, 1e9, arith(4294967295, 1e-6, 1e9)},
		{1.5, -1, 0.1, 0, arith(1.5, 0.1, 0)},
	}
	for _, c := range cases {
		if got := Meant(c.raw, c.places, c.scale, c.offset); got != c.want {
			t.Errorf("Meant(%v, %d, %v, %v) = %v, want %v", c.raw, c.places, c.scale, c.offset, got, c.want)
		}
	}
}

func TestDecodeFloat64Literal(t *testing.T) {
	// The odd literal above is the double with bytes 01 02 .. 08; check it
	// independently of the table.
	reg := &mb.Register{Signal: "x", Table: mb.Input, Type: mb.TypeFloat64, Scale: 1}
	got, err := Decode(reg, []uint16{0x0102, 0x0304, 0x0506, 0x0708})
	if err != nil {
		t.Fatal(err)
	}
	if f, _ := got.Float(); fmt.Sprint(f) != "8.20788039913184e-304" {
		t.Fatalf("got %v", f)
	}
}

func TestDecodeScaleDefault(t *testing.T) {
	// A hand-built register without Scale reads as scale 1.
	reg := &mb.Register{Signal: "x", Table: mb.Input, Type: mb.TypeUint16, Offset: 1}
	got, err := Decode(reg, []uint16{41})
	if err != nil || !got.Equal(model.Number(42)) {
		t.Fatalf("got %v, %v; want 42", got, err)
	}
}

func TestDecodeBoolOnRegister(t *testing.T) {
	cases := []struct {
		order mb.ByteOrder
		bit   *int
		word  uint16
		want  bool
	}{
		{"ABCD", nil, 0, false},
		{"ABCD", nil, 0x0100, true},
		{"ABCD", bit(0), 0x0002, false},
		{"ABCD", bit(1), 0x0002, true},
		{"ABCD", bit(15), 0x8000, true},
		{"ABCD", bit(8), 0x0100, true},
		{"CDAB", bit(1), 0x0002, true},
		{"BADC", bit(1), 0x0200, true},
		{"BADC", bit(1), 0x0002, false},
		{"DCBA", bit(9), 0x0002, true},
		{"DCBA", nil, 0x0001, true},
	}
	for _, c := range cases {
		reg := &mb.Register{Signal: "b", Table: mb.Holding, Type: mb.TypeBool, Order: c.order, Bit: c.bit}
		got, err := Decode(reg, []uint16{c.word})
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(model.Bool(c.want)) {
			b := -1
			if c.bit != nil {
				b = *c.bit
			}
			t.Errorf("%s bit %d of %04x = %v, want %v", c.order, b, c.word, got, c.want)
		}
	}
	reg := &mb.Register{Signal: "b", Table: mb.Holding, Type: mb.TypeBool, Bit: bit(16)}
	if _, err := Decode(reg, []uint16{1}); err == nil || err.Error() != "signal b: bit 16 out of range 0..15" {
		t.Fatalf("bit 16: err = %v", err)
	}
}

func TestDecodeString(t *testing.T) {
	cases := []struct {
		order mb.ByteOrder
		words []uint16
		want  string
	}{
		{"ABCD", []uint16{0x5550, 0x532D, 0x334B, 0x0000}, "UPS-3K"},
		{"CDAB", []uint16{0x5550, 0x532D, 0x334B, 0x0000}, "UPS-3K"},
		{"BADC", []uint16{0x5055, 0x2D53, 0x4B33, 0x0000}, "UPS-3K"},
		{"DCBA", []uint16{0x5055, 0x2D53, 0x4B33, 0x0000}, "UPS-3K"},
		{"ABCD", []uint16{0x4142, 0x2020, 0x2000, 0x0000}, "AB"},
		{"ABCD", []uint16{0x4100, 0x4200, 0x0000, 0x0000}, "A\x00B"},
		{"ABCD", []uint16{0x0000, 0x0000, 0x0000, 0x0000}, ""},
		{"ABCD", []uint16{0xFF41, 0x0000, 0x0000, 0x0000}, "\uFFFDA"},
	}
	for _, c := range cases {
		reg := &mb.Register{Signal: "s", Table: mb.Holding, Type: mb.TypeString, Length: 4, Order: c.order}
		got, err := Decode(reg, c.words)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(model.String(c.want)) {
			t.Errorf("%s %04x = %q, want %q", c.order, c.words, got, c.want)
		}
	}
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		name  string
		reg   mb.Register
		words []uint16
		want  string
	}{
		{"nan", mb.Register{Signal: "f", Type: mb.TypeFloat32, Table: mb.Input}, []uint16{0x7FC0, 0}, "signal f: value is not a finite number"},
		{"inf", mb.Register{Signal: "f", Type: mb.TypeFloat32, Table: mb.Input}, []uint16{0x7F80, 0}, "signal f: value is not a finite number"},
		{"-inf64", mb.Register{Signal: "f", Type: mb.TypeFloat64, Table: mb.Input}, []uint16{0xFFF0, 0, 0, 0}, "signal f: value is not a finite number"},
		{"overflow by scale", mb.Register{Signal: "f", Type: mb.TypeFloat64, Table: mb.Input, Scale: 1e300}, []uint16{0x7FEF, 0xFFFF, 0xFFFF, 0xFFFF}, "signal f: value is not a finite number"},
		{"short", mb.Register{Signal: "u", Type: mb.TypeUint32, Table: mb.Input}, []uint16{1}, "signal u: need 2 registers, have 1"},
		{"order", mb.Register{Signal: "u", Type: mb.TypeUint16, Table: mb.Input, Order: "XYZW"}, []uint16{1}, `signal u: unknown byte order "XYZW"`},
		{"type", mb.Register{Signal: "u", Type: "int8", Table: mb.Input}, []uint16{1}, `signal u: type "int8" on table "input" has no register width`},
		{"zero-length string", mb.Register{Signal: "s", Type: mb.TypeString, Table: mb.Input}, []uint16{1}, `signal s: type "string" on table "input" has no register width`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := Decode(&c.reg, c.words)
			if err == nil || err.Error() != c.want {
				t.Fatalf("Decode = %v, %v; want error %q", v, err, c.want)
			}
			if !v.IsZero() {
				t.Fatalf("value %v with an error", v)
			}
		})
	}
	_, err := Decode(&mb.Register{Signal: "f", Type: mb.TypeFloat32, Table: mb.Input}, []uint16{0x7FC0, 0})
	if !errors.Is(err, ErrNotFinite) {
		t.Fatalf("NaN error %v is not ErrNotFinite", err)
	}
}

func TestDecodeSignal(t *testing.T) {
	data := []byte{0x00, 0x01, 0x43, 0x66, 0x80, 0x00, 0xFF, 0xFE}
	reg := &mb.Register{Signal: "v", Table: mb.Input, Address: 11, Type: mb.TypeFloat32, Scale: 1}
	got, err := DecodeSignal(reg, data, 10)
	if err != nil || !got.Equal(model.Number(230.5)) {
		t.Fatalf("float at 11: %v, %v", got, err)
	}
	reg = &mb.Register{Signal: "t", Table: mb.Input, Address: 13, Type: mb.TypeInt16, Scale: 0.1}
	got, err = DecodeSignal(reg, data, 10)
	if err != nil || !got.Equal(model.Number(-0.2)) {
		t.Fatalf("int16 at 13: %v, %v", got, err)
	}
	reg = &mb.Register{Signal: "t", Table: mb.Input, Address: 13, Type: mb.TypeInt32}
	if _, err := DecodeSignal(reg, data, 10); err == nil || err.Error() != "signal t: registers 13..14 beyond 8 bytes of data" {
		t.Fatalf("beyond data: %v", err)
	}
	bits := []byte{0b10000010, 0b00000001}
	for i, want := range []bool{false, true, false, false, false, false, false, true, true, false} {
		reg := &mb.Register{Signal: "b", Table: mb.Coil, Address: 100 + i, Type: mb.TypeBool}
		got, err := DecodeSignal(reg, bits, 100)
		if err != nil || !got.Equal(model.Bool(want)) {
			t.Errorf("bit %d: %v, %v; want %v", i, got, err, want)
		}
	}
	reg = &mb.Register{Signal: "b", Table: mb.Discrete, Address: 116, Type: mb.TypeBool}
	if _, err := DecodeSignal(reg, bits, 100); err == nil || err.Error() != "bit 16 beyond 2 bytes of data" {
		t.Fatalf("bit beyond: %v", err)
	}
}

var fuzzTypes = []mb.DataType{"bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "string", "bogus"}
var fuzzOrders = []mb.ByteOrder{"ABCD", "CDAB", "BADC", "DCBA", "", "ZZZZ"}
var fuzzTables = []mb.Table{"coil", "discrete", "input", "holding"}

func FuzzDecode(f *testing.F) {
	f.Add([]byte{0x43, 0x66, 0x80, 0x00}, uint8(5), uint8(0), uint8(2), int8(-1), uint8(0), int16(0), int16(0))
	f.Add([]byte{0x7F, 0xC0, 0x00, 0x00}, uint8(5), uint8(1), uint8(3), int8(-1), uint8(0), int16(0), int16(0))
	f.Add([]byte{0x55, 0x50, 0x53, 0x2D, 0x33, 0x4B, 0, 0}, uint8(7), uint8(2), uint8(3), int8(-1), uint8(4), int16(0), int16(0))
	f.Add([]byte{0x02}, uint8(0), uint8(0), uint8(0), int8(1), uint8(0), int16(3), int16(1))
	f.Add([]byte{0x00, 0x02}, uint8(0), uint8(3), uint8(3), int8(17), uint8(0), int16(0), int16(0))
	f.Fuzz(func(t *testing.T, data []byte, typ, order, table uint8, b int8, length uint8, addr, start int16) {
		reg := &mb.Register{
			Signal: "x", Table: fuzzTables[int(table)%len(fuzzTables)], Address: int(addr),
			Type: fuzzTypes[int(typ)%len(fuzzTypes)], Order: fuzzOrders[int(order)%len(fuzzOrders)],
			Length: int(length), Scale: 0.1, Offset: 1,
		}
		if b >= 0 {
			reg.Bit = bit(int(b))
		}
		v, err := DecodeSignal(reg, data, int(start))
		if err != nil && !v.IsZero() {
			t.Fatalf("value %v with error %v", v, err)
		}
		if err == nil && v.IsZero() {
			t.Fatal("no value and no error")
		}
		if f, ok := v.Float(); ok && (math.IsNaN(f) || math.IsInf(f, 0)) {
			t.Fatalf("non-finite number %v", f)
		}
		if w, err := Words(data); err == nil && len(w) != len(data)/2 {
			t.Fatalf("Words: %d words from %d bytes", len(w), len(data))
		}
	})
}

// TestQualityRange: a value outside the measuring range the template gives
// is uncertain: a wrong template or a failing sensor must not pass as good.
func TestQualityRange(t *testing.T) {
	reg := &mb.Register{Signal: "humidity", Type: mb.TypeUint16, Range: &configs.Range{Min: 0, Max: 100}}
	for _, c := range []struct {
		v    model.Value
		want model.Quality
	}{
		{model.Number(54.6), model.Good}, {model.Number(0), model.Good}, {model.Number(100), model.Good},
		{model.Number(100.1), model.Uncertain}, {model.Number(-0.1), model.Uncertain}, {model.Number(3051), model.Uncertain},
	} {
		if got := Quality(reg, c.v); got != c.want {
			t.Errorf("%v in [0, 100]: %s, want %s", c.v, got, c.want)
		}
	}
	if got := Quality(&mb.Register{Signal: "x"}, model.Number(1e9)); got != model.Good {
		t.Errorf("without a range: %s, want good", got)
	}
}
