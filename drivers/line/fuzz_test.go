package line

import (
	"bytes"
	"errors"
	"math"
	"slices"
	"testing"

	cl "outpost/configs/line"
	"outpost/gateway/model"
)

// fuzzTemplate is a template the fuzzer runs, with good lines of it.
type fuzzTemplate struct {
	t    *cl.Template
	p    *Parser
	good []string // bodies of good lines
}

func fuzzTemplates(f *testing.F) []fuzzTemplate {
	kiosk := builtin(f, "legacy-kiosk-line")
	pk := parser(f, kiosk)
	// No start, a checksum, pairs: good lines are found after cut ones
	// by their prefix, and the checksum covers from where they begin.
	plain := inline(f, `framing: {end: "\r\n", max_length: 96}
checksum: {type: sum8, marker: "#"}
lines:
  - {name: s, prefix: "KSK,", pairs: {}, format: "KSK,T={T:.1},CALL={CALL}"}
signals:
  - {signal: temperature, field: T, type: float, scale: 0.1, range: {min: -40, max: 80}}
  - {signal: call, field: CALL, type: bool}
`)
	pp := parser(f, plain)
	return []fuzzTemplate{
		{t: builtin(f, "nmea-gps"), p: parser(f, builtin(f, "nmea-gps")), good: []string{
			"GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
			"GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
			"GPRMC,,V,,,,,,,,,,N*53",
		}},
		{t: kiosk, p: pk, good: []string{
			string(pk.Seal([]byte("KSK,STAT,T=23.5,H=45.2,DOOR=0,TAMPER=0,CALL=0,HB=1234"))),
			string(pk.Seal([]byte("KSK,EVT,CALL=1,DOOR=0,TAMPER=1"))),
		}},
		{t: builtin(f, "vaisala-hmdw110"), p: parser(f, builtin(f, "vaisala-hmdw110")), good: []string{
			"T= 22.8 'C RH= 39.8 %RH Td= 8.4 'C Tw= 14.6 'C h= 40.5 kJ/kg",
			"T=-12.5 'C RH=100.0 %RH Td=-12.5 'C Tw=-12.6 'C h= -9.9 kJ/kg",
		}},
		{t: plain, p: pp, good: []string{
			string(pp.Seal([]byte("KSK,T=215,CALL=1"))),
			string(pp.Seal([]byte("KSK,CALL=0,T=-3"))),
		}},
	}
}

// FuzzLine: whatever comes down the line, the parser and the framer never
// panic; a line accepted carries a checksum that an independent
// computation confirms, and sealing its text again gives the line back;
// its readings are of the template's signals, once each, of their types;
// the framer cuts the same lines however the bytes are chunked, and never
// holds a line longer than max_length; and after any bytes, a line cut
// short and a whole line, the whole line is decoded as it is alone.
func FuzzLine(f *testing.F) {
	tms := fuzzTemplates(f)
	for i, ft := range tms {
		for j, g := range ft.good {
			f.Add([]byte(g), uint8(i), uint8(j))
			f.Add([]byte(ft.t.Framing.Start+g[:len(g)/2]+ft.t.Framing.Start+g+ft.t.Framing.End), uint8(i), uint8(j))
			f.Add([]byte(g[1:]), uint8(i), uint8(j))
			f.Add(append([]byte(g[:len(g)-1]), 'Z'), uint8(i), uint8(j))
		}
	}
	f.Add([]byte("\x00\xff\r\n$\x02\x03"), uint8(0), uint8(3))
	f.Fuzz(func(t *testing.T, data []byte, which, at uint8) {
		ft := tms[int(which)%len(tms)]
		d, err := ft.p.Parse(data)
		checkParsed(t, ft, data, d, err)
		checkFramer(t, ft, data, int(at))
		checkResync(t, ft, data, int(at))
	})
}

var reasons = []string{ReasonChecksum, ReasonTooLong, ReasonTruncated, ReasonGarbage, ReasonUnmatched, ReasonFields, ReasonIgnored}

func checkParsed(t *testing.T, ft fuzzTemplate, data []byte, d Decoded, err error) {
	t.Helper()
	if err != nil {
		var le *LineError
		if !errors.As(err, &le) || !slices.Contains(reasons, le.Reason) {
			t.Fatalf("Parse(%q) = %v: not a reason the driver counts", data, err)
		}
		if le.Reason == ReasonIgnored && ft.t.Unmatched != cl.Ignore {
			t.Fatalf("Parse(%q) ignored a line of a template that counts unmatched ones", data)
		}
		return
	}
	if d.Cut < 0 || d.Cut >= len(data) || d.Cut > 0 && ft.t.Framing.Start != "" {
		t.Fatalf("Parse(%q) cut %d bytes", data, d.Cut)
	}
	line := data[d.Cut:]
	if d.Cut > 0 && !slices.ContainsFunc(ft.t.Lines, func(l cl.Line) bool { return l.Prefix != "" && bytes.HasPrefix(line, []byte(l.Prefix)) }) {
		t.Fatalf("Parse(%q) found a line at %d, where no prefix begins", data, d.Cut)
	}
	if n := ft.t.Checksum.Type.Digits(); n > 0 {
		m := len(ft.t.Checksum.Marker)
		text, digits := line[:len(line)-n-m], line[len(line)-n:]
		covered := text
		if ft.t.Checksum.IncludeStart {
			covered = append([]byte(ft.t.Framing.Start), text...)
		}
		if want := refChecksum(ft.t.Checksum, covered); !bytes.EqualFold(digits, want) {
			t.Fatalf("Parse(%q) took checksum %s; it is %s", data, digits, want)
		}
		if again := ft.p.Seal(text); !bytes.EqualFold(again, line) {
			t.Fatalf("Parse(%q): sealed again it is %q", data, again)
		}
	}
	if !slices.ContainsFunc(ft.t.Lines, func(l cl.Line) bool { return l.Name == d.Kind }) {
		t.Fatalf("Parse(%q): kind %q", data, d.Kind)
	}
	seen := map[string]bool{}
	for _, r := range d.Readings {
		i := slices.IndexFunc(ft.t.SignalDefs, func(s cl.Signal) bool { return s.Signal == r.Signal })
		if i < 0 || seen[r.Signal] {
			t.Fatalf("Parse(%q): reading %+v is not a signal of the template, or comes twice", data, r)
		}
		seen[r.Signal] = true
		s := ft.t.SignalDefs[i]
		if r.Quality == model.Bad {
			if !r.Value.IsZero() {
				t.Fatalf("Parse(%q): a bad reading with a value %+v", data, r)
			}
			continue
		}
		switch s.Type {
		case cl.Bool:
			_, ok := r.Value.AsBool()
			if !ok {
				t.Fatalf("Parse(%q): %s is not a bool: %v", data, r.Signal, r.Value)
			}
		case cl.String:
			if v, ok := r.Value.Str(); !ok || v == "" {
				t.Fatalf("Parse(%q): %s is not a string: %v", data, r.Signal, r.Value)
			}
		default:
			v, ok := r.Value.Float()
			if !ok || math.IsNaN(v) || math.IsInf(v, 0) {
				t.Fatalf("Parse(%q): %s is not a number: %v", data, r.Signal, r.Value)
			}
			if out := s.Range != nil && !s.Range.Contains(v); out != (r.Quality == model.Uncertain) {
				t.Fatalf("Parse(%q): %s=%v is %s; range %+v", data, r.Signal, v, r.Quality, s.Range)
			}
		}
	}
}

// frameAll runs bytes in chunks through a framer and lists what it
// emitted, then what a pause after them emits.
func frameAll(ft fuzzTemplate, chunks ...[]byte) []string {
	fr := NewFramer(ft.t.Framing)
	var out []string
	emit := func(b []byte, err *LineError) {
		if err != nil {
			out = append(out, "!"+err.Reason)
			return
		}
		out = append(out, string(b))
	}
	for _, c := range chunks {
		fr.Push(c, emit)
	}
	fr.Cut(emit)
	if fr.Pending() {
		out = append(out, "PENDING AFTER CUT")
	}
	return out
}

func checkFramer(t *testing.T, ft fuzzTemplate, data []byte, at int) {
	t.Helper()
	whole := frameAll(ft, data)
	split := at % (len(data) + 1)
	if two := frameAll(ft, data[:split], data[split:]); !slices.Equal(whole, two) {
		t.Fatalf("%q framed whole: %q; split at %d: %q", data, whole, split, two)
	}
	var bytewise [][]byte
	for i := range data {
		bytewise = append(bytewise, data[i:i+1])
	}
	if one := frameAll(ft, bytewise...); !slices.Equal(whole, one) {
		t.Fatalf("%q framed whole: %q; byte by byte: %q", data, whole, one)
	}
	f := ft.t.Framing
	for _, body := range whole {
		if body != "" && body[0] == '!' {
			continue
		}
		if len(f.Start)+len(body)+len(f.End) > f.MaxLength {
			t.Fatalf("%q: framed a line of %d bytes, longer than max_length %d", data, len(body), f.MaxLength)
		}
		if bytes.Contains([]byte(body), []byte(f.End)) || f.Start != "" && bytes.Contains([]byte(body), []byte(f.Start)) {
			t.Fatalf("%q: framed %q, with a start or an end in it", data, body)
		}
	}
}

// checkResync: any bytes, then a good line cut short, then a good line:
// the last thing decoded is the good line, as it is alone.
func checkResync(t *testing.T, ft fuzzTemplate, data []byte, at int) {
	t.Helper()
	f := ft.t.Framing
	good := ft.good[at%len(ft.good)]
	other := f.Start + ft.good[(at+1)%len(ft.good)]
	cut := other[:1+at%(len(other)-1)]
	junk := data
	if f.Start == "" {
		// Without a start, bytes before a line are part of it: a line too
		// long swallows what follows up to its end, whatever it is.
		room := f.MaxLength - len(cut) - len(good) - len(f.End) - 1
		junk = junk[:max(0, min(len(junk), room))]
	}
	stream := slices.Concat(junk, []byte(cut), []byte(f.Start+good+f.End))
	alone, err := ft.p.Parse([]byte(good))
	if err != nil {
		t.Fatalf("good line %q: %v", good, err)
	}
	var last *Decoded
	fr := NewFramer(f)
	fr.Push(stream, func(b []byte, le *LineError) {
		last = nil
		if le != nil {
			return
		}
		if d, err := ft.p.Parse(b); err == nil {
			last = &d
		}
	})
	if last == nil || !slices.Equal(last.Readings, alone.Readings) || last.Kind != alone.Kind {
		t.Fatalf("%q: the good line at its end was not decoded as alone (%+v); got %+v", stream, alone, last)
	}
}

// refChecksum computes a checksum apart from the driver's code: CRC-16/
// MODBUS with its polynomial unreflected on reflected bytes, and the
// digits in upper case.
func refChecksum(c cl.Checksum, b []byte) []byte {
	var v uint32
	switch c.Type {
	case cl.XOR8:
		for _, x := range b {
			v ^= uint32(x)
		}
	case cl.Sum8:
		for _, x := range b {
			v = (v + uint32(x)) & 0xFF
		}
	case cl.CRC16Modbus:
		crc := uint32(0xFFFF)
		crc = uint32(reverse16(uint16(crc)))
		for _, x := range b {
			crc ^= uint32(reverse8(x)) << 8
			for range 8 {
				crc <<= 1
				if crc&0x10000 != 0 {
					crc ^= 0x18005
				}
			}
		}
		v = uint32(reverse16(uint16(crc)))
		if c.Order == cl.LSBFirst {
			v = v>>8 | (v&0xFF)<<8
		}
	}
	digits := []byte("0123456789ABCDEF")
	out := make([]byte, c.Type.Digits())
	for i := len(out) - 1; i >= 0; i-- {
		out[i] = digits[v&15]
		v >>= 4
	}
	return out
}

func reverse8(b byte) byte {
	var r byte
	for i := range 8 {
		r |= (b >> i & 1) << (7 - i)
	}
	return r
}

func reverse16(v uint16) uint16 {
	return uint16(reverse8(byte(v)))<<8 | uint16(reverse8(byte(v>>8)))
}
