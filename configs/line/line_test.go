package line_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"outpost/configs"
	"outpost/configs/line"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestLoadErrors loads every file in testdata/errors and compares the full
// error text with its golden file: the lines an installer reads.
func TestLoadErrors(t *testing.T) {
	files, _ := filepath.Glob("testdata/errors/*.yaml")
	if len(files) < 2 {
		t.Fatalf("found only %d error cases", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := configs.Load(f)
			if _, ok := err.(configs.Errors); !ok {
				t.Fatalf("error is %T, want configs.Errors: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("no golden file (run go test ./configs/line -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("error text differs from %s\n--- got:\n%s--- want:\n%s", golden, got, want)
			}
		})
	}
}

const station = `version: 2
station: {id: gs-1, type: grid_station}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: kiosk, protocol: line, port: /dev/ttyS1, baud: 9600}
  - {id: gps, protocol: line, port: /dev/ttyS2, baud: 9600}
  - {id: rs485-3, protocol: line, port: /dev/ttyS3, baud: 19200, timeout: 300ms, retries: 2}
devices:
  - {id: kiosk-1, template: legacy-kiosk-line, link: kiosk}
  - {id: gps-1, template: nmea-gps, link: gps, silence: 5s}
  - {id: th-1, template: vaisala-hmdw110, link: rs485-3, address: 5, poll: 10s}
  - {id: th-2, template: vaisala-hmdw110, link: rs485-3, address: 6, poll: 10s}
`

// TestStation: the built-in templates load with their defaults, and the
// settings of links and devices are what the station file says.
func TestStation(t *testing.T) {
	st, err := configs.Parse("station.yaml", []byte(station))
	if err != nil {
		t.Fatal(err)
	}
	l := st.Links[2].Settings.(*line.Link)
	if l.Baud != 19200 || l.DataBits != 8 || l.Timeout.String() != "300ms" || l.Retries != 2 {
		t.Errorf("link %+v", l)
	}
	k := st.Devices[0].Settings.(*line.Device)
	if k.Silence.String() != "30s" || k.Poll != 0 || k.Address != nil || k.PollEvery().String() != "30s" {
		t.Errorf("kiosk settings %+v, want silence 30s by default, no poll, no address", k)
	}
	th := st.Devices[3].Settings.(*line.Device)
	if th.Address == nil || *th.Address != 6 || th.PollEvery().String() != "10s" {
		t.Errorf("th-2 settings %+v", th)
	}
	kiosk := st.Templates["legacy-kiosk-line"].Body.(*line.Template)
	if kiosk.Framing.Start != "\x02" || kiosk.Framing.End != "\x03" || kiosk.Checksum.Type != line.CRC16Modbus ||
		kiosk.Checksum.Order != line.MSBFirst || kiosk.Lines[0].Pairs.Separator != "," || kiosk.Lines[0].Pairs.Assign != "=" {
		t.Errorf("kiosk template: %+v", kiosk)
	}
	for _, s := range kiosk.SignalDefs {
		if s.Type == line.Bool && (strings.Join(s.TrueValues, "|") != "1" || strings.Join(s.FalseValues, "|") != "0") {
			t.Errorf("%s: true %q false %q, want the defaults 1 and 0", s.Signal, s.TrueValues, s.FalseValues)
		}
	}
	gps := st.Templates["nmea-gps"].Body.(*line.Template)
	if gps.Unmatched != line.Ignore || gps.Poll != nil || gps.Terminator() != "\r\n" {
		t.Errorf("gps template: %+v", gps)
	}
	hm := st.Templates["vaisala-hmdw110"].Body.(*line.Template)
	if !hm.Poll.TakesAddress() || hm.Terminator() != "\r" {
		t.Errorf("vaisala poll: %+v", hm.Poll)
	}
}

func TestParts(t *testing.T) {
	cases := []struct {
		in, want, err string
	}{
		{in: "send {address}", want: `"send " {address -1}`},
		{in: "T={t:5.1} 'C", want: `"T=" {t 5 1} " 'C"`},
		{in: "{lat:010.5},{ns}", want: `{lat 0 10 5} "," {ns -1}`},
		{in: "{{literal}} {x:.2}", want: `"{literal} " {x 2}`},
		{in: "{x:03}", want: `{x 0 3 -1}`},
		{in: "a {b", err: "the { at 3 is not closed (write {{ for a brace)"},
		{in: "a } b", err: "a } at 3 closes nothing (write }} for a brace)"},
		{in: "{x:5.1.2}", err: `{x:5.1.2}: "5.1.2" is not a width and decimals such as 5.1, .2 or 09.4`},
		{in: "{x-y}", err: `{x-y}: "x-y" is not a field name (letters, digits, '_')`},
		{in: "{x:}", err: `{x:}: "" is not a width and decimals such as 5.1, .2 or 09.4`},
	}
	for _, c := range cases {
		parts, err := line.Parts(c.in)
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("Parts(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parts(%q): %v", c.in, err)
			continue
		}
		var got []string
		for _, p := range parts {
			switch {
			case p.Field == "":
				got = append(got, `"`+p.Text+`"`)
			case p.Spec.Zero:
				got = append(got, "{"+p.Field+" 0 "+itoa(p.Spec.Width)+" "+itoa(p.Spec.Decimals)+"}")
			case p.Spec.Width > 0:
				got = append(got, "{"+p.Field+" "+itoa(p.Spec.Width)+" "+itoa(p.Spec.Decimals)+"}")
			default:
				got = append(got, "{"+p.Field+" "+itoa(p.Spec.Decimals)+"}")
			}
		}
		if g := strings.Join(got, " "); g != c.want {
			t.Errorf("Parts(%q) = %s, want %s", c.in, g, c.want)
		}
	}
}

func itoa(i int) string {
	if i < 0 {
		return "-" + itoa(-i)
	}
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + itoa(i%10)
}
