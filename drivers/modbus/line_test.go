package modbus

import (
	"fmt"
	"sync"
	"testing"
	"time"

	mb "outpost/configs/modbus"
)

func TestLateness(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const quiet = 10 * time.Second
	ms := time.Millisecond
	steps := []struct {
		at, by             time.Duration
		late, began, ended bool
		polls              int
		worst              time.Duration
	}{
		{0, 100 * ms, false, false, false, 0, 0},
		{1 * time.Second, 500 * ms, false, false, false, 0, 0}, // half an interval is not late
		{2 * time.Second, 600 * ms, true, true, false, 1, 600 * ms},
		{3 * time.Second, 900 * ms, true, false, false, 2, 900 * ms},
		{4 * time.Second, 700 * ms, true, false, false, 3, 900 * ms},
		{9 * time.Second, 0, false, false, false, 3, 900 * ms},
		{14 * time.Second, 0, false, false, true, 3, 900 * ms}, // quiet since the last late poll
		{15 * time.Second, 0, false, false, false, 3, 900 * ms},
		{16 * time.Second, 2 * time.Second, true, true, false, 1, 2 * time.Second},
	}
	var l lateness
	for i, s := range steps {
		late, began, ended := l.observe(t0.Add(s.at), s.by, time.Second, quiet)
		if late != s.late || began != s.began || ended != s.ended || l.polls != s.polls || l.worst != s.worst {
			t.Errorf("step %d (at %v, %v late): late=%v began=%v ended=%v, %d late polls, worst %v; want %v %v %v, %d, %v",
				i, s.at, s.by, late, began, ended, l.polls, l.worst, s.late, s.began, s.ended, s.polls, s.worst)
		}
	}
}

func TestSilenceReason(t *testing.T) {
	cases := []struct {
		link, hint string
		unit       byte
		answering  []byte
		unknown    bool
		want       string
	}{
		{"rs485-1", busHint, 9, []byte{3, 1}, false, "no answer from unit 9 while units 1 and 3 answer: wrong unit id, or device off"},
		{"rs485-1", busHint, 9, []byte{1}, true, "no answer from unit 9 while unit 1 answers: wrong unit id, or device off"},
		{"rs485-1", busHint, 9, []byte{4, 1, 3}, false, "no answer from unit 9 while units 1, 3 and 4 answer: wrong unit id, or device off"},
		{"rs485-1", busHint, 9, nil, false, "no answer from any unit on rs485-1: check wiring, port, baud rate and parity"},
		{"rs485-1", busHint, 9, nil, true, "no answer from unit 9"}, // some other units not asked yet
		{"meter-lan", endpointHint, 2, nil, false, "no answer from any unit on meter-lan: check the address, and the serial side if it is a Modbus gateway"},
	}
	for _, c := range cases {
		if got := silenceReason(c.link, c.hint, c.unit, c.answering, c.unknown); got != c.want {
			t.Errorf("unit %d, answering %v, unknown %v:\n got %q\nwant %q", c.unit, c.answering, c.unknown, got, c.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	cases := []struct {
		r    Request
		want string
	}{
		{Request{Table: mb.Input, Start: 0, Count: 2}, "input registers 0-1 (0x0000-0x0001)"},
		{Request{Table: mb.Holding, Start: 40, Count: 1}, "holding register 40 (0x0028)"},
		{Request{Table: mb.Coil, Start: 0, Count: 16}, "coils 0-15 (0x0000-0x000F)"},
		{Request{Table: mb.Discrete, Start: 256, Count: 2}, "discrete inputs 256-257 (0x0100-0x0101)"},
		{Request{Table: mb.Holding, Start: 65534, Count: 2}, "holding registers 65534-65535 (0xFFFE-0xFFFF)"},
	}
	for _, c := range cases {
		if got := describe(c.r); got != c.want {
			t.Errorf("describe(%s) = %q, want %q", c.r, got, c.want)
		}
	}
}

// TestTurns: the wire goes to waiters in the order they came, not to the
// one that just let it go.
func TestTurns(t *testing.T) {
	var q turns
	var mu sync.Mutex
	var order []int
	q.Lock()
	done := make(chan struct{})
	for i := 1; i <= 3; i++ {
		go func() {
			q.Lock()
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			q.Unlock()
			done <- struct{}{}
		}()
		// Waiter i queues before waiter i+1 starts.
		waitFor(t, time.Second, fmt.Sprintf("waiter %d queued", i), func() bool {
			q.mu.Lock()
			defer q.mu.Unlock()
			return len(q.waiting) == i
		})
	}
	q.Unlock()
	q.Lock() // the holder asks again at once: it comes last
	mu.Lock()
	got := fmt.Sprint(order)
	mu.Unlock()
	q.Unlock()
	for i := 0; i < 3; i++ {
		<-done
	}
	if got != "[1 2 3]" {
		t.Errorf("the wire went to %s before its last holder had it again, want [1 2 3]", got)
	}
}
