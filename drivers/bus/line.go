package bus

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"outpost/gateway/model"
)

// Addresses says how a protocol names the addresses of devices on a link,
// in the words of its manuals, for the reasons an installer reads.
type Addresses struct {
	// One and Many name one address and several: "unit", "units".
	One, Many string
	// Format writes an address: "%d" for Modbus unit ids, "%02X" for DCON
	// addresses.
	Format string
	// Fix is what to check when one address is silent while others
	// answer: "wrong unit id, or device off".
	Fix string
}

func (a Addresses) name(addr int) string { return fmt.Sprintf(a.Format, addr) }

// Line is what the pollers of one link (a bus or an endpoint) share: the
// lock that lets one request at a time onto the line or connection, and
// what only the link as a whole can tell: which addresses answer, which
// device holds the wire longest, and whether polls run late.
type Line struct {
	name  string
	hint  string // what to check when no address on the link answers
	addrs Addresses
	quiet time.Duration // see lateness
	log   *slog.Logger

	// Lock is held by a poller around each request: requests of
	// different devices interleave one by one, and a poller sees when its
	// request got the wire.
	Lock Turns
	// ForTool marks the run of an installer's tool (drivers.Link.Once),
	// set before the pollers start: Silence then waits for every address's
	// first poll, so that the tool tells a wrong address from a link at
	// fault for the first device it asks too. The gateway itself does not
	// wait: its hub hears of the silence at once, and of the reason that
	// names the address or the link at the device's next poll (see
	// Tracker.Observe).
	ForTool bool
	asked   chan struct{} // closed once every address was polled

	mu       sync.Mutex         // guards what follows
	known    map[int]bool       // the link's addresses
	answered map[int]bool       // address -> whether its last poll was answered
	resting  map[int]Wake       // address -> the wake of its poll, while it is offline (see Rest)
	share    map[string]float64 // device -> wire time of its last poll over its interval
	late     lateness
	first    time.Time     // the link's first poll
	slowest  time.Duration // the longest poll interval of its devices
	exchange time.Duration // the longest exchange of a poll on the wire (see Exchange)
}

// toolMargin is how long before a tool's deadline Silence stops waiting
// for the other addresses: the rest of the poll and its report take far
// less.
const toolMargin = time.Second

// LateQuiet is the least time without a late poll after which a link that
// ran late counts as on time again; it is at least two intervals of the
// link's slowest device, which must have had its chance to be on time.
const LateQuiet = 10 * time.Second

// NewLine makes the line of a link named name; hint says what to check
// when no device on it answers.
func NewLine(name, hint string, addrs Addresses, log *slog.Logger) *Line {
	return &Line{name: name, hint: hint, addrs: addrs, quiet: LateQuiet, log: log, asked: make(chan struct{}),
		known: map[int]bool{}, answered: map[int]bool{}, resting: map[int]Wake{}, share: map[string]float64{}}
}

// Add makes a device's address known to the line, with its poll interval.
// It is called before the pollers start.
func (l *Line) Add(addr int, every time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.quiet = max(l.quiet, 2*every)
	l.slowest = max(l.slowest, every)
	l.known[addr] = true
}

// Exchange tells the line how long the longest exchange (a request and its
// answer) of its devices' polls takes on the wire. A poll that falls due
// just after such an exchange began waits it out, however light the load,
// and is not late for that: at 9600 baud a UPS's block of registers holds
// the wire for 60 ms, more than half of a door contact's 100 ms alarm poll.
func (l *Line) Exchange(d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.exchange = max(l.exchange, d)
}

// Started notes that a poll of dev got the wire `by` after it was due and
// says whether that is late. It logs, at warning level, when the link
// starts running late and when it is on time again, with the figures.
// Every device's first poll is due at the link's start, so they queue for
// the wire, and the fast alarm polls wait behind them: a poll in the first
// two of the link's longest intervals (or its own) is never late.
func (l *Line) Started(dev string, by, interval time.Duration) bool {
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.first.IsZero() {
		l.first = now
	}
	if now.Sub(l.first) < 2*max(interval, l.slowest) {
		return false
	}
	late, began, ended := l.late.observe(now, by, interval/2+l.exchange, l.quiet)
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

// Held notes how long a device's poll has held the wire so far. The poller
// calls it under the wire lock, so that whoever gets the wire next sees it.
func (l *Line) Held(dev string, held, interval time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.share[dev] = float64(held) / float64(interval)
}

// Heard notes whether an address of the line (see Add) answered anything
// at its last poll. The
// first answer on a link where no address answered (a cable plugged back,
// the adapter or the devices' power back) polls every device resting on it
// at once (see Rest): they come back with the link, not each at the end of
// its backoff, up to MaxBackoff later.
func (l *Line) Heard(addr int, answered bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	back := answered && len(l.answered) > 0 && !l.answering()
	_, polled := l.answered[addr]
	l.answered[addr] = answered
	if !polled && len(l.answered) == len(l.known) {
		close(l.asked) // the last of the link's addresses was polled
	}
	if !back {
		return
	}
	for a, w := range l.resting {
		if a != addr {
			w.Poll()
		}
	}
}

// Rest notes, after a device's poll, whether it rests: it is offline (t
// says), so probed at a backed-off interval, while no other address on the
// link answers either, so the link may be at fault and not the device.
// wake is the Wake of its poll. A device offline while others answer is
// not woken when the link answers again (see Heard): it is the one at
// fault, and its backoff stands.
func (l *Line) Rest(addr int, t *Tracker, wake Wake) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.State() == model.Offline && !l.answering() {
		l.resting[addr] = wake
	} else {
		delete(l.resting, addr)
	}
}

// Answering says whether any address of the link answered at its last
// poll. When none does and some send damaged frames, the line's settings
// are suspect rather than a device.
func (l *Line) Answering() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.answering()
}

// answering is Answering; the caller holds l.mu.
func (l *Line) answering() bool {
	for _, ok := range l.answered {
		if ok {
			return true
		}
	}
	return false
}

// busiest is the device whose last poll took the largest share of its
// interval on the wire (its latest, when under way), and the sum of every
// device's share: the link's load. The caller holds l.mu.
func (l *Line) busiest() (string, float64) {
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

// Silence is the health reason of an address that answered nothing, in
// words an installer can act on. For a tool (see ForTool) it waits for
// every other address to have been polled, up to toolMargin before ctx's
// deadline: a bus whose every device is silent can take longer to ask
// than the tool has, and the reason then says what is known, in time to be
// reported.
func (l *Line) Silence(ctx context.Context, addr int) string {
	if l.ForTool {
		if d, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-toolMargin))
			defer cancel()
		}
		select {
		case <-l.asked:
		case <-ctx.Done():
		}
	}
	l.mu.Lock()
	var answering []int
	others, unasked := 0, false
	for a := range l.known {
		if a == addr {
			continue
		}
		ok, polled := l.answered[a]
		if ok {
			answering = append(answering, a)
		}
		others++
		unasked = unasked || !polled
	}
	l.mu.Unlock()
	return SilenceReason(l.name, l.hint, l.addrs, addr, answering, others == 0 || unasked)
}

// SilenceReason: when other addresses on the link answer, the link works
// and this address is not there; when every other one is silent too, the
// link itself is suspect. When nothing tells the two apart (unknown: the
// address is the only one on the link, or some others have not been
// asked yet), it says what to check of both.
func SilenceReason(link, hint string, a Addresses, addr int, answering []int, unknown bool) string {
	switch {
	case len(answering) == 1:
		return fmt.Sprintf("no answer from %s %s while %s %s answers: %s", a.One, a.name(addr), a.One, a.name(answering[0]), a.Fix)
	case len(answering) > 1:
		return fmt.Sprintf("no answer from %s %s while %s answer: %s", a.One, a.name(addr), a.list(answering), a.Fix)
	case unknown:
		return fmt.Sprintf("no answer from %s %s on %s: %s; or %s", a.One, a.name(addr), link, a.Fix, hint)
	}
	return fmt.Sprintf("no answer from any %s on %s: %s", a.One, link, hint)
}

// list writes two or more addresses: "units 1 and 3", "units 1, 3 and 4".
func (a Addresses) list(addrs []int) string {
	slices.Sort(addrs)
	s := make([]string, len(addrs))
	for i, u := range addrs {
		s[i] = a.name(u)
	}
	return a.Many + " " + strings.Join(s[:len(s)-1], ", ") + " and " + s[len(s)-1]
}

func percent(f float64) string { return fmt.Sprintf("%.0f%%", 100*f) }

// lateness follows whether a link's polls run late. A poll is late when it
// gets the wire more than half its interval after it was due (and more than
// the link's longest exchange, which it may have had to wait out): it is
// then nearer its next due time than its own, and the device is
// effectively read less often than configured, or the wire is too busy
// for its schedule. The link runs late from its first late poll
// until no poll has been late for a quiet period, so that a link at the
// edge is reported once, not at every poll.
type lateness struct {
	running     bool
	since, last time.Time     // the first and the latest late poll of the episode
	polls       int           // late polls in the episode
	worst       time.Duration // the latest start of the episode
}

// observe records a poll that got the wire `by` after it was due, at now,
// when more than `allowed` is late. It says whether the poll was late, and
// whether the link began running late with it or ended an episode.
func (l *lateness) observe(now time.Time, by, allowed, quiet time.Duration) (late, began, ended bool) {
	if by > allowed {
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

// Name is the link's id.
func (l *Line) Name() string { return l.name }
