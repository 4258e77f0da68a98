package modbus

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	mb "outpost/configs/modbus"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// A dead device must not slow the living: these tests run the driver
// against in-test devices on a real pty and a real TCP connection.

// rtuBench is an in-test RS-485 bus of units: each answers as its mode
// says, and every request on the line is recorded.
type rtuBench struct {
	*responder
	mu    sync.Mutex
	modes map[byte]string // unit -> "" (answers), "silent", "exception", "crc", "crc, then silent" or "coils only"
	reqs  []benchRequest
}

type benchRequest struct {
	unit, fc byte
	at       time.Time
}

func startBench(t *testing.T, modes map[byte]string) *rtuBench {
	b := &rtuBench{modes: modes}
	b.responder = startResponder(t, func(req []byte, write func([]byte)) []byte {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.reqs = append(b.reqs, benchRequest{unit: req[0], fc: req[1], at: time.Now()})
		mode, ok := b.modes[req[0]]
		switch {
		case !ok || mode == "silent":
			return nil
		case mode == "exception":
			return rtuFrame(req[0], req[1]|0x80, 2)
		case mode == "crc", mode == "crc, then silent" && len(b.requestsLocked(req[0], time.Time{}))%2 == 1:
			ans := readAnswer(req)
			ans[len(ans)-1] ^= 0xFF
			return ans
		case mode == "crc, then silent":
			return nil
		case mode == "another master, then crc":
			write(rtuFrame(9, fcReadHolding, 0, 100, 0, 2))
			time.Sleep(10 * time.Millisecond) // a frame gap
			ans := readAnswer(req)
			ans[len(ans)-1] ^= 0xFF
			return ans
		case mode == "coils only" && req[1] != fcReadCoils:
			return nil
		}
		return readAnswer(req)
	})
	return b
}

func (b *rtuBench) set(unit byte, mode string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.modes[unit] = mode
}

// requests are those a unit got since a time.
func (b *rtuBench) requests(unit byte, since time.Time) []benchRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requestsLocked(unit, since)
}

// requestsLocked is requests, with b.mu held.
func (b *rtuBench) requestsLocked(unit byte, since time.Time) []benchRequest {
	var out []benchRequest
	for _, q := range b.reqs {
		if q.unit == unit && !q.at.Before(since) {
			out = append(out, q)
		}
	}
	return out
}

// twoRequests is a template whose plan is two requests: input registers
// 0-1, then holding register 4.
func twoRequests(t *testing.T) *tTemplate {
	tmpl := &tTemplate{Name: "th", Kind: "temp_humidity", Registers: []mb.Register{
		{Signal: "temperature", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 1},
		{Signal: "humidity", Table: mb.Input, Address: 1, Type: mb.TypeUint16, Scale: 1},
		{Signal: "setpoint", Table: mb.Holding, Address: 4, Type: mb.TypeUint16, Scale: 1},
	}}
	plan, err := Plan(tmpl.body(), BusCost((&tBus{Baud: 9600}).settings()))
	if err != nil || len(plan) != 2 || plan[0].Table != mb.Input {
		t.Fatalf("plan %v, %v: the test wants input registers, then holding ones", plan, err)
	}
	return tmpl
}

// busLink is a 9600 baud bus on the bench with a device per unit, named
// by devs (unit -> device id), all polled every poll.
func busLink(t *testing.T, b *rtuBench, timeout time.Duration, retries int, poll time.Duration, devs map[byte]string) tLink {
	bus := &tBus{ID: "rs485-1", Protocol: "modbus-rtu", Port: b.path(), Baud: 9600, Timeout: timeout, Retries: retries}
	link := tLink{Station: station(twoRequests(t)), Bus: bus}
	for unit, id := range devs {
		link.Devices = append(link.Devices, &tDevice{ID: id, Template: "th", Bus: bus.ID, UnitID: int(unit), Poll: poll})
	}
	return link
}

// TestSilentFirstRequestSkipsPlan: a device that does not answer the first
// request of a poll is not asked the rest of its plan.
func TestSilentFirstRequestSkipsPlan(t *testing.T) {
	start := time.Now()
	b := startBench(t, map[byte]string{1: "", 9: "silent"})
	r := runDriver(t, busLink(t, b, 30*time.Millisecond, 1, 50*time.Millisecond, map[byte]string{1: "th-1", 9: "ghost"}))
	r.health(t, "ghost", model.Offline, 3*time.Second)
	reqs := b.requests(9, start)
	for _, q := range reqs {
		if q.fc != fcReadInput {
			t.Fatalf("the ghost was asked function %d after its first request went unanswered (requests: %v)", q.fc, reqs)
		}
	}
	if len(reqs) < 4 {
		t.Errorf("ghost asked %d times before it was offline, want 2 tries at the first poll and 1 at the next two", len(reqs))
	}
}

// TestSilentLaterRequestEndsPoll: a device that stops answering in the
// middle of a poll (unplugged, switched off) is not asked the rest of it:
// the poll ends, and what it did answer is published at once.
func TestSilentLaterRequestEndsPoll(t *testing.T) {
	start := time.Now()
	b := startBench(t, map[byte]string{9: "coils only"})
	tmpl := &tTemplate{Name: "th", Kind: "relay", Registers: []mb.Register{
		{Signal: "relay", Table: mb.Coil, Address: 0, Type: mb.TypeBool},
		{Signal: "temperature", Table: mb.Input, Address: 0, Type: mb.TypeUint16, Scale: 1},
		{Signal: "setpoint", Table: mb.Holding, Address: 4, Type: mb.TypeUint16, Scale: 1},
	}}
	bus := &tBus{ID: "rs485-1", Protocol: "modbus-rtu", Port: b.path(), Baud: 9600, Timeout: 30 * time.Millisecond}
	link := tLink{Station: station(tmpl), Bus: bus,
		Devices: []*tDevice{{ID: "relay-1", Template: "th", Bus: bus.ID, UnitID: 9, Poll: 100 * time.Millisecond}}}
	r := runDriver(t, link)
	m := r.next(t, "relay-1", model.KindTelemetry, 3*time.Second)
	if q := m.Readings[0].Quality; q != model.Good {
		t.Errorf("the coil it answered: quality %s, want good", q)
	}
	waitFor(t, 3*time.Second, "3 polls", func() bool { return len(b.requests(9, start)) >= 6 })
	for _, q := range b.requests(9, start) {
		if q.fc == fcReadHolding {
			t.Fatalf("the device was asked its holding registers after its input registers went unanswered")
		}
	}
}

// TestOfflineProbes: an offline device is probed with a single try of its
// first request at a growing interval, and is back to its normal rate as
// soon as it answers.
func TestOfflineProbes(t *testing.T) {
	const poll = 100 * time.Millisecond
	b := startBench(t, map[byte]string{1: "", 9: "silent"})
	r := runDriver(t, busLink(t, b, 30*time.Millisecond, 2, poll, map[byte]string{1: "th-1", 9: "ghost"}))
	r.health(t, "ghost", model.Offline, 3*time.Second)
	offline := time.Now()
	waitFor(t, 3*time.Second, "4 probes", func() bool { return len(b.requests(9, offline)) >= 4 })
	probes := b.requests(9, offline)
	// A retry would follow its try within 60 ms (the timeout and the wire
	// time); probes come at 200, 400, 800 ms from the offline poll's due time.
	var gaps []time.Duration
	for i := 1; i < len(probes); i++ {
		gaps = append(gaps, probes[i].at.Sub(probes[i-1].at).Round(time.Millisecond))
	}
	for i, g := range gaps {
		if g < 150*time.Millisecond || i > 0 && g < gaps[i-1]*3/2 {
			t.Fatalf("gaps between probes %v: want single tries at a doubling interval", gaps)
		}
	}
	for _, q := range probes {
		if q.fc != fcReadInput {
			t.Fatalf("a probe asked function %d, want only the first request of the plan", q.fc)
		}
	}
	t.Logf("gaps between probes: %v", gaps)

	b.set(9, "")
	h := r.health(t, "ghost", model.Online, 3*time.Second)
	back := time.Now()
	// The probe that got an answer went on with the whole plan.
	var m model.Message
	for {
		m = r.next(t, "ghost", model.KindTelemetry, time.Second)
		if m.Readings[0].Quality == model.Good {
			break
		}
	}
	for _, rd := range m.Readings {
		if rd.Quality != model.Good {
			t.Errorf("first good poll after the probe answered: %+v, want every reading good", m.Readings)
			break
		}
	}
	// And the device is polled at its rate again: 2 requests every 100 ms.
	waitFor(t, 700*time.Millisecond, "8 requests at the normal rate", func() bool { return len(b.requests(9, back)) >= 8 })
	if h.Counters["timeouts"] < 3 {
		t.Errorf("counters %v, want the timeouts counted", h.Counters)
	}
}

// TestLinkBackWakesOffline: when a bus answers again after every unit on
// it fell silent (a cable put back), the units offline with it are probed
// at once, not each at the end of its backoff: polled every 100 and 300 ms
// and silent for 6 s, their probes are seconds apart by then.
func TestLinkBackWakesOffline(t *testing.T) {
	b := startBench(t, map[byte]string{1: "silent", 2: "silent"})
	link := busLink(t, b, 30*time.Millisecond, 1, 100*time.Millisecond, map[byte]string{1: "dev-1", 2: "dev-2"})
	for _, d := range link.Devices {
		if d.UnitID == 2 {
			d.Poll = 300 * time.Millisecond
		}
	}
	r := runDriver(t, link)
	r.health(t, "dev-1", model.Offline, 3*time.Second)
	r.health(t, "dev-2", model.Offline, 3*time.Second)
	silent := time.Now()
	waitFor(t, 10*time.Second, "probes 1.6 s apart", func() bool {
		p1, p2 := b.requests(1, silent), b.requests(2, silent)
		return len(p1) > 1 && len(p2) > 1 && p1[len(p1)-1].at.Sub(p1[len(p1)-2].at) > 1500*time.Millisecond &&
			p2[len(p2)-1].at.Sub(p2[len(p2)-2].at) > 1500*time.Millisecond
	})

	b.set(1, "")
	b.set(2, "")
	back := map[string]time.Time{}
	timeout := time.After(10 * time.Second)
	for len(back) < 2 {
		select {
		case m := <-r.msgs:
			if _, seen := back[m.Device]; !seen && m.Kind == model.KindHealth && m.Health.State == model.Online {
				back[m.Device] = time.Now()
			}
		case <-timeout:
			t.Fatalf("back online within 10 s: %v, want both", back)
		}
	}
	gap := back["dev-1"].Sub(back["dev-2"]).Abs().Round(time.Millisecond)
	if gap > 500*time.Millisecond {
		t.Errorf("back online %v apart: want within 500 ms, the second woken by the first's answer", gap)
	}
	t.Logf("back online %v apart", gap)
}

// TestAnsweringDeviceKeepsRate: a device that answers, but only with
// exceptions or damaged frames, is degraded, not offline, and is polled at
// its configured rate: it costs no timeouts, and its readings are wanted
// the moment it recovers. Damaged frames from the bus's only device say
// what to check on the line.
func TestAnsweringDeviceKeepsRate(t *testing.T) {
	cases := []struct {
		mode, reason string
	}{
		{"exception", "exception 2 (illegal data address) reading input registers 0-1 (0x0000-0x0001): temperature, humidity; unit 1 has no register template th reads: is th its model? gateway probe names the templates it reads as"},
		{"crc", "bad frame (crc: got 78ab, want 87ab), 9 bytes dropped reading input registers 0-1 (0x0000-0x0001)"},
		// Each request's first try damaged, its retry unanswered: the
		// device is there all the same, and the damage is the reason.
		{"crc, then silent", "bad frame (crc: got 78ab, want 87ab), 9 bytes dropped reading input registers 0-1 (0x0000-0x0001)"},
		// Another master heard on the bus: named last, in place of the
		// line's settings and noise.
		{"another master, then crc", "bad frame (crc: got 78ab, want 87ab), 9 bytes dropped reading input registers 0-1 (0x0000-0x0001); another master polls this bus (unit 9 asked for 2 holding registers from 100 (0x0064)): " + bus.TwoMasters},
	}
	for _, c := range cases {
		t.Run(c.mode, func(t *testing.T) {
			// A poll of two damaged answers takes some 100 ms: each one's
			// drain, and the quiet the next request waits for after it.
			const poll = 150 * time.Millisecond
			b := startBench(t, map[byte]string{1: c.mode})
			r := runDriver(t, busLink(t, b, 30*time.Millisecond, 1, poll, map[byte]string{1: "meter"}))
			start := time.Now()
			h := r.health(t, "meter", model.Degraded, 2*time.Second)
			if strings.HasPrefix(c.mode, "crc") {
				c.reason += "; no unit on rs485-1 answers with a whole frame: " + damagedHint(b.path())
			}
			if h.Reason != c.reason {
				t.Errorf("reason\n got %q\nwant %q", h.Reason, c.reason)
			}
			for i := 0; i < 25; i++ {
				r.next(t, "meter", model.KindTelemetry, 2*time.Second)
			}
			took := time.Since(start)
			for _, m := range r.pending {
				if m.Kind == model.KindHealth {
					t.Errorf("health went %s (%s), want it to stay degraded", m.Health.State, m.Health.Reason)
				}
			}
			if took > 50*poll {
				t.Errorf("25 polls took %v at a poll interval of %v: the device was backed off", took, poll)
			}
			t.Logf("25 polls in %v", took)
		})
	}
}

// TestSilentUnitReasons: the reason of a silent unit says whether other
// units on the link answer (then its unit id or power is wrong), none
// does (then the link is), or it is alone on the link (then either).
func TestSilentUnitReasons(t *testing.T) {
	const others = "no answer from unit 9 while units 1 and 3 answer: wrong unit id, or device off"
	cases := []struct {
		name  string
		tcp   bool
		modes map[byte]string
		want  string
	}{
		{"bus, others answer", false, map[byte]string{1: "", 3: "", 9: "silent"}, others},
		{"bus, nothing answers", false, map[byte]string{1: "silent", 9: "silent"},
			"no answer from any unit on rs485-1: check wiring, port, baud rate and parity"},
		{"endpoint, others answer", true, map[byte]string{1: "", 3: "", 9: "silent"}, others},
		{"endpoint, a Modbus gateway says the unit does not respond", true, map[byte]string{1: "", 3: "", 9: "gateway"}, others},
		{"endpoint, nothing answers", true, map[byte]string{1: "silent", 9: "silent"},
			"no answer from any unit on lan: check the address, and the serial side if it is a Modbus gateway"},
		{"bus, alone", false, map[byte]string{9: "silent"},
			"no answer from unit 9 on rs485-1: wrong unit id, or device off; or check wiring, port, baud rate and parity"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const poll = 50 * time.Millisecond
			devs := map[byte]string{}
			for u := range c.modes {
				devs[u] = fmt.Sprintf("dev-%d", u)
			}
			var link tLink
			if c.tcp {
				addr := tcpPeer(t, func(_ int, req []byte) (time.Duration, []byte) {
					switch c.modes[req[6]] {
					case "silent":
						return 0, nil
					case "gateway":
						return 0, []byte{req[0], req[1], 0, 0, 0, 3, req[6], req[7] | 0x80, 0x0B}
					}
					return 0, tcpAnswer(req)
				})
				link = tLink{Station: station(twoRequests(t)),
					Endpoint: &tEndpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 30 * time.Millisecond, Retries: 1}}
				for u, id := range devs {
					link.Devices = append(link.Devices, &tDevice{ID: id, Template: "th", Endpoint: "lan", UnitID: int(u), Poll: poll})
				}
			} else {
				link = busLink(t, startBench(t, c.modes), 30*time.Millisecond, 1, poll, devs)
			}
			r := runDriver(t, link)
			// Offline, and once the others were asked, with the reason
			// that says whether the link works (at first, on a loaded
			// machine, the reason of a unit alone).
			deadline := time.Now().Add(3 * time.Second)
			for got := ""; got != c.want; {
				if time.Now().After(deadline) {
					t.Fatalf("reason\n got %q\nwant %q", got, c.want)
				}
				got = r.health(t, "dev-9", model.Offline, time.Until(deadline)).Reason
			}
		})
	}
}

// TestHealthLogLevels: going offline is a warning; coming back is news.
func TestHealthLogLevels(t *testing.T) {
	b := startBench(t, map[byte]string{1: "", 9: "silent"})
	r := runDriver(t, busLink(t, b, 30*time.Millisecond, 1, 50*time.Millisecond, map[byte]string{1: "th-1", 9: "ghost"}))
	r.health(t, "ghost", model.Offline, 3*time.Second)
	b.set(9, "")
	r.health(t, "ghost", model.Online, 3*time.Second)
	want := map[model.HealthState]string{model.Degraded: "INFO", model.Offline: "WARN", model.Online: "INFO"}
	seen := map[model.HealthState]bool{}
	for _, rec := range r.logs.find("device health") {
		if rec.attrs["device"] != "ghost" {
			continue
		}
		state := model.HealthState(rec.attrs["state"])
		seen[state] = true
		if rec.level.String() != want[state] {
			t.Errorf("%v: logged at %s, want %s", rec, rec.level, want[state])
		}
	}
	if len(seen) != 3 {
		t.Errorf("health changes logged: %v, want degraded, offline and online", seen)
	}
}

// TestLinkRunsLate: a device whose timeouts hold the bus makes the other
// polls late; the link says so once, naming the device that holds the bus,
// and the late polls are counted, as are the slots of the schedule that
// passed without a poll (the ghost's polls take 100 ms or more, its slots
// are 40 ms apart).
func TestLinkRunsLate(t *testing.T) {
	b := startBench(t, map[byte]string{1: "", 9: "silent"})
	r := runDriver(t, busLink(t, b, 100*time.Millisecond, 1, 40*time.Millisecond, map[byte]string{1: "th-1", 9: "ghost"}))
	h := r.health(t, "ghost", model.Offline, 3*time.Second)
	if h.Counters["late_polls"] == 0 || h.Counters["skipped_slots"] < h.Counters["polls"]-1 {
		t.Errorf("ghost counters %v, want late_polls, and a skipped slot or more per poll after the first", h.Counters)
	}
	recs := r.logs.find("link polls running late")
	if len(recs) != 1 {
		t.Fatalf("logged %d times that the link runs late, want once: %v", len(recs), recs)
	}
	rec := recs[0]
	if rec.level.String() != "WARN" || rec.attrs["link"] != "rs485-1" || rec.attrs["busiest_device"] != "ghost" ||
		rec.attrs["late_by"] == "" || !strings.HasSuffix(rec.attrs["load"], "%") {
		t.Errorf("logged %v, want a warning naming the ghost as the busiest device, how late, and the load", rec)
	}
}

// TestTCPSilentUnitKeepsConnection: behind one Modbus TCP endpoint, a unit
// that does not answer (once late, then never) does not cost the other
// units their connection or their polls.
func TestTCPSilentUnitKeepsConnection(t *testing.T) {
	var mu sync.Mutex
	asked := 0
	addr, accepted := tcpPeerConns(t, func(_ int, req []byte) (time.Duration, []byte) {
		if req[6] != 9 {
			return 0, tcpAnswer(req)
		}
		mu.Lock()
		defer mu.Unlock()
		if asked++; asked == 1 {
			return 120 * time.Millisecond, tcpAnswer(req) // after the timeout
		}
		return 0, nil
	})
	tmpl := twoRequests(t)
	ep := &tEndpoint{ID: "lan", Protocol: "modbus-tcp", Address: addr, Timeout: 100 * time.Millisecond, Retries: 1}
	r := runDriver(t, tLink{Station: station(tmpl), Endpoint: ep, Devices: []*tDevice{
		{ID: "meter", Template: "th", Endpoint: "lan", UnitID: 1, Poll: 50 * time.Millisecond},
		{ID: "ghost", Template: "th", Endpoint: "lan", UnitID: 9, Poll: 50 * time.Millisecond},
	}})
	h := r.health(t, "ghost", model.Offline, 3*time.Second)
	if want := "no answer from unit 9 while unit 1 answers: wrong unit id, or device off"; h.Reason != want {
		t.Errorf("ghost reason %q, want %q", h.Reason, want)
	}
	for i := 0; i < 10; i++ {
		m := r.next(t, "meter", model.KindTelemetry, time.Second)
		for _, rd := range m.Readings {
			if rd.Quality != model.Good {
				t.Fatalf("meter poll %d: %+v, want good readings", i, m.Readings)
			}
		}
	}
	if h := r.next(t, "meter", model.KindHealth, time.Second).Health; h.State != model.Online {
		t.Errorf("meter health %s %q, want online", h.State, h.Reason)
	}
	if n := accepted(); n != 1 {
		t.Errorf("%d connections, want the first kept throughout", n)
	}
}
