package line

import (
	"testing"

	cl "outpost/configs/line"
)

// TestChecksum: the simulator's checksums against published examples.
func TestChecksum(t *testing.T) {
	cases := []struct {
		c    cl.Checksum
		text string
		want uint16
	}{
		{cl.Checksum{Type: cl.CRC16Modbus}, "123456789", 0x4B37},
		{cl.Checksum{Type: cl.CRC16Modbus, Order: cl.LSBFirst}, "123456789", 0x374B},
		{cl.Checksum{Type: cl.XOR8}, "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", 0x6A},
		{cl.Checksum{Type: cl.Sum8}, "$07S1RH", 0xA9},
	}
	for _, c := range cases {
		if got := checksum(c.c, []byte(c.text)); got != c.want {
			t.Errorf("%s %s of %q = %04X, want %04X", c.c.Type, c.c.Order, c.text, got, c.want)
		}
	}
	kiosk := &cl.Template{Framing: cl.Framing{Start: "\x02", End: "\x03"}, Checksum: cl.Checksum{Type: cl.CRC16Modbus, Marker: "*"}}
	if got := string(frame(kiosk, seal(kiosk, "KSK,EVT,CALL=1,DOOR=0,TAMPER=0"))); got != "\x02KSK,EVT,CALL=1,DOOR=0,TAMPER=0*0F3E\x03" {
		t.Errorf("kiosk line %q", got)
	}
}

// TestNumbers: values written as a format says, and the value a master
// reads back from what was written.
func TestNumbers(t *testing.T) {
	cases := []struct {
		s     cl.Signal
		v     float64
		spec  cl.Spec
		text  string
		reads float64
	}{
		{cl.Signal{Type: cl.Float, Scale: 1}, 23.46, cl.Spec{Decimals: 1}, "23.5", 23.5},
		{cl.Signal{Type: cl.Float, Scale: 1}, 22.8, cl.Spec{Width: 5, Decimals: 1}, " 22.8", 22.8},
		{cl.Signal{Type: cl.Float, Scale: 1}, -12.54, cl.Spec{Width: 5, Decimals: 1}, "-12.5", -12.5},
		{cl.Signal{Type: cl.Float, Scale: 1.852}, 41.4848, cl.Spec{Decimals: 1}, "22.4", 41.4848},
		{cl.Signal{Type: cl.Int, Scale: 0.1}, 23.4, cl.Spec{Decimals: -1}, "234", 23.4},
		{cl.Signal{Type: cl.Int, Scale: 1}, 8, cl.Spec{Zero: true, Width: 2, Decimals: -1}, "08", 8},
		{cl.Signal{Type: cl.Float, Scale: 1, DegreesMinutes: true}, 48.1173, cl.Spec{Zero: true, Width: 8, Decimals: 3}, "4807.038", 48.1173},
		{cl.Signal{Type: cl.Float, Scale: 1, DegreesMinutes: true}, -120.15507, cl.Spec{Zero: true, Width: 11, Decimals: 5}, "12009.30420", -120.15507},
		{cl.Signal{Type: cl.Float, Scale: 1, DegreesMinutes: true}, 0.5, cl.Spec{Decimals: 2}, "030.00", 0.5},
		// Minutes that round up to 60 carry into the degrees.
		{cl.Signal{Type: cl.Float, Scale: 1, DegreesMinutes: true}, 10.99999999, cl.Spec{Decimals: 3}, "1100.000", 11},
	}
	for _, c := range cases {
		w := number(&c.s, c.v, c.spec)
		if w.text != c.text || w.value.Num != c.reads || !w.has {
			t.Errorf("%v with %+v: wrote %q reading %v, want %q reading %v", c.v, c.spec, w.text, w.value.Num, c.text, c.reads)
		}
	}
}

func TestCommand(t *testing.T) {
	vaisala := &cl.Template{Framing: cl.Framing{End: "\r\n"}, Poll: &cl.Poll{Command: "send {address}", End: "\r"}}
	sum := &cl.Template{Framing: cl.Framing{Start: "@", End: "\r"}, Checksum: cl.Checksum{Type: cl.Sum8, IncludeStart: true},
		Poll: &cl.Poll{Command: "@{address:02}RD", Checksum: true}}
	for _, c := range []struct {
		t    *cl.Template
		addr int
		want string
	}{{vaisala, 5, "send 5\r"}, {vaisala, 240, "send 240\r"}, {sum, 7, "@07RD3D\r"}} {
		got, err := command(c.t, c.addr)
		if err != nil || string(got) != c.want {
			t.Errorf("command(%q, %d) = %q, %v; want %q", c.t.Poll.Command, c.addr, got, err, c.want)
		}
	}
}
