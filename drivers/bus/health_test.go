package bus

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

func TestTracker(t *testing.T) {
	ok := Result{Requests: 2}
	half := Result{Requests: 2, Failed: 1, Reason: "exception 2 (illegal data address) reading input register 5 (0x0005): b", Counters: []string{"exceptions"}}
	bad := Result{Requests: 2, Failed: 2, Reason: "exception 4 (server device failure) reading input register 5 (0x0005): b", Counters: []string{"exceptions", "exceptions"}}
	silent := Result{Requests: 1, Failed: 1, Silent: true, Reason: "no answer from any unit on bus: check wiring, port, baud rate and parity", Counters: []string{"timeouts"}}
	down := Result{Requests: 1, Failed: 1, LinkDown: true, Reason: "open /dev/x: gone", Counters: []string{"link_down"}}
	gone := Result{Requests: 1, Failed: 1, LinkDown: true, Reason: "open /dev/x: no such file or directory: the adapter is unplugged, or the port is named wrong (gateway ports lists those there are)", Counters: []string{"link_down"}}
	alone := Result{Requests: 1, Failed: 1, Silent: true, Reason: "no answer from unit 2 while unit 1 answers: wrong unit id, or device off", Counters: []string{"timeouts"}}
	late := Result{Requests: 2, Late: true}
	undecoded := Result{Requests: 1, Counters: []string{"decode_errors"}}
	steps := []struct {
		name    string
		res     Result
		state   model.HealthState
		changed bool
		reason  string
	}{
		{"first poll", ok, model.Online, true, ""},
		{"again", ok, model.Online, false, ""},
		{"one request fails", half, model.Degraded, true, half.Reason},
		{"recovers", ok, model.Online, true, ""},
		{"silent once", silent, model.Degraded, true, silent.Reason},
		{"silent twice", silent, model.Degraded, false, silent.Reason},
		{"silent three times", silent, model.Offline, true, silent.Reason},
		{"still silent", silent, model.Offline, false, silent.Reason},
		{"answers, badly", half, model.Degraded, true, half.Reason},
		{"silent again, the count restarts: a new reason", silent, model.Degraded, true, silent.Reason},
		{"its neighbours answer now: a new reason", alone, model.Degraded, true, alone.Reason},
		{"answers", ok, model.Online, true, ""},
		{"every request answered with an exception", bad, model.Degraded, true, bad.Reason},
		{"and again", bad, model.Degraded, false, bad.Reason},
		{"and again: it answers, so it is not offline", bad, model.Degraded, false, bad.Reason},
		{"link down", down, model.Offline, true, down.Reason},
		{"link down for another cause", gone, model.Offline, true, gone.Reason},
		{"and for that cause again", gone, model.Offline, false, gone.Reason},
		{"link back, the device silent: still offline, for that", silent, model.Offline, true, silent.Reason},
		{"and silent again", silent, model.Offline, false, silent.Reason},
		{"its neighbours answer now", alone, model.Offline, true, alone.Reason},
		{"a late poll", late, model.Online, true, ""},
		{"values that do not decode", undecoded, model.Degraded, true, "values that do not decode"},
	}
	var tr Tracker
	for i, s := range steps {
		h, changed := tr.Observe(s.res)
		if h.State != s.state || changed != s.changed || h.Reason != s.reason {
			t.Fatalf("step %d (%s): %s changed=%v %q, want %s changed=%v %q", i, s.name, h.State, changed, h.Reason, s.state, s.changed, s.reason)
		}
	}
	// The 23 polls above and an empty one.
	want := map[string]uint64{"polls": 24, "requests": 33, "failures": 17, "exceptions": 8, "timeouts": 9, "link_down": 3,
		"decode_errors": 1, "late_polls": 1}
	if h, _ := tr.Observe(Result{}); fmt.Sprint(h.Counters) != fmt.Sprint(want) {
		t.Errorf("counters %v, want %v", h.Counters, want)
	}
}

// TestTrackerReports: the health goes to the hub when its state changes,
// and otherwise once a ReportEvery, with the counters and the last round
// trip as they are then.
func TestTrackerReports(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	steps := []struct {
		name   string
		after  time.Duration // since t0
		res    Result
		report bool
		rtt    uint64 // the last_rtt_us counter then
	}{
		{"first poll", 0, Result{Requests: 1, RTT: 12 * time.Millisecond}, true, 12000},
		{"a second later", time.Second, Result{Requests: 1, RTT: 9500 * time.Microsecond}, false, 9500},
		{"silent: no round trip, the last one stays", 2 * time.Second, Result{Requests: 1, Failed: 1, Silent: true}, true, 9500},
		{"answers again", 3 * time.Second, Result{Requests: 1, RTT: 11 * time.Millisecond}, true, 11000},
		{"just under a minute later", 3*time.Second + ReportEvery - time.Millisecond, Result{Requests: 1, RTT: time.Millisecond}, false, 1000},
		{"a minute after the last report", 3*time.Second + ReportEvery, Result{Requests: 1, RTT: 2 * time.Millisecond}, true, 2000},
	}
	var tr Tracker
	for _, s := range steps {
		h, changed := tr.Observe(s.res)
		if got := tr.Report(t0.Add(s.after), changed); got != s.report || h.Counters[model.RTTCounter] != s.rtt {
			t.Errorf("%s: report=%v %s=%d, want report=%v %d", s.name, got, model.RTTCounter, h.Counters[model.RTTCounter], s.report, s.rtt)
		}
	}
}

// TestTrackerThresholds: with degraded_after 3 and offline_after 5, a
// device stays online through two unclean polls, is degraded at the third,
// and offline at the fifth silent one; the failures are counted meanwhile.
func TestTrackerThresholds(t *testing.T) {
	ok := Result{Requests: 2}
	half := Result{Requests: 2, Failed: 1, Reason: "exception 2", Counters: []string{"exceptions"}}
	silent := Result{Requests: 1, Failed: 1, Silent: true, Reason: "no answer", Counters: []string{"timeouts"}}
	steps := []struct {
		name  string
		res   Result
		state model.HealthState
	}{
		{"first poll", ok, model.Online},
		{"one unclean poll", half, model.Online},
		{"two", half, model.Online},
		{"three: degraded", half, model.Degraded},
		{"clean again", ok, model.Online},
		{"unclean once more: the count restarted", half, model.Online},
		{"silent", silent, model.Online},
		{"silent twice: three unclean in a row", silent, model.Degraded},
		{"silent three times", silent, model.Degraded},
		{"four", silent, model.Degraded},
		{"five: offline", silent, model.Offline},
		{"answers, badly: a device back from offline is not online yet", half, model.Degraded},
		{"clean", ok, model.Online},
	}
	tr := NewTracker(configs.Health{OfflineAfter: 5, DegradedAfter: 3})
	for i, s := range steps {
		h, _ := tr.Observe(s.res)
		if h.State != s.state {
			t.Fatalf("step %d (%s): %s (%q), want %s", i, s.name, h.State, h.Reason, s.state)
		}
		if h.State == model.Online && h.Reason != "" {
			t.Errorf("step %d (%s): online with a reason %q", i, s.name, h.Reason)
		}
	}
	if h, _ := tr.Observe(ok); h.Counters["exceptions"] != 5 || h.Counters["timeouts"] != 5 {
		t.Errorf("counters %v, want 5 exceptions and 5 timeouts", h.Counters)
	}
}

// TestNextPoll: how often a device is polled and how its first request is
// tried, after a sequence of polls.
func TestNextPoll(t *testing.T) {
	answered := Result{Requests: 2}
	silent := Result{Requests: 1, Failed: 1, Silent: true, Counters: []string{"timeouts"}}
	bad := Result{Requests: 2, Failed: 2, Counters: []string{"crc_errors", "crc_errors"}}
	down := Result{Requests: 1, Failed: 1, LinkDown: true, Counters: []string{"link_down"}}
	times := func(n int, r Result) []Result { return slices.Repeat([]Result{r}, n) }
	once, probe := Attempt{Once: true}, Attempt{Once: true, Timeout: ProbeTimeout}
	s := time.Second
	cases := []struct {
		name     string
		poll     time.Duration
		polls    []Result
		interval time.Duration
		first    Attempt
	}{
		{"never polled", s, nil, s, Attempt{}},
		{"answers", s, times(5, answered), s, Attempt{}},
		{"silent once: one try, no retries", s, times(1, silent), s, once},
		{"silent twice", s, times(2, silent), s, once},
		{"offline: probed at the poll interval", s, times(3, silent), s, probe},
		{"probe failed once", s, times(4, silent), 2 * s, probe},
		{"probe failed twice", s, times(5, silent), 4 * s, probe},
		{"probe failed 4 times", s, times(7, silent), 16 * s, probe},
		{"at the cap the probe waits the full timeout", s, times(8, silent), 30 * s, once},
		{"and stays there", s, times(20, silent), 30 * s, once},
		{"answers again: back to normal at once", s, append(times(8, silent), answered), s, Attempt{}},
		{"answers badly: keeps its rate", s, times(10, bad), s, Attempt{}},
		{"link down: paced by the link", s, times(10, down), s, Attempt{}},
		{"poll of 20 s", 20 * s, times(4, silent), 30 * s, once},
		{"poll of 1 min", time.Minute, times(10, silent), time.Minute, once},
	}
	for _, c := range cases {
		var tr Tracker
		for _, r := range c.polls {
			tr.Observe(r)
		}
		if interval, first := tr.Next(c.poll); interval != c.interval || first != c.first {
			t.Errorf("%s: next poll in %v with %+v, want %v with %+v", c.name, interval, first, c.interval, c.first)
		}
	}
}

// TestAnswered: an answer outside a poll (an alarm poll's) brings an
// offline device back online, once, with its counters, and its polls back
// to their rate; it leaves any other state to the polls.
func TestAnswered(t *testing.T) {
	silent := Result{Requests: 1, Failed: 1, Silent: true, Counters: []string{"timeouts"}}
	down := Result{Requests: 1, Failed: 1, LinkDown: true, Counters: []string{"link_down"}}
	bad := Result{Requests: 2, Failed: 2, Counters: []string{"crc_errors", "crc_errors"}}
	times := func(n int, r Result) []Result { return slices.Repeat([]Result{r}, n) }
	cases := []struct {
		name  string
		polls []Result
		back  bool
	}{
		{"never polled", nil, false},
		{"online", times(2, Result{Requests: 2}), false},
		{"silent, not yet offline", times(2, silent), false},
		{"offline for silence", times(5, silent), true},
		{"offline with its link", times(1, down), true},
		{"degraded", times(3, bad), false},
	}
	for _, c := range cases {
		var tr Tracker
		for _, r := range c.polls {
			tr.Observe(r)
		}
		was := tr.State()
		h, back := tr.Answered()
		if back != c.back {
			t.Errorf("%s: back %v, want %v", c.name, back, c.back)
			continue
		}
		if !back {
			if tr.State() != was {
				t.Errorf("%s: state %s after the answer, want %s as the polls left it", c.name, tr.State(), was)
			}
			continue
		}
		if h.State != model.Online || h.Reason != "" || tr.State() != model.Online || h.Counters["polls"] != uint64(len(c.polls)) {
			t.Errorf("%s: health %+v, state %s; want online with the polls' counters", c.name, h, tr.State())
		}
		if _, again := tr.Answered(); again {
			t.Errorf("%s: a second answer brought it back again", c.name)
		}
		if interval, first := tr.Next(time.Second); interval != time.Second || first != (Attempt{}) {
			t.Errorf("%s: next poll in %v with %+v, want the poll interval with retries", c.name, interval, first)
		}
	}
}

func TestNextSlot(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := time.Millisecond
	cases := []struct {
		name    string
		now     time.Duration // after t0, the last slot
		want    time.Duration
		skipped int
	}{
		{"on time", 100 * ms, 1000 * ms, 0},
		{"Late: the next starts at once, on the grid", 1200 * ms, 1000 * ms, 0},
		{"exactly one interval behind", 2000 * ms, 1000 * ms, 0},
		{"a slot missed: skipped", 2500 * ms, 2000 * ms, 1},
		{"many slots missed", 10300 * ms, 10000 * ms, 9},
	}
	for _, c := range cases {
		next, skipped := NextSlot(t0, time.Second, t0.Add(c.now))
		if got := next.Sub(t0); got != c.want || skipped != c.skipped {
			t.Errorf("%s: next slot at %v, %d skipped; want %v, %d skipped", c.name, got, skipped, c.want, c.skipped)
		}
	}
}
