package dc09_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	"outpost/configs/dc09"
	_ "outpost/configs/modbus"
	"outpost/gateway/model"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// TestLoadErrors loads every file in testdata/errors and compares the full
// error text with its golden file: the lines an installer reads.
func TestLoadErrors(t *testing.T) {
	files, _ := filepath.Glob("testdata/errors/*.yaml")
	if len(files) < 3 {
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
				t.Fatalf("no golden file (run go test ./configs/dc09 -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("error text differs from %s\n--- got:\n%s--- want:\n%s", golden, got, want)
			}
		})
	}
}

const station = `version: 2
station: {id: pr-1, type: police_room}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - id: alarm-rx
    protocol: sia-dc09
    listen: 0.0.0.0:7000
    receiver: "1"
    line: "1"
    window: {past: 40s, future: 20s}
devices:
  - id: panel-1
    template: generic-alarm-panel
    link: alarm-rx
    account: "1234"
    key_file: KEY
    supervision: 90s
    zones: [{zone: 1, name: front door}, {zone: 5, name: panic button desk}]
    users: [{user: 3, name: night guard}]
  - id: panel-2
    template: generic-alarm-panel
    link: alarm-rx
    account: "00ab"
`

// writeStation writes the station with its key file (of that content and
// mode) into a new folder, and returns the station's path.
func writeStation(t *testing.T, key string, mode os.FileMode) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "panel-1.key"), []byte(key), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(dir, "panel-1.key"), mode); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(station, "KEY", "panel-1.key", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestStation(t *testing.T) {
	path := writeStation(t, "000102030405060708090a0b0c0d0e0f\n", 0o600)
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	l := st.Links[0].Settings.(*dc09.Link)
	d := st.Devices[0].Settings.(*dc09.Device)
	checks := []struct {
		name      string
		got, want any
	}{
		{"transport (default)", l.Transport, dc09.Both},
		{"receiver", l.Receiver, "1"},
		{"window.past", l.Window.Past, 40 * time.Second},
		{"window.future", l.Window.Future, 20 * time.Second},
		{"duplicates (default)", l.Duplicates, 10 * time.Minute},
		{"idle_timeout (default)", l.IdleTimeout, 2 * time.Minute},
		{"max_connections (default)", l.MaxConnections, 64},
		{"key_file (resolved)", d.KeyFile, filepath.Join(filepath.Dir(path), "panel-1.key")},
		{"key", fmt.Sprintf("%x", []byte(d.Key())), "000102030405060708090a0b0c0d0e0f"},
		{"supervision", d.Supervision, 90 * time.Second},
		{"zone 5", d.ZoneName(5), "panic button desk"},
		{"zone 2 (unnamed)", d.ZoneName(2), ""},
		{"user 3", d.UserName(3), "night guard"},
		{"tests (supervision/3)", d.TestEvery(), 30 * time.Second},
		{"no key", st.Devices[1].Settings.(*dc09.Device).Key() == nil, true},
		{"template kind", st.Templates["generic-alarm-panel"].Kind, "alarm_panel"},
		{"template alarm", st.Templates["generic-alarm-panel"].Alarm, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v (%T), want %v (%T)", c.name, c.got, c.got, c.want, c.want)
		}
	}
	// The key never shows in logs or dumps.
	for _, s := range []string{fmt.Sprint(d.Key()), fmt.Sprintf("%v %+v %#v %s %x", d, d, d, d.Key(), d.Key())} {
		if strings.Contains(s, "0001020304") || strings.Contains(s, "[0 1 2 3") || strings.Contains(s, "\\x00\\x01") {
			t.Errorf("the key shows: %s", s)
		}
	}
}

// TestKeyFiles: a key file is refused, with what fixes it, when others may
// read it, when it is not an AES key, or not there; its content is never
// quoted.
func TestKeyFiles(t *testing.T) {
	cases := []struct {
		name, key string
		mode      os.FileMode
		want      string
	}{
		{"open to others", "000102030405060708090a0b0c0d0e0f", 0o644,
			"DIR/station.yaml:17:15: devices[0].key_file: DIR/panel-1.key can be read by group or others (mode 0644): a key must be readable by the gateway's user only; run chmod 600 DIR/panel-1.key"},
		{"open to group", "000102030405060708090a0b0c0d0e0f", 0o640,
			"DIR/station.yaml:17:15: devices[0].key_file: DIR/panel-1.key can be read by group or others (mode 0640): a key must be readable by the gateway's user only; run chmod 600 DIR/panel-1.key"},
		{"not hex", "secretsecretsecretsecretsecret12", 0o600,
			"DIR/station.yaml:17:15: devices[0].key_file: DIR/panel-1.key does not hold a key in hex (expected hex digits 0-9 a-f on one line)"},
		{"wrong length", "0001020304050607", 0o400,
			"DIR/station.yaml:17:15: devices[0].key_file: DIR/panel-1.key holds a key of 8 bytes (expected 16, 24 or 32 bytes: 32, 48 or 64 hex digits)"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := writeStation(t, c.key, c.mode)
			_, err := configs.Load(path)
			if err == nil {
				t.Fatal("loaded")
			}
			got := strings.ReplaceAll(err.Error(), filepath.Dir(path), "DIR")
			if got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
			if strings.Contains(got, c.key) {
				t.Errorf("the error quotes the key")
			}
		})
	}
	for _, bits := range []int{128, 192, 256} {
		path := writeStation(t, strings.Repeat("ab", bits/8), 0o600)
		st, err := configs.Load(path)
		if err != nil {
			t.Fatalf("%d-bit key: %v", bits, err)
		}
		if n := len(st.Devices[0].Settings.(*dc09.Device).Key()); n != bits/8 {
			t.Errorf("%d-bit key: %d bytes", bits, n)
		}
	}
	path := writeStation(t, "", 0o600)
	os.Remove(filepath.Join(filepath.Dir(path), "panel-1.key"))
	_, err := configs.Load(path)
	if want := "DIR/station.yaml:17:15: devices[0].key_file: DIR/panel-1.key does not exist"; err == nil || strings.ReplaceAll(err.Error(), filepath.Dir(path), "DIR") != want {
		t.Errorf("missing key file: %v\nwant %s", err, want)
	}
}

// TestTable: the built-in meanings, a template's changes, qualifiers, and
// unknown codes that still reach the hub.
func TestTable(t *testing.T) {
	tb := dc09.NewTable(&dc09.Template{
		Codes:    []dc09.Code{{Code: 150, Kind: "gas", Severity: model.Critical, Name: "gas"}, {Code: 120, Kind: "hold_up", Severity: model.Critical}},
		SIACodes: []dc09.SIACode{{Code: "ZZ", Kind: "custom", Severity: model.Info, State: dc09.Status}},
	})
	cases := []struct {
		name string
		got  dc09.Meaning
		want dc09.Meaning
	}{
		{"120 new", tb.ContactID(120, 1), dc09.Meaning{Kind: "hold_up", Severity: model.Critical, State: dc09.Active}},
		{"121 duress", tb.ContactID(121, 1), dc09.Meaning{Kind: "duress", Severity: model.Critical, State: dc09.Active, Name: "duress", User: true}},
		{"130 restore", tb.ContactID(130, 3), dc09.Meaning{Kind: "burglary", Severity: model.Info, State: dc09.Cleared, Name: "burglary"}},
		{"137 status", tb.ContactID(137, 6), dc09.Meaning{Kind: "tamper", Severity: model.Critical, State: dc09.Status, Name: "tamper"}},
		{"150 template", tb.ContactID(150, 1), dc09.Meaning{Kind: "gas", Severity: model.Critical, State: dc09.Active, Name: "gas"}},
		{"401 open", tb.ContactID(401, 1), dc09.Meaning{Kind: "disarmed", Severity: model.Info, State: dc09.Active, Name: "open/close by user", User: true}},
		{"401 close", tb.ContactID(401, 3), dc09.Meaning{Kind: "armed", Severity: model.Info, State: dc09.Active, Name: "open/close by user", User: true}},
		{"602 test", tb.ContactID(602, 1), dc09.Meaning{Kind: "periodic_test", Severity: model.Info, State: dc09.Active, Name: "periodic test", Test: true}},
		{"999 unknown", tb.ContactID(999, 1), dc09.Meaning{Kind: "contact_id_999", Severity: model.Warning, State: dc09.Active}},
		{"PA", tb.SIA("PA"), dc09.Meaning{Kind: "panic", Severity: model.Critical, State: dc09.Active, Name: "panic alarm"}},
		{"PR", tb.SIA("PR"), dc09.Meaning{Kind: "panic", Severity: model.Info, State: dc09.Cleared, Name: "panic restoral"}},
		{"ZZ template", tb.SIA("ZZ"), dc09.Meaning{Kind: "custom", Severity: model.Info, State: dc09.Status}},
		{"QQ unknown", tb.SIA("QQ"), dc09.Meaning{Kind: "sia_qq", Severity: model.Warning, State: dc09.Active}},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("%s: %+v\nwant %+v", c.name, c.got, c.want)
		}
	}
	// The brief's must-haves are in the built-in table.
	builtin := dc09.NewTable(nil)
	for _, code := range []int{100, 101, 110, 111, 120, 121, 122, 123, 130, 131, 132, 133, 134, 137, 144, 301, 302, 311, 350, 373, 383, 401, 402, 403, 406, 570, 602, 627, 628} {
		if m := builtin.ContactID(code, 1); m.Name == "" {
			t.Errorf("Contact ID %d is not in the built-in table", code)
		}
	}
	for _, code := range []string{"PA", "BA", "FA", "HA", "TA", "AT", "YT", "RP", "PR"} {
		if m := builtin.SIA(code); m.Name == "" {
			t.Errorf("SIA %s is not in the built-in table", code)
		}
	}
}

func TestWindow(t *testing.T) {
	w := dc09.Window{Past: 40 * time.Second, Future: 20 * time.Second}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		off  time.Duration
		want bool
	}{{0, true}, {-40 * time.Second, true}, {-41 * time.Second, false}, {20 * time.Second, true}, {21 * time.Second, false}} {
		if got := w.Contains(now.Add(c.off), now); got != c.want {
			t.Errorf("%s from now: %v, want %v", c.off, got, c.want)
		}
	}
}
