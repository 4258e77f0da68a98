package modbus

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	mb "outpost/configs/modbus"
)

// line is what the pollers of one link (a bus or an endpoint) share: the
// lock that lets one request at a time onto the line or connection, and
// what only the link as a whole can tell: which units answer, which device
// holds the wire longest, and whether polls run late.
type line struct {
	name  string
	hint  string        // what to check when no unit on the link answers
	quiet time.Duration // see lateness
	log   *slog.Logger

	// lock is held by a poller around each request (and by nothing else
	// while pollers run): requests of different devices interleave one by
	// one, and a poller sees when its request got the wire.
	lock turns

	units map[byte]bool // the link's unit ids

	mu       sync.Mutex         // guards what follows
	answered map[byte]bool      // unit -> whether its last poll was answered
	share    map[string]float64 // device -> wire time of its last poll over its interval
	late     lateness
}

// What an installer should check when no unit on a link answers.
const (
	busHint      = "check wiring, port, baud rate and parity"
	endpointHint = "check the address, and the serial side if it is a Modbus gateway"
)

// lateQuiet is the least time without a late poll after which a link that
// ran late counts as on time again; it is at least two intervals of the
// link's slowest device, which must have had its chance to be on time.
const lateQuiet = 10 * time.Second

func newLine(name, hint string, devs []*device, log *slog.Logger) *line {
	l := &line{name: name, hint: hint, quiet: lateQuiet, log: log, units: map[byte]bool{}, answered: map[byte]bool{}, share: map[string]float64{}}
	for _, d := range devs {
		l.quiet = max(l.quiet, 2*d.every())
		l.units[d.unit] = true
	}
	return l
}

// turns is the wire lock. It hands the wire to waiters in the order they
// came: a sync.Mutex lets the goroutine that unlocks take it again at once,
// and a device whose requests time out would then hold the wire for poll
// after poll while the others wait.
type turns struct {
	mu      sync.Mutex
	busy    bool
	waiting []chan struct{}
}

func (q *turns) Lock() {
	q.mu.Lock()
	if !q.busy {
		q.busy = true
		q.mu.Unlock()
		return
	}
	ch := make(chan struct{})
	q.waiting = append(q.waiting, ch)
	q.mu.Unlock()
	<-ch // Unlock handed the wire over: it stays busy
}

func (q *turns) Unlock() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.waiting) == 0 {
		q.busy = false
		return
	}
	close(q.waiting[0])
	q.waiting = q.waiting[1:]
}

// started notes that a poll of dev got the wire `by` after it was due and
// says whether that is late. It logs, at warning level, when the link
// starts running late and when it is on time again, with the figures.
func (l *line) started(dev string, by, interval time.Duration) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	late, began, ended := l.late.observe(now, by, interval, l.quiet)
	switch {
	case began:
		busiest, load := l.busiest()
		l.log.Warn("link polls running late", "device", dev, "late_by", by.Round(time.Millisecond), "interval", interval,
			"busiest_device", busiest, "busiest_share", percent(l.share[busiest]), "load", percent(load))
	case ended:
		l.log.Warn("link polls on time again", "late_polls", l.late.polls, "worst_late_by", l.late.worst.Round(time.Millisecond),
			"lasted", l.late.last.Sub(l.late.since).Round(time.Millisecond))
	}
	return late
}

// held notes how long a device's poll has held the wire so far. The poller
// calls it under the wire lock, so that whoever gets the wire next sees it.
func (l *line) held(dev string, held, interval time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.share[dev] = float64(held) / float64(interval)
}

// heard notes whether a unit answered anything at its last poll.
func (l *line) heard(unit byte, answered bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.answered[unit] = answered
}

// busiest is the device whose last poll took the largest share of its
// interval on the wire (its latest, when under way), and the sum of every device's share: the link's
// load. The caller holds l.mu.
func (l *line) busiest() (string, float64) {
	var dev string
	var load float64
	for _, d := range slices.Sorted(maps.Keys(l.share)) {
		load += l.share[d]
		if dev == "" || l.share[d] > l.share[dev] {
			dev = d
		}
	}
	return dev, load
}

// silence is the health reason of a unit that answered nothing, in
// words an installer can act on.
func (l *line) silence(unit byte) string {
	l.mu.Lock()
	var answering []byte
	unknown := false
	for u := range l.units {
		if u == unit {
			continue
		}
		ok, polled := l.answered[u]
		if ok {
			answering = append(answering, u)
		}
		unknown = unknown || !polled
	}
	l.mu.Unlock()
	return silenceReason(l.name, l.hint, unit, answering, unknown)
}

// silenceReason: when other units on the link answer, the link works and
// this unit id is not there; when none does, the link itself is suspect,
// unless some have not been asked yet.
func silenceReason(link, hint string, unit byte, answering []byte, unknown bool) string {
	switch {
	case len(answering) == 1:
		return fmt.Sprintf("no answer from unit %d while unit %d answers: wrong unit id, or device off", unit, answering[0])
	case len(answering) > 1:
		return fmt.Sprintf("no answer from unit %d while %s answer: wrong unit id, or device off", unit, unitList(answering))
	case unknown:
		return fmt.Sprintf("no answer from unit %d", unit)
	}
	return fmt.Sprintf("no answer from any unit on %s: %s", link, hint)
}

// unitList writes two or more units: "units 1 and 3", "units 1, 3 and 4".
func unitList(units []byte) string {
	slices.Sort(units)
	s := make([]string, len(units))
	for i, u := range units {
		s[i] = fmt.Sprint(u)
	}
	return "units " + strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

func percent(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }

// lateness follows whether a link's polls run late. A poll is late when it
// gets the wire more than half its interval after it was due: it is then
// nearer its next due time than its own, and the device is effectively read
// less often than configured. The link runs late from its first late poll
// until no poll has been late for a quiet period, so that a link at the
// edge is reported once, not at every poll.
type lateness struct {
	running     bool
	since, last time.Time     // the first and the latest late poll of the episode
	polls       int           // late polls in the episode
	worst       time.Duration // the latest start of the episode
}

// observe records a poll that got the wire `by` after it was due, at now.
// It says whether the poll was late, and whether the link began running
// late with it or ended an episode.
func (l *lateness) observe(now time.Time, by, interval, quiet time.Duration) (late, began, ended bool) {
	if by > interval/2 {
		if !l.running {
			*l = lateness{running: true, since: now}
			began = true
		}
		l.last, l.polls, l.worst = now, l.polls+1, max(l.worst, by)
		return true, began, false
	}
	if l.running && now.Sub(l.last) >= quiet {
		l.running = false
		return false, false, true
	}
	return false, false, false
}

// describe names a request's table and addresses as a template writes
// them, in decimal and hex: "input registers 0-1 (0x0000-0x0001)".
func describe(r Request) string {
	name := map[mb.Table]string{mb.Coil: "coil", mb.Discrete: "discrete input",
		mb.Input: "input register", mb.Holding: "holding register"}[r.Table]
	if name == "" {
		name = string(r.Table)
	}
	if r.Count <= 1 {
		return fmt.Sprintf("%s %d (0x%04X)", name, r.Start, r.Start)
	}
	end := r.Start + r.Count - 1
	return fmt.Sprintf("%ss %d-%d (0x%04X-0x%04X)", name, r.Start, end, r.Start, end)
}
