package modbus

import (
	"log/slog"
	"net"
	"slices"
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
	want := "connect " + addr + ": dial tcp " + addr + ": connect: connection refused"
	if h.State != model.Offline || h.Reason != want {
		t.Errorf("health %s %q, want offline: %q", h.State, h.Reason, want)
	}
}

// TestDeviceException: a device answering a request with an exception is
// degraded, and that request's signals are bad, the others good. A device
// that has none of what its template reads (exceptions 1 and 2 to every
// request) is asked whether it is the template's model; one failing every
// request otherwise is not.
func TestDeviceException(t *testing.T) {
	const wrongModel = "; unit 1 has no register template m reads: is m its model? gateway probe names the templates it reads as"
	for _, tc := range []struct {
		name   string
		code   byte // the exception
		all    bool // to every request, else to input registers only
		reason string
	}{
		{"one request, no such register", 2, false, "exception 2 (illegal data address) reading input register 0 (0x0000): b"},
		{"every request, no such register", 2, true, "exception 2 (illegal data address) reading input register 0 (0x0000): b" + wrongModel},
		{"every request, no such function", 1, true, "exception 1 (illegal function) reading input register 0 (0x0000): b" + wrongModel},
		{"every request, device failure", 4, true, "exception 4 (server device failure) reading input register 0 (0x0000): b"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := tcpPeer(t, func(n int, req []byte) (time.Duration, []byte) {
				if tc.all || req[7] == fcReadInput {
					return 0, []byte{req[0], req[1], 0, 0, 0, 3, req[6], req[7] | 0x80, tc.code}
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
			wantA := model.Good
			if tc.all {
				wantA = model.Bad
			}
			if a := m.Readings[0]; a.Quality != wantA || a.Quality == model.Good && !a.Value.Equal(model.Number(float64(regValue(4)))) {
				t.Errorf("a = %+v, want %s %d", a, wantA, regValue(4))
			}
			if b := m.Readings[1]; b.Quality != model.Bad || !b.Value.IsZero() {
				t.Errorf("b = %+v, want bad", b)
			}
			h := r.next(t, "meter", model.KindHealth, 2*time.Second).Health
			if h.State != model.Degraded || h.Reason != tc.reason || h.Counters["exceptions"] == 0 {
				t.Errorf("health %s %v\n got %q\nwant degraded: %q", h.State, h.Counters, h.Reason, tc.reason)
			}
		})
	}
}
