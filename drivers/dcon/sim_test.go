package dcon

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
	_ "outpost/firmware-sim/dcon" // the simulated modules, on real ptys
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
)

// The tests here run the driver against the simulator's modules on a
// real pty (firmware-sim/vport), paced to the line's baud rate.

// loadStation writes a station file with these links and devices (YAML
// list items) into dir and loads it; {{port}} stands for dir/ttyDCON.
func loadStation(t testing.TB, dir, links, devices string) *configs.Station {
	t.Helper()
	port := filepath.Join(dir, "ttyDCON")
	src := "version: 2\nstation: {id: sp-1, type: safety_post}\nhub:\n  mqtt: {url: \"tcp://127.0.0.1:1883\"}\nlinks:\n" +
		strings.ReplaceAll(links, "{{port}}", port) + "devices:\n" + devices
	path := filepath.Join(dir, fmt.Sprintf("station-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// startSim runs the simulator of the station's first link until the test
// ends.
func startSim(t testing.TB, st *configs.Station, o sim.Options) (sim.Link, *sim.Recorder) {
	t.Helper()
	sk := &sim.Recorder{}
	o.Sink, o.Start, o.Log = sk, time.Now(), slog.New(slog.DiscardHandler)
	l, stop, err := sim.Start(st, &st.Links[0], o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	return l, sk
}

// stamped is a message with the moment the driver emitted it.
type stamped struct {
	model.Message
	at time.Time
}

// running is the driver running until the test ends.
type running struct {
	b       *Bus
	msgs    chan stamped
	pending []stamped // read by next, of other devices or kinds
	stop    func()
}

func runBus(t testing.TB, st *configs.Station) *running {
	t.Helper()
	return runLink(t, drivers.Links(st)[0])
}

// runLink is runBus of a link of one's own.
func runLink(t testing.TB, link drivers.Link) *running {
	t.Helper()
	var h slog.Handler = slog.DiscardHandler
	if testing.Verbose() {
		h = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	d, err := drivers.New(link, slog.New(h))
	if err != nil {
		t.Fatal(err)
	}
	return runBuilt(t, d.(*Bus))
}

// runBuilt runs a bus built already (on a responder's pty) until the test ends.
func runBuilt(t testing.TB, b *Bus) *running {
	t.Helper()
	r := &running{b: b, msgs: make(chan stamped, 100000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- b.Run(ctx, func(m model.Message) error { r.msgs <- stamped{m, time.Now()}; return nil })
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
func (r *running) next(t testing.TB, dev string, kind model.Kind, within time.Duration, ok func(stamped) bool) stamped {
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

// value is a reading of a message.
func value(m stamped, signal string) (model.Reading, bool) {
	for _, r := range m.Readings {
		if r.Signal == signal {
			return r, true
		}
	}
	return model.Reading{}, false
}

// good says whether a message carries a good reading of signal equal to v.
func good(signal string, v bool) func(stamped) bool {
	return func(m stamped) bool {
		r, ok := value(m, signal)
		return ok && r.Quality == model.Good && r.Value.Equal(model.Bool(v))
	}
}

const twoModules = `  - {id: rs485-2, protocol: dcon, port: "{{port}}", baud: 9600, timeout: 100ms}
`

// TestModules: two modules on one bus, one with its checksum on, are read
// and identified; a press of the panic button reaches the driver within
// the alarm interval and a few commands' wire time; outputs are set by
// command exactly once each; values and signals they cannot take are
// refused before anything is sent. All of it also through an adapter that
// echoes every command (a two-wire RS-485 adapter that hears itself).
func TestModules(t *testing.T) {
	for _, echo := range []bool{false, true} {
		t.Run(map[bool]string{false: "clean line", true: "adapter echoes"}[echo], func(t *testing.T) { modules(t, echo) })
	}
}

func modules(t *testing.T, echo bool) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, poll: 1s, alarm_poll: 50ms}
  - {id: dio-1, template: adam-4050, link: rs485-2, address: 0x1A, checksum: true, poll: 200ms}
`)
	l, sk := startSim(t, st, sim.Options{Turnaround: -1, Echo: map[string]bool{"rs485-2": echo}})
	r := runBus(t, st)
	m := r.next(t, "box-1", model.KindTelemetry, 5*time.Second, good("pressed", false))
	for _, want := range []string{"pressed", "tamper", "led", "siren"} {
		if rd, ok := value(m, want); !ok || rd.Quality != model.Good || !rd.Value.Equal(model.Bool(false)) {
			t.Errorf("box-1 %s = %+v, want good false", want, rd)
		}
	}
	r.next(t, "dio-1", model.KindTelemetry, 5*time.Second, good("do7", false))
	for _, dev := range []string{"box-1", "dio-1"} {
		if h := r.next(t, dev, model.KindHealth, 5*time.Second, nil).Health; h.State != model.Online {
			t.Errorf("%s: health %s %q, want online", dev, h.State, h.Reason)
		}
	}
	actors := map[string]sim.Actor{}
	for _, d := range l.Devices() {
		actors[d.ID()] = d.(sim.Actor)
	}

	// A press, seen by an alarm poll.
	pressed := time.Now()
	if err := actors["box-1"].Act(context.Background(), "press", map[string]string{"hold": "400ms"}); err != nil {
		t.Fatal(err)
	}
	on := r.next(t, "box-1", model.KindTelemetry, 2*time.Second, good("pressed", true))
	took := on.at.Sub(pressed)
	// The alarm interval, then at most a command in flight, the read that
	// saw it and the read that confirmed it: each ~15 ms at 9600 baud.
	if limit := 50*time.Millisecond + 3*25*time.Millisecond; took > limit {
		t.Errorf("the press reached the driver after %v, want within %v", took, limit)
	}
	t.Logf("press seen after %v", took.Round(time.Millisecond))
	r.next(t, "box-1", model.KindTelemetry, 2*time.Second, good("pressed", false))
	if got := sk.All(); len(got) != 2 || got[0].Kind != "panic" || got[0].State != "active" || got[1].State != "cleared" || got[0].Source != "dcon" {
		t.Errorf("raised %+v, want panic active, then cleared", got)
	}

	// Commands.
	ctx := context.Background()
	if err := r.b.Set(ctx, "box-1", "siren", model.Bool(true)); err != nil {
		t.Fatal(err)
	}
	if err := r.b.Set(ctx, "dio-1", "do7", model.Bool(true)); err != nil {
		t.Fatal(err)
	}
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("siren", true))
	r.next(t, "dio-1", model.KindTelemetry, 3*time.Second, good("do7", true))
	for dev, want := range map[string]string{"box-1": "map[siren:1]", "dio-1": "map[do7:1]"} {
		var st sim.Stats
		for _, d := range l.Devices() {
			if d.ID() == dev {
				st = d.Stats()
			}
		}
		if got := fmt.Sprint(st.Writes); got != want {
			t.Errorf("%s: writes %s, want %s", dev, got, want)
		}
	}
	refusals := []struct {
		dev, signal string
		v           model.Value
		want        string
	}{
		{"box-1", "pressed", model.Bool(true), "device box-1 on rs485-2: pressed is an input; only outputs (led, siren) can be set"},
		{"box-1", "horn", model.Bool(true), "device box-1 on rs485-2: no output horn (outputs: led, siren)"},
		{"box-1", "led", model.Number(1), "device box-1 on rs485-2: output led takes true or false, not 1"},
		{"box-9", "led", model.Bool(true), "no device box-9 on rs485-2"},
	}
	for _, c := range refusals {
		if err := r.b.Set(ctx, c.dev, c.signal, c.v); err == nil || err.Error() != c.want {
			t.Errorf("Set(%s, %s, %v) = %v, want %q", c.dev, c.signal, c.v, err, c.want)
		}
	}
}

// TestWrongModule: a module that names itself otherwise than its template
// is degraded with a reason an installer understands, none of its values
// is good, and its outputs are not written.
func TestWrongModule(t *testing.T) {
	dir := t.TempDir()
	simSt := loadStation(t, dir, twoModules, `  - {id: dio-3, template: adam-4055, link: rs485-2, address: 0x03}
`)
	l, _ := startSim(t, simSt, sim.Options{Turnaround: -1})
	st := loadStation(t, dir, twoModules, `  - {id: dio-3, template: adam-4050, link: rs485-2, address: 0x03, poll: 100ms}
`)
	r := runBus(t, st)
	h := r.next(t, "dio-3", model.KindHealth, 5*time.Second, nil).Health
	const want = "module at address 03 says it is 4055, template adam-4050 expects 4050"
	if h.State != model.Degraded || h.Reason != want || h.Counters["wrong_module"] == 0 {
		t.Errorf("health %s %q %v, want degraded: %q", h.State, h.Reason, h.Counters, want)
	}
	for range 3 {
		m := r.next(t, "dio-3", model.KindTelemetry, 2*time.Second, nil)
		for _, rd := range m.Readings {
			if rd.Quality != model.Bad {
				t.Fatalf("reading %+v of a module that is not the template's", rd)
			}
		}
	}
	err := r.b.Set(context.Background(), "dio-3", "do0", model.Bool(true))
	if err == nil || !strings.HasSuffix(err.Error(), "not written: "+want) {
		t.Errorf("Set on the wrong module: %v", err)
	}
	if w := l.Devices()[0].Stats().Writes; len(w) != 0 {
		t.Errorf("the wrong module was written: %v", w)
	}
}

// TestSilentModule: a module that does not answer goes offline, with a
// reason that says the bus works, and is asked less and less; the others
// are read on.
func TestSilentModule(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, poll: 50ms}
  - {id: box-5, template: dcon-panic-box, link: rs485-2, address: 0x05, poll: 50ms}
`)
	startSim(t, st, sim.Options{Turnaround: -1, Faults: sim.NewFaults("box-5")})
	r := runBus(t, st)
	// Offline, and once box-1 was heard, with a reason that says the bus
	// works (before, "no answer from address 05" alone).
	const want = "no answer from address 05 while address 01 answers: wrong address, baud rate or checksum setting, or module off"
	r.next(t, "box-5", model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.State == model.Offline && m.Health.Reason == want })
	r.next(t, "box-1", model.KindTelemetry, time.Second, good("pressed", false))
}

// TestPressAfterReplug: a panic box that went silent (its cable pulled)
// and comes back pressed is back online before its press reaches the hub:
// its alarm poll, which hears it long before the backed-off probe of its
// offline poll, says so first.
func TestPressAfterReplug(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, poll: 2s, alarm_poll: 100ms}
`)
	st.Health.OfflineAfter = 1 // offline at the first silent poll; the probe comes 2 s later
	faults := sim.NewFaults("box-1")
	l, _ := startSim(t, st, sim.Options{Turnaround: -1, Faults: faults})
	r := runBus(t, st)
	r.next(t, "box-1", model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.State == model.Offline })
	if err := l.Devices()[0].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "2s"}); err != nil {
		t.Fatal(err)
	}
	faults.SetSilent("box-1", false)
	pressed := good("pressed", true)
	var got []string
	timeout := time.After(5 * time.Second)
	for !slices.Contains(got, "pressed") {
		select {
		case m := <-r.msgs:
			switch {
			case m.Kind == model.KindHealth:
				got = append(got, string(m.Health.State))
			case m.Kind == model.KindTelemetry && pressed(m):
				got = append(got, "pressed")
			}
		case <-timeout:
			t.Fatalf("no press within 5 s of the box's return (saw %v)", got)
		}
	}
	if want := []string{"online", "pressed"}; !slices.Equal(got, want) {
		t.Errorf("after the box came back: %v, want %v", got, want)
	}
	// And its poll runs at once, not at its probe 2 s after it went
	// offline: a poll publishes what it read, changed or not (an alarm
	// poll only a change, and the press is held for 2 s).
	r.next(t, "box-1", model.KindTelemetry, time.Second, pressed)
}

// TestLatchedPress: on a module that latches its inputs, a press made
// while no read could see it (the module's answers lost, right after a
// press the reads saw; or the gateway not running, though an installer's
// tool read the box meanwhile) reaches the hub, pressed and then
// released, and is counted as seen by the latch alone.
func TestLatchedPress(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box-latched, link: rs485-2, address: 0x01, checksum: true, poll: 2s, alarm_poll: 200ms}
`)
	st.Health.ReportEvery = 100 * time.Millisecond
	faults := sim.NewFaults()
	l, sk := startSim(t, st, sim.Options{Turnaround: -1, Faults: faults})
	box := l.Devices()[0]
	press := func() {
		t.Helper()
		if err := box.(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "20ms", "wait": "true"}); err != nil {
			t.Fatal(err)
		}
	}
	r := runBus(t, st)
	r.next(t, "box-1", model.KindTelemetry, 5*time.Second, good("pressed", false))
	// A press that reads see, and one right after its release, while the
	// module's answers are lost: the latch held the first at its clear,
	// but the read before the clear had seen it released.
	if err := box.(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "600ms"}); err != nil {
		t.Fatal(err)
	}
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", true))
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", false))
	// An alarm poll after the release (four commands: the latch high and
	// low, the I/O, the clear), should the poll have published it.
	afterPolls(t, box, 4)
	faults.SetSilent("box-1", true)
	press()
	faults.SetSilent("box-1", false)
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", true))
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", false))
	// The health goes with the next poll's.
	h := r.next(t, "box-1", model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.Counters["latched_presses"] > 0 }).Health
	if n := h.Counters["latched_presses"]; n != 1 {
		t.Errorf("latched_presses %d, want 1", n)
	}

	// The gateway stops; a press; an installer's tool reads the box (it
	// shows the press, and leaves it in the latch); the gateway starts
	// again.
	r.stop()
	press()
	link := drivers.Links(st)[0]
	link.Once = true
	tool := runLink(t, link)
	tool.next(t, "box-1", model.KindTelemetry, 5*time.Second, good("pressed", true))
	tool.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", false))
	tool.stop()
	r = runBus(t, st)
	r.next(t, "box-1", model.KindTelemetry, 5*time.Second, good("pressed", true))
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", false))
	got := sk.All()
	var states []string
	for _, a := range got {
		states = append(states, a.State)
	}
	if want := "active cleared active cleared active cleared"; strings.Join(states, " ") != want {
		t.Errorf("raised %v, want %s", states, want)
	}
	wantEdges(t, box, 6)
}

// afterPolls waits until the module has answered n more commands.
func afterPolls(t *testing.T, d sim.Device, n int64) {
	t.Helper()
	for want, deadline := d.Stats().Polls+n, time.Now().Add(3*time.Second); d.Stats().Polls < want; {
		if time.Now().After(deadline) {
			t.Fatalf("%s answered no %d commands within 3 s", d.ID(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantEdges checks that the module served want edges of its alarm inputs
// (sim.Stats.EventsServed). It counts an answer once it is sent, which
// may be after the driver read it.
func wantEdges(t *testing.T, d sim.Device, want int64) {
	t.Helper()
	for deadline := time.Now().Add(time.Second); d.Stats().EventsServed < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := d.Stats().EventsServed; n != want {
		t.Errorf("%s served %d edges of its alarm inputs, want %d", d.ID(), n, want)
	}
}

// TestLatchRefused: a module that names itself as the template says but
// has no latch (it answers $AAL1 with ?AA) is degraded with a reason that
// says what to change, and its presses are still read.
func TestLatchRefused(t *testing.T) {
	dir := t.TempDir()
	// The simulated module: a 7050 without the latch.
	tmpl, err := os.ReadFile("../../configs/devices/dcon-panic-box-latched.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tmpl = []byte(strings.NewReplacer("template: dcon-panic-box-latched", "template: no-latch-7050", "latch: true", "latch: false").Replace(string(tmpl)))
	if err := os.MkdirAll(filepath.Join(dir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "devices", "no-latch-7050.yaml"), tmpl, 0o644); err != nil {
		t.Fatal(err)
	}
	simSt := loadStation(t, dir, twoModules, `  - {id: box-1, template: no-latch-7050, link: rs485-2, address: 0x01, checksum: true}
`)
	l, _ := startSim(t, simSt, sim.Options{Turnaround: -1})
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box-latched, link: rs485-2, address: 0x01, checksum: true, poll: 200ms, alarm_poll: 100ms}
`)
	st.Health.ReportEvery = 100 * time.Millisecond
	r := runBus(t, st)
	const want = "module at address 01 refuses $01L1 (read latched inputs), which template dcon-panic-box-latched needs: use a template without latch: true for a module that has none (a press shorter than alarm_poll can be lost)"
	// The first poll says so (gateway commission shows its health).
	if h := r.next(t, "box-1", model.KindHealth, 5*time.Second, nil).Health; h.State != model.Degraded || h.Reason != want {
		t.Errorf("first health %s %q, want degraded: %q", h.State, h.Reason, want)
	}
	// The latch is not asked again.
	refused := r.next(t, "box-1", model.KindHealth, 5*time.Second, nil).Health.Counters["refused"]
	r.next(t, "box-1", model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.Counters["polls"] > 5 })
	if h := r.next(t, "box-1", model.KindHealth, 5*time.Second, nil).Health; h.State != model.Degraded || h.Counters["refused"] != refused || refused == 0 {
		t.Errorf("health %s %v, want degraded, refused %d times as at the start", h.State, h.Counters, refused)
	}
	if err := l.Devices()[0].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "600ms"}); err != nil {
		t.Fatal(err)
	}
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", true))
	r.next(t, "box-1", model.KindTelemetry, 3*time.Second, good("pressed", false))
}

// TestLatchedPressOnce: a press that reads saw is published once, though
// the latch holds it too, and the normal poll, which runs on its own,
// may publish its release between the latch's read and the alarm poll's
// end.
func TestLatchedPressOnce(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box-latched, link: rs485-2, address: 0x01, checksum: true, poll: 40ms, alarm_poll: 40ms}
`)
	l, sk := startSim(t, st, sim.Options{Turnaround: -1})
	r := runBus(t, st)
	r.next(t, "box-1", model.KindTelemetry, 5*time.Second, good("pressed", false))
	edges, was, messages := 0, false, 0
	// watch reads the box's telemetry, counting presses published, until
	// done says so.
	watch := func(done func(on bool) bool) {
		t.Helper()
		timeout := time.After(3 * time.Second)
		for {
			select {
			case m := <-r.msgs:
				rd, ok := value(m, "pressed")
				if m.Kind != model.KindTelemetry || !ok || rd.Quality != model.Good {
					continue
				}
				on := rd.Value.Equal(model.Bool(true))
				if on && !was {
					edges++
				}
				was = on
				messages++
				if done(on) {
					return
				}
			case <-timeout:
				t.Fatalf("%d presses published, the last pressed=%v", edges, was)
			}
		}
	}
	const presses = 10
	for i := range presses {
		if err := l.Devices()[0].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "150ms", "wait": "true"}); err != nil {
			t.Fatal(err)
		}
		watch(func(on bool) bool { return !on && edges >= i+1 })
		// An alarm poll after the release (commands of two: the latch
		// high and low, the I/O, a clear), so that the next press is
		// not one the latch cannot tell from this one (see clearLatch).
		afterPolls(t, l.Devices()[0], 8)
	}
	// A press published again comes within an alarm poll of its release:
	// ten polls more (each publishes) are a margin.
	last := messages
	watch(func(bool) bool { return messages >= last+10 })
	if edges != presses {
		t.Errorf("%d presses published, want %d", edges, presses)
	}
	if n := len(sk.All()); n != 2*presses {
		t.Errorf("%d alarms raised, want %d", n, 2*presses)
	}
	wantEdges(t, l.Devices()[0], 2*presses)
}

// TestSameDamageTwice: a line that damages the same bit of two answers in
// a row (at 5% noise, every few hundred damaged answers) makes two reads
// agree on a value the module never held; it must not be published, not a
// panic that was never pressed nor an LED that never lit. With the
// checksum on, one answer damaged so that its checksum still holds (two
// damaged characters whose damage cancels in the sum, as the simulator's
// garble makes it) must not switch an output the module does not hold:
// outputs change only by command, so a change of them takes two answers
// alike even then.
func TestSameDamageTwice(t *testing.T) {
	for _, tc := range []struct {
		name, signal, answers string
		checksum              bool
	}{
		{"pressed", "pressed", "2", false},
		{"led", "led", "2", false},
		{"led under checksum", "led", "1", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			st := loadStation(t, dir, twoModules, fmt.Sprintf(`  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, checksum: %v, poll: 300ms, alarm_poll: 50ms}
`, tc.checksum))
			l, _ := startSim(t, st, sim.Options{Turnaround: -1})
			r := runBus(t, st)
			r.next(t, "box-1", model.KindTelemetry, 5*time.Second, good(tc.signal, false))
			box := l.Devices()[0]
			for range 5 {
				polls := box.Stats().Polls
				if err := box.(sim.Actor).Act(context.Background(), "garble", map[string]string{"signal": tc.signal, "answers": tc.answers}); err != nil {
					t.Fatal(err)
				}
				// Past the damaged answers, the next poll must still say off.
				var seen []string
				r.next(t, "box-1", model.KindTelemetry, 5*time.Second, func(m stamped) bool {
					v, _ := value(m, tc.signal)
					seen = append(seen, fmt.Sprintf("%s %s", v.Value, v.Quality))
					if v.Quality == model.Good && v.Value.Equal(model.Bool(true)) {
						t.Fatalf("%s=true published good after %s damaged answers; the module never held it (published: %v)", tc.signal, tc.answers, seen)
					}
					return box.Stats().Polls >= polls+4
				})
			}
		})
	}
}

// TestOldStateTwice: an input that changed, read twice damaged alike so
// that both reads show the state confirmed before (or answered twice by
// another module, for a command whose address the line damaged: $AA6
// answers do not say who sent them), must not be confirmed again: the
// module does not hold it any more. Seen in TestNoise as a button
// published released, good, while it was held.
func TestOldStateTwice(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: dio-1, template: adam-4050, link: rs485-2, address: 0x01, poll: 100ms}
`)
	l, _ := startSim(t, st, sim.Options{Turnaround: -1})
	r := runBus(t, st)
	r.next(t, "dio-1", model.KindTelemetry, 5*time.Second, good("di0", false))
	mod := l.Devices()[0]
	dio := mod.(sim.Actor)
	for range 5 {
		if err := dio.Act(context.Background(), "set", map[string]string{"signal": "di0", "value": "true"}); err != nil {
			t.Fatal(err)
		}
		// An answer the module gave before the set may still be on its
		// way, and join the damaged ones as a third read alike. The module
		// answers one command at a time: the second it answers from now
		// on was asked after the set, and after the driver took that one.
		for p0, deadline := mod.Stats().Polls, time.Now().Add(5*time.Second); mod.Stats().Polls < p0+2; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the driver asked the module nothing for 5 s")
			}
		}
		on := time.Now()
		if err := dio.Act(context.Background(), "garble", map[string]string{"signal": "di0", "answers": "2"}); err != nil {
			t.Fatal(err)
		}
		var seen []string
		r.next(t, "dio-1", model.KindTelemetry, 5*time.Second, func(m stamped) bool {
			v, _ := value(m, "di0")
			seen = append(seen, fmt.Sprintf("%s %s", v.Value, v.Quality))
			if v.Quality == model.Good && v.Value.Equal(model.Bool(false)) && m.Time.After(on) {
				t.Fatalf("di0=false published good after it was set, from two answers damaged alike (published: %v)", seen)
			}
			return v.Quality == model.Good && v.Value.Equal(model.Bool(true))
		})
		if err := dio.Act(context.Background(), "set", map[string]string{"signal": "di0", "value": "false"}); err != nil {
			t.Fatal(err)
		}
		r.next(t, "dio-1", model.KindTelemetry, 5*time.Second, good("di0", false))
	}
}

// TestNoise: with 5% of the bytes damaged in both directions, no value is
// published wrong as good, no press is lost, and the damaged answers are
// counted. The checksum is off on one box and on on the other: without it
// only the confirming reads keep damaged digits out.
func TestNoise(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for seconds")
	}
	dir := t.TempDir()
	st := loadStation(t, dir, `  - {id: rs485-2, protocol: dcon, port: "{{port}}", baud: 19200, timeout: 30ms, retries: 2}
`, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, poll: 1s, alarm_poll: 200ms}
  - {id: box-2, template: dcon-panic-box, link: rs485-2, address: 0x02, checksum: true, poll: 1s, alarm_poll: 200ms}
  - {id: dio-1, template: adam-4050, link: rs485-2, address: 0x03, poll: 1s}
`)
	l, sk := startSim(t, st, sim.Options{Turnaround: -1, Noise: 0.05, Seed: 7})
	r := runBus(t, st)
	actors := map[string]sim.Actor{}
	for _, d := range l.Devices() {
		actors[d.ID()] = d.(sim.Actor)
	}
	var msgs []stamped
	collect := func(until time.Time) {
		for {
			select {
			case m := <-r.msgs:
				msgs = append(msgs, m)
			case <-time.After(time.Until(until)):
				return
			}
		}
	}
	// Let the driver find the modules, then press each box's button a
	// number of times. At 5% noise about half the exchanges fail, a
	// quarter of them by a timeout (a damaged command goes unanswered),
	// so an alarm poll takes several commands, up to 8 (~300 ms at 19200
	// baud), and the two boxes take turns on the line: each is read about
	// every 600 ms, slower when the machine is busy. A press lasts 3 s,
	// a few of those, and so does the pause before the next (at 1 s one
	// change in about twenty was missed: a press, or the release between
	// two, merging them; at 2 s one in seventy, with the test run beside
	// the other packages' tests on two cores).
	collect(time.Now().Add(time.Second))
	const presses = 4
	const hold = 3 * time.Second
	type press struct{ from, to time.Time }
	pressed := map[string][]press{}
	for range presses {
		for _, box := range []string{"box-1", "box-2"} {
			from := time.Now()
			if err := actors[box].Act(context.Background(), "press", map[string]string{"hold": hold.String()}); err != nil {
				t.Fatal(err)
			}
			pressed[box] = append(pressed[box], press{from, from.Add(hold)})
		}
		collect(time.Now().Add(2 * hold))
	}
	r.stop()
	for len(r.msgs) > 0 {
		msgs = append(msgs, <-r.msgs)
	}

	// Every good value is true to what the module held when it was read:
	// the outputs and the other inputs never change, and a button is on
	// only while pressed (give or take the wire time of a read).
	const slack = 60 * time.Millisecond
	// on: the button may read on at at; off: it may read off.
	during := func(ps []press, at time.Time) (on, off bool) {
		off = true
		for _, p := range ps {
			if !at.Before(p.from) && !at.After(p.to.Add(slack)) {
				on = true
			}
			if at.After(p.from.Add(slack)) && at.Before(p.to) {
				off = false
			}
		}
		return on, off
	}
	edges := map[string]int{}
	last := map[string]bool{}
	goodReads := 0
	for _, m := range msgs {
		if m.Kind != model.KindTelemetry {
			continue
		}
		for _, rd := range m.Readings {
			if rd.Quality != model.Good {
				continue
			}
			goodReads++
			v, _ := rd.Value.AsBool()
			if rd.Signal == "pressed" {
				// Time is the answer that settled the value.
				on, off := during(pressed[m.Device], m.Time)
				if v && !on || !v && !off {
					t.Errorf("%s: pressed=%v published good, read at %v, when the button was not", m.Device, v, m.Time.Format("15:04:05.000"))
				}
				if v && !last[m.Device] {
					edges[m.Device]++
				}
				last[m.Device] = v
				continue
			}
			if v {
				t.Errorf("%s: %s=true published good; it never was", m.Device, rd.Signal)
			}
		}
	}
	for _, box := range []string{"box-1", "box-2"} {
		if edges[box] != presses {
			t.Errorf("%s: %d presses published, want %d", box, edges[box], presses)
		}
	}
	if n := len(sk.All()); n != 4*presses {
		t.Errorf("%d alarms raised, want %d", n, 4*presses)
	}
	// The damage was seen and counted.
	counters := map[string]map[string]uint64{}
	for _, m := range r.b.modules {
		m.mu.Lock()
		h, _ := m.health.Observe(bus.Result{})
		m.mu.Unlock()
		counters[m.cfg.ID] = h.Counters
	}
	t.Logf("%d good readings; counters %v; line %+v", goodReads, counters, l.(interface{ Stats() any }).Stats())
	if c := counters["box-1"]; c["bad_frames"] == 0 || c["unconfirmed_reads"] == 0 {
		t.Errorf("box-1 (no checksum): counters %v, want bad frames and unconfirmed reads", c)
	}
	if c := counters["box-2"]; c["checksum_errors"] == 0 || c["timeouts"] == 0 {
		t.Errorf("box-2 (checksum): counters %v, want checksum errors and timeouts", c)
	}
}

// TestUnplugged: an adapter unplugged takes every module on it offline at
// once, and their reason is the port's, not one that sends the installer
// to the modules' addresses or wiring.
func TestUnplugged(t *testing.T) {
	dir := t.TempDir()
	st := loadStation(t, dir, twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, poll: 50ms}
  - {id: box-2, template: dcon-panic-box, link: rs485-2, address: 0x02, poll: 50ms}
`)
	_, stop, err := sim.Start(st, &st.Links[0], sim.Options{Turnaround: -1, Sink: &sim.Recorder{}, Start: time.Now(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	r := runBus(t, st)
	for _, dev := range []string{"box-1", "box-2"} {
		r.next(t, dev, model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.State == model.Online })
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	port := filepath.Join(dir, "ttyDCON")
	for _, dev := range []string{"box-1", "box-2"} {
		h := r.next(t, dev, model.KindHealth, 5*time.Second, func(m stamped) bool { return m.Health.State == model.Offline }).Health
		if !strings.Contains(h.Reason, port) || strings.Contains(h.Reason, "address") {
			t.Errorf("%s offline with reason %q, want the port %s's failure", dev, h.Reason, port)
		}
	}
}
