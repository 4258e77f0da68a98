package modbus

import (
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"outpost/configs"
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
	tmpl := &configs.Template{Name: "th", Kind: "k", Registers: holdings(0)}
	big := &configs.Template{Name: "big", Kind: "k", Registers: []configs.Register{{Signal: "s", Table: configs.Holding, Type: configs.TypeString, Length: 200}}}
	st := station(tmpl, big)
	bus := &configs.Bus{ID: "b1", Protocol: "modbus-rtu", Port: "/dev/null", Baud: 9600}
	ep := &configs.Endpoint{ID: "e1", Protocol: "modbus-tcp", Address: "127.0.0.1:1"}
	log := slog.New(slog.DiscardHandler)
	cases := []struct {
		name string
		link drivers.Link
		f    drivers.Factory
		want string
	}{
		{"rtu needs a bus", drivers.Link{Station: st, Endpoint: ep}, newRTU, "modbus-rtu: link e1 is not a serial bus"},
		{"tcp needs an endpoint", drivers.Link{Station: st, Bus: bus}, newTCP, "modbus-tcp: link b1 is not a network endpoint"},
		{"missing template", drivers.Link{Station: st, Bus: bus, Devices: []*configs.Device{{ID: "d", Template: "nope", UnitID: 1}}}, newRTU,
			`device d on b1: template "nope" not loaded`},
		{"unit id", drivers.Link{Station: st, Endpoint: ep, Devices: []*configs.Device{{ID: "d", Template: "th", UnitID: 256}}}, newTCP,
			"device d on e1: unit id 256 outside 0-255"},
		{"unplannable", drivers.Link{Station: st, Endpoint: ep, Devices: []*configs.Device{{ID: "d", Template: "big", UnitID: 1}}}, newTCP,
			"device d on e1: template big: signal s: 200 holding entries exceed the 125 a request may read"},
		{"parity", drivers.Link{Station: st, Bus: &configs.Bus{ID: "b2", Baud: 9600, Parity: "mark"}}, newRTU, `bus b2: parity "mark" not supported`},
	}
	for _, c := range cases {
		_, err := c.f(c.link, log)
		if err == nil || err.Error() != c.want {
			t.Errorf("%s: err %v, want %q", c.name, err, c.want)
		}
	}
}

func TestTracker(t *testing.T) {
	type step struct {
		res     pollResult
		state   model.HealthState
		changed bool
	}
	ok := pollResult{requests: 2}
	half := pollResult{requests: 2, failed: 1, reason: "exception 2 (illegal data address) reading input 0-5", counters: []string{"exceptions"}}
	all := pollResult{requests: 2, failed: 2, reason: "timeout after 500ms reading input 0-5", counters: []string{"timeouts", "timeouts"}}
	down := pollResult{requests: 2, failed: 2, linkDown: true, reason: "open /dev/x: gone reading input 0-5", counters: []string{"link_down", "link_down"}}
	steps := []step{
		{ok, model.Online, true},
		{ok, model.Online, false},
		{half, model.Degraded, true},
		{ok, model.Online, true},
		{all, model.Degraded, true},
		{all, model.Degraded, false},
		{all, model.Offline, true},
		{all, model.Offline, false},
		{half, model.Degraded, true},
		{all, model.Degraded, false},
		{ok, model.Online, true},
		{down, model.Offline, true},
		{pollResult{requests: 1, counters: []string{"decode_errors"}}, model.Degraded, true},
	}
	var tr tracker
	for i, s := range steps {
		h, changed := tr.observe(s.res)
		if h.State != s.state || changed != s.changed {
			t.Fatalf("step %d: %s changed=%v, want %s changed=%v", i, h.State, changed, s.state, s.changed)
		}
		if s.res.failed > 0 && h.Reason != s.res.reason {
			t.Errorf("step %d: reason %q, want %q", i, h.Reason, s.res.reason)
		}
	}
	want := map[string]uint64{"polls": 13, "requests": 25, "failures": 8, "exceptions": 2, "timeouts": 10, "link_down": 2, "decode_errors": 1}
	h, _ := tr.observe(ok)
	want["polls"]++
	want["requests"] += 2
	if fmt.Sprint(h.Counters) != fmt.Sprint(want) {
		t.Errorf("counters %v, want %v", h.Counters, want)
	}
}

func TestBackoffInterval(t *testing.T) {
	p := &poller{dev: &device{cfg: &configs.Device{Poll: time.Second}}}
	var got []time.Duration
	for i := 0; i < 8; i++ {
		got = append(got, p.interval())
		p.health.failedPolls++
	}
	want := []time.Duration{1, 1, 2, 4, 8, 16, 30, 30}
	for i := range want {
		want[i] *= time.Second
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("intervals %v, want %v", got, want)
	}
	p.health.linkDown = true
	if d := p.interval(); d != time.Second {
		t.Errorf("interval while the link is down %v, want the poll interval", d)
	}
	slow := &poller{dev: &device{cfg: &configs.Device{Poll: time.Minute}}}
	slow.health.failedPolls = 5
	if d := slow.interval(); d != time.Minute {
		t.Errorf("a 1 min poll backs off to %v, want it kept at 1 min", d)
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
	tmpl := &configs.Template{Name: "m", Kind: "power_meter", Registers: holdings(0, 1)}
	r := runDriver(t, drivers.Link{Station: station(tmpl),
		Endpoint: &configs.Endpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 200 * time.Millisecond},
		Devices:  []*configs.Device{{ID: "meter", Template: "m", UnitID: 1, Poll: 50 * time.Millisecond}}})
	m := r.next(t, "meter", model.KindTelemetry, 2*time.Second)
	for _, rd := range m.Readings {
		if rd.Quality != model.Bad || !rd.Value.IsZero() {
			t.Errorf("reading %+v, want bad", rd)
		}
	}
	h := r.next(t, "meter", model.KindHealth, 2*time.Second).Health
	if h.State != model.Offline || !strings.HasPrefix(h.Reason, "connect "+addr+": ") || !strings.HasSuffix(h.Reason, "connection refused reading holding 0-1") {
		t.Errorf("health %s %q, want offline: connect %s: ... connection refused reading holding 0-1", h.State, h.Reason, addr)
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
	tmpl := &configs.Template{Name: "m", Kind: "power_meter", Registers: []configs.Register{
		{Signal: "a", Table: configs.Holding, Address: 4, Type: configs.TypeUint16, Scale: 1},
		{Signal: "b", Table: configs.Input, Address: 0, Type: configs.TypeUint16, Scale: 1},
	}}
	r := runDriver(t, drivers.Link{Station: station(tmpl),
		Endpoint: &configs.Endpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 200 * time.Millisecond},
		Devices:  []*configs.Device{{ID: "meter", Template: "m", UnitID: 1, Poll: 50 * time.Millisecond}}})
	m := r.next(t, "meter", model.KindTelemetry, 2*time.Second)
	if a := m.Readings[0]; a.Quality != model.Good || !a.Value.Equal(model.Number(float64(regValue(4)))) {
		t.Errorf("a = %+v, want good %d", a, regValue(4))
	}
	if b := m.Readings[1]; b.Quality != model.Bad || !b.Value.IsZero() {
		t.Errorf("b = %+v, want bad", b)
	}
	h := r.next(t, "meter", model.KindHealth, 2*time.Second).Health
	if h.State != model.Degraded || h.Reason != "exception 2 (illegal data address) reading input 0-0" || h.Counters["exceptions"] != 1 {
		t.Errorf("health %+v, want degraded by exception 2", *h)
	}
}
