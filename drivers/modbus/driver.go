// Package modbus is the Modbus driver: RTU on serial buses ("modbus-rtu")
// and TCP endpoints ("modbus-tcp"). Every device on a link gets its own
// poller, and a second one for its alarm inputs when its template has
// signals with an event rule; the link's wire lock (bus.Turns) lets one
// request at a time onto the wire, alarm polls and commands first, so
// devices interleave request by request, and a device that does not answer
// is asked less and less (bus.Tracker). Decoding and request planning are
// pure functions of bytes and templates (decode.go, plan.go); writes for
// commands from the hub are in write.go.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/goburrow/modbus"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

func init() {
	drivers.Register("modbus-rtu", newRTU)
	drivers.Register("modbus-tcp", newTCP)
}

// units is how Modbus names the addresses of its devices.
var units = bus.Addresses{One: "unit", Many: "units", Format: "%d", Fix: "wrong unit id, or device off"}

// device is one polled device with its plans, and what its pollers share.
type device struct {
	cfg  *configs.Device
	set  *mb.Device   // its Modbus settings
	kind string       // its template's device kind
	tmpl *mb.Template // its register map
	unit byte
	plan []Request
	// alarmPlan reads the signals with an event rule alone, for the alarm
	// poller; empty when the template has none.
	alarmPlan []Request
	link      string
	observed  func(device string, rtt time.Duration) // see drivers.Link.Observed

	// mu orders the device's messages: each is built from what the
	// device said last and emitted under it, so that an alarm input's
	// readings reach the gateway in the order they were read, whichever
	// poller read them.
	mu     sync.Mutex
	health bus.Tracker
	latest map[int]stamped // alarm signal (register index) -> its newest reading
}

// stamped is a reading with the time its response arrived.
type stamped struct {
	model.Reading
	at time.Time
}

func buildDevices(link drivers.Link, cost Cost) ([]*device, error) {
	var out []*device
	for _, d := range link.Devices {
		t := link.Template(d)
		if t == nil {
			return nil, fmt.Errorf("device %s on %s: template %q not loaded", d.ID, link.Name(), d.Template)
		}
		body, ok := t.Body.(*mb.Template)
		set, ok2 := d.Settings.(*mb.Device)
		if !ok || !ok2 {
			return nil, fmt.Errorf("device %s on %s: not a Modbus device (template %s of family %s)", d.ID, link.Name(), t.Name, t.Protocol)
		}
		if set.UnitID < 0 || set.UnitID > 255 {
			return nil, fmt.Errorf("device %s on %s: unit id %d outside 0-255", d.ID, link.Name(), set.UnitID)
		}
		plan, err := Plan(body, cost)
		if err != nil {
			return nil, fmt.Errorf("device %s on %s: template %s: %w", d.ID, link.Name(), t.Name, err)
		}
		var alarms []Request
		if set.AlarmPolled() {
			if alarms, err = AlarmPlan(body, cost); err != nil {
				return nil, fmt.Errorf("device %s on %s: template %s: %w", d.ID, link.Name(), t.Name, err)
			}
		}
		out = append(out, &device{cfg: d, set: set, kind: t.Kind, tmpl: body, unit: byte(set.UnitID), plan: plan, health: bus.NewTracker(link.Station.Health),
			alarmPlan: alarms, link: link.Name(), observed: link.Observed, latest: map[int]stamped{}})
	}
	return out, nil
}

// client executes requests for a unit. The caller holds the link's wire
// lock.
type client interface {
	// read runs a planned read; note, when set, hears every failed try
	// but the last, whose error read returns, and what a try met on the
	// way that did not fail it (*OtherMasterError).
	read(ctx context.Context, unit byte, r Request, a bus.Attempt, note func(error)) ([]byte, error)
	// do runs one exchange of a write with a goburrow client, once: see
	// write.go for why a write is not simply retried. note, when set,
	// hears what the exchange met on the way that did not fail it
	// (*OtherMasterError).
	do(ctx context.Context, unit byte, f func(modbus.Client) error, note func(error)) error
	// retries are the link's extra tries of a failed request.
	retries() int
	// timeout is how long a request waits for its answer.
	timeout() time.Duration
	// damaged is what to check when units answer with damaged frames and
	// none with a whole one, or "" where that says nothing of the link.
	damaged() string
}

func isException(err error) bool {
	var me *modbus.ModbusError
	return errors.As(err, &me)
}

// readRequest runs one planned read through a goburrow client and returns
// the response's data bytes.
func readRequest(c modbus.Client, r Request) ([]byte, error) {
	a, n := uint16(r.Start), uint16(r.Count)
	switch r.Table {
	case mb.Coil:
		return c.ReadCoils(a, n)
	case mb.Discrete:
		return c.ReadDiscreteInputs(a, n)
	case mb.Input:
		return c.ReadInputRegisters(a, n)
	case mb.Holding:
		return c.ReadHoldingRegisters(a, n)
	}
	return nil, fmt.Errorf("unknown table %q", r.Table)
}

// links is what the drivers of both transports share: the line, the
// devices and the client.
type links struct {
	line    *bus.Line
	devices []*device
	byID    map[string]*device
	cl      client
	log     *slog.Logger
}

func newLinks(link drivers.Link, hint string, devs []*device, cl client, log *slog.Logger) links {
	l := links{line: bus.NewLine(link.Name(), hint, units, log), devices: devs, byID: map[string]*device{}, cl: cl, log: log}
	l.line.ForTool = link.Once
	for _, d := range devs {
		l.line.Add(int(d.unit), d.every())
		l.byID[d.cfg.ID] = d
	}
	return l
}

// run polls every device in its own goroutines (the poll, and the alarm
// poll if it has alarm inputs) until ctx ends, and returns when all of
// them have stopped.
func (l *links) run(ctx context.Context, emit drivers.Emit) {
	var wg sync.WaitGroup
	for _, d := range l.devices {
		p := &poller{dev: d, line: l.line, cl: l.cl, emit: emit, log: l.log.With("device", d.cfg.ID), now: time.Now, wake: bus.NewWake()}
		wg.Go(func() { bus.Every(ctx, p.wake, p.poll) })
		if len(d.alarmPlan) > 0 {
			wg.Go(func() { bus.Every(ctx, nil, p.alarmPoll) })
		}
	}
	wg.Wait()
}

// poller polls one device.
type poller struct {
	dev  *device
	line *bus.Line
	cl   client
	emit drivers.Emit
	log  *slog.Logger
	now  func() time.Time
	wake bus.Wake // of the poll, by an alarm poll that hears the device back, or its link answering again
	// readings is read's, reused: a poller runs one poll at a time, and
	// a poll's message takes copies.
	readings []stamped
}

// every is the device's poll interval.
func (d *device) every() time.Duration {
	if d.set.Poll > 0 {
		return d.set.Poll
	}
	return time.Second
}

// alarmEvery is the device's alarm poll interval.
func (d *device) alarmEvery() time.Duration { return d.set.AlarmPoll }

// poll runs the device's plan once, in slot s, emits its telemetry (and
// its health when that changed), and returns the interval to the next
// poll (see bus.Tracker.Next).
func (p *poller) poll(ctx context.Context, s bus.Slot) time.Duration {
	d := p.dev
	d.mu.Lock()
	interval, first := d.health.Next(d.every())
	d.mu.Unlock()
	start := time.Now()
	readings, res := p.read(ctx, s.Due, interval, first)
	res.Skipped = s.Skipped
	if ctx.Err() != nil {
		return interval
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// The message is stamped with the time its alarm inputs were read,
	// the readings whose time matters (an event at the hub takes it);
	// without alarm inputs, with the poll's first answer: every reading is
	// as old as that, or younger, whatever the retries after it took.
	msg := model.Message{Device: d.cfg.ID, DeviceKind: d.kind, Kind: model.KindTelemetry,
		Readings: make([]model.Reading, len(readings))}
	var earliest, alarmAt time.Time
	for i, r := range readings {
		if !r.at.IsZero() && (earliest.IsZero() || r.at.Before(earliest)) {
			earliest = r.at
		}
		msg.Readings[i] = r.Reading
		if d.tmpl.Registers[i].Event == nil {
			continue
		}
		// An alarm input read by the alarm poller while this poll ran is
		// fresher than this poll's reading, which may be from its start
		// (or failed).
		if last, ok := d.latest[i]; ok && last.at.After(r.at) && last.at.After(start) {
			msg.Readings[i], r = last.Reading, last
		} else {
			d.latest[i] = r
		}
		if r.at.After(alarmAt) {
			alarmAt = r.at
		}
	}
	switch {
	case !alarmAt.IsZero():
		msg.Time = alarmAt.UTC()
	case !earliest.IsZero():
		msg.Time = earliest.UTC()
	default:
		msg.Time = p.now().UTC()
	}
	p.emit(msg)
	d.observed(d.cfg.ID, res.RTT)
	now := p.now()
	if h, send := bus.Record(ctx, p.log, &d.health, res, now); send {
		p.emit(model.Message{Device: d.cfg.ID, DeviceKind: d.kind, Kind: model.KindHealth, Time: now.UTC(), Health: &h})
	}
	interval, _ = d.health.Next(d.every())
	p.line.Rest(int(d.unit), &d.health, p.wake)
	return interval
}

// read runs the device's plan once. When a request gets no answer, or the
// link is down, the rest of the plan is not asked: it would only cost more
// timeouts, keep the device's readings waiting, and hold up the other
// devices on the link.
func (p *poller) read(ctx context.Context, due time.Time, interval time.Duration, first bus.Attempt) ([]stamped, bus.Result) {
	d := p.dev
	regs := d.tmpl.Registers
	readings := slices.Grow(p.readings[:0], len(regs))[:len(regs)]
	p.readings = readings
	for i := range regs {
		readings[i] = stamped{Reading: model.Reading{Signal: regs[i].Signal, Unit: regs[i].Unit, Quality: model.Bad}}
	}
	var res bus.Result
	var held time.Duration
	answered, silent, garbled := false, true, false
	refused := 0     // requests refused for a register or function the device lacks
	var heard *Heard // another master a failed request's error names
	for i, r := range d.plan {
		a := bus.Attempt{}
		if i == 0 {
			a = first
		}
		if p.line.Lock.Lock(ctx, bus.Poll) != nil {
			break
		}
		got := time.Now()
		if i == 0 {
			res.Late = p.line.Started(d.cfg.ID, got.Sub(due), interval)
		}
		var damaged error // the first answer of a try that came damaged
		data, err := p.cl.read(ctx, d.unit, r, a, func(err error) {
			counter, _ := errClass(err)
			res.Retried = append(res.Retried, counter)
			if damaged == nil && (counter == "crc_errors" || counter == "frame_errors") {
				damaged = err
			}
		})
		at := time.Now()
		held += at.Sub(got)
		p.line.Held(d.cfg.ID, held, interval)
		p.line.Lock.Unlock()
		if err != nil && ctx.Err() != nil {
			break
		}
		res.Requests++
		if err == nil {
			res.RTT = at.Sub(got)
			answered, silent = true, false
			for _, s := range r.Signals {
				v, derr := DecodeSignal(&regs[s], data, r.Start)
				readings[s].at = at
				if derr != nil {
					res.Counters = append(res.Counters, "decode_errors")
					p.log.Debug("decode failed", "signal", regs[s].Signal, "err", derr)
					continue
				}
				readings[s].Value, readings[s].Quality = v, Quality(&regs[s], v)
			}
			continue
		}
		res.Failed++
		if noSuchRegister(err) {
			refused++
		}
		counter, reason := errClass(err)
		res.LinkDown = res.LinkDown || counter == "link_down"
		res.Counters = append(res.Counters, counter)
		why := err
		if noAnswer(err) && damaged != nil {
			// A try got a damaged answer, the last none: the device is
			// there, and the line damages or loses its frames. A timeout
			// as the reason would read as a wrong unit id, and the device
			// is not silent.
			why = damaged
			counter, reason = errClass(why)
		}
		quiet := noAnswer(why)
		silent = silent && quiet
		garbled = garbled || counter == "frame_errors" || counter == "crc_errors"
		if counter == "exceptions" && !quiet {
			answered = true
		}
		if res.Reason == "" {
			res.Reason = reason
			if !res.LinkDown { // when it is, the port is at fault, not the request
				res.Reason += " reading " + describe(r)
			}
			if counter == "exceptions" {
				res.Reason += ": " + d.signals(r)
			}
		}
		if heard == nil {
			heard = masterOf(why)
		}
		p.log.Debug("request failed", "err", fmt.Errorf("device %s on %s: reading %s: %w", d.cfg.ID, d.link, r, err))
		if quiet || res.LinkDown {
			break
		}
	}
	res.Silent = res.Requests > 0 && silent
	if res.Requests > 0 && refused == res.Requests {
		// A device that has none of what its template reads is most
		// likely another model.
		res.Reason += fmt.Sprintf("; unit %d has no register template %s reads: is %s its model? gateway probe names the templates it reads as", d.unit, d.cfg.Template, d.cfg.Template)
	}
	p.line.Heard(int(d.unit), answered)
	if garbled && !answered && !p.line.Answering() && heard == nil {
		// Asked only then: an RTU bus formats its hint.
		if hint := p.cl.damaged(); hint != "" {
			res.Reason += fmt.Sprintf("; no unit on %s answers with a whole frame: %s", d.link, hint)
		}
	}
	if res.Silent {
		res.Reason = p.line.Silence(ctx, int(d.unit))
	}
	// Last, as what to do first: another master heard on the bus lately
	// explains the failures better than the line's settings or wiring.
	res.Reason += heard.suffix()
	return readings, res
}

// alarmPoll reads the device's alarm inputs once, ahead of normal polls,
// and emits a message with them only when one of them changed (value or
// quality) since the device last reported it: at an alarm interval of
// 100ms, a message per read would flood the queue. A failed alarm poll
// publishes nothing, and is only counted: the normal poll says when the
// device is in trouble. While the device is silent its alarm polls slow
// down, as bus.SilentAlarm says, but never stop.
func (p *poller) alarmPoll(ctx context.Context, s bus.Slot) time.Duration {
	d := p.dev
	every := d.alarmEvery()
	d.mu.Lock()
	asleep := d.health.Silent() > 0
	d.mu.Unlock()
	a, next := bus.Attempt{Once: true}, every
	if asleep {
		a, next = bus.SilentAlarm(every, p.cl.timeout())
	}
	regs := d.tmpl.Registers
	type got struct {
		sig  int
		read stamped
	}
	var fresh []got
	var counters []string
	answered := false
	for i, r := range d.alarmPlan {
		if p.line.Lock.Lock(ctx, bus.AlarmPoll) != nil {
			return next
		}
		if i == 0 && p.line.Started(d.cfg.ID, time.Since(s.Due), every) {
			counters = append(counters, "late_alarm_polls")
		}
		// Tried once, so note hears only what the try met on the way
		// without failing (another master's request).
		data, err := p.cl.read(ctx, d.unit, r, a, counting(&counters))
		at := time.Now()
		p.line.Lock.Unlock()
		if ctx.Err() != nil {
			return next
		}
		if err != nil {
			counter, _ := errClass(err)
			counters = append(counters, counter)
			p.log.Debug("alarm poll failed", "err", fmt.Errorf("device %s on %s: reading %s: %w", d.cfg.ID, d.link, r, err))
			break
		}
		answered = true
		for _, s := range r.Signals {
			v, derr := DecodeSignal(&regs[s], data, r.Start)
			if derr != nil {
				counters = append(counters, "decode_errors")
				continue
			}
			fresh = append(fresh, got{s, stamped{model.Reading{Signal: regs[s].Signal, Unit: regs[s].Unit, Value: v, Quality: Quality(&regs[s], v)}, at}})
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.health.Count(counters...)
	d.health.Add("skipped_alarm_slots", s.Skipped)
	if answered {
		now := p.now()
		if h, send := bus.Heard(ctx, p.log, &d.health, now); send {
			// Back before its inputs are: a press after a replug comes
			// from a device the hub sees online.
			p.emit(model.Message{Device: d.cfg.ID, DeviceKind: d.kind, Kind: model.KindHealth, Time: now.UTC(), Health: &h})
			p.wake.Poll()
		}
	}
	changed := false
	for _, f := range fresh {
		last, ok := d.latest[f.sig]
		if ok && !f.read.at.After(last.at) {
			continue // the poll read it later, and said so
		}
		if !ok || last.Quality != f.read.Quality || !last.Value.Equal(f.read.Value) {
			changed = true
		}
		d.latest[f.sig] = f.read
	}
	if changed {
		msg := model.Message{Device: d.cfg.ID, DeviceKind: d.kind, Kind: model.KindTelemetry, Time: fresh[len(fresh)-1].read.at.UTC()}
		for _, r := range d.alarmPlan {
			for _, s := range r.Signals {
				if last, ok := d.latest[s]; ok {
					msg.Readings = append(msg.Readings, last.Reading)
				}
			}
		}
		p.emit(msg)
	}
	return next
}

// signals lists the signals a request reads, as the template names them.
func (d *device) signals(r Request) string {
	names := make([]string, len(r.Signals))
	for i, s := range r.Signals {
		names[i] = d.tmpl.Registers[s].Signal
	}
	return strings.Join(names, ", ")
}
