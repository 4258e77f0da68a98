package line

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	cl "outpost/configs/line"
	"outpost/firmware-sim/signal"
)

// The simulator's own encoding of lines: a field's value written as its
// template's format says, the checksum computed and written, the line
// framed; and, for the counts of what was served, the value a correct
// master reads back from the text written (docs/line-devices.md says how:
// the number as written, times the scale, plus the offset, rounded to the
// decimals of the exact result). None of it is the gateway's code.

// crcTable is the table of CRC-16/MODBUS (polynomial 0xA001, reflected).
var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i)
		for range 8 {
			c = c>>1 ^ 0xA001*(c&1)
		}
		t[i] = c
	}
	return t
}()

// checksum is a template's checksum of b (the start, when it is included,
// then the text), as its digits write it.
func checksum(c cl.Checksum, b []byte) uint16 {
	switch c.Type {
	case cl.XOR8:
		var x byte
		for _, v := range b {
			x ^= v
		}
		return uint16(x)
	case cl.Sum8:
		var s int
		for _, v := range b {
			s += int(v)
		}
		return uint16(s % 256)
	case cl.CRC16Modbus:
		crc := uint16(0xFFFF)
		for _, v := range b {
			crc = crc>>8 ^ crcTable[byte(crc)^v]
		}
		if c.Order == cl.LSBFirst {
			return crc>>8 | crc<<8
		}
		return crc
	}
	return 0
}

// seal appends the checksum of text (with its marker) when the template
// has one; start is the framing's start, summed when the template says.
func seal(t *cl.Template, text string) string {
	n := t.Checksum.Type.Digits()
	if n == 0 {
		return text
	}
	covered := text
	if t.Checksum.IncludeStart {
		covered = t.Framing.Start + text
	}
	return text + t.Checksum.Marker + fmt.Sprintf("%0*X", n, checksum(t.Checksum, []byte(covered)))
}

// frame is a sealed line's text with its start and end.
func frame(t *cl.Template, sealed string) []byte {
	return []byte(t.Framing.Start + sealed + t.Framing.End)
}

// command is the poll command of a device at addr, as the device expects
// it on the wire.
func command(t *cl.Template, addr int) ([]byte, error) {
	parts, err := cl.Parts(t.Poll.Command)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Field == "" {
			b.WriteString(p.Text)
			continue
		}
		b.WriteString(pad(strconv.Itoa(addr), p.Spec))
	}
	text := b.String()
	if t.Poll.Checksum {
		rest, started := strings.CutPrefix(text, t.Framing.Start)
		if !started || t.Framing.Start == "" {
			text = seal(t, text)
		} else {
			text = t.Framing.Start + seal(t, rest)
		}
	}
	return []byte(text + t.Terminator()), nil
}

// pad pads s to the spec's width, with zeros after a sign, or spaces.
func pad(s string, sp cl.Spec) string {
	n := sp.Width - len(s)
	if n <= 0 {
		return s
	}
	if !sp.Zero {
		return strings.Repeat(" ", n) + s
	}
	sign := ""
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		sign, s = s[:1], s[1:]
	}
	return sign + strings.Repeat("0", n) + s
}

// written is a field's text, and the value a master reads from it (Kind
// Text with an empty Text when it reads none).
type written struct {
	text  string
	value signal.Value
	has   bool // a master reads a value from it
}

// number writes a number v of signal s as the spec says, and reads it
// back.
func number(s *cl.Signal, v float64, sp cl.Spec) written {
	if s.DegreesMinutes {
		return degreesMinutes(v, sp)
	}
	raw := (v - s.Offset) / s.Scale
	var text string
	if s.Type == cl.Int {
		text = pad(strconv.FormatInt(int64(math.Round(raw)), 10), sp)
	} else {
		dec := sp.Decimals
		if dec < 0 {
			dec = 3
			raw, _ = strconv.ParseFloat(strconv.FormatFloat(raw, 'f', dec, 64), 64)
			text = pad(strconv.FormatFloat(raw, 'f', -1, 64), sp)
		} else {
			text = pad(strconv.FormatFloat(raw, 'f', dec, 64), sp)
		}
	}
	x, dec := readBack(strings.TrimSpace(text))
	if s.Scale != 1 || s.Offset != 0 {
		x = decimal(x*s.Scale+s.Offset, max(dec+decimals(s.Scale), decimals(s.Offset)))
	}
	return written{text: text, value: signal.Num(x), has: true}
}

// readBack is the number a text holds, and its decimals.
func readBack(t string) (float64, int) {
	x, _ := strconv.ParseFloat(t, 64)
	if i := strings.IndexByte(t, '.'); i >= 0 {
		return x, len(t) - i - 1
	}
	return x, 0
}

// decimal rounds x to n decimals, in decimal.
func decimal(x float64, n int) float64 {
	y, err := strconv.ParseFloat(strconv.FormatFloat(x, 'f', n, 64), 64)
	if err != nil {
		return x
	}
	return y
}

// decimals is how many decimals f has at its shortest.
func decimals(f float64) int {
	t := strconv.FormatFloat(f, 'f', -1, 64)
	if i := strings.IndexByte(t, '.'); i >= 0 {
		return len(t) - i - 1
	}
	return 0
}

// degreesMinutes writes |v| degrees as NMEA does, dddmm.mmmm, and reads
// it back as decimal degrees rounded to four decimals more than the
// minutes have (the sign comes from the hemisphere field).
func degreesMinutes(v float64, sp cl.Spec) written {
	dec := sp.Decimals
	if dec < 0 {
		dec = 4
	}
	total := decimal(math.Abs(v)*60, dec) // minutes
	deg := math.Floor(total / 60)
	mins := decimal(total-deg*60, dec)
	text := pad(strconv.FormatFloat(deg*100+mins, 'f', dec, 64), sp)
	if whole, _, _ := strings.Cut(strings.TrimSpace(text), "."); len(whole) < 3 {
		text = strings.Repeat("0", 3-len(whole)) + strings.TrimSpace(text) // a degree digit at least
	}
	// Read back as a master does: degrees, then minutes from their text.
	t := strings.TrimSpace(text)
	whole, frac, _ := strings.Cut(t, ".")
	d, _ := strconv.Atoi(whole[:len(whole)-2])
	m, _ := strconv.ParseFloat(whole[len(whole)-2:]+"."+frac, 64)
	x := decimal(float64(d)+m/60, len(frac)+4)
	if v < 0 {
		x = -x
	}
	return written{text: text, value: signal.Num(x), has: true}
}

// boolean writes a bool as the template's first text for it.
func boolean(s *cl.Signal, v bool) written {
	texts := s.FalseValues
	if v {
		texts = s.TrueValues
	}
	if len(texts) == 0 {
		return written{}
	}
	return written{text: texts[0], value: signal.B(v), has: true}
}

// text writes a string; an empty one gives no value.
func text(v string) written {
	t := strings.TrimSpace(v)
	return written{text: v, value: signal.Str(t), has: t != ""}
}
