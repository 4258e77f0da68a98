package configs

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model"
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
			_, err := Load(f)
			if err == nil {
				t.Fatal("loaded without error")
			}
			if _, ok := err.(Errors); !ok {
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
	st, err := LoadEmbedded("police-room.yaml")
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
	st, err := Parse("station.yaml", []byte(`
version: 1
station: {id: s-1, type: safety_post}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
  influx: {url: "http://127.0.0.1:8086", bucket: outpost}
buses:
  - {id: b1, port: /dev/ttyUSB0, baud: 9600, retries: 0}
endpoints:
  - {id: e1, address: "127.0.0.1:502"}
devices:
  - {id: th-1, template: temp-humidity, bus: b1, unit_id: 1}
  - {id: m-1, template: power-meter, endpoint: e1, unit_id: 0}
  - {id: sm-1, template: smoke-detector, bus: b1, unit_id: 2}
`))
	if err != nil {
		t.Fatal(err)
	}
	b, e := st.Buses[0], st.Endpoints[0]
	checks := []struct {
		name      string
		got, want any
	}{
		{"state_dir", st.StateDir, "/var/lib/outpost/s-1"},
		{"mqtt.client_id", st.Hub.MQTT.ClientID, "outpost-s-1"},
		{"mqtt.topic_prefix", st.Hub.MQTT.TopicPrefix, "outpost/v1"},
		{"influx.batch_size", st.Hub.Influx.BatchSize, 500},
		{"queue.max_bytes", st.Queue.MaxBytes, int64(256 << 20)},
		{"queue.sync", st.Queue.Sync, 100 * time.Millisecond},
		{"bus.protocol", b.Protocol, "modbus-rtu"},
		{"bus.parity", b.Parity, ParityNone},
		{"bus.data_bits", b.DataBits, 8},
		{"bus.stop_bits", b.StopBits, 1},
		{"bus.timeout", b.Timeout, 500 * time.Millisecond},
		{"bus.retries (explicit 0)", b.Retries, 0},
		{"bus.turnaround", b.Turnaround, 5 * time.Millisecond},
		{"endpoint.protocol", e.Protocol, "modbus-tcp"},
		{"endpoint.timeout", e.Timeout, time.Second},
		{"endpoint.retries", e.Retries, 1},
		{"device.poll", st.Devices[0].Poll, time.Second},
		{"register.order", st.Templates["temp-humidity"].Registers[0].Order, ABCD},
		{"register.scale (given)", st.Templates["temp-humidity"].Registers[0].Scale, 0.1},
		{"register.scale (default)", st.Templates["power-meter"].Registers[0].Scale, 1.0},
		{"event.severity", st.Templates["smoke-detector"].Registers[0].Event.Severity, model.Critical},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v (%T), want %v (%T)", c.name, c.got, c.got, c.want, c.want)
		}
	}
}
