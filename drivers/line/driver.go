// Package line is the driver of line links ("line"): devices on a serial
// line (RS-232, RS-485) that speak lines of text, described by a template
// alone (configs/line): legacy kiosks, displays, GNSS receivers, sensors.
// A link carries either one device that talks on its own, whose lines are
// read as they come, or devices the gateway polls in turn with the
// template's poll command, under the link's wire lock (drivers/bus).
//
// Every good line becomes one telemetry message with the signals it
// carries; events come from the template's event rules on them, as for
// every protocol. What the driver guards against:
//
//   - Damaged lines. A line whose checksum fails, one longer than the
//     template's max_length, one cut short, garbage between lines, a line
//     of no kind the template has, a field that does not parse: each is
//     counted in the device's health counters by its reason (see the
//     Reason constants), and none of its values is published. A line too
//     long is dropped up to its end as it comes: the driver never holds
//     more than max_length bytes of it.
//   - Losing the good line after a bad one. A start inside a line begins
//     a new line; without a start in the framing, a good line is looked
//     for where the prefix of a kind of line begins after a line cut
//     short (Parser.Parse); and a pause in the middle of a line ends it
//     (a device writes a line in one go).
//   - A device gone quiet. One that talks on its own and sends no good
//     line for its silence is offline, with a reason that says whether
//     anything came at all; a polled one is offline after
//     health.offline_after polls without an answer, and probed with
//     backoff (bus.Tracker). A device that sends only bad lines is
//     degraded: a polled one after health.degraded_after polls in a row
//     without a good answer (within the link's retries), one that talks
//     on its own after more bad lines in a row than the link's retries,
//     health.degraded_after times over.
//
// Without a checksum in the template, a damaged digit in a line that
// still matches its kind cannot be told from a good one; the templates
// say so where it applies.
package line

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"outpost/configs"
	cl "outpost/configs/line"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

func init() { drivers.Register(cl.Protocol, newLink) }

// addresses is how the link's health reasons name polled devices.
var addresses = bus.Addresses{One: "address", Many: "addresses", Format: "%d",
	Fix: "wrong address or baud rate, device not in poll mode, or device off"}

const linkHint = "check wiring, port and baud rate, and the devices' power"

// Link is the driver of one line link.
type Link struct {
	name   string
	cfg    *cl.Link
	port   *bus.Serial
	line   *bus.Line
	char   time.Duration // one character on the line
	polled bool
	devs   []*device
	log    *slog.Logger
}

var _ drivers.Driver = (*Link)(nil)

// device is one device on the link and its health.
type device struct {
	id, kind string
	tmpl     *cl.Template
	set      *cl.Device
	parser   *Parser
	addr     int
	cmd      []byte // its poll command, framed; nil when it talks on its own
	signals  []cl.Signal
	observed func(device string, rtt time.Duration)
	log      *slog.Logger

	// mu orders the device's messages and guards what follows.
	mu       sync.Mutex
	health   bus.Tracker
	lastGood time.Time         // when the last good line came (the start before the first)
	heard    time.Time         // when the last byte came
	bad      map[string]uint64 // bad lines since the last good one, by reason
	lastBad  string            // what was wrong with the last of them
	run      []string          // the reasons of bad lines in a row not yet observed
	retries  int               // bad lines in a row that do not count against the health
	linkErr  error             // the link is down, since this error
}

func newLink(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	return build(link, nil, log)
}

// build makes the driver; open opens the port (bus.OpenSerial when nil).
// It does no I/O.
func build(link drivers.Link, open bus.OpenFunc, log *slog.Logger) (*Link, error) {
	cfg, ok := link.Config.Settings.(*cl.Link)
	if !ok {
		return nil, fmt.Errorf("line: link %s is not a line link", link.Name())
	}
	port, err := bus.NewSerial(&cfg.Serial, open, log)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", link.Name(), err)
	}
	l := &Link{name: link.Name(), cfg: cfg, port: port, line: bus.NewLine(link.Name(), linkHint, addresses, log),
		char: cfg.CharTime(), log: log}
	l.line.ForTool = link.Once
	for i, d := range link.Devices {
		t := link.Template(d)
		if t == nil {
			return nil, fmt.Errorf("device %s on %s: template %q not loaded", d.ID, link.Name(), d.Template)
		}
		body, ok := t.Body.(*cl.Template)
		set, ok2 := d.Settings.(*cl.Device)
		if !ok || !ok2 {
			return nil, fmt.Errorf("device %s on %s: not a line device (template %s of family %s)", d.ID, link.Name(), t.Name, t.Protocol)
		}
		parser, err := NewParser(body)
		if err != nil {
			return nil, fmt.Errorf("device %s on %s: template %s: %w", d.ID, link.Name(), t.Name, err)
		}
		dev := &device{id: d.ID, kind: t.Kind, tmpl: body, set: set, parser: parser, signals: body.SignalDefs,
			observed: link.Observed, log: log.With("device", d.ID), bad: map[string]uint64{}}
		polled := body.Poll != nil
		if i > 0 && polled != l.polled {
			return nil, fmt.Errorf("device %s on %s: polled and unpolled devices share the link", d.ID, link.Name())
		}
		l.polled = polled
		if !polled {
			if len(link.Devices) > 1 {
				return nil, fmt.Errorf("device %s on %s talks on its own, so it must be alone on the link", d.ID, link.Name())
			}
			// Silence makes it offline at once: offline_after counts polls.
			dev.health = bus.NewTracker(configs.Health{OfflineAfter: 1, DegradedAfter: link.Station.Health.DegradedAfter})
			dev.retries = cfg.Retries
		} else {
			if set.Poll <= 0 {
				return nil, fmt.Errorf("device %s on %s: no poll interval", d.ID, link.Name())
			}
			if set.Address != nil {
				dev.addr = *set.Address
			}
			if dev.cmd, err = parser.Command(body, dev.addr); err != nil {
				return nil, fmt.Errorf("device %s on %s: poll command: %w", d.ID, link.Name(), err)
			}
			dev.health = bus.NewTracker(link.Station.Health)
			l.line.Add(dev.addr, set.Poll)
		}
		l.devs = append(l.devs, dev)
	}
	return l, nil
}

// Run reads the link's devices until ctx ends.
func (l *Link) Run(ctx context.Context, emit drivers.Emit) error {
	defer l.port.Close() // once every reader has stopped
	switch {
	case len(l.devs) == 0:
		<-ctx.Done() // nothing to read, and nothing wrong
		return nil
	case !l.polled:
		l.listen(ctx, l.devs[0], emit)
		return nil
	}
	var wg sync.WaitGroup
	for _, d := range l.devs {
		p := &poller{l: l, d: d, emit: emit, fr: NewFramer(d.tmpl.Framing), wake: bus.NewWake()}
		wg.Go(func() { bus.Every(ctx, p.wake, p.poll) })
	}
	wg.Wait()
	return nil
}

// idleRead bounds a read while no line is under way, so that the reader
// sees its context end.
const idleRead = 250 * time.Millisecond

// gap is how long a pause in the middle of a line may be before the line
// is taken for cut short (its end lost): a device writes a line in one
// go, so a few characters' silence ends it; the floor leaves room for the
// scheduler of a loaded machine and the chunks of a USB adapter.
func (l *Link) gap() time.Duration { return max(16*l.char, 100*time.Millisecond) }

// wire is the time n characters take on the line.
func (l *Link) wire(n int) time.Duration { return time.Duration(n) * l.char }

// listen reads the lines of a device that talks on its own until ctx
// ends, and reports it offline when it falls silent.
func (l *Link) listen(ctx context.Context, d *device, emit drivers.Emit) {
	d.mu.Lock()
	d.lastGood = time.Now() // silence counts from the start
	d.mu.Unlock()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { d.supervise(ctx, emit) })

	fr := NewFramer(d.tmpl.Framing)
	take := func(body []byte, err *LineError) { d.take(ctx, body, err, emit) }
	buf := make([]byte, 512)
	var last time.Time // when the last byte came
	for ctx.Err() == nil {
		p, opened, err := l.port.Port()
		if err != nil {
			d.down(ctx, err, emit)
			sleep(ctx, bus.ReopenMin)
			continue
		}
		if opened {
			fr = NewFramer(d.tmpl.Framing) // what was under way went with the old port
			d.up()
		}
		wait := idleRead
		if fr.Pending() {
			if wait = min(wait, time.Until(last.Add(l.gap()))); wait <= 0 {
				fr.Cut(take) // a pause in the middle of a line: its end was lost
				continue
			}
		}
		if err := p.SetReadTimeout(wait); err != nil {
			d.down(ctx, l.port.Fail(err), emit)
			continue
		}
		n, err := p.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			d.down(ctx, l.port.Fail(fmt.Errorf("read: %w", err)), emit)
			continue
		}
		if n == 0 {
			continue
		}
		last = time.Now()
		d.mu.Lock()
		d.heard = last
		d.mu.Unlock()
		fr.Push(buf[:n], take)
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// take judges one line (or what came instead) of a device that talks on
// its own, and publishes it if it is good.
func (d *device) take(ctx context.Context, body []byte, ferr *LineError, emit drivers.Emit) {
	now := time.Now()
	if ferr != nil {
		d.badLine(ctx, ferr, now, emit)
		return
	}
	dec, err := d.parser.Parse(body)
	if dec.Cut > 0 {
		d.badLine(ctx, lineErr(ReasonTruncated, "a line cut short before a good one: %s", show(body[:dec.Cut])), now, emit)
	}
	var le *LineError
	switch {
	case err == nil:
		d.goodLine(ctx, dec, now, emit)
	case errors.As(err, &le) && le.Reason == ReasonIgnored:
		d.mu.Lock()
		d.health.Count(ReasonIgnored)
		d.mu.Unlock()
	case le != nil:
		d.badLine(ctx, le, now, emit)
	}
}

// goodLine publishes a good line's readings and observes a clean line;
// the bad lines just before it, fewer than the link's retries allow, are
// counted as ridden over, as a poll's failed tries are.
func (d *device) goodLine(ctx context.Context, dec Decoded, at time.Time, emit drivers.Emit) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastGood, d.lastBad = at, ""
	clear(d.bad)
	emit(model.Message{Device: d.id, DeviceKind: d.kind, Kind: model.KindTelemetry, Time: at.UTC(), Readings: dec.Readings})
	d.record(ctx, bus.Result{Requests: 1 + len(d.run), Retried: d.run}, at, emit)
	d.run = nil
}

// badLine counts a bad line. A device that talks on its own cannot be
// asked again: the link's retries are how many bad lines in a row are
// only counted (noise now and then); one more is observed as a failure,
// and failures in a row make the device degraded.
func (d *device) badLine(ctx context.Context, le *LineError, at time.Time, emit drivers.Emit) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.bad[le.Reason]++
	d.lastBad = le.Detail
	d.log.Debug("bad line", "reason", le.Reason, "detail", le.Detail)
	if d.run = append(d.run, le.Reason); len(d.run) <= d.retries {
		return
	}
	d.record(ctx, bus.Result{Requests: len(d.run), Failed: 1, Counters: d.run, Reason: "bad line: " + le.Detail}, at, emit)
	d.run = nil
}

// record observes a result and sends the health when it is due; d.mu is
// held.
func (d *device) record(ctx context.Context, r bus.Result, at time.Time, emit drivers.Emit) {
	if h, send := bus.Record(ctx, d.log, &d.health, r, at); send {
		emit(model.Message{Device: d.id, DeviceKind: d.kind, Kind: model.KindHealth, Time: at.UTC(), Health: &h})
	}
}

// badReadings are the device's signals without values.
func (d *device) badReadings() []model.Reading {
	out := make([]model.Reading, len(d.signals))
	for i, s := range d.signals {
		out[i] = model.Reading{Signal: s.Signal, Unit: s.Unit, Quality: model.Bad}
	}
	return out
}

// supervise reports the device offline whenever it sent no good line for
// its silence, until ctx ends: its signals go bad, and it stays offline
// until a good line comes.
func (d *device) supervise(ctx context.Context, emit drivers.Emit) {
	t := time.NewTimer(d.set.Silence)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		next := d.set.Silence
		if left := d.set.Silence - time.Since(d.lastGood); left > 0 {
			next = left
		} else {
			now := time.Now()
			r := bus.Result{Failed: 1, Silent: true, Reason: d.silence(), Counters: d.run}
			if d.linkErr != nil {
				r = bus.Result{Failed: 1, LinkDown: true, Reason: d.linkErr.Error(), Counters: d.run}
			}
			d.run = nil
			emit(model.Message{Device: d.id, DeviceKind: d.kind, Kind: model.KindTelemetry, Time: now.UTC(), Readings: d.badReadings()})
			d.record(ctx, r, now, emit)
		}
		d.mu.Unlock()
		t.Reset(next)
	}
}

// silence is the reason of a device that sent no good line for its
// silence, in words an installer can act on; d.mu is held.
func (d *device) silence() string {
	s := d.set.Silence
	if d.heard.Before(d.lastGood) || d.heard.IsZero() {
		return fmt.Sprintf("nothing received for %s: check the device's power, the wiring, the port and the baud rate", s)
	}
	if len(d.bad) == 0 {
		return fmt.Sprintf("no whole line for %s, though bytes came: check the baud rate and the template's framing", s)
	}
	var counts []string
	for _, r := range slices.Sorted(maps.Keys(d.bad)) {
		counts = append(counts, fmt.Sprintf("%s %d", r, d.bad[r]))
	}
	return fmt.Sprintf("no good line for %s, only bad ones (%s; the last: %s): check the baud rate and that the template is the device's",
		s, strings.Join(counts, ", "), d.lastBad)
}

// down reports the link down (err is a bus.LinkDownError), once for each
// cause until it is up again.
func (d *device) down(ctx context.Context, err error, emit drivers.Emit) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	switch {
	case d.linkErr == nil:
		emit(model.Message{Device: d.id, DeviceKind: d.kind, Kind: model.KindTelemetry, Time: now.UTC(), Readings: d.badReadings()})
	case d.linkErr.Error() == err.Error():
		return // the tries while the port stays away, for the same cause
	}
	// A new cause (the port failed, then is missing) is the device's
	// health's news too.
	d.linkErr = err
	d.record(ctx, bus.Result{Failed: 1, LinkDown: true, Reason: err.Error()}, now, emit)
}

// up notes the link open again: the device stays offline until it sends
// a good line.
func (d *device) up() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.linkErr = nil
	d.lastGood = time.Now() // its silence counts from now
}

// poller polls one device of a polled link.
type poller struct {
	l    *Link
	d    *device
	emit drivers.Emit
	fr   *Framer // under the wire lock
	buf  [512]byte
	wake bus.Wake // of the poll, when its link answers again (see bus.Line.Rest)
}

// result gathers what a poll's commands met.
type result struct {
	requests int
	rtt      time.Duration // of the good answer
	answered bool          // some bytes came
	linkDown bool
	counters []string
	first    error
	ignored  int
}

// bad counts a bad line of an answer.
func (r *result) bad(le *LineError) {
	r.counters = append(r.counters, le.Reason)
	if r.first == nil {
		r.first = le
	}
}

// errNoAnswer is a poll command that got nothing at all.
var errNoAnswer = errors.New("no answer")

// poll sends the device its poll command (with the link's retries) and
// publishes the good line it answers, or its signals bad; and its health.
// It returns the interval to the next poll.
func (p *poller) poll(ctx context.Context, slot bus.Slot) time.Duration {
	l, d := p.l, p.d
	d.mu.Lock()
	interval, first := d.health.Next(d.set.Poll)
	d.mu.Unlock()
	if l.line.Lock.Lock(ctx, bus.Poll) != nil {
		return interval
	}
	late := l.line.Started(d.id, time.Since(slot.Due), interval)
	l.line.Lock.Unlock()
	start := time.Now()
	var r result
	dec, at, ok := p.request(ctx, first, &r)
	if ctx.Err() != nil {
		return interval
	}
	l.line.Held(d.id, time.Since(start), interval)
	l.line.Heard(d.addr, r.answered)
	res := bus.Result{Requests: r.requests, Late: late, Skipped: slot.Skipped, Counters: r.counters, LinkDown: r.linkDown, RTT: r.rtt}
	res.Silent = r.requests > 0 && !r.answered && !r.linkDown
	switch {
	case r.linkDown:
		res.Failed, res.Reason = 1, r.first.Error()
	case res.Silent:
		res.Failed, res.Reason = 1, l.line.Silence(ctx, d.addr)
	case !ok:
		res.Failed = 1
		res.Reason = fmt.Sprintf("no good line in answer to %s", show(d.cmd))
		if r.first != nil && r.first != errNoAnswer {
			res.Reason += ": " + r.first.Error()
		}
	default:
		// Bad lines on the way to a good one: the device is fine and the
		// line noisy; the counters say how noisy.
		res.Counters, res.Retried = nil, r.counters
	}
	readings := dec.Readings
	if !ok {
		readings, at = d.badReadings(), time.Now()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if r.ignored > 0 {
		for range r.ignored {
			d.health.Count(ReasonIgnored)
		}
	}
	p.emit(model.Message{Device: d.id, DeviceKind: d.kind, Kind: model.KindTelemetry, Time: at.UTC(), Readings: readings})
	d.record(ctx, res, time.Now(), p.emit)
	d.observed(d.id, res.RTT)
	interval, _ = d.health.Next(d.set.Poll)
	l.line.Rest(d.addr, &d.health, p.wake)
	return interval
}

// request sends the poll command until a good line answers it, within
// the tries the attempt gives, each under the wire lock.
func (p *poller) request(ctx context.Context, a bus.Attempt, r *result) (Decoded, time.Time, bool) {
	l := p.l
	tries, timeout := a.On(l.cfg.Retries, l.cfg.Timeout)
	for range tries {
		if l.line.Lock.Lock(ctx, bus.Poll) != nil {
			return Decoded{}, time.Time{}, false
		}
		sent := time.Now()
		dec, got, err := p.exchange(timeout, r)
		took := time.Since(sent)
		l.line.Lock.Unlock()
		if ctx.Err() != nil {
			return Decoded{}, time.Time{}, false
		}
		r.requests++
		r.answered = r.answered || got > 0
		var ld *bus.LinkDownError
		switch {
		case err == nil:
			r.rtt = took
			return dec, sent.Add(took), true
		case errors.As(err, &ld):
			r.linkDown, r.first = true, err
			return Decoded{}, time.Time{}, false
		case got == 0:
			r.counters = append(r.counters, "timeouts")
			if r.first == nil {
				r.first = errNoAnswer
			}
		}
	}
	return Decoded{}, time.Time{}, false
}

// exchange sends the poll command once and reads lines until a good one,
// or the timeout (beyond the command's and a whole line's wire time).
// Whatever waited before the command is dropped first: a late answer, or
// noise. A good line within one more timeout is still the answer, late
// (counted late_answers): the line waits for it rather than carry the next
// command, whose answer it would be taken for, to another device's (most
// such answers do not say who sent them). It returns how many bytes came,
// and a bus.LinkDownError when the port is unusable. Bad lines are counted
// in r.
func (p *poller) exchange(timeout time.Duration, r *result) (Decoded, int, error) {
	l, d := p.l, p.d
	port, opened, err := l.port.Port()
	if err != nil {
		return Decoded{}, 0, err
	}
	if opened {
		p.fr = NewFramer(d.tmpl.Framing)
	}
	if err := port.ResetInputBuffer(); err != nil {
		return Decoded{}, 0, l.port.Fail(fmt.Errorf("flush input: %w", err))
	}
	p.fr.Cut(func([]byte, *LineError) {}) // what came before the command is not the answer
	if _, err := port.Write(d.cmd); err != nil {
		return Decoded{}, 0, l.port.Fail(fmt.Errorf("write: %w", err))
	}
	deadline := time.Now().Add(timeout + l.wire(len(d.cmd)+d.tmpl.Framing.MaxLength))
	var found *Decoded
	take := func(body []byte, ferr *LineError) {
		switch {
		case found != nil:
		case ferr != nil:
			r.bad(ferr)
		default:
			dec, err := d.parser.Parse(body)
			if dec.Cut > 0 {
				r.bad(lineErr(ReasonTruncated, "a line cut short before a good one: %s", show(body[:dec.Cut])))
			}
			var le *LineError
			switch {
			case err == nil:
				found = &dec
			case errors.As(err, &le) && le.Reason == ReasonIgnored:
				r.ignored++
			case le != nil:
				r.bad(le)
			}
		}
	}
	got := 0
	// What came first may be the adapter's echo of the command (a
	// two-wire RS-485 adapter whose receiver stays on while it sends): it
	// is held until it is known, and dropped, so that a silent device is
	// not taken for one that answers.
	var start [64]byte
	held, echo, late := start[:0], true, false
	for found == nil {
		n, expired, err := bus.ReadBy(port, p.buf[:], deadline)
		if err != nil {
			return Decoded{}, got, l.port.Fail(fmt.Errorf("read: %w", err))
		}
		if expired && !late {
			late, deadline = true, deadline.Add(timeout)
			continue
		}
		if expired {
			break
		}
		in := p.buf[:n]
		if echo {
			held = append(held, in...)
			switch {
			case !bytes.HasPrefix(d.cmd, held[:min(len(held), len(d.cmd))]):
				echo, in = false, held
			case len(held) < len(d.cmd):
				continue
			default:
				echo, in = false, held[len(d.cmd):]
			}
		}
		got += len(in)
		p.fr.Push(in, take)
	}
	if echo && len(held) > 0 { // a start of the echo, and no more
		got += len(held)
		p.fr.Push(held, take)
	}
	if found == nil {
		p.fr.Cut(take) // a line under way at the deadline was cut short
		if got == 0 {
			return Decoded{}, 0, errNoAnswer
		}
		return Decoded{}, got, fmt.Errorf("no good line")
	}
	if late {
		r.counters = append(r.counters, "late_answers")
	}
	return *found, got, nil
}
