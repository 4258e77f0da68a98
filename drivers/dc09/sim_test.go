package dc09

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	cfg "outpost/configs/dc09"
	"outpost/drivers"
	simdc09 "outpost/firmware-sim/dc09"
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
)

// The receiver against the simulated panels of firmware-sim/dc09, which
// encode and decode the wire with code of their own, over loopback TCP and
// UDP, in clear and with 128- and 256-bit keys.

const simStation = `version: 2
station: {id: pr-1, type: police_room}
state_dir: STATE
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: alarm-rx, protocol: sia-dc09, listen: "127.0.0.1:0", receiver: "1", line: "1"}
devices:
  - {id: plain-tcp, template: generic-alarm-panel, link: alarm-rx, account: "1001", zones: [{zone: 5, name: desk}], sim: {transport: tcp, timeout: 300ms}}
  - {id: plain-udp, template: generic-alarm-panel, link: alarm-rx, account: "1002", zones: [{zone: 5, name: desk}], sim: {transport: udp, timeout: 300ms}}
  - {id: sealed-tcp, template: generic-alarm-panel, link: alarm-rx, account: "1003", key_file: k128.key, zones: [{zone: 5, name: desk}], sim: {transport: tcp, timeout: 300ms}}
  - {id: sealed-udp, template: generic-alarm-panel, link: alarm-rx, account: "1004", key_file: k256.key, zones: [{zone: 5, name: desk}], sim: {transport: udp, timeout: 300ms, tests: 1s, test: "602"}}
`

// raisedLog is the simulator's sink of raised alarms.
type raisedLog chan sim.Raised

func (raisedLog) Served(string, []sim.Reading) {}
func (l raisedLog) Raised(r sim.Raised)        { l <- r }

// simBench is a receiver and the simulated panels of its link.
type simBench struct {
	r      *running
	actors map[string]sim.Actor
	devs   map[string]sim.Device
	link   sim.Link
	raised raisedLog
}

// startBench loads the station, starts the receiver (shifted by skew
// from the real clock), then the panels, pointed at where it listens.
func startBench(t *testing.T, skew time.Duration) *simBench {
	t.Helper()
	dir := t.TempDir()
	for name, bits := range map[string]int{"k128.key": 128, "k256.key": 256} {
		key := strings.Repeat("5a", bits/16) + strings.Repeat("c3", bits/16)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(key+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(simStation, "STATE", filepath.Join(dir, "state"), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	link := drivers.Links(st)[0]
	drv, err := New(link, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	drv.(*Driver).now = func() time.Time { return time.Now().Add(skew) }
	r := startDriver(t, drv.(*Driver))

	// The panels dial the port the receiver got.
	lk := *link.Config
	set := *lk.Settings.(*cfg.Link)
	set.Listen = r.d.Addr()
	lk.Settings = &set
	b := &simBench{r: r, actors: map[string]sim.Actor{}, devs: map[string]sim.Device{}, raised: make(raisedLog, 100)}
	b.link, err = sim.New(st, &lk, sim.Options{Sink: b.raised, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range b.link.Devices() {
		b.devs[d.ID()] = d
		b.actors[d.ID()] = d.(sim.Actor)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.link.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
		b.link.Close()
	})
	return b
}

// act makes a panel act, as the control API does.
func (b *simBench) act(t *testing.T, dev, action string, args ...string) {
	t.Helper()
	m := map[string]string{}
	for _, a := range args {
		k, v, _ := strings.Cut(a, "=")
		m[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.actors[dev].Act(ctx, action, m); err != nil {
		t.Fatalf("%s %s %v: %v", dev, action, args, err)
	}
}

// counters are a panel's own counters.
func (b *simBench) counters(dev string) simdc09.Counters {
	return b.link.(interface{ Stats() any }).Stats().(map[string]simdc09.Counters)[dev]
}

// alarm raises an alarm at a panel and returns what the simulator logged
// and what the receiver emitted.
func (b *simBench) alarm(t *testing.T, dev, action string, args ...string) (sim.Raised, model.Message) {
	t.Helper()
	b.act(t, dev, action, args...)
	var r sim.Raised
	select {
	case r = <-b.raised:
	case <-time.After(5 * time.Second):
		t.Fatalf("%s %s: nothing raised", dev, action)
	}
	ev := b.r.out.nextOf(t, model.KindEvent)
	if r.Device != dev || ev.Device != dev || r.Source != "dc09" || r.At.IsZero() {
		t.Fatalf("raised %+v, emitted %+v", r, ev)
	}
	return r, ev
}

func TestSimulatedPanels(t *testing.T) {
	b := startBench(t, 0)
	for _, dev := range []string{"plain-tcp", "plain-udp", "sealed-tcp", "sealed-udp"} {
		t.Run(dev, func(t *testing.T) {
			r, ev := b.alarm(t, dev, "alarm", "code=120", "zone=5")
			d := ev.Event.Details
			if r.Kind != "panic" || r.State != "active" || ev.Event.Kind != "panic" || ev.Event.Severity != model.Critical ||
				d["zone"] != "5" || d["zone_name"] != "desk" || d["partition"] != "1" || d["receiver"] != "1" || d["line"] != "1" ||
				d["encrypted"] != fmt.Sprint(strings.HasPrefix(dev, "sealed")) {
				t.Errorf("raised %+v, event %+v", r, ev.Event)
			}
			if lag := time.Since(r.At); lag > time.Second {
				t.Errorf("event emitted %s after the frame was written", lag)
			}
			r, ev = b.alarm(t, dev, "restore", "code=120", "zone=5")
			if r.Kind != "panic" || r.State != "cleared" || ev.Event.Kind != "panic" || ev.Event.Details["state"] != "cleared" || ev.Event.Severity != model.Info {
				t.Errorf("restore: raised %+v, event %+v", r, ev.Event)
			}
			r, ev = b.alarm(t, dev, "sia", "code=BA", "zone=5", "partition=2")
			if r.Kind != "burglary" || ev.Event.Kind != "burglary" || ev.Event.Details["code"] != "BA" || ev.Event.Details["partition"] != "2" {
				t.Errorf("sia: raised %+v, event %+v", r, ev.Event)
			}
			r, ev = b.alarm(t, dev, "alarm", "code=121", "user=3")
			if r.Kind != "duress" || ev.Event.Details["user"] != "3" || ev.Event.Details["zone"] != "" {
				t.Errorf("duress: raised %+v, event %+v", r, ev.Event)
			}
			b.act(t, dev, "null")
			eventually(t, dev+" acknowledged", func() bool {
				return b.devs[dev].Stats().EventsServed == 4 && b.counters(dev).Acks >= 5
			})
			if c := b.counters(dev); c.Retransmissions != 0 || c.Naks != 0 || c.Duhs != 0 || c.BadAnswers != 0 {
				t.Errorf("counters %+v", c)
			}
		})
	}
	// 602 periodic tests keep supervision and raise no event.
	eventually(t, "a periodic test acknowledged", func() bool { return b.counters("sealed-udp").Tests >= 1 && b.counters("sealed-udp").Acks >= 6 })
	b.r.d.panels["1004"].mu.Lock()
	tests := b.r.d.panels["1004"].counters["tests"]
	b.r.d.panels["1004"].mu.Unlock()
	if tests < 1 {
		t.Errorf("receiver counted %d tests", tests)
	}
	for {
		select {
		case m := <-b.r.out.ch:
			if m.Kind == model.KindEvent {
				t.Errorf("unexpected event %+v", m.Event)
			}
			continue
		default:
		}
		break
	}
	// Bad actions say what is expected.
	for _, bad := range []struct {
		action string
		args   map[string]string
	}{{"alarm", map[string]string{"zone": "5"}}, {"alarm", map[string]string{"code": "1000", "zone": "5"}}, {"sia", map[string]string{"code": "pa", "zone": "1"}},
		{"tests", map[string]string{}}, {"dance", nil}, {"alarm", map[string]string{"code": "120", "zone": "5", "colour": "red"}}} {
		if err := b.actors["plain-tcp"].Act(context.Background(), bad.action, bad.args); err == nil {
			t.Errorf("%s %v: no error", bad.action, bad.args)
		}
	}
}

// TestSimulatedNAK: a panel whose clock is off gets NAK with the
// receiver's time, takes it, and sends again.
func TestSimulatedNAK(t *testing.T) {
	b := startBench(t, 10*time.Minute)
	for _, dev := range []string{"plain-tcp", "sealed-udp"} {
		r, ev := b.alarm(t, dev, "alarm", "code=130", "zone=5")
		if r.Kind != "burglary" || ev.Event.Kind != "burglary" {
			t.Errorf("%s: raised %+v, event %+v", dev, r, ev.Event)
		}
		if panel := ev.Time; time.Until(panel) < 9*time.Minute {
			t.Errorf("%s: panel time %v is not on the receiver's clock", dev, panel)
		}
		eventually(t, dev+" served", func() bool { return b.devs[dev].Stats().EventsServed == 1 })
		if c := b.counters(dev); c.Naks != 1 || c.Transmissions != 2 {
			t.Errorf("%s: counters %+v, want one NAK and two transmissions", dev, c)
		}
	}
}

// TestSimulatedRetransmission: an event the gateway cannot keep gets no
// ACK; the panel sends it again after its timeout, and it is raised at
// the hub once.
func TestSimulatedRetransmission(t *testing.T) {
	b := startBench(t, 0)
	b.act(t, "plain-tcp", "null")
	b.r.out.nextOf(t, model.KindHealth)
	b.r.out.setFail(errors.New("disk full"))
	b.act(t, "plain-tcp", "alarm", "code=110", "zone=5")
	eventually(t, "the panel timed out", func() bool { return b.counters("plain-tcp").Timeouts >= 1 })
	b.r.out.setFail(nil)
	ev := b.r.out.nextOf(t, model.KindEvent)
	if ev.Event.Kind != "fire" {
		t.Errorf("event %+v", ev.Event)
	}
	eventually(t, "served", func() bool { return b.devs["plain-tcp"].Stats().EventsServed == 1 })
	if c := b.counters("plain-tcp"); c.Retransmissions < 1 {
		t.Errorf("counters %+v, want a retransmission", c)
	}
	if n := len(b.raised); n != 1 {
		t.Errorf("%d alarms raised, want 1 (first transmission only)", n)
	}
}
