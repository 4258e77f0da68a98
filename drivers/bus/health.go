package bus

import (
	"context"
	"log/slog"
	"maps"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// Attempt is how hard a request is tried. The zero value is the link's own
// retries and timeout.
type Attempt struct {
	Once    bool          // one try, no retries
	Timeout time.Duration // at most this long to answer, when set
}

// On is how many tries a request gets, and how long each waits, on a link
// with these retries and timeout.
func (a Attempt) On(retries int, timeout time.Duration) (int, time.Duration) {
	tries := max(retries, 0) + 1
	if a.Once {
		tries = 1
	}
	if a.Timeout > 0 {
		timeout = min(timeout, a.Timeout)
	}
	return tries, timeout
}

// SilentAlarmTries: the alarm polls of a device that does not answer
// come at most every this many of the link's timeouts, a try each, so
// that a dead device costs the wire a fifth of the time at most. They
// never stop: on a noisy line a live device can look silent for a few
// polls, and a press then must not wait for the backed-off poll.
const SilentAlarmTries = 5

// SilentAlarm is how a silent device's alarm inputs are read: once a try,
// and when the next alarm poll comes, for a device polled every every on
// a link whose requests time out after timeout.
func SilentAlarm(every, timeout time.Duration) (Attempt, time.Duration) {
	return Attempt{Once: true}, max(every, SilentAlarmTries*timeout)
}

// How an offline device is probed.
const (
	// MaxBackoff caps the interval between probes (unless the device's own
	// poll interval is longer).
	MaxBackoff = 30 * time.Second
	// ProbeTimeout is how long a probe waits for an answer (beyond the
	// frames' wire time on a bus) while the backoff grows. Devices answer
	// in milliseconds to tens of them; a slower one is still found by the
	// probes at the cap, which wait the link's full timeout.
	ProbeTimeout = 200 * time.Millisecond
	// OfflineAfter is how many polls in a row that got no answer at all
	// make a device offline, unless the station file says otherwise
	// (health.offline_after).
	OfflineAfter = 3
)

// Result sums up one poll for the health tracker.
type Result struct {
	Requests, Failed int  // requests made, and how many of them failed
	LinkDown         bool // the link could not carry them
	Silent           bool // nothing answered any request
	Late             bool // the poll started late (see Line.Started)
	// Skipped is how many of the device's slots passed without a poll
	// before this one, because the one before overran (see NextSlot).
	Skipped  int
	Reason   string
	Counters []string // one counter name per failure
	// Retried are failures that a retry rode over, and what a request met
	// on the way without failing (another master heard): counted, but
	// the poll succeeded.
	Retried []string
	// RTT is the round trip of the poll's last answered request, from
	// the request sent to its answer (0 when none was answered).
	RTT time.Duration
}

// ReportEvery is how often a device's health goes to the hub while its
// state stays the same, so that the hub (and the station's snapshot) sees
// its counters move, unless the station file says otherwise.
const ReportEvery = time.Minute

// Tracker follows one device's health. It is pure: Observe gets the result
// of each poll and says when the state changed (or, while its link is
// down, the cause). It is not safe for concurrent use. The zero value uses
// the default thresholds.
type Tracker struct {
	state    model.HealthState
	reason   string // of the last poll
	silent   int    // polls in a row that got no answer at all
	failing  int    // polls in a row that were not clean
	counters map[string]uint64
	reported time.Time // when the health was last sent
	unheard  bool      // offline with its link, and silent since
	// the station file's health thresholds and report interval; 0 for
	// the defaults
	offlineAfter, degradedAfter int
	every                       time.Duration
}

// NewTracker is a tracker with the station file's thresholds.
func NewTracker(h configs.Health) Tracker {
	return Tracker{offlineAfter: h.OfflineAfter, degradedAfter: h.DegradedAfter, every: h.ReportEvery}
}

func (t *Tracker) thresholds() (offline, degraded int) {
	offline, degraded = t.offlineAfter, t.degradedAfter
	if offline <= 0 {
		offline = OfflineAfter
	}
	if degraded <= 0 {
		degraded = 1
	}
	return offline, degraded
}

// Count adds to counters outside a poll: failures of a device's alarm
// polls, which do not decide its state. They show in the next health
// message.
func (t *Tracker) Count(counters ...string) {
	for _, c := range counters {
		t.Add(c, 1)
	}
}

// Add adds n to a counter (none is made for 0).
func (t *Tracker) Add(counter string, n int) {
	if n <= 0 {
		return
	}
	if t.counters == nil {
		t.counters = map[string]uint64{}
	}
	t.counters[counter] += uint64(n)
}

// Silent is how many polls in a row got no answer at all.
func (t *Tracker) Silent() int { return t.silent }

// State is the device's state after the last poll ("" before the first).
func (t *Tracker) State() model.HealthState { return t.state }

// Observe records a poll and returns the health and whether its state
// changed: online when every request succeeded; offline at once when the
// link is down, or after offline_after polls in a row that got no answer;
// degraded after degraded_after polls in a row that were not clean: some
// requests failed, or values did not decode, or the device answered with
// exceptions or damaged frames only, or nothing yet. A device that answers
// is there, and says what is wrong with it. Fewer unclean polls than
// degraded_after leave an online device online, their failures counted.
func (t *Tracker) Observe(r Result) (model.Health, bool) {
	t.Count("polls")
	t.counters["requests"] += uint64(r.Requests)
	t.Count(r.Counters...)
	t.Count(r.Retried...)
	if r.Late {
		t.Count("late_polls")
	}
	t.Add("skipped_slots", r.Skipped)
	if r.Failed > 0 {
		t.Count("failures")
	}
	if r.RTT > 0 {
		t.counters[model.RTTCounter] = uint64(r.RTT.Microseconds())
	}
	offlineAfter, degradedAfter := t.thresholds()
	state := model.Degraded
	switch {
	case r.LinkDown:
		t.silent, t.failing, t.unheard = 0, 0, true
		state = model.Offline
	case r.Silent:
		t.silent++
		t.failing++
		// Unheard since its link went down: silence once the link is
		// back keeps it offline rather than restoring it to degraded.
		if t.silent >= offlineAfter || t.unheard {
			state = model.Offline
		}
	default:
		t.silent, t.unheard = 0, false
		if r.Failed == 0 && len(r.Counters) == 0 {
			t.failing = 0
			state = model.Online
		} else {
			t.failing++
			if r.Failed == 0 {
				r.Reason = "values that do not decode"
			}
		}
	}
	if state == model.Degraded && t.failing < degradedAfter && t.state == model.Online {
		state = model.Online // not yet: counted, and the next clean poll clears it
		r.Reason = ""
	}
	// An offline device's new reason is news too: a port that failed
	// (read: EOF) and is then missing (the adapter unplugged); the port
	// back and the device still silent; a silent unit whose neighbours
	// fell silent too (the bus, not the unit, is then the suspect). So is
	// a silent one's, degraded: at its first poll its neighbours may not
	// have been asked yet, and at its next the reason says which it is;
	// one that answered badly and now answers nothing.
	changed := state != t.state || (state == model.Offline || r.Silent) && r.Reason != t.reason
	t.state, t.reason = state, r.Reason
	return model.Health{State: state, Reason: r.Reason, Counters: maps.Clone(t.counters)}, changed
}

// Answered records that a device answered outside a poll (an alarm poll
// read its alarm inputs): one offline is there again, online until its
// next poll says otherwise. It returns the health and whether its state
// changed. Its alarm inputs then reach the hub after the device is back,
// not from a device still offline until its next probe (up to MaxBackoff
// away).
func (t *Tracker) Answered() (model.Health, bool) {
	if t.state != model.Offline {
		return model.Health{}, false
	}
	t.silent, t.failing, t.unheard = 0, 0, false
	t.state, t.reason = model.Online, ""
	return model.Health{State: model.Online, Counters: maps.Clone(t.counters)}, true
}

// Record observes a poll's result on a device's tracker, logs the health
// when its state changed (offline as a warning), and says whether to send
// it to the hub now (see Report).
func Record(ctx context.Context, log *slog.Logger, t *Tracker, r Result, now time.Time) (model.Health, bool) {
	h, changed := t.Observe(r)
	return logged(ctx, log, t, h, changed, now)
}

// Heard is Record for a device that answered outside a poll (see
// Answered): it says whether to send its health now, which is only when
// it was offline.
func Heard(ctx context.Context, log *slog.Logger, t *Tracker, now time.Time) (model.Health, bool) {
	h, back := t.Answered()
	if !back {
		return h, false
	}
	return logged(ctx, log, t, h, true, now)
}

// logged logs a device's health when its state changed and says whether
// to send it now (see Report).
func logged(ctx context.Context, log *slog.Logger, t *Tracker, h model.Health, changed bool, now time.Time) (model.Health, bool) {
	if changed {
		level := slog.LevelInfo
		if h.State == model.Offline {
			level = slog.LevelWarn
		}
		log.Log(ctx, level, "device health", "state", h.State, "reason", h.Reason)
	}
	return h, t.Report(now, changed)
}

// Report says whether to send the health Observe returned, at now: when
// its state changed, and ReportEvery (or the station's report_every)
// after the last one sent.
func (t *Tracker) Report(now time.Time, changed bool) bool {
	every := t.every
	if every <= 0 {
		every = ReportEvery
	}
	if !changed && now.Sub(t.reported) < every {
		return false
	}
	t.reported = now
	return true
}

// Next says when the next poll is due, as an interval from the last one's
// due time, for a device polled every base, and how its first request is
// tried. A device that answered nothing at its last poll gets one try:
// retries ride over a frame lost now and then, not over a device that is
// not there. Once it is offline for silence, it is probed: one try of its
// first request with a short timeout, at an interval that doubles from its
// poll interval up to MaxBackoff, where probes wait the full timeout. Any
// answer makes the poll go on with the rest of it, at the normal rate from
// then on. A device that answers badly (exceptions, damaged frames) keeps
// its rate: it costs no timeouts, and its readings are wanted as soon as it
// recovers.
func (t *Tracker) Next(base time.Duration) (time.Duration, Attempt) {
	switch {
	case t.silent == 0:
		return base, Attempt{}
	case t.state != model.Offline:
		return base, Attempt{Once: true}
	}
	limit := max(MaxBackoff, base)
	d := base
	offlineAfter, _ := t.thresholds()
	for i := offlineAfter; i < t.silent && d < limit; i++ {
		d *= 2
	}
	if d < limit {
		return d, Attempt{Once: true, Timeout: ProbeTimeout}
	}
	return limit, Attempt{Once: true}
}

// Slot is a poll's turn on its device's grid: when it was due (the slot
// before any skipping: how late a poll is counts from it), and how many
// slots passed without a poll before it (see NextSlot).
type Slot struct {
	Due     time.Time
	Skipped int
}

// NextSlot is when the next poll runs: one interval after the last one's
// slot, so that a poll that had to wait does not shift every later one,
// and polls keep their schedule rather than drift by their own duration;
// slots missed entirely are skipped, not made up in a burst, and counted.
func NextSlot(slot time.Time, interval time.Duration, now time.Time) (time.Time, int) {
	slot = slot.Add(interval)
	skipped := 0
	if behind := now.Sub(slot); behind > interval {
		skipped = int(behind / interval)
		slot = slot.Add(time.Duration(skipped) * interval)
	}
	return slot, skipped
}

// Wake brings a device's next poll forward (see Every): an alarm poll
// that hears a device back does not leave its other signals to a probe up
// to MaxBackoff away.
type Wake chan struct{}

// NewWake returns a Wake.
func NewWake() Wake { return make(Wake, 1) }

// Poll asks for the next poll now; one already asked for stands.
func (w Wake) Poll() {
	select {
	case w <- struct{}{}:
	default:
	}
}

// Every runs poll at once and then in slots (see NextSlot) until ctx
// ends; poll gets its Slot and returns the interval to the next one. A
// Poll on wake (nil for none) runs it at once, on slots that start again
// from there. It returns when ctx ended, after poll returned.
func Every(ctx context.Context, wake Wake, poll func(ctx context.Context, s Slot) time.Duration) {
	slot := time.Now()
	next := Slot{Due: slot}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-wake:
			slot = time.Now()
			next = Slot{Due: slot}
		}
		interval := poll(ctx, next)
		if ctx.Err() != nil {
			return
		}
		next.Due = slot.Add(interval)
		slot, next.Skipped = NextSlot(slot, interval, time.Now())
		timer.Reset(time.Until(slot))
	}
}
