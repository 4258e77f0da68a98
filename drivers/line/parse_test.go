package line

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"outpost/configs"
	cl "outpost/configs/line"
	"outpost/gateway/model"
)

// builtin is a built-in template's body.
func builtin(t testing.TB, name string) *cl.Template {
	t.Helper()
	// The error lists the templates of families this test does not
	// register; its own load.
	tmpls, _ := configs.BuiltinTemplates()
	for _, tm := range tmpls {
		if tm.Name == name {
			return tm.Body.(*cl.Template)
		}
	}
	t.Fatalf("no built-in template %s", name)
	return nil
}

// inline loads a template given as YAML (its header added), checked and
// with its defaults, through a station file of one device.
func inline(t testing.TB, body string) *cl.Template {
	t.Helper()
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "devices"), 0o755)
	src := "template: test\nprotocol: line\nkind: test\n" + body
	if err := os.WriteFile(filepath.Join(dir, "devices", "test.yaml"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	dev := "{id: d, template: test, link: l}"
	if strings.Contains(body, "poll:") {
		dev = "{id: d, template: test, link: l, poll: 1s, address: 7}"
	}
	st := "version: 2\nstation: {id: s, type: police_room}\nhub: {mqtt: {url: \"tcp://127.0.0.1:1883\"}}\n" +
		"links: [{id: l, protocol: line, port: /dev/null, baud: 9600}]\ndevices: [" + dev + "]\n"
	path := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(path, []byte(st), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return s.Templates["test"].Body.(*cl.Template)
}

func parser(t testing.TB, tm *cl.Template) *Parser {
	t.Helper()
	p, err := NewParser(tm)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// each yields the bytes of a string, for the checksum functions.
func each(s string) func(func(byte)) {
	return func(yield func(byte)) {
		for i := 0; i < len(s); i++ {
			yield(s[i])
		}
	}
}

// TestChecksums: the checksums against the examples their specifications
// and manuals publish.
func TestChecksums(t *testing.T) {
	cases := []struct {
		name, text string
		got, want  uint16
	}{
		// CRC-16/MODBUS check value (the CRC catalogue's "123456789").
		{"crc16-modbus check", "123456789", crc16Modbus(each("123456789")), 0x4B37},
		// NMEA 0183 examples, XOR of the characters between $ and *.
		{"xor8 RMC", "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", uint16(xor8(each("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W"))), 0x6A},
		{"xor8 GGA", "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", uint16(xor8(each("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"))), 0x47},
		{"xor8 u-blox no fix", "GPRMC,,V,,,,,,,,,,N", uint16(xor8(each("GPRMC,,V,,,,,,,,,,N"))), 0x53},
		// DCON's published example: $07S1RH sums to 1A9h, A9 mod 256.
		{"sum8 DCON", "$07S1RH", uint16(sum8(each("$07S1RH"))), 0xA9},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s of %q = %04X, want %04X", c.name, c.text, c.got, c.want)
		}
	}
}

// event is what a framer emitted, as a test reads it.
func event(body []byte, err *LineError) string {
	if err != nil {
		return "!" + err.Reason
	}
	return fmt.Sprintf("%q", body)
}

func TestFramer(t *testing.T) {
	nmea := cl.Framing{Start: "$", End: "\r\n", MaxLength: 24}
	stx := cl.Framing{Start: "\x02", End: "\x03", MaxLength: 16}
	plain := cl.Framing{End: "\r\n", MaxLength: 16}
	cases := []struct {
		name   string
		f      cl.Framing
		chunks []string
		cut    bool // Cut after the chunks
		want   string
	}{
		{"one line", nmea, []string{"$GPGGA,1*47\r\n"}, false, `"GPGGA,1*47"`},
		{"split anywhere", nmea, []string{"$GP", "GGA,1*4", "7\r", "\n$X", "\r\n"}, false, `"GPGGA,1*47" "X"`},
		{"cut short by a start", nmea, []string{"$GPRMC,12$GPGGA,1*47\r\n"}, false, `!truncated_lines "GPGGA,1*47"`},
		{"garbage before a start", nmea, []string{"xx\x00$A\r\n"}, false, `!garbage "A"`},
		{"garbage up to an end", nmea, []string{"noise\r\n$A\r\n"}, false, `!garbage "A"`},
		{"empty lines between", nmea, []string{"$A\r\n\r\n\r\n$B\r\n"}, false, `"A" "B"`},
		{"too long, then the next", nmea, []string{"$" + strings.Repeat("A", 40) + "\r\n$B\r\n"}, false, `!too_long "B"`},
		{"too long ends at a start", nmea, []string{"$" + strings.Repeat("A", 40) + "$B\r\n"}, false, `!too_long "B"`},
		{"exactly max_length", nmea, []string{"$" + strings.Repeat("A", 21) + "\r\n"}, false, `"` + strings.Repeat("A", 21) + `"`},
		{"one byte over", nmea, []string{"$" + strings.Repeat("A", 22) + "\r\n"}, false, `!too_long`},
		{"stx etx", stx, []string{"\x02KSK\x03\x02EV", "T\x03"}, false, `"KSK" "EVT"`},
		{"pause mid-line", nmea, []string{"$GPRM"}, true, `!truncated_lines`},
		{"pause in garbage", nmea, []string{"zz"}, true, `!garbage`},
		{"no start: lines", plain, []string{"T= 1.0\r\nT= 2", ".0\r\n"}, false, `"T= 1.0" "T= 2.0"`},
		{"no start: cut by a pause", plain, []string{"T= 1"}, true, `!truncated_lines`},
		{"no start: empty lines skipped", plain, []string{"\r\n\r\nA\r\n"}, false, `"A"`},
		{"no start: too long", plain, []string{strings.Repeat("x", 30) + "\r\nA\r\n"}, false, `!too_long "A"`},
		{"no start: lone CR is data", plain, []string{"A\rB\r\n"}, false, `"A\rB"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fr := NewFramer(c.f)
			var got []string
			emit := func(b []byte, err *LineError) { got = append(got, event(b, err)) }
			for _, ch := range c.chunks {
				fr.Push([]byte(ch), emit)
			}
			if c.cut {
				fr.Cut(emit)
				if fr.Pending() {
					t.Errorf("still pending after Cut")
				}
			}
			if g := strings.Join(got, " "); g != c.want {
				t.Errorf("pushed %q: got %s, want %s", c.chunks, g, c.want)
			}
		})
	}
}

// reading writes a reading for a failure message: signal=value (quality).
func reading(r model.Reading) string {
	s := r.Signal + "=" + r.Value.String()
	if r.Quality != model.Good {
		s += " (" + string(r.Quality) + ")"
	}
	return s
}

func readings(d Decoded) string {
	var out []string
	for _, r := range d.Readings {
		out = append(out, reading(r))
	}
	s := d.Kind + ": " + strings.Join(out, " ")
	if d.Cut > 0 {
		s += fmt.Sprintf(" (cut %d)", d.Cut)
	}
	return s
}

// parseCase is a line's body and what Parse must make of it: its
// readings, or the reason it is bad.
type parseCase struct {
	name, body, want, reason string
}

func runParse(t *testing.T, p *Parser, cases []parseCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := p.Parse([]byte(c.body))
			var le *LineError
			switch {
			case c.reason != "" && err == nil:
				t.Fatalf("Parse(%q) = %s, want a bad line (%s)", c.body, readings(d), c.reason)
			case c.reason != "" && (!errors.As(err, &le) || le.Reason != c.reason):
				t.Fatalf("Parse(%q): %v, want reason %s", c.body, err, c.reason)
			case c.reason == "" && err != nil:
				t.Fatalf("Parse(%q): %v", c.body, err)
			case c.reason == "" && readings(d) != c.want:
				t.Errorf("Parse(%q)\n got %s\nwant %s", c.body, readings(d), c.want)
			}
			if err != nil {
				t.Logf("%s", err) // what an installer reads
			}
		})
	}
}

func TestParseNMEA(t *testing.T) {
	p := parser(t, builtin(t, "nmea-gps"))
	runParse(t, p, []parseCase{
		{name: "RMC example", body: "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
			want: "rmc: fix=true latitude=48.1173 longitude=11.5166667 speed=41.4848 course=84.4"},
		{name: "GGA example", body: "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
			want: "gga: fix_mode=1 satellites=8 hdop=0.9 altitude=545.4"},
		{name: "lower-case checksum digits", body: "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6a",
			want: "rmc: fix=true latitude=48.1173 longitude=11.5166667 speed=41.4848 course=84.4"},
		{name: "no fix RMC (u-blox NEO-6M)", body: "GPRMC,,V,,,,,,,,,,N*53",
			want: "rmc: fix=false latitude=<none> (bad) longitude=<none> (bad) speed=<none> (bad) course=<none> (bad)"},
		{name: "no fix GGA", body: "GPGGA,,,,,,0,00,99.99,,,,,,*48",
			want: "gga: fix_mode=0 satellites=0 hdop=99.99 altitude=<none> (bad)"},
		{name: "south and west", body: sealXOR("GNRMC,083559.00,A,3016.44900,S,12009.30420,W,0.004,,091226,,,A"),
			want: "rmc: fix=true latitude=-30.27415 longitude=-120.15507 speed=0.007408 course=<none> (bad)"},
		{name: "bad checksum", body: "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6B", reason: ReasonChecksum},
		{name: "checksum not hex", body: "GPRMC,123519,A*ZZ", reason: ReasonChecksum},
		{name: "no marker", body: "GPRMC,123519,A", reason: ReasonChecksum},
		{name: "GSV is ignored", body: "GPGSV,1,1,00*79", reason: ReasonIgnored},
		{name: "minutes over 59", body: sealXOR("GPRMC,1,A,4861.000,N,01131.000,E,0,0,1,,,A"), reason: ReasonFields},
		{name: "hemisphere missing", body: sealXOR("GPRMC,1,A,4807.038,,01131.000,E,0,0,1,,,A"), reason: ReasonFields},
	})
}

// sealXOR seals an NMEA sentence's text with its checksum.
func sealXOR(text string) string { return fmt.Sprintf("%s*%02X", text, xor8(each(text))) }

func TestParseKiosk(t *testing.T) {
	tm := builtin(t, "legacy-kiosk-line")
	p := parser(t, tm)
	seal := func(text string) string { return string(p.Seal([]byte(text))) }
	runParse(t, p, []parseCase{
		{name: "status", body: seal("KSK,STAT,T=23.5,H=45.2,DOOR=0,TAMPER=0,CALL=0,HB=1234"),
			want: "status: emergency_call=false door=false tamper=false temperature=23.5 humidity=45.2 heartbeat=1234"},
		{name: "event", body: seal("KSK,EVT,CALL=1,DOOR=0,TAMPER=0"), want: "event: emergency_call=true door=false tamper=false"},
		{name: "pairs in any order, spaces", body: seal("KSK,EVT, TAMPER = 1 ,CALL=0,"), want: "event: emergency_call=false tamper=true"},
		{name: "out of range is uncertain", body: seal("KSK,STAT,T=85.0,H=101"), want: "status: temperature=85 (uncertain) humidity=101 (uncertain)"},
		{name: "status keys only in status", body: seal("KSK,EVT,CALL=1,T=99"), want: "event: emergency_call=true"},
		{name: "a bool that is not 0 or 1", body: seal("KSK,EVT,CALL=2"), reason: ReasonFields},
		{name: "a number that is not", body: seal("KSK,STAT,T=2x.5"), reason: ReasonFields},
		{name: "nan is not a number", body: seal("KSK,STAT,T=NaN"), reason: ReasonFields},
		{name: "a pair without =", body: seal("KSK,EVT,CALL"), reason: ReasonFields},
		{name: "a key twice", body: seal("KSK,EVT,CALL=1,CALL=0"), reason: ReasonFields},
		{name: "an unknown line", body: seal("KSK,HELLO"), reason: ReasonUnmatched},
		{name: "one damaged byte", body: strings.Replace(seal("KSK,EVT,CALL=1,DOOR=0,TAMPER=0"), "CALL=1", "CALL=0", 1), reason: ReasonChecksum},
	})
	// The CRC as the template writes it: four digits, most significant
	// byte first.
	if got, want := seal("123456789"), "123456789*4B37"; got != want {
		t.Errorf("Seal = %q, want %q", got, want)
	}
}

func TestParseVaisala(t *testing.T) {
	tm := builtin(t, "vaisala-hmdw110")
	p := parser(t, tm)
	const example = "T= 22.8 'C RH= 39.8 %RH Td= 8.4 'C Tw= 14.6 'C h= 40.5 kJ/kg" // the user guide's
	const want = "measurement: temperature=22.8 humidity=39.8 dew_point=8.4 wet_bulb=14.6 enthalpy=40.5"
	runParse(t, p, []parseCase{
		{name: "the guide's example", body: example, want: want},
		{name: "below zero", body: "T=-12.5 'C RH=100.0 %RH Td=-12.5 'C Tw=-12.6 'C h= -9.9 kJ/kg",
			want: "measurement: temperature=-12.5 humidity=100 dew_point=-12.5 wet_bulb=-12.6 enthalpy=-9.9"},
		{name: "cut short, then whole", body: "T= 22.8 'C RH= 3" + example, want: want + " (cut 16)"},
		{name: "echo of the command, then the answer", body: "send 5\r" + example, want: want + " (cut 7)"},
		{name: "garbage, then the answer", body: "\x00\xffT=T" + example, want: want + " (cut 5)"},
		{name: "cut short alone", body: "T= 22.8 'C RH= 3", reason: ReasonUnmatched},
		{name: "a digit damaged into a letter", body: strings.Replace(example, "39.8", "3y.8", 1), reason: ReasonUnmatched},
	})
	cmd, err := p.Command(tm, 5)
	if err != nil || string(cmd) != "send 5\r" {
		t.Errorf("Command(5) = %q, %v; want \"send 5\\r\"", cmd, err)
	}
}

// TestChecksumOptions: sum8 over the start, a CRC written lsb first, and
// a checksum in a poll command.
func TestChecksumOptions(t *testing.T) {
	sum := inline(t, `framing: {start: "@", end: "\r"}
checksum: {type: sum8, include_start: true}
poll: {command: "@{address:02}RD", checksum: true}
lines:
  - {name: v, prefix: "V", regex: "V(?P<v>[0-9]+)", format: "V{v}"}
signals:
  - {signal: v, field: v, type: int, scale: 0.1}
`)
	ps := parser(t, sum)
	// "@V234": 0x40+0x56+0x32+0x33+0x34 = 0x12F, 2F mod 256.
	runParse(t, ps, []parseCase{
		{name: "sum8 with the start", body: "V2342F", want: "v: v=23.4"},
		{name: "sum8 without it is wrong", body: "V234EF", reason: ReasonChecksum},
	})
	cmd, _ := ps.Command(sum, 7)
	// "@07RD": 0x40+0x30+0x37+0x52+0x44 = 0x13D.
	if string(cmd) != "@07RD3D\r" {
		t.Errorf("command %q, want \"@07RD3D\\r\"", cmd)
	}
	crc := inline(t, `framing: {end: "\n"}
checksum: {type: crc16-modbus, marker: ";", order: lsb_first}
lines:
  - {name: v, prefix: "1", pairs: {}, format: "1{x}"}
signals:
  - {signal: x, field: x, type: string}
`)
	if got := string(parser(t, crc).Seal([]byte("123456789"))); got != "123456789;374B" {
		t.Errorf("lsb_first seal %q, want 123456789;374B", got)
	}
}

func TestScale(t *testing.T) {
	cases := []struct {
		raw          string
		scale, off   float64
		want         float64
		wantDecimals int
	}{
		{"234", 0.1, 0, 23.4, 0},
		{"22.4", 1.852, 0, 41.4848, 1},
		{"-12.5", 1, -40, -52.5, 1},
		{"1.5e2", 0.01, 0, 1.5, 0},
		{"0.1", 3, 0, 0.3, 1},
	}
	for _, c := range cases {
		x, dec, err := parseDecimal(c.raw)
		if err != nil || dec != c.wantDecimals {
			t.Fatalf("parseDecimal(%q) = %v, %d, %v", c.raw, x, dec, err)
		}
		if got := Scale(x, dec, c.scale, decimalsOf(c.scale), c.off, decimalsOf(c.off)); got != c.want {
			t.Errorf("%s × %v + %v = %v, want %v", c.raw, c.scale, c.off, got, c.want)
		}
	}
	for _, bad := range []string{"inf", "NaN", "0x1p3", "1_000", "1e999", "--1", "."} {
		if _, _, err := parseDecimal(bad); err == nil {
			t.Errorf("parseDecimal(%q) took it", bad)
		}
	}
}
