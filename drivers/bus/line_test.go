package bus

import (
	"context"
	"log/slog"
	"testing"
	"testing/synctest"
	"time"
)

// units is how Modbus names its addresses; dcon's are hex.
var units = Addresses{One: "unit", Many: "units", Format: "%d", Fix: "wrong unit id, or device off"}

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
		late, began, ended := l.observe(t0.Add(s.at), s.by, time.Second/2, quiet)
		if late != s.late || began != s.began || ended != s.ended || l.polls != s.polls || l.worst != s.worst {
			t.Errorf("step %d (at %v, %v late): late=%v began=%v ended=%v, %d late polls, worst %v; want %v %v %v, %d, %v",
				i, s.at, s.by, late, began, ended, l.polls, l.worst, s.late, s.began, s.ended, s.polls, s.worst)
		}
	}
}

func TestSilenceReason(t *testing.T) {
	cases := []struct {
		link, hint string
		unit       int
		answering  []int
		unknown    bool
		want       string
	}{
		{"rs485-1", "check wiring, port, baud rate and parity", 9, []int{3, 1}, false, "no answer from unit 9 while units 1 and 3 answer: wrong unit id, or device off"},
		{"rs485-1", "check wiring, port, baud rate and parity", 9, []int{1}, true, "no answer from unit 9 while unit 1 answers: wrong unit id, or device off"},
		{"rs485-1", "check wiring, port, baud rate and parity", 9, []int{4, 1, 3}, false, "no answer from unit 9 while units 1, 3 and 4 answer: wrong unit id, or device off"},
		{"rs485-1", "check wiring, port, baud rate and parity", 9, nil, false, "no answer from any unit on rs485-1: check wiring, port, baud rate and parity"},
		// Alone on the link, or some other units not asked yet:
		{"rs485-1", "check wiring, port, baud rate and parity", 9, nil, true, "no answer from unit 9 on rs485-1: wrong unit id, or device off; or check wiring, port, baud rate and parity"},
		{"meter-lan", "check the address, and the serial side if it is a Modbus gateway", 2, nil, false, "no answer from any unit on meter-lan: check the address, and the serial side if it is a Modbus gateway"},
	}
	for _, c := range cases {
		if got := SilenceReason(c.link, c.hint, units, c.unit, c.answering, c.unknown); got != c.want {
			t.Errorf("unit %d, answering %v, unknown %v:\n got %q\nwant %q", c.unit, c.answering, c.unknown, got, c.want)
		}
	}
}

// TestLineSilence: what the line knows of the other units decides which
// reason a silent unit gets. A unit alone on its link (or read alone, as
// gateway read does) may have a wrong unit id as much as a bad link.
func TestLineSilence(t *testing.T) {
	const hint = "check wiring, port, baud rate and parity"
	cases := []struct {
		name  string
		known []int
		heard map[int]bool // the others' last polls
		want  string
	}{
		{"alone", []int{7}, nil, "no answer from unit 7 on rs485-1: wrong unit id, or device off; or check wiring, port, baud rate and parity"},
		{"others not asked yet", []int{7, 2, 3}, map[int]bool{2: false}, "no answer from unit 7 on rs485-1: wrong unit id, or device off; or check wiring, port, baud rate and parity"},
		{"others silent", []int{7, 2, 3}, map[int]bool{2: false, 3: false}, "no answer from any unit on rs485-1: check wiring, port, baud rate and parity"},
		{"another answers", []int{7, 2, 3}, map[int]bool{2: true}, "no answer from unit 7 while unit 2 answers: wrong unit id, or device off"},
	}
	for _, c := range cases {
		l := NewLine("rs485-1", hint, units, slog.New(slog.DiscardHandler))
		for _, a := range c.known {
			l.Add(a, time.Second)
		}
		for a, ok := range c.heard {
			l.Heard(a, ok)
		}
		l.Heard(7, false)
		if got := l.Silence(context.Background(), 7); got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

// TestLineSilenceForTool: in an installer's tool's run, the first unit
// polled that is silent gets its reason once the others were polled, not
// the reason of a unit whose neighbours are unknown; a tool out of time
// gets that one, a second before its deadline, in time to report it.
func TestLineSilenceForTool(t *testing.T) {
	toolLine := func(addrs ...int) *Line {
		l := NewLine("rs485-1", "check wiring, port, baud rate and parity", units, slog.New(slog.DiscardHandler))
		l.ForTool = true
		for _, a := range addrs {
			l.Add(a, time.Second)
		}
		return l
	}
	synctest.Test(t, func(t *testing.T) {
		l := toolLine(7, 2, 3)
		l.Heard(7, false)
		said := make(chan string)
		go func() { said <- l.Silence(context.Background(), 7) }()
		synctest.Wait()
		select {
		case got := <-said:
			t.Fatalf("Silence said %q before units 2 and 3 were polled", got)
		default:
		}
		l.Heard(2, true)
		l.Heard(3, false)
		if got, want := <-said, "no answer from unit 7 while unit 2 answers: wrong unit id, or device off"; got != want {
			t.Errorf("Silence once the others were polled:\n got %q\nwant %q", got, want)
		}

		late := toolLine(7, 2)
		late.Heard(7, false)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if got, want := late.Silence(ctx, 7), "no answer from unit 7 on rs485-1: wrong unit id, or device off; or check wiring, port, baud rate and parity"; got != want {
			t.Errorf("Silence out of time:\n got %q\nwant %q", got, want)
		}
		if waited := time.Since(start); waited != 4*time.Second || ctx.Err() != nil {
			t.Errorf("Silence waited %v (the tool's context: %v), want 4s, a second before the tool's deadline", waited, ctx.Err())
		}
	})
}

func TestSilenceReasonHex(t *testing.T) {
	a := Addresses{One: "address", Many: "addresses", Format: "%02X", Fix: "wrong address or baud rate, or module off"}
	cases := []struct {
		answering []int
		want      string
	}{
		{[]int{0x0A}, "no answer from address 01 while address 0A answers: wrong address or baud rate, or module off"},
		{[]int{0x0A, 2}, "no answer from address 01 while addresses 02 and 0A answer: wrong address or baud rate, or module off"},
	}
	for _, c := range cases {
		if got := SilenceReason("rs485-2", "", a, 1, c.answering, false); got != c.want {
			t.Errorf("answering %v:\n got %q\nwant %q", c.answering, got, c.want)
		}
	}
}

// TestFirstRoundNotLate: every device's first poll is due at the link's
// start, so they queue for the wire; none of them is late, while a poll as
// late two intervals on is.
func TestFirstRoundNotLate(t *testing.T) {
	l := NewLine("rs485-1", "", units, slog.New(slog.DiscardHandler))
	const interval = 20 * time.Millisecond
	for _, dev := range []string{"th-1", "door-1", "smoke-1"} {
		if l.Started(dev, 15*time.Millisecond, interval) {
			t.Errorf("%s's first poll, 15 ms after it was due at the start, counted late", dev)
		}
	}
	time.Sleep(2 * interval) // the first round is over
	if !l.Started("th-1", 15*time.Millisecond, interval) {
		t.Error("a poll 15 ms late at a 20 ms interval, after the first round, not counted late")
	}
}

// TestFirstRoundOfTheSlowest: fast alarm polls wait behind the link's first
// round of normal polls; they are not late until two of its longest
// intervals have passed.
func TestFirstRoundOfTheSlowest(t *testing.T) {
	l := NewLine("rs485-1", "", units, slog.New(slog.DiscardHandler))
	l.Add(1, 40*time.Millisecond) // a sensor polled every 40 ms
	const alarm = 10 * time.Millisecond
	l.Started("pb-2", 0, alarm) // the link's first poll
	time.Sleep(3 * alarm)       // past two alarm intervals, within two of the sensor's
	if l.Started("pb-2", 8*time.Millisecond, alarm) {
		t.Error("an alarm poll behind the first round of polls counted late")
	}
	time.Sleep(60 * time.Millisecond) // past two of the sensor's intervals
	if !l.Started("pb-2", 8*time.Millisecond, alarm) {
		t.Error("an alarm poll 8 ms late at a 10 ms interval, after the first round, not counted late")
	}
}

// TestExchangeNotLate: a poll that waited out the link's longest exchange
// is not late for that, while one later still is.
func TestExchangeNotLate(t *testing.T) {
	l := NewLine("rs485-1", "", units, slog.New(slog.DiscardHandler))
	const alarm = 10 * time.Millisecond
	l.Exchange(6 * time.Millisecond) // a long block of registers
	l.Started("door-1", 0, alarm)    // the link's first poll
	time.Sleep(3 * alarm)            // the first round is over
	if l.Started("door-1", 10*time.Millisecond, alarm) {
		t.Error("an alarm poll 10 ms late at a 10 ms interval, behind a 6 ms exchange, counted late")
	}
	if !l.Started("door-1", 12*time.Millisecond, alarm) {
		t.Error("an alarm poll 12 ms late at a 10 ms interval, with exchanges of 6 ms, not counted late")
	}
}

// TestLinkBackWakesResting: the first answer on a link where no address
// answered polls at once the devices resting on it (offline while the
// others were silent too); not one offline while others answered, nor
// any when the link was not silent.
func TestLinkBackWakesResting(t *testing.T) {
	var offline, online Tracker
	for range OfflineAfter {
		offline.Observe(Result{Requests: 1, Failed: 1, Silent: true})
	}
	online.Observe(Result{Requests: 1})
	woken := func(w Wake) bool {
		select {
		case <-w:
			return true
		default:
			return false
		}
	}

	l := NewLine("rs485-1", "check wiring", units, slog.New(slog.DiscardHandler))
	w2, w3, w4 := NewWake(), NewWake(), NewWake()
	for _, a := range []int{1, 2, 3, 4} {
		l.Add(a, time.Second)
	}
	l.Heard(1, true)
	l.Heard(4, false)
	l.Rest(4, &offline, w4) // offline while unit 1 answers: unit 4 is at fault
	l.Heard(1, false)
	l.Heard(1, true)
	if woken(w4) {
		t.Fatal("unit 4, offline while unit 1 answered, was woken when the link answered again")
	}
	l.Heard(1, false)
	l.Heard(2, false)
	l.Rest(2, &offline, w2)
	l.Heard(3, false)
	l.Rest(3, &online, w3)  // its last poll missed, it is not offline
	l.Rest(4, &offline, w4) // the link silent now
	l.Heard(1, true)
	if !woken(w2) || !woken(w4) {
		t.Error("the link answered again: units 2 and 4, offline while it was silent, were not woken")
	}
	if woken(w3) {
		t.Error("unit 3, not offline, was woken")
	}
	l.Heard(1, true)
	if woken(w2) || woken(w4) {
		t.Error("woken again by an answer on a link that was not silent")
	}
	l.Rest(2, &online, w2) // back
	l.Heard(1, false)
	l.Heard(1, true)
	if woken(w2) {
		t.Error("unit 2, online again, was woken")
	}
}
