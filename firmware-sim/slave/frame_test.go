package slave

import (
	"bytes"
	"testing"
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
)

func TestCRC16(t *testing.T) {
	cases := []struct {
		in   []byte
		want uint16
	}{
		{[]byte("123456789"), 0x4B37}, // the CRC-16/MODBUS check value
		{[]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01}, 0x0A84},
		{[]byte{0x01, 0x04, 0x00, 0x00, 0x00, 0x01}, 0xCA31},
		{[]byte{0x11, 0x03, 0x00, 0x6B, 0x00, 0x03}, 0x8776},
		{nil, 0xFFFF},
	}
	for _, c := range cases {
		if got := CRC16(c.in); got != c.want {
			t.Errorf("CRC16(% x) = %04X, want %04X", c.in, got, c.want)
		}
	}
	// On the wire the low byte goes first.
	if got, want := AppendCRC([]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01}), []byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A}; !bytes.Equal(got, want) {
		t.Errorf("AppendCRC = % x, want % x", got, want)
	}
}

func TestParseRequest(t *testing.T) {
	read := []byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A}
	write := AppendCRC([]byte{0x01, 0x10, 0x00, 0x05, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02})
	odd := AppendCRC([]byte{0x01, 0x11}) // report slave id: 4 bytes
	badCRC := append(append([]byte(nil), read[:7]...), 0x0B)
	cases := []struct {
		name string
		in   []byte
		n    int
		st   Status
	}{
		{"empty", nil, 0, Incomplete},
		{"one byte", read[:1], 0, Incomplete},
		{"read partial", read[:7], 0, Incomplete},
		{"read", read, 8, Complete},
		{"read then more", append(append([]byte(nil), read...), 0x01, 0x03), 8, Complete},
		{"read bad crc", badCRC, 0, Bad},
		{"write multiple partial header", write[:6], 0, Incomplete},
		{"write multiple partial data", write[:12], 0, Incomplete},
		{"write multiple", write, 13, Complete},
		{"write multiple too long", []byte{0x01, 0x10, 0, 0, 0, 0x7D, 0xFA}, 0, Bad},
		{"other function", odd, 4, Complete},
		{"other function partial", odd[:3], 0, Incomplete},
		{"garbage of other function", bytes.Repeat([]byte{0x01, 0x63}, MaxFrame/2), 0, Bad},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, st := ParseRequest(c.in)
			if n != c.n || st != c.st {
				t.Errorf("ParseRequest(% x) = %d, %d; want %d, %d", c.in, n, st, c.n, c.st)
			}
		})
	}
}

// FuzzParseRequest: any bytes give a status, never a panic; a complete frame
// lies within the input and has a good CRC.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A})
	f.Add(AppendCRC([]byte{0x01, 0x10, 0x00, 0x05, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02}))
	f.Add(AppendCRC([]byte{0x01, 0x0F, 0x00, 0x00, 0x00, 0x0A, 0x02, 0xFF, 0x03}))
	f.Add(AppendCRC([]byte{0x01, 0x2B, 0x0E, 0x01, 0x00}))
	f.Add([]byte{0xFF, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF})
	f.Fuzz(func(t *testing.T, b []byte) {
		n, st := ParseRequest(b)
		switch st {
		case Complete:
			if n < 4 || n > len(b) || n > MaxFrame {
				t.Fatalf("complete frame of %d bytes in %d", n, len(b))
			}
			if !crcOK(b[:n]) {
				t.Fatalf("complete frame % x has a bad CRC", b[:n])
			}
		case Incomplete, Bad:
			if n != 0 {
				t.Fatalf("status %d with length %d", st, n)
			}
		default:
			t.Fatalf("unknown status %d", st)
		}
	})
}

func TestLine(t *testing.T) {
	cases := []struct {
		line Line
		bits int
		char time.Duration
		gap  time.Duration
	}{
		{Line{Baud: 9600, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}, 10, 1041666 * time.Nanosecond, 3645831 * time.Nanosecond},
		{Line{Baud: 19200, DataBits: 8, Parity: configs.ParityEven, StopBits: 1}, 11, 572916 * time.Nanosecond, 2005206 * time.Nanosecond},
		{Line{Baud: 115200, DataBits: 8, Parity: configs.ParityNone, StopBits: 2}, 11, 95486 * time.Nanosecond, 1750 * time.Microsecond},
		{Line{Baud: 1200, DataBits: 7, Parity: configs.ParityOdd, StopBits: 2}, 11, 9166666 * time.Nanosecond, 32083331 * time.Nanosecond},
	}
	for _, c := range cases {
		if got := c.line.Bits(); got != c.bits {
			t.Errorf("%+v: Bits = %d, want %d", c.line, got, c.bits)
		}
		if got := c.line.Char(); got != c.char {
			t.Errorf("%+v: Char = %v, want %v", c.line, got, c.char)
		}
		if got := c.line.Gap(); got != c.gap {
			t.Errorf("%+v: Gap = %v, want %v", c.line, got, c.gap)
		}
	}
	// 8 + 9 bytes at 9600 8N1: 170 bits.
	if got, want := (Line{Baud: 9600, DataBits: 8, StopBits: 1}).Wire(17), 17708333*time.Nanosecond; got != want {
		t.Errorf("Wire(17) = %v, want %v", got, want)
	}
	if got := LineOf(modbus.RTU{Serial: configs.Serial{Baud: 4800}}); got != (Line{Baud: 4800, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}) {
		t.Errorf("LineOf defaults = %+v", got)
	}
}

func TestGarble(t *testing.T) {
	out := []byte{0x01, 0x03, 0x04, 0x00, 0xD5, 0x02, 0x2B, 0x9A, 0x4C}
	l96 := Line{Baud: 9600, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}
	if got := Garble(out, l96, l96); !bytes.Equal(got, out) {
		t.Errorf("same line: Garble = % x, want % x", got, out)
	}
	e96 := Line{Baud: 9600, DataBits: 8, Parity: configs.ParityEven, StopBits: 1}
	// A space parity bit looks like the next start bit to a master
	// without parity.
	if got := Garble(out, e96, l96); bytes.Equal(got, out) {
		t.Errorf("8E1 heard as 8N1: Garble = % x, want garbage", got)
	}
	// A master at twice the device's baud sees every device bit twice; a
	// 0x00 at 9600 is 9 space bits: at 19200, a 0x00 byte then 0x80-ish
	// junk. Whatever it is, it is not the answer.
	l192 := Line{Baud: 19200, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}
	got := Garble(out, l96, l192)
	if bytes.Equal(got, out) || len(got) == 0 {
		t.Errorf("9600 heard at 19200: Garble = % x, want garbage", got)
	}
	// One 0xFF at 9600 is a single start bit: at 19200 the master reads
	// the start bit and then the half-width start bit's second half as
	// bit 0 = space, the rest mark: 0xFE.
	if got := Garble([]byte{0xFF}, l96, l192); !bytes.Equal(got, []byte{0xFE}) {
		t.Errorf("0xFF at 9600 heard at 19200 = % x, want fe", got)
	}
}
