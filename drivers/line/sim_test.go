package line

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/drivers/bus"
	_ "outpost/firmware-sim/line" // the simulated devices, on real ptys
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
)

// The tests here run the driver against the simulator's devices on a real
// pty (firmware-sim/vport), paced to the line's baud rate.

// loadStation writes a station file with these links and devices (YAML
// list items), and the templates given by name, into dir and loads it;
// {{port}} stands for dir/ttyLINE.
func loadStation(t testing.TB, dir, links, devices string, templates map[string]string) *configs.Station {
	t.Helper()
	os.MkdirAll(filepath.Join(dir, "devices"), 0o755)
	for name, src := range templates {
		if err := os.WriteFile(filepath.Join(dir, "devices", name+".yaml"), []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	port := filepath.Join(dir, "ttyLINE")
	src := "version: 2\nstation: {id: gs-1, type: grid_station}\nhub:\n  mqtt: {url: \"tcp://127.0.0.1:1883\"}\nlinks:\n" +
		strings.ReplaceAll(links, "{{port}}", port) + "devices:\n" + devices
	path := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// sink keeps what the simulated devices served and raised.
type sink struct {
	mu     sync.Mutex
	served map[string][][]sim.Reading // device -> the readings of each line, in order
	raised []sim.Raised
}

func (s *sink) Served(dev string, rs []sim.Reading) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.served == nil {
		s.served = map[string][][]sim.Reading{}
	}
	s.served[dev] = append(s.served[dev], rs)
}

func (s *sink) Raised(r sim.Raised) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.raised = append(s.raised, r)
}

func (s *sink) lines(dev string) [][]sim.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([][]sim.Reading(nil), s.served[dev]...)
}

// simulated is the simulator of the station's first link, running until
// the test ends.
type simulated struct {
	sim.Link
	sink   *sink
	faults *sim.Faults
	stop   func() error
}

// The links named in echo have an adapter that echoes what the gateway
// sends.
func startSim(t testing.TB, st *configs.Station, opts ...func(*sim.Options)) *simulated {
	t.Helper()
	s := &simulated{sink: &sink{}, faults: sim.NewFaults()}
	o := sim.Options{Sink: s.sink, Start: time.Now(), Log: slog.New(slog.DiscardHandler), Turnaround: -1, Faults: s.faults, Seed: 3,
		Echo: map[string]bool{}}
	for _, opt := range opts {
		opt(&o)
	}
	l, stop, err := sim.Start(st, &st.Links[0], o)
	if err != nil {
		t.Fatal(err)
	}
	s.Link = l
	var once sync.Once
	s.stop = func() error {
		var err error
		once.Do(func() { err = stop() })
		return err
	}
	t.Cleanup(func() {
		if err := s.stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	return s
}

func (s *simulated) device(t testing.TB, id string) sim.Device {
	t.Helper()
	for _, d := range s.Devices() {
		if d.ID() == id {
			return d
		}
	}
	t.Fatalf("no simulated device %s", id)
	return nil
}

func (s *simulated) act(t testing.TB, id, action string, args map[string]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.device(t, id).(sim.Actor).Act(ctx, action, args); err != nil {
		t.Fatalf("%s %s: %v", id, action, err)
	}
}

// running is the driver running until the test ends; all keeps every
// message it emitted.
type running struct {
	l       *Link
	msgs    chan model.Message
	pending []model.Message
	mu      sync.Mutex
	all     []model.Message
	stop    func()
}

func runLink(t testing.TB, st *configs.Station) *running {
	t.Helper()
	var h slog.Handler = slog.DiscardHandler
	if testing.Verbose() {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	d, err := drivers.New(drivers.Links(st)[0], slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	r := &running{l: d.(*Link), msgs: make(chan model.Message, 100000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- d.Run(ctx, func(m model.Message) error {
			r.mu.Lock()
			r.all = append(r.all, m)
			r.mu.Unlock()
			r.msgs <- m
			return nil
		})
	}()
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

// next returns the next message of a device and kind that satisfies ok,
// dropping the earlier ones of that device and kind; those of others wait
// for their own next call.
func (r *running) next(t testing.TB, dev string, kind model.Kind, within time.Duration, ok func(model.Message) bool) model.Message {
	t.Helper()
	for i := 0; i < len(r.pending); i++ {
		if m := r.pending[i]; m.Device == dev && m.Kind == kind {
			r.pending = append(r.pending[:i:i], r.pending[i+1:]...)
			i--
			if ok == nil || ok(m) {
				return m
			}
		}
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m := <-r.msgs:
			if m.Device != dev || m.Kind != kind {
				r.pending = append(r.pending, m)
				continue
			}
			if ok == nil || ok(m) {
				return m
			}
		case <-timer.C:
			t.Fatalf("no such %s message from %s within %v", kind, dev, within)
		}
	}
}

// counters are a device's health counters now (the driver stopped).
func (r *running) counters(dev string) map[string]uint64 {
	for _, d := range r.l.devs {
		if d.id == dev {
			d.mu.Lock()
			defer d.mu.Unlock()
			h, _ := d.health.Observe(bus.Result{})
			return h.Counters
		}
	}
	return nil
}

// values writes a message's readings as signal=value, in order.
func values(m model.Message) string { return valuesOf(m.Readings) }

// sorted writes readings as values does, by signal.
func sorted(rs []model.Reading) string {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b model.Reading) int { return strings.Compare(a.Signal, b.Signal) })
	return valuesOf(rs)
}

func valuesOf(rs []model.Reading) string {
	var out []string
	for _, r := range rs {
		s := r.Signal + "=" + r.Value.String()
		if r.Quality != model.Good {
			s += "(" + string(r.Quality) + ")"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

// simValues writes served readings as sorted does.
func simValues(rs []sim.Reading) string {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b sim.Reading) int { return strings.Compare(a.Signal, b.Signal) })
	var out []string
	for _, r := range rs {
		v := r.Value.String()
		if r.Value.Kind == signal.Text {
			v = r.Value.Text
		}
		out = append(out, r.Signal+"="+v)
	}
	return strings.Join(out, " ")
}

func has(sub string) func(model.Message) bool {
	return func(m model.Message) bool { return strings.Contains(" "+values(m)+" ", " "+sub+" ") }
}

func state(s model.HealthState) func(model.Message) bool {
	return func(m model.Message) bool { return m.Health != nil && m.Health.State == s }
}

// kiosk is legacy-kiosk-line with constant values and a status line five
// times a second, so that a test sees many lines.
const kiosk = `template: test-kiosk
protocol: line
kind: kiosk
alarm: true
framing: {start: "\x02", end: "\x03", max_length: 128}
checksum: {type: crc16-modbus, marker: "*"}
lines:
  - {name: status, prefix: "KSK,STAT,", pairs: {}, every: 200ms,
     format: "KSK,STAT,T={T:.1},H={H:.1},DOOR={DOOR},TAMPER={TAMPER},CALL={CALL},HB={HB}"}
  - {name: event, prefix: "KSK,EVT,", pairs: {}, on_change: true, format: "KSK,EVT,CALL={CALL},DOOR={DOOR},TAMPER={TAMPER}"}
signals:
  - {signal: emergency_call, field: CALL, type: bool, event: {kind: emergency_call, severity: critical, clear: true}}
  - {signal: door, field: DOOR, type: bool, event: {kind: door, severity: warning, clear: true}}
  - {signal: tamper, field: TAMPER, type: bool, event: {kind: tamper, severity: critical, clear: true}}
  - {signal: temperature, field: T, line: status, type: float, unit: "°C", sim: {wave: constant, value: 23.46}}
  - {signal: humidity, field: H, line: status, type: float, unit: "%RH", sim: {wave: constant, value: 45.2}}
  - {signal: heartbeat, field: HB, line: status, type: int, sim: {wave: constant, value: 1234}}
`

// TestKiosk: a kiosk that talks on its own. Its values are decoded
// exactly; a press of its emergency call button comes as an event line
// at once; garbage, a line cut short, a bad checksum and a line too long
// are each counted by reason, the device degraded, and the next good line
// decoded (the whole line after one cut short without waiting for the
// next); silent, it goes offline after its silence, and back online when
// it talks again. Nothing it served is lost, and nothing is published
// that it did not serve.
func TestKiosk(t *testing.T) {
	dir := t.TempDir()
	// retries: 0, so that every bad line counts against the health.
	st := loadStation(t, dir, "  - {id: k, protocol: line, port: \"{{port}}\", baud: 9600, retries: 0}\n",
		"  - {id: kiosk-1, template: test-kiosk, link: k, silence: 1s}\n", map[string]string{"test-kiosk": kiosk})
	s := startSim(t, st)
	r := runLink(t, st)

	const status = "emergency_call=false door=false tamper=false temperature=23.5 humidity=45.2 heartbeat=1234"
	if m := r.next(t, "kiosk-1", model.KindTelemetry, 3*time.Second, nil); values(m) != status {
		t.Fatalf("first line: %s\nwant %s", values(m), status)
	}
	if h := r.next(t, "kiosk-1", model.KindHealth, 2*time.Second, nil).Health; h.State != model.Online {
		t.Fatalf("health %s %q, want online", h.State, h.Reason)
	}

	// The button: an event line at once, and another when let go.
	pressed := time.Now()
	s.act(t, "kiosk-1", "press", map[string]string{"hold": "300ms"})
	on := r.next(t, "kiosk-1", model.KindTelemetry, time.Second, has("emergency_call=true"))
	if took := time.Since(pressed); took > 150*time.Millisecond {
		t.Errorf("the press reached the driver after %v, want within a line's wire time and a little", took)
	}
	if values(on) != "emergency_call=true door=false tamper=false" {
		t.Errorf("event line: %s", values(on))
	}
	r.next(t, "kiosk-1", model.KindTelemetry, time.Second, has("emergency_call=false"))

	// Damage, each counted by its reason; the next good line decoded.
	for _, c := range []struct{ action, counter string }{
		{"garbage", ReasonGarbage}, {"truncate", ReasonTruncated}, {"bad_checksum", ReasonChecksum}, {"too_long", ReasonTooLong},
	} {
		s.act(t, "kiosk-1", c.action, nil)
		h := r.next(t, "kiosk-1", model.KindHealth, time.Second, state(model.Degraded)).Health
		if h.Counters[c.counter] != 1 || !strings.HasPrefix(h.Reason, "bad line: ") {
			t.Errorf("%s: health %s %q %v, want %s counted once", c.action, h.State, h.Reason, h.Counters, c.counter)
		}
		t.Logf("%s: %s", c.action, h.Reason)
		m := r.next(t, "kiosk-1", model.KindTelemetry, time.Second, nil)
		if values(m) != status {
			t.Errorf("after %s: %s, want %s", c.action, values(m), status)
		}
		if h := r.next(t, "kiosk-1", model.KindHealth, time.Second, nil).Health; h.State != model.Online {
			t.Errorf("after %s and a good line: %s %q", c.action, h.State, h.Reason)
		}
	}

	// Silent: offline after its silence, its signals bad; back online.
	s.faults.SetSilent("kiosk-1", true)
	quiet := time.Now()
	h := r.next(t, "kiosk-1", model.KindHealth, 3*time.Second, state(model.Offline)).Health
	if took := time.Since(quiet); took < 800*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("offline after %v, want after the silence of 1s", took)
	}
	if !strings.HasPrefix(h.Reason, "nothing received for 1s") {
		t.Errorf("offline reason %q", h.Reason)
	}
	if m := r.next(t, "kiosk-1", model.KindTelemetry, time.Second, has("temperature=<none>(bad)")); values(m) !=
		"emergency_call=<none>(bad) door=<none>(bad) tamper=<none>(bad) temperature=<none>(bad) humidity=<none>(bad) heartbeat=<none>(bad)" {
		t.Errorf("silent: %s, want its signals bad", values(m))
	}
	s.faults.SetSilent("kiosk-1", false)
	r.next(t, "kiosk-1", model.KindHealth, 2*time.Second, state(model.Online))
	r.next(t, "kiosk-1", model.KindTelemetry, time.Second, has("temperature=23.5"))

	// Quiet the line, then hold the driver to what was served: every line,
	// value for value (the whole line sent right after the one cut short
	// among them), and the events.
	s.faults.SetSilent("kiosk-1", true)
	time.Sleep(300 * time.Millisecond)
	r.stop()
	checkServed(t, s, r, "kiosk-1")
	if ev := s.device(t, "kiosk-1").Stats().EventsServed; ev != 2 {
		t.Errorf("events served %d, want 2 (the press and its release)", ev)
	}
	s.sink.mu.Lock()
	raised := fmt.Sprint(s.sink.raised)
	s.sink.mu.Unlock()
	if !strings.Contains(raised, "emergency_call active") || !strings.Contains(raised, "emergency_call cleared") {
		t.Errorf("raised %s, want the emergency call active and cleared", raised)
	}
}

// checkServed holds the driver's good telemetry of a device to what the
// simulator served, line for line and value for value.
func checkServed(t *testing.T, s *simulated, r *running, dev string) {
	t.Helper()
	var got []string
	r.mu.Lock()
	for _, m := range r.all {
		if m.Device == dev && m.Kind == model.KindTelemetry && !strings.Contains(values(m), "(bad)") {
			got = append(got, sorted(m.Readings))
		}
	}
	r.mu.Unlock()
	var want []string
	for _, rs := range s.sink.lines(dev) {
		want = append(want, simValues(rs))
	}
	n := 0
	for _, rs := range s.sink.lines(dev) {
		n += len(rs)
	}
	if st := s.device(t, dev).Stats(); st.ReadingsServed != int64(n) {
		t.Errorf("%s: stats say %d readings served, the sink saw %d", dev, st.ReadingsServed, n)
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s: the driver published %d lines, the device served %d\n--- published:\n%s\n--- served:\n%s",
			dev, len(got), len(want), strings.Join(got, "\n"), strings.Join(want, "\n"))
		return
	}
	t.Logf("%s: %d lines served and published alike", dev, len(got))
}

// settle silences polled devices and waits until a poll of each found it
// silent, so that no answer they served is still on its way; then it
// stops the driver and checks that each published exactly what it served.
func settle(t *testing.T, s *simulated, r *running, devs ...string) {
	t.Helper()
	for _, dev := range devs {
		s.faults.SetSilent(dev, true)
	}
	for _, dev := range devs {
		r.next(t, dev, model.KindTelemetry, 5*time.Second, func(m model.Message) bool { return strings.Contains(values(m), "(bad)") })
	}
	r.stop()
	for _, dev := range devs {
		checkServed(t, s, r, dev)
	}
}

// TestPolled: two Vaisala transmitters on one RS-485 line, polled by
// address. Each answer is decoded to the value the device served; a
// silent one goes offline with a reason that names the other; an answer
// cut short is followed by the whole one, which is taken. All of it also
// through an adapter that echoes the poll commands: a silent device's
// echoed command is not taken for its answer.
func TestPolled(t *testing.T) {
	for _, echo := range []bool{false, true} {
		t.Run(map[bool]string{false: "clean line", true: "adapter echoes"}[echo], func(t *testing.T) { polled(t, echo) })
	}
}

func polled(t *testing.T, echo bool) {
	dir := t.TempDir()
	// An answer takes some 36 ms at 19200 baud; the timeout leaves a loaded
	// machine's stalls room, or an answer later than twice it is taken
	// for the other device's (docs/line-devices.md).
	st := loadStation(t, dir, "  - {id: rs485, protocol: line, port: \"{{port}}\", baud: 19200, timeout: 150ms, retries: 1}\n",
		`  - {id: th-5, template: vaisala-hmdw110, link: rs485, address: 5, poll: 100ms}
  - {id: th-6, template: vaisala-hmdw110, link: rs485, address: 6, poll: 100ms}
`, nil)
	s := startSim(t, st, func(o *sim.Options) { o.Echo["rs485"] = echo })
	r := runLink(t, st)
	for _, dev := range []string{"th-5", "th-6"} {
		m := r.next(t, dev, model.KindTelemetry, 3*time.Second, nil)
		if !strings.HasPrefix(values(m), "temperature=") || strings.Contains(values(m), "(") {
			t.Errorf("%s: %s", dev, values(m))
		}
		if h := r.next(t, dev, model.KindHealth, 2*time.Second, nil).Health; h.State != model.Online {
			t.Errorf("%s: %s %q", dev, h.State, h.Reason)
		}
	}
	// A cut answer: the whole one after it is taken, the cut counted.
	s.act(t, "th-5", "truncate", nil)
	// Garbage before an answer.
	s.act(t, "th-5", "garbage", map[string]string{"bytes": "40"})

	s.faults.SetSilent("th-6", true)
	h := r.next(t, "th-6", model.KindHealth, 5*time.Second, state(model.Offline)).Health
	const want = "no answer from address 6 while address 5 answers: wrong address or baud rate, device not in poll mode, or device off"
	if h.Reason != want {
		t.Errorf("reason %q, want %q", h.Reason, want)
	}
	s.faults.SetSilent("th-6", false)
	r.next(t, "th-6", model.KindHealth, 5*time.Second, state(model.Online))

	settle(t, s, r, "th-5", "th-6")
	c := r.counters("th-5")
	if c[ReasonTruncated] != 1 || c[ReasonUnmatched] != 1 {
		t.Errorf("th-5 counters %v, want a line cut short and the garbage counted", c)
	}
}

// TestLateAnswer: a Vaisala transmitter that answers after the link's
// timeout, beside another on its line. Its answers, which do not say who
// sent them, are taken as its own, late, and never as its neighbour's:
// each device publishes exactly the values it served.
func TestLateAnswer(t *testing.T) {
	dir := t.TempDir()
	// At 19200 baud a command waits 150 ms and a whole line's time on the
	// wire (70 ms) for its answer; th-5's comes 250 ms after the command
	// ends, and takes some 36 ms on the wire: 66 ms past the deadline, and
	// 84 ms before the wait for a late answer ends (room for a loaded
	// machine's stalls either way).
	st := loadStation(t, dir, "  - {id: rs485, protocol: line, port: \"{{port}}\", baud: 19200, timeout: 150ms, retries: 1}\n",
		`  - {id: th-5, template: vaisala-hmdw110, link: rs485, address: 5, poll: 200ms}
  - {id: th-6, template: vaisala-hmdw110, link: rs485, address: 6, poll: 200ms}
`, nil)
	s := startSim(t, st)
	s.faults.SetSlow("th-5", 250*time.Millisecond)
	r := runLink(t, st)
	for range 10 {
		r.next(t, "th-5", model.KindTelemetry, 3*time.Second, nil)
	}
	if c := r.counters("th-5"); c["late_answers"] != c["requests"] || c["timeouts"] != 0 {
		t.Errorf("th-5 counters %v, want every answer counted late, and no timeout", c)
	}
	settle(t, s, r, "th-5", "th-6")
	if c := r.counters("th-6"); c["late_answers"] != 0 {
		t.Errorf("th-6 counters %v, want no late answer", c)
	}
}

// TestGPS: an NMEA receiver's position, decoded to the degrees the
// simulator served; a sentence cut short by the next one's $ is counted,
// and the next decoded; within the link's retries (one by default) it
// leaves the receiver online.
func TestGPS(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, "  - {id: gps, protocol: line, port: \"{{port}}\", baud: 9600}\n",
		"  - {id: gps-1, template: nmea-gps, link: gps, silence: 3s}\n", nil)
	s := startSim(t, st)
	r := runLink(t, st)
	m := r.next(t, "gps-1", model.KindTelemetry, 3*time.Second, has("fix=true"))
	if v := values(m); v != "fix=true latitude=30.27415 longitude=120.15507 speed=0 course=0" {
		t.Errorf("rmc: %s", v)
	}
	r.next(t, "gps-1", model.KindTelemetry, 3*time.Second, has("fix_mode=1"))
	s.act(t, "gps-1", "truncate", nil)
	r.next(t, "gps-1", model.KindTelemetry, time.Second, has("fix=true"))
	s.faults.SetSilent("gps-1", true)
	time.Sleep(300 * time.Millisecond)
	r.stop()
	checkServed(t, s, r, "gps-1")
	if c := r.counters("gps-1"); c[ReasonTruncated] != 1 || c["failures"] != 0 {
		t.Errorf("counters %v, want the sentence cut short counted, and no failure", c)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.all {
		if m.Kind == model.KindHealth && m.Health.State != model.Online {
			t.Errorf("health %s %q: one sentence cut short is within the link's retries", m.Health.State, m.Health.Reason)
		}
	}
}

// linkL is a line link l; bothKinds are a device d of each kind it
// carries: one that talks on its own, and one that is polled.
const linkL = "  - {id: l, protocol: line, port: \"{{port}}\", baud: 9600}\n"

var bothKinds = []struct{ name, device string }{
	{"talks on its own", "  - {id: d, template: nmea-gps, link: l, silence: 3s}\n"},
	{"polled", "  - {id: d, template: vaisala-hmdw110, link: l, address: 1, poll: 100ms}\n"},
}

// TestPortMissing: a link whose port is not there makes its devices
// offline at once, with the port's error as the reason, polled or not.
func TestPortMissing(t *testing.T) {
	for _, c := range bothKinds {
		t.Run(c.name, func(t *testing.T) {
			st := loadStation(t, t.TempDir(), linkL, c.device, nil)
			r := runLink(t, st)
			h := r.next(t, "d", model.KindHealth, 2*time.Second, nil).Health
			if h.State != model.Offline || !strings.Contains(h.Reason, "ttyLINE") {
				t.Errorf("health %s %q, want offline, naming the port", h.State, h.Reason)
			}
			if m := r.next(t, "d", model.KindTelemetry, time.Second, nil); !strings.Contains(values(m), "<none>(bad)") {
				t.Errorf("telemetry %s, want its signals bad", values(m))
			}
		})
	}
}

// TestUnplugged: an adapter unplugged under a device's link takes it
// offline with the port's failure, and then says the adapter is missing,
// as soon as the port's cause changes, polled or not.
func TestUnplugged(t *testing.T) {
	for _, c := range bothKinds {
		t.Run(c.name, func(t *testing.T) {
			st := loadStation(t, t.TempDir(), linkL, c.device, nil)
			s := startSim(t, st)
			r := runLink(t, st)
			r.next(t, "d", model.KindHealth, 5*time.Second, func(m model.Message) bool { return m.Health.State == model.Online })
			if err := s.stop(); err != nil {
				t.Fatal(err)
			}
			offline := func(m model.Message) bool { return m.Health.State == model.Offline }
			if h := r.next(t, "d", model.KindHealth, 5*time.Second, offline).Health; !strings.Contains(h.Reason, "ttyLINE") {
				t.Errorf("offline with reason %q, want the port named", h.Reason)
			}
			const missing = "no such file or directory: the adapter is unplugged"
			if h := r.next(t, "d", model.KindHealth, 3*time.Second, offline).Health; !strings.Contains(h.Reason, missing) {
				t.Errorf("then reason %q, want it to say %q", h.Reason, missing)
			}
		})
	}
}
