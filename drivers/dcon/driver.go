// Package dcon is the driver of DCON links ("dcon"): RS-485 buses of ASCII
// I/O modules, Advantech ADAM-4000, ICP DAS I-7000/M-7000 and their
// clones, cheap dry-contact modules for panic buttons, door contacts,
// sirens and button LEDs. Several modules share a bus under one wire lock
// (drivers/bus); each is read with $AA6 at its poll interval and, when its
// template has inputs with an event rule, at its alarm_poll interval ahead
// of other polls. Commands from the hub set its outputs (#AA1cdd).
//
// What the driver guards against:
//
//   - Another module at the address: $AAM is asked when the driver starts
//     and whenever a module answers again after a silence. A module that
//     names itself otherwise than its template says is degraded, with a
//     reason that names both, and none of its values is published as good,
//     nor any output written: the answer's layout would be another's.
//   - Damaged answers: a wrong length, a character that is not hex, a
//     wrong address, a bad checksum, a data byte that must be zero and is
//     not. Each is counted in the module's health counters (bad_frames,
//     checksum_errors) and never published.
//   - Damage that still parses. Without the checksum a single damaged hex
//     digit reads as a valid answer with another value, and a damaged
//     address in the command makes another module answer in its place. So
//     when the I/O a module reports differs from the last confirmed, it is
//     read again at once, and published as good only when three reads in a
//     row agree (two let the same damage twice through every few hundred
//     damaged answers); reads that never agree are counted
//     (unconfirmed_reads) and not published as good. The reads of a
//     change are the module's, across its polls and alarm polls (for two
//     seconds at most): on a noisy line one alarm poll often ends with a
//     read or two of a change, and the next goes on from them. A change
//     costs two more commands, and reaches the hub two commands later. A
//     poll, which publishes unchanged values too, reads such a module
//     three times every time: a damaged digit, or another module's
//     answer, can turn a new state back into the old one as easily as the
//     other way round. With the checksum on, one valid answer is enough:
//     the sum catches any one damaged character, and a damaged command
//     fails the module's own check, so no other module answers it. Two
//     damaged characters whose damage cancels in the sum (a bit set in
//     one, the same bit cleared in another) pass it: with 7% of the bytes
//     damaged that published a tamper that never was in 2 of 8 runs of
//     serial-noise at that noise, and in 1 of 14 at its 5%. Two answers
//     alike for every change would stop it, but on such a line a second
//     whole answer is hard to get within a short press: asking it lost 1
//     to 5 of box-1's eight 1 s presses in each of 5 runs at 7%, where
//     one answer lost none in 3. So two answers alike are asked only when
//     the outputs differ from those last confirmed, which no press does
//     and such damage often does (see toConfirm).
//   - Presses between two reads. A module whose template says its inputs
//     latch (ICP DAS I-7050) has its latch read at every alarm poll: a
//     press no read saw (too short, its answers lost, the gateway busy or
//     stopped) is published from it, pressed then released, and counted
//     (latched_presses). See latched and unlatch.
//   - Late answers. An answer to $AA6 does not say which module sent it.
//     After a command that got no answer, or an answer cut short, the
//     next exchange on the bus first asks its module's name and drops
//     every frame before that name's answer, whole or with one character
//     damaged (transport.sync): a late answer is never taken for another
//     module's. They are counted (late_answers).
package dcon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"outpost/configs"
	dc "outpost/configs/dcon"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

func init() { drivers.Register("dcon", newBus) }

// addresses is how DCON manuals name module addresses: two hex digits.
var addresses = bus.Addresses{One: "address", Many: "addresses", Format: "%02X", Fix: "wrong address, baud rate or checksum setting, or module off"}

const busHint = "check wiring (A/B), port, baud rate, checksum setting and termination"

// module is one DCON module on the bus, and what its pollers share.
type module struct {
	cfg    *configs.Device
	set    *dc.Device
	kind   string
	name   string // its template's name
	tmpl   *dc.Template
	layout Layout
	link   string
	alarms bool // the template has inputs with an event rule
	// latchHigh and latchLow are the alarm inputs whose latch is read
	// (see latched): those active high ($AAL1) and those active low
	// ($AAL0); both 0 when the module has no latch.
	latchHigh, latchLow uint16
	// observed hears each poll's round trip (see drivers.Link.Observed).
	observed func(device string, rtt time.Duration)

	// mu orders the module's messages (see poll) and guards what follows.
	mu        sync.Mutex
	health    bus.Tracker
	known     bool      // $AAM matched since the module last answered again
	heard     time.Time // when it last answered anything
	wrong     string    // the reason while it names itself otherwise
	confirmed *State    // the I/O last confirmed (see state)
	run       run       // reads alike in a row, not yet confirmed (see state)
	published []model.Reading
	pubAt     time.Time // when the published I/O was read
	// Of a module whose latch is read (see unlatch): the inputs a read
	// showed active since the latch was last cleared, when it was, and the
	// inputs published from the latch that it still holds, not cleared.
	seen, uncleared uint16
	cleared         time.Time
	noLatch         string // why the latch is not read: the module refused $AALS
}

// Bus is the driver of one DCON bus.
type Bus struct {
	cfg     *dc.Link
	line    *bus.Line
	modules []*module
	byID    map[string]*module
	log     *slog.Logger
	// once: an installer's tool runs the bus (drivers.Link.Once); the
	// modules' latches are read but not cleared, left for the gateway.
	once bool

	// Under the wire lock:
	port *bus.Serial
	tr   *transport
}

var (
	_ drivers.Driver    = (*Bus)(nil)
	_ drivers.Commander = (*Bus)(nil)
)

func newBus(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	return build(link, nil, log)
}

// build makes the driver; open opens the port (bus.OpenSerial when nil).
func build(link drivers.Link, open bus.OpenFunc, log *slog.Logger) (*Bus, error) {
	cfg, ok := link.Config.Settings.(*dc.Link)
	if !ok {
		return nil, fmt.Errorf("dcon: link %s is not a DCON bus", link.Name())
	}
	port, err := bus.NewSerial(&cfg.Serial, open, log)
	if err != nil {
		return nil, fmt.Errorf("bus %s: %w", link.Name(), err)
	}
	b := &Bus{cfg: cfg, line: bus.NewLine(link.Name(), busHint, addresses, log), byID: map[string]*module{}, log: log, once: link.Once, port: port}
	b.line.ForTool = link.Once
	for _, d := range link.Devices {
		t := link.Template(d)
		if t == nil {
			return nil, fmt.Errorf("device %s on %s: template %q not loaded", d.ID, link.Name(), d.Template)
		}
		body, ok := t.Body.(*dc.Template)
		set, ok2 := d.Settings.(*dc.Device)
		if !ok || !ok2 {
			return nil, fmt.Errorf("device %s on %s: not a DCON module (template %s of family %s)", d.ID, link.Name(), t.Name, t.Protocol)
		}
		if set.Address < 0 || set.Address > 0xFF {
			return nil, fmt.Errorf("device %s on %s: address %d outside 0-255", d.ID, link.Name(), set.Address)
		}
		in, out := body.Bytes()
		m := &module{cfg: d, set: set, kind: t.Kind, name: t.Name, tmpl: body, layout: Layout{In: in, Out: out}, link: link.Name(), observed: link.Observed,
			health: bus.NewTracker(link.Station.Health)}
		for _, i := range body.Inputs {
			m.alarms = m.alarms || i.Event != nil
			switch {
			case i.Event == nil || !body.Latch:
			case i.Invert:
				m.latchLow |= 1 << i.Channel
			default:
				m.latchHigh |= 1 << i.Channel
			}
		}
		b.modules = append(b.modules, m)
		b.byID[d.ID] = m
		b.line.Add(set.Address, m.every())
	}
	return b, nil
}

func (m *module) every() time.Duration {
	if m.set.Poll > 0 {
		return m.set.Poll
	}
	return time.Second
}

func (m *module) alarmEvery() time.Duration {
	if m.set.AlarmPoll > 0 {
		return m.set.AlarmPoll
	}
	return 100 * time.Millisecond
}

func (b *Bus) timeout() time.Duration {
	if b.cfg.Timeout > 0 {
		return b.cfg.Timeout
	}
	return 200 * time.Millisecond
}

// Run polls the bus's modules until ctx ends.
func (b *Bus) Run(ctx context.Context, emit drivers.Emit) error {
	var wg sync.WaitGroup
	for _, m := range b.modules {
		p := &poller{b: b, m: m, emit: emit, log: b.log.With("device", m.cfg.ID), wake: bus.NewWake()}
		wg.Go(func() { bus.Every(ctx, p.wake, p.poll) })
		if m.alarms {
			wg.Go(func() { bus.Every(ctx, nil, p.alarmPoll) })
		}
	}
	wg.Wait()
	b.port.Close() // every poller has stopped
	b.tr = nil
	return nil
}

// ask sends one command to a module and parses its answer, once. The
// caller holds the wire lock.
func (b *Bus) ask(m *module, text string, k Kind, timeout time.Duration) (Answer, error) {
	p, opened, err := b.port.Port()
	if err != nil {
		return Answer{}, err
	}
	if opened || b.tr == nil {
		b.tr = &transport{port: p, char: b.cfg.CharTime()}
	}
	b.tr.timeout = timeout
	var frame []byte
	late := b.tr.late
	if b.tr.unsynced {
		var damage error
		name := Command(fmt.Sprintf("!%02X%s", m.set.Address, m.tmpl.Module), m.set.Checksum)
		damage, err = b.tr.sync(Command(readName(m.set.Address), m.set.Checksum), func(f []byte) error {
			_, err := Parse(f, KindName, m.set.Address, m.set.Checksum)
			return err
		}, name)
		if damage != nil {
			b.count(m, []string{classify(damage)})
		}
	}
	if err == nil {
		frame, err = b.tr.exchange(Command(text, m.set.Checksum), answerLen(k, m.set.Checksum), false)
	}
	if b.tr.late > late {
		// The answers were realigned: count the late ones dropped.
		var te *TimeoutError
		if errors.As(err, &te) {
			te.Late = b.tr.late - late
		} else if err == nil {
			b.count(m, []string{"late_answers"})
		}
	}
	var pe *bus.PortError
	if errors.As(err, &pe) {
		b.tr = nil
		return Answer{}, b.port.Fail(pe.Err)
	}
	if err != nil {
		return Answer{}, err
	}
	ans, err := Parse(frame, k, m.set.Address, m.set.Checksum)
	if err == nil && k == KindReadIO {
		ans.State, err = m.layout.Decode(ans.Data)
	}
	var fe *FrameError
	if errors.As(err, &fe) {
		// Not an answer to this command: one cut short (its CR lost, or
		// a pause), or a late answer to an earlier one ($AA6's does not
		// say which module sent it; a $AAM of a sync that timed out). The
		// real one may still be on its way, to be taken for the next
		// command's.
		b.tr.unsynced = true
	}
	return ans, err
}

// request runs one command under the wire lock at priority prio, with the
// bus's retries unless the attempt says once, and counts every failure.
// Only reads are retried: see Set for writes.
func (b *Bus) request(ctx context.Context, prio bus.Priority, m *module, text string, k Kind, a bus.Attempt, r *result) (Answer, error) {
	tries, timeout := a.On(b.cfg.Retries, b.timeout())
	var err error
	for try := 0; try < tries; try++ {
		if err = b.line.Lock.Lock(ctx, prio); err != nil {
			return Answer{}, err
		}
		var ans Answer
		sent := time.Now()
		ans, err = b.ask(m, text, k, timeout)
		took := time.Since(sent)
		b.line.Lock.Unlock()
		if ctx.Err() != nil {
			return Answer{}, ctx.Err()
		}
		r.requests++
		if err == nil {
			r.answered, r.rtt = true, took
			return ans, nil
		}
		r.fail(err)
		// A ?AA to a read every module of the family knows ($AA6, $AAM)
		// is a command the noise damaged into another: it is asked again
		// like a damaged answer. Only a link that is down stops the tries.
		var ld *bus.LinkDownError
		if errors.As(err, &ld) {
			return Answer{}, err
		}
	}
	return Answer{}, err
}

// result gathers what a poll's commands met.
type result struct {
	requests int
	rtt      time.Duration // of the last command answered
	answered bool          // some answer came, valid or not
	silent   int           // commands that got nothing
	linkDown bool
	counters []string
	// why is the failure that says most of the poll's: the port's, else
	// the first damaged answer, else the first timeout. On a noisy line a
	// poll meets both, and a timeout alone reads as a wrong address.
	why error
}

// fail counts a failed command.
func (r *result) fail(err error) {
	counter := classify(err)
	r.counters = append(r.counters, counter)
	switch counter {
	case "timeouts":
		r.silent++
		var te *TimeoutError
		if errors.As(err, &te) && te.Got+te.Late > 0 {
			r.answered = true
		}
		if te != nil && te.Late > 0 {
			r.counters = append(r.counters, "late_answers")
		}
	case "link_down":
		r.linkDown = true
	default:
		r.answered = true // a damaged answer is an answer: the module is there
	}
	if r.why == nil || says(counter) > says(classify(r.why)) {
		r.why = err
	}
}

// says ranks failures by what they tell of a module that gave no valid
// answer (see result.why).
func says(counter string) int {
	switch counter {
	case "link_down":
		return 2
	case "timeouts":
		return 0
	}
	return 1
}

// classify names the health counter of a failed command.
func classify(err error) string {
	var fe *FrameError
	var te *TimeoutError
	var ld *bus.LinkDownError
	var re *RefusedError
	switch {
	case errors.As(err, &ld):
		return "link_down"
	case errors.As(err, &te):
		return "timeouts"
	case errors.As(err, &fe) && fe.Kind == badChecksum:
		return "checksum_errors"
	case errors.As(err, &fe):
		return "bad_frames"
	case errors.As(err, &re):
		return "refused"
	case errors.Is(err, IgnoredError):
		return "ignored"
	}
	return "io_errors"
}

// forgetAfter is how many polls in a row that got no answer slow a
// module's alarm polls down: one such poll on a noisy line is a few
// damaged commands, not a module gone.
const forgetAfter = 2

// forgetSilence is how long a module must not answer at all before the
// driver forgets its name and asks it again: long enough for a module to
// be swapped for another, longer than a noisy line stays silent.
const forgetSilence = 30 * time.Second

// poller polls one module.
type poller struct {
	b    *Bus
	m    *module
	emit drivers.Emit
	log  *slog.Logger
	wake bus.Wake // of the poll, by an alarm poll that hears the module back, or its link answering again
}

// identify asks the module its name, unless it was known since it last
// answered again, and says whether the module is the template's. The
// name must come twice alike: one damaged digit turns a 4051 into a 4050.
func (p *poller) identify(ctx context.Context, prio bus.Priority, a bus.Attempt, r *result) bool {
	m := p.m
	m.mu.Lock()
	known := m.known
	m.mu.Unlock()
	if known {
		return true
	}
	tries, _ := a.On(p.b.cfg.Retries, 0)
	var name string
	for i := 0; i < 2*tries+1; i++ {
		ans, err := p.b.request(ctx, prio, m, readName(m.set.Address), KindName, bus.Attempt{Once: true, Timeout: a.Timeout}, r)
		if err != nil {
			if !r.answered && i+1 >= tries || ctx.Err() != nil {
				return false // silent: the poll says so
			}
			continue
		}
		if ans.Name != name {
			name = ans.Name
			continue
		}
		if name == m.tmpl.Module && m.latchHigh|m.latchLow != 0 {
			// Whether it has the latch its template says: the first
			// poll's health then says so.
			p.askLatch(ctx, prio, bus.Attempt{Once: true, Timeout: a.Timeout}, r, m.latchHigh != 0)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if name != m.tmpl.Module {
			m.wrong = fmt.Sprintf("module at address %02X says it is %s, template %s expects %s", m.set.Address, name, m.name, m.tmpl.Module)
			r.counters = append(r.counters, "wrong_module")
			return false
		}
		if m.wrong != "" {
			p.log.Info("module is the template's again", "module", name)
		}
		m.known, m.wrong = true, ""
		return true
	}
	r.counters = append(r.counters, "unconfirmed_reads")
	return false
}

// reading is a module's I/O as read, with the time of the answer that
// settled it.
type reading struct {
	State
	at time.Time
	// sure says reads agreed on it (or the checksum vouched for it);
	// otherwise one read showed the last confirmed state again.
	sure bool
}

// alike is how many reads alike in a row confirm a state without
// checksum. Under noise a damaged answer that still parses is common (at 5%
// of the bytes damaged, about one answer in fifteen: a flipped bit of one
// of the four I/O digits), and the next answer damaged the same way is
// about one in 230 of those (that byte, that bit, nothing else): two
// reads alike let a wrong value through every few hundred such answers,
// which a noisy line makes in minutes. A third read alike makes it one in
// 50,000. The state last confirmed needs as many again: an input that
// has just changed reads as the old state when the same bit is damaged
// twice, or when another module answers a command whose address the line
// damaged ($AA6 answers do not say who sent them), and two such reads
// published a button released while it was held.
const alike = 3

// run is the reads of a module's I/O alike in a row that have not
// confirmed a state yet. A run of a change is the module's, not one
// call's: on a noisy line an alarm poll's budget of reads often ends with
// one or two reads of a new state, and the next poll, or an alarm poll of
// the next slot, goes on from them. Without that, a 2 s press on a line
// where three exchanges in five fail went unpublished: each alarm poll
// saw it, none saw it three times (the serial-noise scenario). The state
// last confirmed is confirmed again by one call's reads (see read).
type run struct {
	state State
	n     int       // reads alike; 0: none
	from  time.Time // the first of them
}

// runFor is how long a run may take: a run that began earlier is dropped,
// as its reads may no longer say what the module holds. It spans a press
// held for a couple of seconds, the shortest a panic button is meant for,
// and the alarm polls a noisy line leaves it in that time.
const runFor = 2 * time.Second

// state reads the module's I/O and returns it once it is confirmed (see
// the package comment), or nil when it could not be read or confirmed.
// Without checksum, a state is confirmed by three reads alike in a row
// (m.run, which may have begun in an earlier call), the last confirmed
// state as any other; or, unless strict, by one read that shows the last
// confirmed state (not sure: see reading): a damaged digit can turn a new
// state back into the old one as easily as the other way round, so a
// caller that publishes unchanged values from a module without checksum
// asks for reads alike every time. Damaged answers and timeouts are read
// past, within a budget of reads set by the link's retries.
func (p *poller) state(ctx context.Context, prio bus.Priority, a bus.Attempt, r *result, strict bool) *reading {
	m := p.m
	tries, _ := a.On(p.b.cfg.Retries, 0)
	silent := 0
	var last State
	mine := 0 // this call's reads alike in a row; 0: none parsed yet
	for i := 0; i < 2*tries+alike; i++ {
		ans, err := p.b.request(ctx, prio, m, readIO(m.set.Address), KindReadIO, bus.Attempt{Once: true, Timeout: a.Timeout}, r)
		at := time.Now()
		if ctx.Err() != nil {
			return nil
		}
		var ld *bus.LinkDownError
		var te *TimeoutError
		switch {
		case errors.As(err, &ld):
			return nil
		case errors.As(err, &te):
			if silent++; mine == 0 && silent >= tries {
				return nil // not there: the poll says so, an alarm poll waits
			}
			continue
		case err != nil:
			continue
		}
		if mine == 0 || ans.State != last {
			last, mine = ans.State, 0
		}
		mine++
		sure, again, broke := m.read(ans.State, at, mine)
		if broke {
			r.counters = append(r.counters, "unconfirmed_reads") // the run was damaged
		}
		switch {
		case sure:
			return &reading{State: ans.State, at: at, sure: true}
		case again && !strict:
			return &reading{State: ans.State, at: at}
		}
	}
	r.counters = append(r.counters, "unconfirmed_reads")
	return nil
}

// read adds one read of the module's I/O to its run, and says whether
// that confirms s (sure: reads agree, or the checksum vouches for one, see
// the package comment), whether s is the state last confirmed, and
// whether s broke a run of another state. The state last confirmed is
// confirmed again by the caller's own reads alike in a row (mine), not by
// the module's run: reads of it from an earlier call may be from before a
// change, and one damaged read would then publish a button released while
// it is held. A run of a change can only publish a state the module held,
// if late.
func (m *module) read(s State, at time.Time, mine int) (sure, again, broke bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.run.n > 0 && at.Sub(m.run.from) > runFor {
		m.run = run{}
	}
	switch {
	case m.run.n > 0 && m.run.state == s:
		m.run.n++
	default:
		broke = m.run.n > 0
		m.run = run{state: s, n: 1, from: at}
	}
	again = m.confirmed != nil && s == *m.confirmed
	n := m.run.n
	if again {
		n = mine
	}
	if n >= m.toConfirm(s) {
		m.confirmed, m.run = &s, run{}
		return true, again, broke
	}
	return false, again, broke
}

// toConfirm is how many reads alike in a row confirm s (m.mu held):
// alike without the checksum; with it one, but two when s's outputs are
// not those last confirmed. Outputs change only by command (or at the
// module's power-on), and two damaged characters whose damage cancels in
// the checksum (a bit set in one, the same bit cleared in another) often
// set an output bit, the outputs being mostly zeros: the two such answers
// that serial-noise was seen to publish as good both showed the siren on,
// with a tamper. A change of inputs alone still takes one answer: a press
// costs no more commands.
func (m *module) toConfirm(s State) int {
	switch {
	case !m.set.Checksum:
		return alike
	case m.confirmed != nil && s.Out != m.confirmed.Out:
		return 2
	}
	return 1
}

// readings are the module's signals in a state (all bad when s is nil).
func (m *module) readings(s *reading) []model.Reading {
	out := make([]model.Reading, 0, len(m.tmpl.Inputs)+len(m.tmpl.Outputs))
	for _, in := range m.tmpl.Inputs {
		r := model.Reading{Signal: in.Signal, Quality: model.Bad}
		if s != nil {
			r.Value, r.Quality = model.Bool(in.On(s.In)), model.Good
		}
		out = append(out, r)
	}
	for _, o := range m.tmpl.Outputs {
		r := model.Reading{Signal: o.Signal, Quality: model.Bad}
		if s != nil {
			r.Value, r.Quality = model.Bool(s.Out>>o.Channel&1 == 1), model.Good
		}
		out = append(out, r)
	}
	return out
}

// poll reads the module once, in its slot: its name first when it is not
// known, then its I/O; it emits every signal, and the module's health when
// that changed. It returns the interval to the next poll.
func (p *poller) poll(ctx context.Context, slot bus.Slot) time.Duration {
	m := p.m
	m.mu.Lock()
	interval, first := m.health.Next(m.every())
	m.mu.Unlock()
	var r result
	if p.b.line.Lock.Lock(ctx, bus.Poll) != nil {
		return interval
	}
	late := p.b.line.Started(m.cfg.ID, time.Since(slot.Due), interval)
	p.b.line.Lock.Unlock()
	start := time.Now()
	var s *reading
	identified := p.identify(ctx, bus.Poll, first, &r)
	if identified {
		s = p.state(ctx, bus.Poll, first, &r, !m.set.Checksum)
	}
	if ctx.Err() != nil {
		return interval
	}
	p.b.line.Held(m.cfg.ID, time.Since(start), interval)
	p.b.line.Heard(m.set.Address, r.answered)
	res := bus.Result{Requests: r.requests, Late: late, Skipped: slot.Skipped, Counters: r.counters, LinkDown: r.linkDown, RTT: r.rtt}
	// A link that is down (the port gone) heard nothing, but says why
	// itself: the modules are not silent.
	res.Silent = r.requests > 0 && !r.answered && !r.linkDown
	var silence string
	if res.Silent {
		silence = p.b.line.Silence(ctx, m.set.Address) // a tool's waits for the other modules
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case res.Silent:
		res.Failed, res.Reason = 1, silence
	case r.linkDown:
		res.Failed, res.Reason = 1, r.why.Error()
	case !identified && m.wrong != "":
		res.Failed, res.Reason = 1, m.wrong
	case m.noLatch != "":
		res.Failed, res.Reason = 1, m.noLatch
	case s == nil:
		res.Failed = 1
		res.Reason = "no valid answer to $AA6 (read I/O)"
		if !identified {
			res.Reason = "no valid answer to $AAM (read name)"
		}
		if r.why != nil {
			res.Reason += ": " + r.why.Error()
		}
	}
	if s != nil && s.at.After(m.cleared) {
		m.seen |= m.active(s.State)
	}
	if s != nil && res.Failed == 0 {
		// Damaged answers on the way to a good one: the module is fine and
		// the line noisy; the counters say how noisy.
		res.Counters, res.Retried = nil, r.counters
	}
	// The message is stamped with the answer that settled the values: a
	// read confirmed after damaged answers may be tens of ms old.
	readings, at := m.readings(s), time.Now()
	if s != nil {
		at = s.at
	}
	if !at.Before(m.pubAt) {
		m.published, m.pubAt = readings, at
	} else {
		readings, at = m.published, m.pubAt // the alarm poll read it later, while this poll ran
	}
	p.emit(model.Message{Device: m.cfg.ID, DeviceKind: m.kind, Kind: model.KindTelemetry, Time: at.UTC(), Readings: readings})
	now := time.Now()
	if h, send := bus.Record(ctx, p.log, &m.health, res, now); send {
		p.emit(model.Message{Device: m.cfg.ID, DeviceKind: m.kind, Kind: model.KindHealth, Time: now.UTC(), Health: &h})
	}
	m.observed(m.cfg.ID, res.RTT)
	if r.answered {
		m.heard = time.Now()
	}
	if time.Since(m.heard) >= forgetSilence {
		// Gone for a while: it may come back as another module, so its
		// name is asked again when it answers.
		m.known, m.run, m.noLatch = false, run{}, ""
	}
	interval, _ = m.health.Next(m.every())
	p.b.line.Rest(m.set.Address, &m.health, p.wake)
	return interval
}

// alarmPoll reads the module's I/O ahead of normal polls and emits its
// signals only when one changed since they were last published: at 100ms,
// a message per read would flood the queue. A module whose name is not
// known (again) is asked it first. A silent module, or one whose name is
// not known, is still asked, as bus.SilentAlarm says: its alarm polls
// slow down but never stop. Failures are only counted.
func (p *poller) alarmPoll(ctx context.Context, slot bus.Slot) time.Duration {
	m := p.m
	every := m.alarmEvery()
	m.mu.Lock()
	unsure := m.health.Silent() >= forgetAfter || !m.known
	m.mu.Unlock()
	var r result
	a := bus.Attempt{}
	next := every
	if unsure {
		a, next = bus.SilentAlarm(every, p.b.timeout())
	}
	late := time.Since(slot.Due) > every/2
	if !p.identify(ctx, bus.AlarmPoll, a, &r) {
		m.mu.Lock()
		m.health.Count(r.counters...)
		m.mu.Unlock()
		return next
	}
	latched, latchAt := p.latched(ctx, a, &r)
	s := p.state(ctx, bus.AlarmPoll, a, &r, false)
	missed := p.unlatch(ctx, a, &r, latched, !latchAt.IsZero(), s)
	if ctx.Err() != nil {
		return every
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.health.Count(r.counters...)
	p.latchedPress(missed, latchAt)
	if r.answered {
		m.heard = time.Now()
		if h, send := bus.Heard(ctx, p.log, &m.health, m.heard); send {
			// Back before its inputs are: a press after a replug comes
			// from a device the hub sees online.
			p.emit(model.Message{Device: m.cfg.ID, DeviceKind: m.kind, Kind: model.KindHealth, Time: m.heard.UTC(), Health: &h})
			p.wake.Poll()
		}
	}
	if late {
		m.health.Count("late_alarm_polls")
	}
	m.health.Add("skipped_alarm_slots", slot.Skipped)
	p.log.Debug("alarm poll", "ok", s != nil, "requests", r.requests, "failures", r.counters)
	if s == nil || s.at.Before(m.pubAt) {
		return next
	}
	readings := m.readings(s)
	changed := len(readings) != len(m.published)
	for i := range readings {
		changed = changed || readings[i] != m.published[i]
	}
	if changed && !s.sure {
		// One read showed the old state while the published values are
		// others (bad, after a failed poll): not enough to publish.
		return every
	}
	m.pubAt = s.at
	if changed {
		m.published = readings
		p.emit(model.Message{Device: m.cfg.ID, DeviceKind: m.kind, Kind: model.KindTelemetry, Time: s.at.UTC(), Readings: readings})
	}
	return every
}

// latched reads the module's latch, when its template says it has one
// (m.latchHigh, m.latchLow), and returns the alarm inputs (bits of
// State.In) that were at their active level at some moment since it was
// last cleared, and when it was read (zero when it could not be, or the
// module has none). An alarm poll reads the latch, then the I/O, then
// clears the latch (unlatch).
func (p *poller) latched(ctx context.Context, a bus.Attempt, r *result) (uint16, time.Time) {
	m := p.m
	m.mu.Lock()
	refused := m.noLatch != ""
	m.mu.Unlock()
	if refused {
		return 0, time.Time{}
	}
	var active uint16
	for _, l := range []struct {
		high bool
		mask uint16
	}{{true, m.latchHigh}, {false, m.latchLow}} {
		if l.mask == 0 {
			continue
		}
		ans, err := p.askLatch(ctx, bus.AlarmPoll, a, r, l.high)
		if err != nil {
			return 0, time.Time{} // read again, uncleared, at the next alarm poll
		}
		active |= ans.State.In & l.mask
	}
	return active, time.Now()
}

// askLatch reads the module's latch of inputs high ($AAL1) or low
// ($AAL0). A module that refuses it has no latch: with the checksum on,
// a damaged command gets no answer, so ?AA is the module's own. Its
// presses are still read, as a module's without a latch; it is degraded,
// and its latch not asked again, until it is identified anew (see poll).
func (p *poller) askLatch(ctx context.Context, prio bus.Priority, a bus.Attempt, r *result, high bool) (Answer, error) {
	m := p.m
	cmd := readLatch(m.set.Address, high)
	ans, err := p.b.request(ctx, prio, m, cmd, KindReadIO, a, r)
	var re *RefusedError
	if errors.As(err, &re) {
		why := fmt.Sprintf("module at address %02X refuses %s (read latched inputs), which template %s needs: use a template without latch: true for a module that has none (a press shorter than alarm_poll can be lost)", m.set.Address, cmd, m.name)
		m.mu.Lock()
		m.noLatch = why
		m.mu.Unlock()
		p.log.Warn("module has no latch", "reason", why)
	}
	return ans, err
}

// unlatch clears the module's latch after the alarm poll read it
// (latched; read says it could) and then the I/O (s, nil when that
// failed), and returns the presses no read saw: inputs latched active
// that no read showed active since the latch was last cleared. The latch is cleared only when it
// held an input active (or a clear failed before), and only after a read
// of the I/O, which says what the latch may hold again at once: an input
// active when it is cleared (a module may latch its level). So a press
// that begins and ends between that read and the clear, one command's
// time, is missed; and so is one that begins and ends between a release
// and the next read, when the input was active at the clear before. A
// press published from the latch while it could not be cleared (or
// while an installer's tool runs the bus: what the latch holds is left
// for the gateway to send) is not published again. A latch that could not
// be read is not cleared: it may hold a press.
func (p *poller) unlatch(ctx context.Context, a bus.Attempt, r *result, latched uint16, read bool, s *reading) uint16 {
	m := p.m
	m.mu.Lock()
	if s != nil {
		m.seen |= m.active(s.State)
	}
	missed := latched &^ m.seen &^ m.uncleared
	clear := read && latched|m.uncleared != 0
	m.mu.Unlock()
	if !clear {
		return 0
	}
	cleared := s != nil && !p.b.once
	sent := time.Now() // reads answered later came after the clear: one command at a time
	if cleared {
		_, err := p.b.request(ctx, bus.AlarmPoll, m, clearLatch(m.set.Address), KindClear, a, r)
		cleared = err == nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !cleared {
		m.uncleared |= latched
		return missed
	}
	m.seen, m.uncleared, m.cleared = m.active(s.State), 0, sent
	return missed
}

// active are the inputs of state s at their active level (true, or 0 for
// an inverted input), as bits of State.In.
func (m *module) active(s State) uint16 {
	var in uint16
	for _, input := range m.tmpl.Inputs {
		if input.On(s.In) {
			in |= 1 << input.Channel
		}
	}
	return in
}

// latchedPress publishes the alarm inputs in (bits of State.In) that the
// latch saw active and the published values do not show active: a press
// shorter than the time between two reads, or one made while the gateway
// was not running. It is stamped with the latch's read (at), the earliest
// moment the gateway knew of it, or just after the last message when that
// is as late (a poll published between the latch's read and now): not
// with its time, as the hub's InfluxDB keeps one point of a device at a
// time, and the press would overwrite that message's values there. The
// alarm poll's read of the I/O then publishes the release.
// Each is counted (latched_presses): many say the alarm polls are too far
// apart for the presses the station sees. The caller holds m.mu.
func (p *poller) latchedPress(in uint16, at time.Time) {
	m := p.m
	if in == 0 {
		return
	}
	readings := slices.Clone(m.published)
	if len(readings) == 0 {
		readings = m.readings(nil)
	}
	n := 0
	for i, input := range m.tmpl.Inputs {
		if in>>input.Channel&1 == 0 || readings[i].Quality == model.Good && readings[i].Value.Equal(model.Bool(true)) {
			continue
		}
		readings[i] = model.Reading{Signal: input.Signal, Value: model.Bool(true), Quality: model.Good}
		n++
	}
	if n == 0 {
		return
	}
	if !at.After(m.pubAt) {
		at = m.pubAt.Add(time.Nanosecond)
	}
	m.health.Add("latched_presses", n)
	m.published, m.pubAt = readings, at
	p.emit(model.Message{Device: m.cfg.ID, DeviceKind: m.kind, Kind: model.KindTelemetry, Time: at.UTC(), Readings: readings})
}
