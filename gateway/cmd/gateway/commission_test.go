package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	"outpost/drivers/bus"
	"outpost/gateway/model"
	"outpost/testbench/hub"
)

// hotSensor is an XY-MD02-like template whose simulated temperature (150
// °C) lies outside its range: what a wrong template or a broken sensor
// looks like. It reads the temperature unsigned, where the built-in
// xy-md02 reads it signed: a warning.
const hotSensor = `template: hot-sensor
protocol: modbus
kind: temp_humidity
registers:
  - {signal: temperature, table: input, address: 1, type: uint16, scale: 0.1, unit: "°C", range: {min: -40, max: 60}, sim: {wave: constant, value: 150}}
`

// coldSensor reads an XY-MD02's temperature with a tenth of its scale: in
// a room at 25 °C, 2.5 °C, which is in range.
const coldSensor = `template: cold-sensor
protocol: modbus
kind: temp_humidity
registers:
  - {signal: temperature, table: input, address: 1, type: int16, scale: 0.01, unit: "°C", range: {min: -40, max: 60}, sim: {wave: constant, value: 2.5}}
`

// TestCommission runs `gateway commission` against a simulated Modbus TCP
// endpoint (a sensor that answers, one whose value is implausible, a unit
// that never answers) and a real Mosquitto and InfluxDB, then with the
// hub's broker away: each line says what is wrong, the exit code says
// whether all passed, and the record is kept in the state directory.
func TestCommission(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	m := startBroker(t)
	ix, err := hub.StartInflux(ctx, filepath.Join(t.TempDir(), "influx"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Stop()
	addr := freeAddr(t)
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "devices"), 0o755)
	for name, src := range map[string]string{"hot-sensor": hotSensor, "cold-sensor": coldSensor} {
		if err := os.WriteFile(filepath.Join(dir, "devices", name+".yaml"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(dir, "state")
	station := func(mqttURL, bucket string) string {
		src := fmt.Sprintf(`version: 2
station: {id: cm-1, type: police_room}
state_dir: %s
hub:
  mqtt: {url: "%s"}
  influx: {url: "%s", bucket: "%s"}
links:
  - {id: lan, protocol: modbus-tcp, address: "%s", timeout: 300ms}
devices:
  - {id: gone-9, template: xy-md02, link: lan, unit_id: 9, poll: 1s}
  - {id: th-1, template: xy-md02, link: lan, unit_id: 1, poll: 1s}
  - {id: hot-1, template: hot-sensor, link: lan, unit_id: 2, poll: 1s}
  - {id: cold-1, template: cold-sensor, link: lan, unit_id: 3, poll: 1s}
`, state, mqttURL, ix.URL(), bucket, addr)
		path := filepath.Join(dir, "station.yaml")
		if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	path := station(m.URL(), ix.Database())
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	simulate(t, st, nil, "gone-9")

	var out, errb bytes.Buffer
	if code := cli([]string{"commission", "-config", path, "-timeout", "5s"}, &out, &errb); code != 1 {
		t.Errorf("exit %d, want 1 (two devices fail)\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	table := out.String()
	t.Logf("gateway commission printed:\n%s", table)
	for _, want := range []string{
		"th-1           lan        OK: temperature = ",
		"\nwarning: " + filepath.Join(dir, "devices", "hot-sensor.yaml") + ":5:5:",
		"hot-1          lan        outside the plausible range (a wrong template, or a",
		"temperature = 150 °C",
		"gone-9         lan        no value for temperature, humidity: no answer from",
		"cold-1         lan        OK: temperature = 2.5 °C; check against the device's",
		"hub MQTT                  OK: the broker takes the station's connection",
		"hub InfluxDB              OK: InfluxDB takes the station's writes to " + ix.Database(),
		"2 of 6 checks failed: fix them and run gateway commission again.",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("the table lacks %q:\n%s", want, table)
		}
	}
	for i, line := range strings.Split(table, "\n") {
		if n := len([]rune(line)); n > 80 {
			t.Errorf("line %d is %d columns: %q", i+1, n, line)
		}
	}
	var rec commissioning
	data, err := os.ReadFile(filepath.Join(state, CommissioningFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rec); err != nil {
		t.Fatal(err)
	}
	if rec.OK || rec.Station != "cm-1" || len(rec.Devices) != 4 || len(rec.Hub) != 2 || !rec.Devices[1].OK || rec.Devices[2].OK {
		t.Errorf("the record kept: %+v", rec)
	}
	// th-1's line shows the values read: the simulated XY-MD02's (16-29
	// °C and 45-75 %RH, with noise), in its units.
	th := regexp.MustCompile(`^OK: temperature = (-?[0-9.]+) °C, humidity = ([0-9.]+) %RH$`).FindStringSubmatch(rec.Devices[1].Result)
	if th == nil {
		t.Errorf("th-1's result %q, want its temperature and humidity", rec.Devices[1].Result)
	} else if temp, _ := strconv.ParseFloat(th[1], 64); temp < 15 || temp > 30 {
		t.Errorf("th-1's temperature %s °C, want the simulator's 16-29", th[1])
	} else if hum, _ := strconv.ParseFloat(th[2], 64); hum < 44 || hum > 76 {
		t.Errorf("th-1's humidity %s %%RH, want the simulator's 45-75", th[2])
	}
	// gone-9, the first asked on the endpoint, is named as the unit at
	// fault once the others answered: not a link to check.
	if want := "no value for temperature, humidity: no answer from unit 9 while units 1, 2 and 3 answer: wrong unit id, or device off"; rec.Devices[0].Result != want {
		t.Errorf("gone-9's result %q\nwant %q", rec.Devices[0].Result, want)
	}
	// cold-1's values are plausible, and its line says that its template
	// reads them unlike the datasheet's: gateway read says so too.
	const misread = "check against the device's display: template cold-sensor reads temperature as int16 × 0.01 where the built-in template xy-md02, from that model's datasheet, reads int16 × 0.1"
	if want := "OK: temperature = 2.5 °C; " + misread; rec.Devices[3].Result != want || !rec.Devices[3].OK {
		t.Errorf("cold-1's result %q (ok %v)\nwant %q, passing", rec.Devices[3].Result, rec.Devices[3].OK, want)
	}
	out.Reset()
	if code := cli([]string{"read", "-config", path, "-timeout", "5s", "cold-1"}, &out, &errb); code != 0 || !strings.HasSuffix(out.String(), "\n\n"+misread+"\n") {
		t.Errorf("gateway read cold-1: exit %d, printed:\n%s\nwant exit 0 and last:\n%s", code, out.String(), misread)
	}
	wantWarning := filepath.Join(dir, "devices", "hot-sensor.yaml") + ":5:5: registers[0]: template hot-sensor reads temperature from input register 1 as uint16 × 0.1, where the built-in template xy-md02, made from that device's datasheet, reads it as int16 × 0.1: use template xy-md02 if the device is of that model; if not, check the type, byte order and scale against the device's datasheet"
	if len(rec.Warnings) != 3 || rec.Warnings[1] != wantWarning || !strings.HasPrefix(rec.Warnings[2], "state_dir ") {
		t.Errorf("the record's warnings: %q\nwant %q and the state directory's", rec.Warnings, wantWarning)
	}

	// The hub's broker is away, and InfluxDB has no such database: their
	// lines say so.
	m.Stop()
	path = station(m.URL(), "nope")
	out.Reset()
	errb.Reset()
	if code := cli([]string{"commission", "-config", path, "-timeout", "5s", "-json"}, &out, &errb); code != 1 {
		t.Errorf("with the broker away: exit %d, want 1", code)
	}
	if err := json.Unmarshal(out.Bytes(), &rec); err != nil {
		t.Fatalf("-json: %v\n%s", err, out.String())
	}
	if want := "nothing listens at " + m.URL() + " (hub.mqtt.url): the broker is down, or the address or port is wrong"; rec.Hub[0].OK || rec.Hub[0].Result != want {
		t.Errorf("with the broker away, the hub line: %+v", rec.Hub[0])
	}
	t.Logf("the hub, away and wrong: %+v", rec.Hub)
	if rec.Hub[1].OK || !strings.HasPrefix(rec.Hub[1].Result, `InfluxDB has no bucket or database "nope" (hub.influx.bucket)`) {
		t.Errorf("with a database InfluxDB lacks, its line: %+v", rec.Hub[1])
	}
}

// TestVerdict: what commission says of a device's first reading and
// health, by table; good values from a device that is not online fail
// with its reason.
func TestVerdict(t *testing.T) {
	good := model.Message{Readings: []model.Reading{{Signal: "pressed", Value: model.Bool(false), Quality: model.Good}}}
	bad := model.Message{Readings: []model.Reading{{Signal: "pressed", Quality: model.Bad}}}
	const noLatch = "module at address 01 refuses $01L1 (read latched inputs), which template dcon-panic-box-latched needs"
	clean := map[string]uint64{"polls": 1, "requests": 1, model.RTTCounter: 1800}
	noisy := map[string]uint64{"polls": 1, "requests": 5, model.RTTCounter: 1800, "timeouts": 2, "checksum_errors": 1}
	for _, tc := range []struct {
		name   string
		m      *model.Message // nil: no reading
		h      *model.Health  // nil: no health report
		heard  uint64         // the other master's requests its link heard
		ok     bool
		result string
	}{
		{name: "good values, online", m: &good, h: &model.Health{State: model.Online}, ok: true, result: "OK: pressed = false"},
		{name: "good values, every request answered well", m: &good, h: &model.Health{State: model.Online, Counters: clean}, ok: true, result: "OK: pressed = false"},
		{name: "good values after lost and damaged frames", m: &good, h: &model.Health{State: model.Online, Counters: noisy}, ok: true,
			result: "OK: pressed = false; but it met timeouts 2, checksum_errors 1: frames lost or damaged on the way; check the wiring (termination, grounding) or the network"},
		{name: "events only, a panel's frames and tests", h: &model.Health{State: model.Online, Counters: map[string]uint64{"frames": 3, "acks": 3, "tests": 1, "events": 2}}, ok: true,
			result: "OK: it answers (no readings to show)"},
		{name: "events only, after a lost frame", h: &model.Health{State: model.Online, Counters: map[string]uint64{"polls": 1, "requests": 2, "timeouts": 1}}, ok: true,
			result: "OK: it answers (no readings to show); but it met timeouts 1: frames lost or damaged on the way; check the wiring (termination, grounding) or the network"},
		{name: "good values, no health", m: &good, ok: true, result: "OK: pressed = false"},
		{name: "good values, degraded", m: &good, h: &model.Health{State: model.Degraded, Reason: noLatch}, result: "values read, but degraded: " + noLatch},
		{name: "good values, degraded without a reason", m: &good, h: &model.Health{State: model.Degraded}, result: "values read, but degraded"},
		{name: "no value", m: &bad, h: &model.Health{State: model.Offline, Reason: "no answer"}, result: "no value for pressed: no answer"},
		{name: "no value, silent", m: &bad, h: &model.Health{State: model.Offline, Reason: "no answer", Counters: map[string]uint64{"requests": 4, "timeouts": 4}},
			result: "no value for pressed: no answer"},
		{name: "no value, damaged frames", m: &bad, h: &model.Health{State: model.Degraded, Reason: "timeout after 30ms", Counters: noisy},
			result: "no value for pressed: timeout after 30ms; it met timeouts 2, checksum_errors 1: frames lost or damaged on the way; check the wiring (termination, grounding) or the network"},
		{name: "good values, another master heard", m: &good, h: &model.Health{State: model.Online, Counters: map[string]uint64{"polls": 2, "requests": 2, "other_master": 1}}, heard: 1, ok: true,
			result: "OK: pressed = false; but it met other_master 1: another master polls this bus; two masters on one bus talk over each other; stop the other (an old controller, a display, a laptop with a Modbus tool) or give it a bus of its own"},
		{name: "no value, another master instead", m: &bad, h: &model.Health{State: model.Degraded, Reason: "timeout after 30ms", Counters: map[string]uint64{"polls": 1, "requests": 2, "timeouts": 2, "other_master": 1}}, heard: 1,
			result: "no value for pressed: timeout after 30ms; it met timeouts 2, other_master 1: another master polls this bus; two masters on one bus talk over each other; stop the other (an old controller, a display, a laptop with a Modbus tool) or give it a bus of its own"},
		{name: "no value, the reason names another master", m: &bad, heard: 1, h: &model.Health{State: model.Degraded, Reason: "timeout after 30ms reading input registers 0-1 (0x0000-0x0001); another master polls this bus (unit 5 asked for 1 holding register from 0 (0x0000)): " + bus.TwoMasters, Counters: map[string]uint64{"polls": 1, "requests": 2, "frame_errors": 1, "timeouts": 1, "other_master": 1}},
			result: "no value for pressed: timeout after 30ms reading input registers 0-1 (0x0000-0x0001); another master polls this bus (unit 5 asked for 1 holding register from 0 (0x0000)): " + bus.TwoMasters},
		{name: "good values after damaged frames, another master heard by a neighbour", m: &good, h: &model.Health{State: model.Online, Counters: noisy}, heard: 3, ok: true,
			result: "OK: pressed = false; but it met timeouts 2, checksum_errors 1: another master polls this bus; two masters on one bus talk over each other; stop the other (an old controller, a display, a laptop with a Modbus tool) or give it a bus of its own"},
		{name: "good values, clean, another master heard by a neighbour", m: &good, h: &model.Health{State: model.Online, Counters: clean}, heard: 3, ok: true, result: "OK: pressed = false"},
		{name: "events only, online", h: &model.Health{State: model.Online}, ok: true, result: "OK: it answers (no readings to show)"},
		{name: "nothing", result: "nothing from it within 5s: is it powered and wired, and does the station file name it right?"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var m model.Message
			var h model.Health
			if tc.m != nil {
				m = *tc.m
			}
			if tc.h != nil {
				h = *tc.h
			}
			ok, result := verdict(nil, m, tc.m != nil, h, tc.h != nil, tc.heard, 5*time.Second)
			if ok != tc.ok || result != tc.result {
				t.Errorf("verdict = %v, %q; want %v, %q", ok, result, tc.ok, tc.result)
			}
		})
	}
}
