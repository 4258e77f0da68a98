package configs_test

import (
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model"

	"outpost/configs"
	mb "outpost/configs/modbus"
)

var update = flag.Bool("update", false, "rewrite the golden files of error texts")

// TestLoadErrors loads every file in testdata/errors and compares the full
// error text with its golden file: these are the lines an installer reads.
func TestLoadErrors(t *testing.T) {
	files, _ := filepath.Glob("testdata/errors/*.yaml")
	if len(files) < 6 {
		t.Fatalf("found only %d error cases", len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := configs.Load(f)
			if err == nil {
				t.Fatal("loaded without error")
			}
			if _, ok := err.(configs.Errors); !ok {
				t.Fatalf("error is %T, want configs.Errors: %v", err, err)
			}
			got := err.Error() + "\n"
			golden := strings.TrimSuffix(f, ".yaml") + ".golden"
			if *update {
				os.WriteFile(golden, []byte(got), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("no golden file (run go test ./configs -update): %v", err)
			}
			if got != string(want) {
				t.Errorf("error text differs from %s\n--- got:\n%s--- want:\n%s", golden, got, want)
			}
		})
	}
}

func TestLoadEmbeddedPoliceRoom(t *testing.T) {
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if st.Station.ID != "pr-0001" || st.Station.Type != "police_room" {
		t.Errorf("station = %+v", st.Station)
	}
	if got := len(st.Devices); got != 7 {
		t.Errorf("devices = %d, want 7", got)
	}
	for _, d := range st.Devices {
		if st.Templates[d.Template] == nil {
			t.Errorf("device %s: template %s not loaded", d.ID, d.Template)
		}
	}
}

// TestDefaults checks that every default is filled in and that an explicit
// zero is kept (retries: 0 means no retry, not the default).
func TestDefaults(t *testing.T) {
	st, err := configs.Parse("station.yaml", []byte(`
version: 2
station: {id: s-1, type: safety_post}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
  influx: {url: "http://127.0.0.1:8086", bucket: outpost}
links:
  - {id: b1, protocol: modbus-rtu, port: /dev/ttyUSB0, baud: 9600, retries: 0}
  - {id: e1, protocol: modbus-tcp, address: "127.0.0.1:502"}
devices:
  - {id: th-1, template: xy-md02, link: b1, unit_id: 1}
  - {id: m-1, template: sdm120, link: e1, unit_id: 0}
  - {id: sm-1, template: generic-smoke-detector, link: b1, unit_id: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	b, e := st.Links[0].Settings.(*mb.RTU), st.Links[1].Settings.(*mb.TCP)
	reg := func(tmpl string, i int) *mb.Register { return &st.Templates[tmpl].Body.(*mb.Template).Registers[i] }
	checks := []struct {
		name      string
		got, want any
	}{
		{"state_dir", st.StateDir, "/var/lib/outpost/s-1"},
		{"mqtt.client_id", st.Hub.MQTT.ClientID, "outpost-s-1"},
		{"mqtt.topic_prefix", st.Hub.MQTT.TopicPrefix, "outpost/v1"},
		{"influx.batch_size", st.Hub.Influx.BatchSize, 5000},
		{"influx.batch_wait", st.Hub.Influx.BatchWait, time.Second},
		{"influx.timeout", st.Hub.Influx.Timeout, 10 * time.Second},
		{"queue.max_bytes", st.Queue.MaxBytes, int64(256 << 20)},
		{"queue.sync", st.Queue.Sync, 100 * time.Millisecond},
		{"bus.parity", b.Parity, configs.ParityNone},
		{"bus.data_bits", b.DataBits, 8},
		{"bus.stop_bits", b.StopBits, 1},
		{"bus.timeout", b.Timeout, 500 * time.Millisecond},
		{"bus.retries (explicit 0)", b.Retries, 0},
		{"bus.turnaround", b.Turnaround, 5 * time.Millisecond},
		{"endpoint.timeout", e.Timeout, time.Second},
		{"endpoint.retries", e.Retries, 1},
		{"device.poll", st.Devices[0].Settings.(*mb.Device).Poll, time.Second},
		{"register.order", reg("xy-md02", 0).Order, mb.ABCD},
		{"register.scale (given)", reg("xy-md02", 0).Scale, 0.1},
		{"register.scale (default)", reg("sdm120", 0).Scale, 1.0},
		{"event.severity", reg("generic-smoke-detector", 0).Event.Severity, model.Critical},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v (%T), want %v (%T)", c.name, c.got, c.got, c.want, c.want)
		}
	}
}

// station writes a station file using template tmpl into a new folder and
// returns its path.
func stationFile(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "station.yaml")
	src := `version: 2
station: {id: pr-1, type: police_room}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: rs485-1, protocol: modbus-rtu, port: /dev/ttyUSB0, baud: 9600}
devices:
  - {id: th-1, template: xy-md02, link: rs485-1, unit_id: 1}
` + extra
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(dir, "devices"), 0o755)
	return path
}

// wantErrors loads path and wants exactly these error lines, with the
// station's folder written as DIR.
func wantErrors(t *testing.T, path string, want ...string) {
	t.Helper()
	_, err := configs.Load(path)
	if err == nil {
		t.Fatalf("loaded without error; want %q", want)
	}
	got := strings.ReplaceAll(err.Error(), filepath.Dir(path), "DIR")
	if got != strings.Join(want, "\n") {
		t.Errorf("errors:\n%s\nwant:\n%s", got, strings.Join(want, "\n"))
	}
}

// TestTemplateFileProblems: a template beside the station file that is
// there but cannot be read is an error naming it, never a silent fall
// back to the built-in template of that name.
func TestTemplateFileProblems(t *testing.T) {
	t.Run("dangling link", func(t *testing.T) {
		path := stationFile(t, "")
		os.Symlink("/nonexistent/th.yaml", filepath.Join(filepath.Dir(path), "devices", "xy-md02.yaml"))
		wantErrors(t, path, "DIR/devices/xy-md02.yaml:1:1: template xy-md02 cannot be read: DIR/devices/xy-md02.yaml is a link to a file that does not exist")
	})
	t.Run("directory", func(t *testing.T) {
		path := stationFile(t, "")
		os.Mkdir(filepath.Join(filepath.Dir(path), "devices", "xy-md02.yaml"), 0o755)
		wantErrors(t, path, "DIR/devices/xy-md02.yaml:1:1: template xy-md02 cannot be read: DIR/devices/xy-md02.yaml is a directory, not a file")
	})
	t.Run("too large", func(t *testing.T) {
		path := stationFile(t, "")
		os.WriteFile(filepath.Join(filepath.Dir(path), "devices", "xy-md02.yaml"), make([]byte, configs.MaxFileBytes+1), 0o600)
		wantErrors(t, path, fmt.Sprintf("DIR/devices/xy-md02.yaml:1:1: template xy-md02 cannot be read: DIR/devices/xy-md02.yaml is %d bytes, more than a station or template file may hold (%d)", configs.MaxFileBytes+1, configs.MaxFileBytes))
	})
}

// TestPortNames: two links on one serial port under two of its names
// (/dev/ttyUSB0 and its /dev/serial/by-id/ link) are refused as two
// links on one name are: their masters would scramble each other's frames.
func TestPortNames(t *testing.T) {
	dir := t.TempDir()
	dev, byID := filepath.Join(dir, "ttyUSB0"), filepath.Join(dir, "usb-FTDI_FT232R_A10K1234-if00-port0")
	if err := os.WriteFile(dev, nil, 0o600); err != nil { // the device node, as far as names go
		t.Fatal(err)
	}
	if err := os.Symlink("ttyUSB0", byID); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "station.yaml")
	src := fmt.Sprintf(`version: 2
station: {id: sp-1, type: safety_post}
hub: {mqtt: {url: "tcp://127.0.0.1:1883"}}
links:
  - {id: rs485-io, protocol: dcon, port: %s, baud: 9600}
  - {id: rs485-1, protocol: modbus-rtu, port: %s, baud: 9600}
  - {id: rs485-2, protocol: modbus-rtu, port: %s/./ttyUSB0, baud: 9600}
devices:
  - {id: box-1, template: dcon-panic-box, link: rs485-io, address: 1}
`, dev, byID, dir)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	wantErrors(t, path,
		"DIR/station.yaml:6:47: links[1].port: DIR/usb-FTDI_FT232R_A10K1234-if00-port0 is DIR/ttyUSB0, already the port of links[0] (DIR/ttyUSB0)",
		"DIR/station.yaml:7:47: links[2].port: DIR/./ttyUSB0 is DIR/ttyUSB0, already the port of links[0] (DIR/ttyUSB0)")
}

// TestNoDevices: a station without devices is told so once.
func TestNoDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "station.yaml")
	src := "version: 2\nstation: {id: sp-1, type: safety_post}\nhub: {mqtt: {url: \"tcp://127.0.0.1:1883\"}}\nlinks: []\ndevices: []\n"
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	wantErrors(t, path, "DIR/station.yaml:5:10: devices: a station needs at least one device")
}

// TestLargeFiles: a station file over the limit is refused before it is
// parsed, and one with thousands of mistakes lists the first configs.MaxErrors.
func TestLargeFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "station.yaml")
	os.WriteFile(path, make([]byte, 60<<20), 0o600)
	_, err := configs.Load(path)
	want := fmt.Sprintf("station file: %s is %d bytes, more than a station or template file may hold (%d)", path, 60<<20, configs.MaxFileBytes)
	if err == nil || err.Error() != want {
		t.Errorf("60 MB station file: %v\nwant %s", err, want)
	}

	var b strings.Builder
	b.WriteString("version: 2\nstation: {id: pr-1, type: police_room}\nhub: {mqtt: {url: \"tcp://127.0.0.1:1883\"}}\nlinks: []\ndevices:\n")
	// A problem a device: its link is not there (the rest of its keys
	// are its link's protocol's, and wait until the link is fixed).
	for i := range 5000 {
		fmt.Fprintf(&b, "  - {id: d-%d, template: xy-md02, link: nowhere, unit_id: 1, colour: red}\n", i)
	}
	_, err = configs.Parse("big.yaml", []byte(b.String()))
	errs, ok := err.(configs.Errors)
	if !ok {
		t.Fatalf("error %T %v", err, err)
	}
	if len(errs) != configs.MaxErrors+1 {
		t.Fatalf("%d error lines, want %d and a last one saying how many more", len(errs), configs.MaxErrors+1)
	}
	if last := errs[configs.MaxErrors].Error(); last != "big.yaml: and 4800 more problems (fix the ones above first)" {
		t.Errorf("last line %q", last)
	}
}

// TestTLSFilesChecked: the TLS files a station names are checked when it
// is validated, relative to the station file, not at the first connect.
func TestTLSFilesChecked(t *testing.T) {
	path := stationFile(t, "")
	dir := filepath.Dir(path)
	os.WriteFile(filepath.Join(dir, "ca.pem"), []byte("not a certificate\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "client.key"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600)
	src, _ := os.ReadFile(path)
	src = []byte(strings.Replace(string(src), `mqtt: {url: "tcp://127.0.0.1:1883"}`,
		`mqtt: {url: "ssl://127.0.0.1:8883", tls: {ca: ca.pem, cert: certs/client.pem, key: client.key}}`, 1))
	os.WriteFile(path, src, 0o600)
	wantErrors(t, path,
		"DIR/station.yaml:4:49: hub.mqtt.tls.ca: DIR/ca.pem holds no PEM certificate (expected the CA that signed the broker's certificate)",
		"DIR/station.yaml:4:63: hub.mqtt.tls.cert: DIR/certs/client.pem does not exist")
}

// TestBuiltinTemplates: every built-in template loads, and templates of one
// kind agree on the type of each signal (one InfluxDB measurement).
func TestBuiltinTemplates(t *testing.T) {
	tmpls, err := configs.BuiltinTemplates()
	if err != nil {
		t.Fatal(err)
	}
	types := map[string]configs.ValueType{}
	for _, tm := range tmpls {
		for _, sg := range tm.Body.Signals() {
			key := tm.Kind + "/" + sg.Name
			if prev, seen := types[key]; seen && prev != sg.Type {
				t.Errorf("%s: %s is a %s, but a %s in another template of kind %s", tm.Name, sg.Name, sg.Type, prev, tm.Kind)
			}
			types[key] = sg.Type
		}
	}
}

// TestBrokers: a hub of one broker (url) or of a cluster (urls), checked
// before any connection: one of the two, each URL good, listed once, all
// of one scheme.
func TestBrokers(t *testing.T) {
	for _, c := range []struct {
		name, mqtt string
		brokers    []string // when it loads
		err        string   // else the error
	}{
		{name: "one", mqtt: `{url: "tcp://a:1883"}`, brokers: []string{"tcp://a:1883"}},
		{name: "cluster", mqtt: `{urls: ["ssl://a:8883", "ssl://b:8883", "ssl://c:8883"]}`,
			brokers: []string{"ssl://a:8883", "ssl://b:8883", "ssl://c:8883"}},
		{name: "list of one", mqtt: `{urls: ["tcp://a:1883"]}`, brokers: []string{"tcp://a:1883"}},
		{name: "both", mqtt: `{url: "tcp://a:1883", urls: ["tcp://b:1883"]}`,
			err: `s.yaml:4:37: hub.mqtt: give url (one broker) or urls (the brokers of a cluster), not both`},
		{name: "neither", mqtt: `{client_id: x}`,
			err: `s.yaml:4:9: hub.mqtt: missing the broker: url (one broker) or urls (the brokers of a cluster)`},
		{name: "empty list", mqtt: `{urls: []}`,
			err: `s.yaml:4:16: hub.mqtt.urls: the list is empty; name at least one broker`},
		{name: "no port", mqtt: `{urls: ["tcp://a:1883", "tcp://b"]}`,
			err: `s.yaml:4:33: hub.mqtt.urls[1]: "tcp://b" has no port (e.g. tcp://b:1883, ssl://b:8883)`},
		{name: "bad scheme", mqtt: `{urls: ["tcp://a:1883", "ws://b:9001"]}`,
			err: `s.yaml:4:33: hub.mqtt.urls[1]: "ws://b:9001" is not a URL of scheme tcp, mqtt, ssl, tls, mqtts with a host (e.g. tcp://127.0.0.1:1883)`},
		{name: "schemes differ", mqtt: `{urls: ["tcp://a:1883", "ssl://b:8883", "mqtt://c:1883"]}`,
			err: "s.yaml:4:33: hub.mqtt.urls[1]: scheme ssl differs from hub.mqtt.urls[0]'s tcp: the brokers of a hub share one scheme (and the tls settings)\n" +
				"s.yaml:4:49: hub.mqtt.urls[2]: scheme mqtt differs from hub.mqtt.urls[0]'s tcp: the brokers of a hub share one scheme (and the tls settings)"},
		{name: "twice", mqtt: `{urls: ["tcp://u:secret@a:1883", "tcp://b:1883", "tcp://u:secret@a:1883"]}`,
			err: `s.yaml:4:58: hub.mqtt.urls[2]: tcp://u:xxxxx@a:1883 is already listed as hub.mqtt.urls[0]`},
		{name: "not a list", mqtt: `{urls: "tcp://a:1883"}`,
			err: `s.yaml:4:16: hub.mqtt.urls: expected a list, got the string "tcp://a:1883"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := "version: 2\nstation: {id: pr-1, type: police_room}\nhub:\n  mqtt: " + c.mqtt + `
links:
  - {id: rs485-1, protocol: modbus-rtu, port: /dev/ttyUSB0, baud: 9600}
devices:
  - {id: th-1, template: xy-md02, link: rs485-1, unit_id: 1}
`
			st, err := configs.Parse("s.yaml", []byte(src))
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("error:\n%v\nwant:\n%s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := st.Hub.MQTT.Brokers(); !slices.Equal(got, c.brokers) {
				t.Errorf("Brokers() = %q, want %q", got, c.brokers)
			}
		})
	}
}

// TestTemplateLikeBuiltin: a station's template that reads a signal from
// where a built-in one reads it, but converts it another way, is warned
// about with both conversions and what to do; one that agrees, or reads
// another signal or unit from there, is not. The shipped stations have
// no such warning.
func TestTemplateLikeBuiltin(t *testing.T) {
	for _, tc := range []struct {
		name, template, register string
		want                     []string
		unlike                   map[string]configs.Unlike // the template's, for the tools
	}{
		{"a copy with a wrong scale", "th-wrong",
			`{signal: temperature, table: input, address: 1, type: int16, scale: 0.01, unit: "°C"}`,
			[]string{`DIR/devices/th-wrong.yaml:5:5: registers[0]: template th-wrong reads temperature from input register 1 as int16 × 0.01, where the built-in template xy-md02, made from that device's datasheet, reads it as int16 × 0.1: use template xy-md02 if the device is of that model; if not, check the type, byte order and scale against the device's datasheet`},
			map[string]configs.Unlike{"temperature": {Template: "xy-md02", Conversion: "int16 × 0.1"}}},
		{"an override of the built-in's name, unsigned", "xy-md02",
			`{signal: temperature, table: input, address: 1, type: uint16, scale: 0.1, unit: "°C"}`,
			[]string{`DIR/devices/xy-md02.yaml:5:5: registers[0]: template xy-md02 reads temperature from input register 1 as uint16 × 0.1, where the built-in template xy-md02, made from that device's datasheet, reads it as int16 × 0.1: use template xy-md02 if the device is of that model; if not, check the type, byte order and scale against the device's datasheet`},
			map[string]configs.Unlike{"temperature": {Template: "xy-md02", Conversion: "int16 × 0.1"}}},
		{"a float in swapped words", "my-meter",
			`{signal: voltage, table: input, address: 0, type: float32, order: CDAB, unit: "V"}`,
			[]string{`DIR/devices/my-meter.yaml:5:5: registers[0]: template my-meter reads voltage from input register 0 as float32 CDAB, where the built-in template sdm120, made from that device's datasheet, reads it as float32: use template sdm120 if the device is of that model; if not, check the type, byte order and scale against the device's datasheet`},
			map[string]configs.Unlike{"voltage": {Template: "sdm120", Conversion: "float32"}}},
		{"a copy that agrees", "th-copy",
			`{signal: temperature, table: input, address: 1, type: int16, scale: 0.1, unit: "°C"}`, nil, nil},
		{"another unit from the same register", "th-fahrenheit",
			`{signal: temperature, table: input, address: 1, type: int16, scale: 0.18, offset: 32, unit: "°F"}`, nil, nil},
		{"another signal from the same register", "level",
			`{signal: level, table: input, address: 1, type: uint16, unit: "cm"}`, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := stationFile(t, "")
			src, _ := os.ReadFile(path)
			os.WriteFile(path, []byte(strings.Replace(string(src), "template: xy-md02", "template: "+tc.template, 1)), 0o600)
			tmpl := "template: " + tc.template + "\nprotocol: modbus\nkind: probe\nregisters:\n  - " + tc.register + "\n"
			os.WriteFile(filepath.Join(filepath.Dir(path), "devices", tc.template+".yaml"), []byte(tmpl), 0o600)
			st, err := configs.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, w := range st.Warnings {
				got = append(got, strings.ReplaceAll(w.Error(), filepath.Dir(path), "DIR"))
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if u := st.Templates[tc.template].Unlike; !maps.Equal(u, tc.unlike) {
				t.Errorf("template %s: Unlike %v, want %v", tc.template, u, tc.unlike)
			}
		})
	}
	// A copy of each built-in Modbus template agrees with it, and with
	// every other built-in template.
	builtin, _ := configs.BuiltinTemplates()
	copies := 0
	for _, b := range builtin {
		if b.Protocol != "modbus" {
			continue
		}
		copies++
		path := stationFile(t, "")
		src, _ := os.ReadFile(path)
		os.WriteFile(path, []byte(strings.Replace(string(src), "template: xy-md02", "template: copy-of-"+b.Name, 1)), 0o600)
		data, _ := configs.Embedded.ReadFile("devices/" + b.Name + ".yaml")
		data = []byte(strings.Replace(string(data), "template: "+b.Name+"\n", "template: copy-of-"+b.Name+"\n", 1))
		os.WriteFile(filepath.Join(filepath.Dir(path), "devices", "copy-of-"+b.Name+".yaml"), data, 0o600)
		st, err := configs.Load(path)
		if err != nil {
			t.Fatalf("a copy of %s: %v", b.Name, err)
		}
		if len(st.Warnings) > 0 {
			t.Errorf("a copy of %s warns: %v", b.Name, st.Warnings)
		}
	}
	if copies < 8 {
		t.Errorf("only %d built-in Modbus templates copied", copies)
	}
	// The other three name a credentials file of the machine they run
	// on, and load only there.
	for _, name := range []string{"police-room.yaml", "safety-post.yaml"} {
		st, err := configs.LoadEmbedded(name)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Warnings) > 0 {
			t.Errorf("%s warns: %v", name, st.Warnings)
		}
	}
}

// TestBaudWarnings: a baud rate no serial device offers is valid, with a
// warning that names the rate likely meant.
func TestBaudWarnings(t *testing.T) {
	for _, c := range []struct {
		baud int
		want string
	}{
		{9600, ""},
		{115200, ""},
		{9601, "baud 9601 is not a rate serial devices offer; did you mean 9600?"},
		{96000, "baud 96000 is not a rate serial devices offer; did you mean 9600?"},
		{1920, "baud 1920 is not a rate serial devices offer; did you mean 19200?"},
		{100000, "baud 100000 is not a rate serial devices offer; did you mean 115200?"},
	} {
		s := &configs.Serial{Baud: c.baud}
		if got := strings.Join(s.Warnings(), "; "); got != c.want {
			t.Errorf("baud %d: %q, want %q", c.baud, got, c.want)
		}
	}
}
