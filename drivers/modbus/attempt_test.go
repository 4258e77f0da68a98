package modbus

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	mb "outpost/configs/modbus"
	"outpost/drivers/bus"
)

// TestReadAttempts: a request is tried with the link's retries and timeout,
// once when the attempt says so, and with a probe's shorter timeout when it
// sets one; on a bus and on an endpoint alike.
func TestReadAttempts(t *testing.T) {
	const timeout = 150 * time.Millisecond
	b := startBench(t, map[byte]string{1: "", 9: "silent"})
	var mu sync.Mutex
	var tcpAsked []time.Time
	addr := tcpPeer(t, func(int, []byte) (time.Duration, []byte) {
		mu.Lock()
		tcpAsked = append(tcpAsked, time.Now())
		mu.Unlock()
		return 0, nil
	})
	log := slog.New(slog.DiscardHandler)
	tmpl := twoRequests(t)
	rb, err := newRTU(tLink{Station: station(tmpl), Bus: &tBus{ID: "b", Port: b.path(), Baud: 9600, Timeout: timeout, Retries: 2},
		Devices: []*tDevice{{ID: "ghost", Template: "th", UnitID: 9}}}.link(), log)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := newTCP(tLink{Station: station(tmpl), Endpoint: &tEndpoint{ID: "e", Address: addr, Timeout: timeout, Retries: 2},
		Devices: []*tDevice{{ID: "ghost", Template: "th", UnitID: 9}}}.link(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.(*rtuBus).closePort()
	defer ep.(*tcpLink).tr.close()
	links := []struct {
		name  string
		rd    client
		asked func(since time.Time) int
	}{
		{"bus", rb.(*rtuBus), func(since time.Time) int { return len(b.requests(9, since)) }},
		{"endpoint", ep.(*tcpLink), func(since time.Time) int {
			mu.Lock()
			defer mu.Unlock()
			n := 0
			for _, at := range tcpAsked {
				if !at.Before(since) {
					n++
				}
			}
			return n
		}},
	}
	cases := []struct {
		name     string
		a        bus.Attempt
		tries    int
		min, max time.Duration
	}{
		{"the link's retries and timeout", bus.Attempt{}, 3, 3 * timeout, 5 * timeout},
		{"once", bus.Attempt{Once: true}, 1, timeout, 2 * timeout},
		{"a probe", bus.Attempt{Once: true, Timeout: 20 * time.Millisecond}, 1, 20 * time.Millisecond, timeout * 3 / 4},
		{"a probe's timeout never exceeds the link's", bus.Attempt{Once: true, Timeout: time.Hour}, 1, timeout, 2 * timeout},
	}
	r := Request{Table: mb.Input, Start: 0, Count: 2}
	for _, l := range links {
		for _, c := range cases {
			start := time.Now()
			_, err := l.rd.read(context.Background(), 9, r, c.a, nil)
			took := time.Since(start)
			var te *TimeoutError
			if !errors.As(err, &te) {
				t.Errorf("%s, %s: err %v, want a timeout", l.name, c.name, err)
			}
			n := l.asked(start) // every try reached the peer long before its timeout
			if n != c.tries || took < c.min || took > c.max {
				t.Errorf("%s, %s: %d tries in %v, want %d in %v to %v", l.name, c.name, n, took.Round(time.Millisecond), c.tries, c.min, c.max)
			}
		}
	}
}

// TestTCPRedialAfterSilence: a connection stays up through timeouts while
// any unit answers on it; once nothing at all has come back for
// redialAfter, the next timeout closes it and the next request redials.
func TestTCPRedialAfterSilence(t *testing.T) {
	addr, accepted := tcpPeerConns(t, func(_ int, req []byte) (time.Duration, []byte) {
		if req[6] == 9 {
			return 0, nil
		}
		return 0, tcpAnswer(req)
	})
	const limit = 200 * time.Millisecond
	c, tr, p := newTCPClient(addr, 30*time.Millisecond)
	tr.redialAfter = limit
	read := func(unit byte) error {
		p.SlaveId = unit
		_, err := c.ReadHoldingRegisters(0, 2)
		return err
	}
	// Unit 9 never answers, unit 1 does: the connection stays.
	for start := time.Now(); time.Since(start) < 2*limit; {
		read(9)
		if err := read(1); err != nil {
			t.Fatalf("unit 1: %v", err)
		}
	}
	if n := accepted(); n != 1 {
		t.Fatalf("%d connections while unit 1 answered, want 1", n)
	}
	// Only unit 9 now: silence, then a redial.
	lastHeard := time.Now()
	for accepted() == 1 {
		if time.Since(lastHeard) > 10*limit {
			t.Fatalf("still the first connection after %v of silence", time.Since(lastHeard))
		}
		read(9)
	}
	if silence := time.Since(lastHeard); silence < limit {
		t.Errorf("redialled after %v of silence, want at least %v", silence, limit)
	}
}
