package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/drivers"
	_ "outpost/firmware-sim/dc09"   // an alarm panel calling the receiver
	_ "outpost/firmware-sim/dcon"   // DCON I/O modules on a pty
	_ "outpost/firmware-sim/line"   // an ASCII-line device on a pty
	_ "outpost/firmware-sim/modbus" // the simulated devices, on a real TCP port
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
)

// served keeps what the simulated devices served, by device.
type served struct {
	mu sync.Mutex
	rs map[string][]sim.Reading
}

func (s *served) Served(dev string, rs []sim.Reading) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rs[dev] = append(s.rs[dev], rs...)
}

func (s *served) Raised(sim.Raised) {}

// forget forgets what was served to dev: a read of its neighbour polls it
// too.
func (s *served) forget(dev string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.rs, dev)
}

func (s *served) of(dev string) []sim.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]sim.Reading(nil), s.rs[dev]...)
}

// TestRead: `gateway read` polls one device of a Modbus TCP endpoint
// served by the simulator and prints what it served, decoded, with units;
// a unit that does not answer gives exit 1 and the reason, which its
// neighbours on the endpoint, polled too, make a wrong unit id.
func TestRead(t *testing.T) {
	addr := freeAddr(t)
	st := writeStation(t, fmt.Sprintf(`version: 2
station: {id: rd-1, type: police_room}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: lan, protocol: modbus-tcp, address: "%s", timeout: 300ms}
devices:
  - {id: th-1, template: xy-md02, link: lan, unit_id: 1, poll: 1s}
  - {id: meter-1, template: sdm120, link: lan, unit_id: 2, poll: 1s}
  - {id: gone-9, template: xy-md02, link: lan, unit_id: 9, poll: 1s}
`, t.TempDir(), addr))
	path := st.File
	sk := &served{rs: map[string][]sim.Reading{}}
	simulate(t, st, sk, "gone-9")

	for _, dev := range []string{"th-1", "meter-1"} {
		var out, errb bytes.Buffer
		sk.forget(dev)
		if code := cli([]string{"read", "-config", path, dev}, &out, &errb); code != 0 {
			t.Fatalf("read %s: exit %d\nstdout: %s\nstderr: %s", dev, code, out.String(), errb.String())
		}
		got := out.String()
		// The simulator notes what it served after it sent it: the
		// reading can be printed a moment before it is noted.
		rs := sk.of(dev)
		for deadline := time.Now().Add(2 * time.Second); len(rs) == 0 && time.Now().Before(deadline); rs = sk.of(dev) {
			time.Sleep(5 * time.Millisecond)
		}
		if len(rs) == 0 {
			t.Fatalf("the simulator served nothing to %s; printed:\n%s", dev, got)
		}
		tpl := st.Templates[st.Devices[map[string]int{"th-1": 0, "meter-1": 1}[dev]].Template]
		units := map[string]string{}
		for _, s := range tpl.Body.Signals() {
			units[s.Name] = orDash(s.Unit)
		}
		for _, r := range rs {
			val := r.Value.String()
			if r.Value.Kind == signal.Number {
				val = model.Number(r.Value.Num).String() // in plain decimals
			}
			row := fmt.Sprintf("%s  %s  %s  good", r.Signal, val, units[r.Signal])
			if !containsFields(got, row) {
				t.Errorf("read %s: no row %q in:\n%s", dev, row, got)
			}
		}
		if strings.Contains(got, "but it met") {
			t.Errorf("read %s on a clean connection says it met lost or damaged frames:\n%s", dev, got)
		}
	}

	var out, errb bytes.Buffer
	code := cli([]string{"read", "-config", path, "-timeout", "3s", "gone-9"}, &out, &errb)
	if code != 1 {
		t.Errorf("read of a silent unit: exit %d, want 1\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	if all := out.String() + errb.String(); !strings.Contains(all, "temperature  -      °C    bad\n") ||
		!strings.Contains(all, "no answer from unit 9 while units 1 and 2 answer: wrong unit id, or device off\n") {
		t.Errorf("read of a silent unit does not show bad readings and the reason:\n%s", all)
	}

	out.Reset()
	errb.Reset()
	if code := cli([]string{"read", "-config", path, "th-2"}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), `has no device "th-2" (devices: [th-1 meter-1 gone-9])`) {
		t.Errorf("read of an unknown device: exit %d, stderr %q", code, errb.String())
	}
}

// TestReadFlakyDevice: a device that loses half its answers (a failing
// transceiver, in the simulator) and answers a retry: `gateway read` shows
// its values, exits 0, and says what the requests met on the way, for the
// installer to mend before leaving. Which tries fail is chance, so the
// device is read until one read met a lost answer and then got a good one
// (about one read in two; twenty reads all without are one in 100,000).
func TestReadFlakyDevice(t *testing.T) {
	st := writeStation(t, fmt.Sprintf(`version: 2
station: {id: rd-3, type: police_room}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: lan, protocol: modbus-tcp, address: "%s", timeout: 100ms, retries: 3}
devices:
  - {id: th-1, template: xy-md02, link: lan, unit_id: 1, poll: 1s}
`, t.TempDir(), freeAddr(t)))
	simulate(t, st, &served{rs: map[string][]sim.Reading{}}).SetFlaky("th-1", 0.5)
	const caveat = ": frames lost or damaged on the way; check the wiring (termination, grounding) or the network\n"
	var seen []string
	for range 20 {
		var out, errb bytes.Buffer
		code := cli([]string{"read", "-config", st.File, "-timeout", "5s", "th-1"}, &out, &errb)
		got := out.String()
		seen = append(seen, fmt.Sprintf("exit %d: %s%s", code, got, errb.String()))
		if code != 0 || !strings.Contains(got, "but it met") {
			continue
		}
		if !regexp.MustCompile(`\ntemperature +-?\d+(\.\d+)? +°C +good\n`).MatchString(got) ||
			!regexp.MustCompile(`\n\nanswered, but it met timeouts [1-3]`+regexp.QuoteMeta(caveat)+`$`).MatchString(got) {
			t.Fatalf("a read that met lost answers:\n%s\nwant the values, then %q", got, "answered, but it met timeouts N"+caveat)
		}
		return
	}
	t.Fatalf("no read in 20 met a lost answer and then a good one:\n%s", strings.Join(seen, "\n"))
}

// freeAddr is a loopback address where nothing listens.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// writeStation writes a station file of src into a directory of its own
// and loads it.
func writeStation(t *testing.T, src string) *configs.Station {
	t.Helper()
	return writeStationAt(t, filepath.Join(t.TempDir(), "station.yaml"), src)
}

// writeStationAt writes a station file of src at path and loads it.
func writeStationAt(t *testing.T, path, src string) *configs.Station {
	t.Helper()
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// simulate serves the station's first link with the simulator until the
// test ends, the devices named silent never answering.
func simulate(t *testing.T, st *configs.Station, sink sim.Sink, silent ...string) *sim.Faults {
	t.Helper()
	o := sim.Options{Seed: 1, Start: time.Now(), Sink: sink, Log: slog.New(slog.DiscardHandler), Faults: sim.NewFaults(silent...)}
	_, stop, err := sim.Start(st, &st.Links[0], o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	return o.Faults
}

// containsFields says whether text has a line with the fields of row, in
// order, however the columns are padded.
func containsFields(text, row string) bool {
	want := strings.Fields(row)
	for _, l := range strings.Split(text, "\n") {
		if f := strings.Fields(l); len(f) == len(want) && strings.Join(f, " ") == strings.Join(want, " ") {
			return true
		}
	}
	return false
}

// TestReadModuleWithoutLatch: a panic box whose template reads the
// module's latch (dcon-panic-box-latched, an I-7050) on a 7050 without one.
// Its values are good, but the box is not as its template says, and a
// press shorter than its alarm poll can be lost: `gateway read` shows the
// values, says why with the device's health, and exits 1 (commission
// takes the same first readings and health).
func TestReadModuleWithoutLatch(t *testing.T) {
	dir := t.TempDir()
	tmpl, err := os.ReadFile("../../../configs/devices/dcon-panic-box-latched.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl = []byte(strings.NewReplacer("template: dcon-panic-box-latched", "template: no-latch-7050", "latch: true", "latch: false").Replace(string(tmpl)))
	if err := os.Mkdir(filepath.Join(dir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "devices", "no-latch-7050.yaml"), tmpl, 0o600); err != nil {
		t.Fatal(err)
	}
	// station is a station file of the box on template, beside the
	// templates.
	station := func(name, template string) *configs.Station {
		return writeStationAt(t, filepath.Join(dir, name), fmt.Sprintf(`version: 2
station: {id: sp-1, type: safety_post}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: rs485-1, protocol: dcon, port: %s, baud: 38400, timeout: 100ms}
devices:
  - {id: box-1, template: %s, link: rs485-1, address: 0x01, checksum: true}
`, filepath.Join(dir, "state"), filepath.Join(dir, "box"), template))
	}
	simulate(t, station("sim.yaml", "no-latch-7050"), &served{rs: map[string][]sim.Reading{}})
	st := station("station.yaml", "dcon-panic-box-latched")
	var out, errb bytes.Buffer
	code := cli([]string{"read", "-config", st.File, "-timeout", "5s", "box-1"}, &out, &errb)
	const why = "degraded: module at address 01 refuses $01L1 (read latched inputs), which template dcon-panic-box-latched needs: use a template without latch: true for a module that has none (a press shorter than alarm_poll can be lost)"
	if code != 1 || !containsFields(out.String(), "pressed  false  -  good") || !strings.HasSuffix(out.String(), "\n"+why+"\n") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s\nwant exit 1, pressed false and good, and last %q", code, out.String(), errb.String(), why)
	}
}

// TestReadLineDevice: `gateway read` of an NMEA GPS, whose signals come
// in two kinds of line (RMC and GGA), served by the simulator on a pty:
// every signal, from whichever line carries it.
func TestReadLineDevice(t *testing.T) {
	dir := t.TempDir()
	st := writeStation(t, fmt.Sprintf(`version: 2
station: {id: rd-2, type: police_cube}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: gps-line, protocol: line, port: %s, baud: 9600}
devices:
  - {id: gps-1, template: nmea-gps, link: gps-line}
`, filepath.Join(dir, "state"), filepath.Join(dir, "gps")))
	path := st.File
	simulate(t, st, &served{rs: map[string][]sim.Reading{}})
	var out, errb bytes.Buffer
	if code := cli([]string{"read", "-config", path, "-timeout", "5s", "gps-1"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out.String(), errb.String())
	}
	t.Log(out.String())
	for _, row := range []string{"fix  true  -  good", "latitude  30.27415  °  good", "satellites"} {
		if !strings.Contains(out.String(), strings.Fields(row)[0]) || len(strings.Fields(row)) > 1 && !containsFields(out.String(), row) {
			t.Errorf("no row %q in:\n%s", row, out.String())
		}
	}
}

// TestReadKeepsNoAlarm: an alarm panel's event that comes while gateway
// read or commission runs is not acknowledged (they forward nothing to
// the hub): the panel sends it again, and the gateway gets it once it
// runs.
func TestReadKeepsNoAlarm(t *testing.T) {
	st, panel := startPanel(t, "0s")
	link := drivers.Links(st)[0]

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := firstReadings(ctx, link, slog.New(slog.DiscardHandler))
		done <- err
	}()
	if err := panel.(sim.Actor).Act(ctx, "alarm", map[string]string{"code": "120", "zone": "1"}); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := panel.Stats().EventsServed; n != 0 {
		t.Fatalf("while the tool ran, %d alarms of the panel were acknowledged, want none", n)
	}

	d, err := drivers.New(link, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan model.Message, 10)
	gctx, gcancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() {
		ran <- d.Run(gctx, func(m model.Message) error {
			if m.Kind == model.KindEvent {
				events <- m
			}
			return nil
		})
	}()
	defer func() {
		gcancel()
		if err := <-ran; err != nil {
			t.Error(err)
		}
	}()
	select {
	case e := <-events:
		if e.Event.Kind != "panic" || e.Event.Details["code"] != "120" {
			t.Errorf("the gateway got %s %v, want the panic of code 120", e.Event.Kind, e.Event.Details)
		}
		// The ACK is written after the emit: the panel counts it soon.
		for deadline := time.Now().Add(5 * time.Second); panel.Stats().EventsServed != 1 && time.Now().Before(deadline); {
			time.Sleep(10 * time.Millisecond)
		}
		if n := panel.Stats().EventsServed; n != 1 {
			t.Errorf("the panel counts %d alarms acknowledged, want 1", n)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the panel's alarm did not reach the gateway within 15 s of the tool's end")
	}
}

// startPanel writes a station of one DC-09 alarm panel, whose periodic
// tests come every tests (0s: none), and runs the simulated panel until
// the test ends.
func startPanel(t *testing.T, tests string) (*configs.Station, sim.Device) {
	t.Helper()
	st := writeStation(t, fmt.Sprintf(`version: 2
station: {id: sp-1, type: safety_post}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: alarm-rx, protocol: sia-dc09, listen: "%s"}
devices:
  - {id: panel-1, template: generic-alarm-panel, link: alarm-rx, account: "1234", supervision: 30s, sim: {tests: %s}}
`, t.TempDir(), freeAddr(t), tests))
	l, stop, err := sim.Start(st, &st.Links[0], sim.Options{Seed: 1, Start: time.Now(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	return st, l.Devices()[0]
}

// TestReadPanel: an alarm panel sends events, no readings; gateway read
// says that it answers, as commission does, and exits 0.
func TestReadPanel(t *testing.T) {
	st, _ := startPanel(t, "1s")
	var out, errb bytes.Buffer
	code := cli([]string{"read", "-config", st.File, "-timeout", "3s", "panel-1"}, &out, &errb)
	if want := "panel-1 on alarm-rx (sia-dc09): OK: it answers (no readings to show)\n"; code != 0 || out.String() != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 0 and %q", code, out.String(), errb.String(), want)
	}
}
