package modbus

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
	_ "outpost/firmware-sim/modbus" // the simulated devices, on real ptys
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
)

// These tests run the driver against the simulator's devices on a real
// pty (firmware-sim/vport), answering at the bus's baud rate.

// simTemplates are written beside the station file: a meter with a big
// map, and a panic button with a siren coil and a setpoint.
var simTemplates = map[string]string{
	"big-meter": func() string {
		var b strings.Builder
		b.WriteString("template: big-meter\nprotocol: modbus\nkind: test_meter\nregisters:\n")
		for i := range 60 {
			fmt.Fprintf(&b, "  - {signal: r%d, table: input, address: %d, type: uint16, sim: {wave: constant, value: %d}}\n", i, i, 1000+i)
		}
		return b.String()
	}(),
	"small-meter": `template: small-meter
protocol: modbus
kind: test_meter
registers:
  - {signal: r0, table: input, address: 0, type: uint16, sim: {wave: constant, value: 1000}}
  - {signal: r1, table: input, address: 1, type: uint16, sim: {wave: constant, value: 1001}}
  - {signal: r2, table: input, address: 2, type: uint16, sim: {wave: constant, value: 1002}}
  - {signal: r3, table: input, address: 3, type: uint16, sim: {wave: constant, value: 1003}}
`,
	"panic-io": `template: panic-io
protocol: modbus
kind: test_panic
alarm: true
registers:
  - {signal: pressed, table: discrete, address: 0, type: bool, event: {kind: panic, clear: true}, sim: {wave: constant, value: 0}}
  - {signal: siren, table: coil, address: 0, type: bool, writable: true, sim: {wave: constant, value: 0}}
  - {signal: setpoint, table: holding, address: 10, type: int16, scale: 0.1, writable: true, limits: {min: 5, max: 30}, sim: {wave: constant, value: 20}}
  - {signal: supply, table: input, address: 0, type: uint16, scale: 0.01, sim: {wave: constant, value: 24}}
`,
}

// simStation writes a station with one modbus-rtu link and devices and
// loads it.
func simStation(t testing.TB, link, devices string) *configs.Station {
	t.Helper()
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "devices"), 0o755)
	for name, src := range simTemplates {
		if err := os.WriteFile(filepath.Join(dir, "devices", name+".yaml"), []byte(src), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	src := "version: 2\nstation: {id: pr-1, type: police_room}\nhub:\n  mqtt: {url: \"tcp://127.0.0.1:1883\"}\nlinks:\n" +
		strings.ReplaceAll(link, "{{port}}", filepath.Join(dir, "ttyRTU")) + "devices:\n" + devices
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

// runSim runs the simulator of the station's first link until the test
// ends, and returns its devices' actors and stats by id.
func runSim(t testing.TB, st *configs.Station, o sim.Options) (map[string]sim.Device, *sim.Recorder) {
	t.Helper()
	rl := &sim.Recorder{}
	o.Sink, o.Start, o.Log = rl, time.Now(), slog.New(slog.DiscardHandler)
	l, stop, err := sim.Start(st, &st.Links[0], o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	devs := map[string]sim.Device{}
	for _, d := range l.Devices() {
		devs[d.ID()] = d
	}
	return devs, rl
}

// emitted is a message with when the driver emitted it.
type emitted struct {
	model.Message
	at time.Time
}

// runLink runs the driver of the station's first link and returns it and
// the channel of what it emits.
func runLink(t testing.TB, st *configs.Station) (drivers.Driver, chan emitted, func()) {
	t.Helper()
	d, err := drivers.New(drivers.Links(st)[0], slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	msgs := make(chan emitted, 100000)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func(m model.Message) error { msgs <- emitted{m, time.Now()}; return nil }) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return d, msgs, stop
}

// waitReading waits for a good reading of a device's signal equal to v.
func waitReading(t testing.TB, msgs chan emitted, dev, signal string, v model.Value, within time.Duration) emitted {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m := <-msgs:
			if m.Device != dev || m.Kind != model.KindTelemetry {
				continue
			}
			for _, r := range m.Readings {
				if r.Signal == signal && r.Quality == model.Good && r.Value.Equal(v) {
					return m
				}
			}
		case <-timer.C:
			t.Fatalf("no good %s=%v from %s within %v", signal, v, dev, within)
		}
	}
}

// TestAlarmPollBusyBus: on a 9600 baud bus kept busy by four meters whose
// 60-register reads take ~140 ms each, a panic button's input is polled
// on its own at its alarm interval, ahead of the meters: a press reaches
// the driver within the alarm interval and one meter read's wire time
// (the read that had the wire when the alarm poll came due), plus the
// alarm read itself. A poll of the button's whole map, behind the meters'
// reads, would take up to a second.
func TestAlarmPollBusyBus(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 9600, turnaround: 2ms}
`, `  - {id: m-1, template: big-meter, link: rs485-1, unit_id: 1, poll: 200ms}
  - {id: m-2, template: big-meter, link: rs485-1, unit_id: 2, poll: 200ms}
  - {id: m-3, template: big-meter, link: rs485-1, unit_id: 3, poll: 200ms}
  - {id: m-4, template: big-meter, link: rs485-1, unit_id: 4, poll: 200ms}
  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 1s, alarm_poll: 100ms}
`)
	devs, _ := runSim(t, st, sim.Options{Turnaround: -1})
	_, msgs, _ := runLink(t, st)
	waitReading(t, msgs, "pb-1", "pressed", model.Bool(false), 5*time.Second)
	bus := st.Links[0].Settings.(interface{ Line() *configs.Serial }).Line()
	char := bus.CharTime()
	meterRead := time.Duration(8+5+2*60)*char + 2*time.Millisecond // request, answer, turnaround
	alarmRead := time.Duration(8+6)*char + 2*time.Millisecond
	limit := 100*time.Millisecond + meterRead + alarmRead + 15*time.Millisecond // scheduling
	var worst time.Duration
	for i := range 8 {
		pressed := time.Now()
		if err := devs["pb-1"].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "400ms"}); err != nil {
			t.Fatal(err)
		}
		m := waitReading(t, msgs, "pb-1", "pressed", model.Bool(true), 3*time.Second)
		took := m.at.Sub(pressed)
		worst = max(worst, took)
		if took > limit {
			t.Errorf("press %d seen after %v, want within %v (alarm_poll 100ms + a meter read %v + the alarm read %v)", i, took, limit, meterRead, alarmRead)
		}
		waitReading(t, msgs, "pb-1", "pressed", model.Bool(false), 3*time.Second)
		time.Sleep(time.Duration(37*i%100) * time.Millisecond) // presses at every phase of the polls
	}
	t.Logf("worst press latency %v (limit %v; a meter read %v)", worst.Round(time.Millisecond), limit, meterRead.Round(time.Millisecond))
}

// TestPressAfterReplug: a panic button that went silent (its cable
// pulled) and comes back pressed is back online before its press reaches
// the hub: its alarm poll, which hears it long before the backed-off probe
// of its offline poll, says so first.
func TestPressAfterReplug(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 9600, timeout: 50ms}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 2s, alarm_poll: 100ms}
`)
	st.Health.OfflineAfter = 1 // offline at the first silent poll; the probe comes 2 s later
	faults := sim.NewFaults("pb-1")
	devs, _ := runSim(t, st, sim.Options{Turnaround: -1, Faults: faults})
	_, msgs, _ := runLink(t, st)
	for m := range msgs {
		if m.Device == "pb-1" && m.Kind == model.KindHealth && m.Health.State == model.Offline {
			break
		}
	}
	if err := devs["pb-1"].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "2s"}); err != nil {
		t.Fatal(err)
	}
	faults.SetSilent("pb-1", false)
	var got []string
	timeout := time.After(5 * time.Second)
	for !slices.Contains(got, "pressed") {
		select {
		case m := <-msgs:
			switch {
			case m.Kind == model.KindHealth:
				got = append(got, string(m.Health.State))
			case m.Kind == model.KindTelemetry && m.Readings[0].Signal == "pressed" && m.Readings[0].Value.Equal(model.Bool(true)):
				got = append(got, "pressed")
			}
		case <-timeout:
			t.Fatalf("no press within 5 s of the button's return (saw %v)", got)
		}
	}
	if want := []string{"online", "pressed"}; !slices.Equal(got, want) {
		t.Errorf("after the button came back: %v, want %v", got, want)
	}
	// And its poll runs at once, not at its probe 2 s after it went
	// offline: the other signals are back too.
	waitReading(t, msgs, "pb-1", "supply", model.Number(24), time.Second)
}

// TestWrites: commands write a coil (function 05) and a scaled holding
// register (06), each acting once on the device; values the signal cannot
// take are refused before anything is sent. All of it also through an
// adapter that echoes every request (a two-wire RS-485 adapter that hears
// itself), where an answer to 05 or 06, a copy of the request, is no
// different from the echo: the echo is learnt from the polls and dropped.
func TestWrites(t *testing.T) {
	for _, echo := range []bool{false, true} {
		t.Run(map[bool]string{false: "clean line", true: "adapter echoes"}[echo], func(t *testing.T) { writes(t, echo) })
	}
}

func writes(t *testing.T, echo bool) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 100ms}
`)
	devs, _ := runSim(t, st, sim.Options{Turnaround: -1, Echo: map[string]bool{"rs485-1": echo}})
	d, msgs, _ := runLink(t, st)
	cmd := d.(drivers.Commander)
	waitReading(t, msgs, "pb-1", "setpoint", model.Number(20), 5*time.Second)
	ctx := context.Background()
	if err := cmd.Set(ctx, "pb-1", "siren", model.Bool(true)); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Set(ctx, "pb-1", "setpoint", model.Number(21.5)); err != nil {
		t.Fatal(err)
	}
	waitReading(t, msgs, "pb-1", "siren", model.Bool(true), 2*time.Second)
	waitReading(t, msgs, "pb-1", "setpoint", model.Number(21.5), 2*time.Second)
	if got := fmt.Sprint(devs["pb-1"].Stats().Writes); got != "map[setpoint:1 siren:1]" {
		t.Errorf("writes %s, want one each", got)
	}
	for _, c := range []struct {
		signal string
		v      model.Value
		want   string
	}{
		{"setpoint", model.Number(31), "device pb-1 on rs485-1: signal setpoint: 31 is outside its limits 5 to 30"},
		{"setpoint", model.Number(21.55), "device pb-1 on rs485-1: signal setpoint: 21.55 cannot be written exactly (the nearest the register holds is 21.6)"},
		{"setpoint", model.Bool(true), "device pb-1 on rs485-1: signal setpoint takes a number, not true"},
		{"siren", model.Number(1), "device pb-1 on rs485-1: signal siren takes true or false, not 1"},
		{"pressed", model.Bool(true), "device pb-1 on rs485-1: signal pressed is not writable"},
		{"nope", model.Bool(true), "device pb-1 on rs485-1: no signal nope"},
	} {
		if err := cmd.Set(ctx, "pb-1", c.signal, c.v); err == nil || err.Error() != c.want {
			t.Errorf("Set %s %v: %v, want %q", c.signal, c.v, err, c.want)
		}
	}
	if got := fmt.Sprint(devs["pb-1"].Stats().Writes); got != "map[setpoint:1 siren:1]" {
		t.Errorf("after refusals, writes %s", got)
	}
}

// TestWriteToSilentDevice: a command for a device that answers nothing
// (a wrong unit id, as an installer's typo gives) fails with the outcome
// unknown and says, as the device's health does, whether the device or
// the link is at fault: the duty desk that sent it reads why.
func TestWriteToSilentDevice(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200, timeout: 50ms, retries: 1}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 200ms}
  - {id: m-1, template: small-meter, link: rs485-1, unit_id: 1, poll: 200ms}
`)
	runSim(t, st, sim.Options{Turnaround: -1, Faults: sim.NewFaults("pb-1")})
	r := runLinkDriver(t, drivers.Links(st)[0])
	const why = "no answer from unit 9 while unit 1 answers: wrong unit id, or device off"
	if h := r.health(t, "pb-1", model.Offline, 5*time.Second); h.Reason != why {
		t.Fatalf("pb-1's health reason %q, want %q", h.Reason, why)
	}
	err := r.driver.(drivers.Commander).Set(context.Background(), "pb-1", "siren", model.Bool(true))
	want := "device pb-1 on rs485-1: writing siren (coil 0 (0x0000)): outcome unknown: neither the write nor a read-back was answered (last: timeout after 50ms); " + why
	if err == nil || err.Error() != want {
		t.Errorf("Set siren: %v, want %q", err, want)
	}
}

// TestNoiseRTU: with 5% of the bytes damaged both ways, the CRC keeps
// every damaged answer out: every good value is the device's, no press is
// lost, and the damage is counted.
func TestNoiseRTU(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for seconds")
	}
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200, timeout: 50ms, retries: 2}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 300ms, alarm_poll: 100ms}
  - {id: m-1, template: small-meter, link: rs485-1, unit_id: 1, poll: 300ms}
`)
	devs, rl := runSim(t, st, sim.Options{Turnaround: -1, Noise: 0.05, Seed: 3})
	_, msgs, stop := runLink(t, st)
	waitReading(t, msgs, "pb-1", "pressed", model.Bool(false), 5*time.Second)
	const presses = 6
	type span struct{ from, to time.Time }
	var ps []span
	for range presses {
		from := time.Now()
		// A second's press: on a loaded machine, a stall of the test's
		// process (the simulator's too) left a press of 700 ms two
		// polls, both damaged.
		if err := devs["pb-1"].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "1s"}); err != nil {
			t.Fatal(err)
		}
		ps = append(ps, span{from, from.Add(time.Second)})
		time.Sleep(1800 * time.Millisecond)
	}
	stop()
	close(msgs)
	edges, last, good := 0, false, 0
	var health []*model.Health
	// The button's readings, each with when it was read: what a failure
	// shows.
	var reads []string
	const slack = 30 * time.Millisecond // a read's wire time
	for m := range msgs {
		if m.Kind == model.KindHealth {
			health = append(health, m.Health)
		}
		for _, r := range m.Readings {
			if r.Signal == "pressed" {
				reads = append(reads, fmt.Sprintf("%s %v %s", m.Time.Format("15:04:05.000"), r.Value, r.Quality))
			}
			if r.Quality != model.Good {
				continue
			}
			good++
			switch {
			case m.Device == "m-1":
				n := 0
				fmt.Sscanf(r.Signal, "r%d", &n)
				if !r.Value.Equal(model.Number(float64(1000 + n))) {
					t.Errorf("m-1 %s = %v published good, want %d", r.Signal, r.Value, 1000+n)
				}
			case r.Signal == "pressed":
				v, _ := r.Value.AsBool()
				on, off := false, true // whether the button may read so at m.at
				for _, p := range ps { // Time is when the value was read
					on = on || m.Time.After(p.from) && m.Time.Before(p.to.Add(slack))
					off = off && !(m.Time.After(p.from.Add(slack)) && m.Time.Before(p.to))
				}
				if v && !on || !v && !off {
					t.Errorf("pressed=%v published good, read at %v (emitted %v, %d readings), not the button's state; presses %v", v, m.Time.Format("15:04:05.000"), m.at.Format("15:04:05.000"), len(m.Readings), ps)
				}
				if v && !last {
					edges++
				}
				last = v
			}
		}
	}
	if edges != presses {
		var spans []string
		for _, p := range ps {
			spans = append(spans, p.from.Format("15:04:05.000")+"-"+p.to.Format("15:04:05.000"))
		}
		t.Errorf("%d presses published, want %d; presses %v; the button's readings:\n%s", edges, presses, spans, strings.Join(reads, "\n"))
	}
	if n := len(rl.All()); n != 2*presses {
		t.Errorf("%d alarms raised, want %d", n, 2*presses)
	}
	var counted []string
	for _, h := range health {
		for c, n := range h.Counters {
			if n > 0 && (c == "crc_errors" || c == "frame_errors" || c == "timeouts") && !slices.Contains(counted, c) {
				counted = append(counted, c)
			}
		}
	}
	t.Logf("%d good readings; damage counted: %v; sim: %v", good, counted, devs["pb-1"].Stats())
	if !slices.Contains(counted, "crc_errors") && !slices.Contains(counted, "frame_errors") {
		t.Errorf("no damaged frame counted in %d health messages", len(health))
	}
}

// TestAlarmPollOff: with alarm_poll: 0s the button's input is read with
// the poll only: a press shows at the next poll, and every message,
// the release's too, carries the whole map (an alarm poll's carries the
// input alone).
func TestAlarmPollOff(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 300ms, alarm_poll: 0s}
`)
	devs, _ := runSim(t, st, sim.Options{Turnaround: -1})
	_, msgs, _ := runLink(t, st)
	waitReading(t, msgs, "pb-1", "pressed", model.Bool(false), 5*time.Second)
	if err := devs["pb-1"].(sim.Actor).Act(context.Background(), "press", map[string]string{"hold": "1s"}); err != nil {
		t.Fatal(err)
	}
	waitReading(t, msgs, "pb-1", "pressed", model.Bool(true), 2*time.Second)
	signals := len(st.Templates["panic-io"].Body.Signals())
	for range 6 { // 1.8 s of polls: the release comes among them
		m := <-msgs
		if m.Kind == model.KindTelemetry && len(m.Readings) != signals {
			t.Errorf("a message of %d readings, want the whole map of %d: %v", len(m.Readings), signals, m.Readings)
		}
	}
}

// TestWrongLineSettings: a bus set to 19200 baud whose devices speak 9600
// gets only damaged frames, and every device's health says, from the
// first, what to check on the link, with the command that finds the
// devices' settings.
func TestWrongLineSettings(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 9600, timeout: 100ms, retries: 0}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, poll: 300ms, alarm_poll: 0s}
  - {id: m-1, template: small-meter, link: rs485-1, unit_id: 1, poll: 300ms}
`)
	runSim(t, st, sim.Options{Turnaround: -1, CheckLine: true, Seed: 1})
	src, err := os.ReadFile(st.File)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(filepath.Dir(st.File), "gateway.yaml")
	os.WriteFile(path, []byte(strings.Replace(string(src), "baud: 9600", "baud: 19200", 1)), 0o600)
	gw, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	_, msgs, _ := runLink(t, gw)
	port := filepath.Join(filepath.Dir(st.File), "ttyRTU")
	want := "; no unit on rs485-1 answers with a whole frame: the link's baud rate, parity or stop bits differ from the devices' (gateway probe -port " + port + " -scan finds theirs), or the line is noisy (termination, shield)"
	told := map[string]string{}
	deadline := time.After(10 * time.Second)
	for len(told) < 2 {
		select {
		case m := <-msgs:
			if m.Kind == model.KindHealth && strings.HasSuffix(m.Health.Reason, want) {
				told[m.Device] = m.Health.Reason
			}
		case <-deadline:
			t.Fatalf("in 10 s, told of the link's settings: %v; want both devices", told)
		}
	}
	t.Logf("health reasons: %v", told)
}

// TestOtherMasterHeardByTools: an installer's tool (gateway read,
// commission) listens to an RTU bus as it opens the port, so that the
// first poll of a device names another master polling the bus every
// 300 ms, where a request made at once hears it only by chance.
func TestOtherMasterHeardByTools(t *testing.T) {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200, timeout: 100ms, retries: 2}
`, `  - {id: m-1, template: small-meter, link: rs485-1, unit_id: 1, poll: 10s}
`)
	runSim(t, st, sim.Options{Turnaround: -1, OtherMaster: 300 * time.Millisecond})
	link := drivers.Links(st)[0]
	link.Once = true
	h := runLinkDriver(t, link).next(t, "m-1", model.KindHealth, 5*time.Second).Health
	if n := h.Counters["other_master"]; n != 1 {
		t.Fatalf("the first poll's health counts other_master %d, want 1 (counters %v)", n, h.Counters)
	}
}

// TestOtherMasterHeardByAlarmPolls: on a bus whose traffic is nearly all
// a panic button's alarm polls (one every 50 ms, a full poll every 5 s),
// another master's requests heard during them are counted in the
// device's health too. They were dropped: the health counted 1 or 2
// where it now counts some 80 in its second report.
func TestOtherMasterHeardByAlarmPolls(t *testing.T) {
	r := runPanicButtonBesideOtherMaster(t, "poll: 5s, alarm_poll: 50ms", 100*time.Millisecond)
	// By the second report the other master asked some 100 times; most
	// fall between two alarm polls and are heard by the next one.
	const least = 20
	var counters map[string]uint64
	for range 3 { // the first at the start, then one at a poll 5 s or more after the last
		counters = r.next(t, "pb-1", model.KindHealth, 15*time.Second).Health.Counters
		if counters["other_master"] >= least {
			return
		}
	}
	t.Fatalf("pb-1's third health report counts other_master %d, want %d or more (counters %v)", counters["other_master"], least, counters)
}

// TestOtherMasterHeardByWrites: another master heard during a command's
// write counts in the device's health too. The device is polled every 10
// s and has no alarm poll, so nearly all the bus's traffic between its
// first two health reports is the writes.
func TestOtherMasterHeardByWrites(t *testing.T) {
	r := runPanicButtonBesideOtherMaster(t, "poll: 10s, alarm_poll: 0s", 50*time.Millisecond)
	cmd := r.driver.(drivers.Commander)
	r.next(t, "pb-1", model.KindHealth, 5*time.Second) // at its first poll
	// A write every 100 ms for 3 s. The simulator's other master asks
	// every 50 ms when the bus is quiet, so each write's exchange hears
	// it (counted once an exchange).
	writes := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); writes++ {
		if err := cmd.Set(context.Background(), "pb-1", "siren", model.Bool(writes%2 == 0)); err != nil {
			t.Fatalf("write %d: %v", writes, err)
		}
		<-tick.C
	}
	const least = 15
	counters := r.next(t, "pb-1", model.KindHealth, 15*time.Second).Health.Counters
	t.Logf("other_master %d after %d writes", counters["other_master"], writes)
	if counters["other_master"] < least {
		t.Fatalf("pb-1's health after %d writes counts other_master %d, want %d or more (counters %v)", writes, counters["other_master"], least, counters)
	}
}

// runPanicButtonBesideOtherMaster runs the driver of pb-1, a panic button
// polled as polls says, alone on an RTU bus with a health report every 5
// s, and the simulator's other master asking every so often.
func runPanicButtonBesideOtherMaster(t *testing.T, polls string, every time.Duration) *running {
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200, timeout: 100ms, retries: 2}
health: {report_every: 5s}
`, `  - {id: pb-1, template: panic-io, link: rs485-1, unit_id: 9, `+polls+`}
`)
	runSim(t, st, sim.Options{Turnaround: -1, OtherMaster: every})
	return runLinkDriver(t, drivers.Links(st)[0])
}

// TestOtherMasterRTU: another master on the bus (the simulator's, reading
// a register of unit 1 every 200 ms, as an old controller left polling
// would) is heard: the log names it, with the link, once; the device
// counts it in its health; its readings stay good.
func TestOtherMasterRTU(t *testing.T) {
	// The health section rides in after the link: its counters go out
	// every 5 s, not every minute.
	st := simStation(t, `  - {id: rs485-1, protocol: modbus-rtu, port: "{{port}}", baud: 19200, timeout: 100ms, retries: 2}
health: {report_every: 5s}
`, `  - {id: m-1, template: small-meter, link: rs485-1, unit_id: 1, poll: 100ms}
`)
	runSim(t, st, sim.Options{Turnaround: -1, OtherMaster: 200 * time.Millisecond})
	r := runLinkDriver(t, drivers.Links(st)[0])
	good := 0
	for deadline := time.After(20 * time.Second); ; {
		var m model.Message
		select {
		case m = <-r.msgs:
		case <-deadline:
			t.Fatalf("no health of m-1 counting other_master in 20 s (%d good readings)", good)
		}
		if m.Kind == model.KindTelemetry && m.Readings[0].Quality == model.Good && m.Readings[0].Value == model.Number(1000) {
			good++
		}
		if m.Kind == model.KindHealth && m.Health.Counters["other_master"] > 0 {
			break
		}
	}
	if good == 0 {
		t.Error("no good reading of m-1")
	}
	const warning = "another master polls this bus: " + bus.TwoMasters
	recs := r.logs.find(warning)
	if len(recs) != 1 || recs[0].attrs["link"] != "rs485-1" || recs[0].attrs["heard"] != "unit 1 asked for 1 holding register from 0 (0x0000)" {
		t.Fatalf("log records %v, want one with link rs485-1 and heard=unit 1 asked for 1 holding register from 0 (0x0000)", recs)
	}
}
