package modbus

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/gateway/model"
)

func TestRegistered(t *testing.T) {
	p := drivers.Protocols()
	if !slices.Contains(p, "modbus-rtu") || !slices.Contains(p, "modbus-tcp") {
		t.Fatalf("protocols %v lack modbus-rtu or modbus-tcp", p)
	}
}

func TestFactoryErrors(t *testing.T) {
	tmpl := &tTemplate{Name: "th", Kind: "k", Registers: holdings(0)}
	big := &tTemplate{Name: "big", Kind: "k", Registers: []mb.Register{{Signal: "s", Table: mb.Holding, Type: mb.TypeString, Length: 200}}}
	st := station(tmpl, big)
	bus := &tBus{ID: "b1", Protocol: "modbus-rtu", Port: "/dev/null", Baud: 9600}
	ep := &tEndpoint{ID: "e1", Protocol: "modbus-tcp", Address: "127.0.0.1:1"}
	log := slog.New(slog.DiscardHandler)
	cases := []struct {
		name string
		link tLink
		f    drivers.Factory
		want string
	}{
		{"rtu needs a bus", tLink{Station: st, Endpoint: ep}, newRTU, "modbus-rtu: link e1 is not a serial bus"},
		{"tcp needs an endpoint", tLink{Station: st, Bus: bus}, newTCP, "modbus-tcp: link b1 is not a network endpoint"},
		{"missing template", tLink{Station: st, Bus: bus, Devices: []*tDevice{{ID: "d", Template: "nope", UnitID: 1}}}, newRTU,
			`device d on b1: template "nope" not loaded`},
		{"unit id", tLink{Station: st, Endpoint: ep, Devices: []*tDevice{{ID: "d", Template: "th", UnitID: 256}}}, newTCP,
			"device d on e1: unit id 256 outside 0-255"},
		{"unplannable", tLink{Station: st, Endpoint: ep, Devices: []*tDevice{{ID: "d", Template: "big", UnitID: 1}}}, newTCP,
			"device d on e1: template big: signal s: 200 holding entries exceed the 125 a request may read"},
		{"parity", tLink{Station: st, Bus: &tBus{ID: "b2", Baud: 9600, Parity: "mark"}}, newRTU, `bus b2: parity "mark" not supported`},
	}
	for _, c := range cases {
		_, err := c.f(c.link.link(), log)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
}

func TestTracker(t *testing.T) {
	ok := pollResult{requests: 2}
	half := pollResult{requests: 2, failed: 1, reason: "exception 2 (illegal data address) reading input register 5 (0x0005): b", counters: []string{"exceptions"}}
	bad := pollResult{requests: 2, failed: 2, reason: "exception 4 (server device failure) reading input register 5 (0x0005): b", counters: []string{"exceptions", "exceptions"}}
	silent := pollResult{requests: 1, failed: 1, silent: true, reason: "no answer from any unit on bus: check wiring, port, baud rate and parity", counters: []string{"timeouts"}}
	down := pollResult{requests: 1, failed: 1, linkDown: true, reason: "open /dev/x: gone reading input register 5 (0x0005)", counters: []string{"link_down"}}
	late := pollResult{requests: 2, late: true}
	undecoded := pollResult{requests: 1, counters: []string{"decode_errors"}}
	steps := []struct {
		name    string
		res     pollResult
		state   model.HealthState
		changed bool
		reason  string
	}{
		{"first poll", ok, model.Online, true, ""},
		{"again", ok, model.Online, false, ""},
		{"one request fails", half, model.Degraded, true, half.reason},
		{"recovers", ok, model.Online, true, ""},
		{"silent once", silent, model.Degraded, true, silent.reason},
		{"silent twice", silent, model.Degraded, false, silent.reason},
		{"silent three times", silent, model.Offline, true, silent.reason},
		{"still silent", silent, model.Offline, false, silent.reason},
		{"answers, badly", half, model.Degraded, true, half.reason},
		{"silent again, the count restarts", silent, model.Degraded, false, silent.reason},
		{"answers", ok, model.Online, true, ""},
		{"every request answered with an exception", bad, model.Degraded, true, bad.reason},
		{"and again", bad, model.Degraded, false, bad.reason},
		{"and again: it answers, so it is not offline", bad, model.Degraded, false, bad.reason},
		{"link down", down, model.Offline, true, down.reason},
		{"a late poll", late, model.Online, true, ""},
		{"values that do not decode", undecoded, model.Degraded, true, "values that do not decode"},
	}
	var tr tracker
	for i, s := range steps {
		h, changed := tr.observe(s.res)
		if h.State != s.state || changed != s.changed || h.Reason != s.reason {
			t.Fatalf("step %d (%s): %s changed=%v %q, want %s changed=%v %q", i, s.name, h.State, changed, h.Reason, s.state, s.changed, s.reason)
		}
	}
	// The 17 polls above and an empty one.
	want := map[string]uint64{"polls": 18, "requests": 27, "failures": 11, "exceptions": 8, "timeouts": 5, "link_down": 1,
		"decode_errors": 1, "late_polls": 1}
	if h, _ := tr.observe(pollResult{}); fmt.Sprint(h.Counters) != fmt.Sprint(want) {
		t.Errorf("counters %v, want %v", h.Counters, want)
	}
}

// TestNextPoll: how often a device is polled and how its first request is
// tried, after a sequence of polls.
func TestNextPoll(t *testing.T) {
	answered := pollResult{requests: 2}
	silent := pollResult{requests: 1, failed: 1, silent: true, counters: []string{"timeouts"}}
	bad := pollResult{requests: 2, failed: 2, counters: []string{"crc_errors", "crc_errors"}}
	down := pollResult{requests: 1, failed: 1, linkDown: true, counters: []string{"link_down"}}
	times := func(n int, r pollResult) []pollResult { return slices.Repeat([]pollResult{r}, n) }
	once, probe := attempt{once: true}, attempt{once: true, timeout: probeTimeout}
	s := time.Second
	cases := []struct {
		name     string
		poll     time.Duration
		polls    []pollResult
		interval time.Duration
		first    attempt
	}{
		{"never polled", s, nil, s, attempt{}},
		{"answers", s, times(5, answered), s, attempt{}},
		{"silent once: one try, no retries", s, times(1, silent), s, once},
		{"silent twice", s, times(2, silent), s, once},
		{"offline: probed at the poll interval", s, times(3, silent), s, probe},
		{"probe failed once", s, times(4, silent), 2 * s, probe},
		{"probe failed twice", s, times(5, silent), 4 * s, probe},
		{"probe failed 4 times", s, times(7, silent), 16 * s, probe},
		{"at the cap the probe waits the full timeout", s, times(8, silent), 30 * s, once},
		{"and stays there", s, times(20, silent), 30 * s, once},
		{"answers again: back to normal at once", s, append(times(8, silent), answered), s, attempt{}},
		{"answers badly: keeps its rate", s, times(10, bad), s, attempt{}},
		{"link down: paced by the link", s, times(10, down), s, attempt{}},
		{"poll of 20 s", 20 * s, times(4, silent), 30 * s, once},
		{"poll of 1 min", time.Minute, times(10, silent), time.Minute, once},
		{"no poll interval", 0, nil, s, attempt{}},
	}
	for _, c := range cases {
		p := &poller{dev: &device{set: &mb.Device{Poll: c.poll}}}
		for _, r := range c.polls {
			p.health.observe(r)
		}
		if interval, first := p.next(); interval != c.interval || first != c.first {
			t.Errorf("%s: next poll in %v with %+v, want %v with %+v", c.name, interval, first, c.interval, c.first)
		}
	}
}

func TestNextSlot(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	cases := []struct {
		name string
		now  time.Duration // after t0, the last slot
		want time.Duration
	}{
		{"on time", 100 * ms, 1000 * ms},
		{"late: the next starts at once, on the grid", 1200 * ms, 1000 * ms},
		{"exactly one interval behind", 2000 * ms, 1000 * ms},
		{"a slot missed: skipped", 2500 * ms, 2000 * ms},
		{"many slots missed", 10300 * ms, 10000 * ms},
	}
	for _, c := range cases {
		if got := nextSlot(t0, time.Second, t0.Add(c.now)).Sub(t0); got != c.want {
			t.Errorf("%s: next slot at %v, want %v", c.name, got, c.want)
		}
	}
}

// TestEndpointDown: an endpoint that refuses connections makes its devices
// offline at once, naming the address.
func TestEndpointDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	tmpl := &tTemplate{Name: "m", Kind: "power_meter", Registers: holdings(0, 1)}
	r := runDriver(t, tLink{Station: station(tmpl),
		Endpoint: &tEndpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 200 * time.Millisecond},
		Devices:  []*tDevice{{ID: "meter", Template: "m", UnitID: 1, Poll: 50 * time.Millisecond}}})
	m := r.next(t, "meter", model.KindTelemetry, 2*time.Second)
	for _, rd := range m.Readings {
		if rd.Quality != model.Bad || !rd.Value.IsZero() {
			t.Errorf("reading %+v, want bad", rd)
		}
	}
	h := r.next(t, "meter", model.KindHealth, 2*time.Second).Health
	const end = "connection refused reading holding registers 0-1 (0x0000-0x0001)"
	if h.State != model.Offline || !strings.HasPrefix(h.Reason, "connect "+addr+": ") || !strings.HasSuffix(h.Reason, end) {
		t.Errorf("health %s %q, want offline: connect %s: ... %s", h.State, h.Reason, addr, end)
	}
}

// TestDeviceException: a device answering one request with an exception is
// degraded; that request's signals are bad, the others good.
func TestDeviceException(t *testing.T) {
	addr := tcpPeer(t, func(n int, req []byte) (time.Duration, []byte) {
		if req[7] == fcReadInput {
			return 0, []byte{req[0], req[1], 0, 0, 0, 3, req[6], 0x84, 2}
		}
		return 0, tcpAnswer(req)
	})
	tmpl := &tTemplate{Name: "m", Kind: "power_meter", Registers: []mb.Register{
		{Signal: "a", Table: mb.Holding, Address: 4, Type: mb.TypeUint16, Scale: 1},
		{Signal: "b", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 1},
	}}
	r := runDriver(t, tLink{Station: station(tmpl),
		Endpoint: &tEndpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 200 * time.Millisecond},
		Devices:  []*tDevice{{ID: "meter", Template: "m", UnitID: 1, Poll: 50 * time.Millisecond}}})
	m := r.next(t, "meter", model.KindTelemetry, 2*time.Second)
	if a := m.Readings[0]; a.Quality != model.Good || !a.Value.Equal(model.Number(float64(regValue(4)))) {
		t.Errorf("a = %+v, want good %d", a, regValue(4))
	}
	if b := m.Readings[1]; b.Quality != model.Bad || !b.Value.IsZero() {
		t.Errorf("b = %+v, want bad", b)
	}
	h := r.next(t, "meter", model.KindHealth, 2*time.Second).Health
	const want = "exception 2 (illegal data address) reading input register 0 (0x0000): b"
	if h.State != model.Degraded || h.Reason != want || h.Counters["exceptions"] != 1 {
		t.Errorf("health %s %q %v, want degraded: %q with 1 exception", h.State, h.Reason, h.Counters, want)
	}
}
