// Package modbus is the Modbus driver: RTU on serial buses ("modbus-rtu")
// and TCP endpoints ("modbus-tcp"). Every device on a link gets its own
// poller; the link's wire lock lets one request at a time onto the wire, in
// turn, so devices interleave request by request, and a device that does
// not answer is asked less and less (driver.go) while the link says which
// units answer and whether its polls run late (line.go). Decoding and
// request planning are pure functions of bytes and templates (decode.go,
// plan.go).
package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/goburrow/modbus"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/gateway/model"
)

func init() {
	drivers.Register("modbus-rtu", newRTU)
	drivers.Register("modbus-tcp", newTCP)
}

// device is one polled device with its plan.
type device struct {
	cfg  *configs.Device
	set  *mb.Device   // its Modbus settings
	kind string       // its template's device kind
	tmpl *mb.Template // its register map
	unit byte
	plan []Request
	link string
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
		out = append(out, &device{cfg: d, set: set, kind: t.Kind, tmpl: body, unit: byte(set.UnitID), plan: plan, link: link.Name()})
	}
	return out, nil
}

// reader executes one planned request for a unit. The caller holds the
// link's wire lock.
type reader interface {
	read(ctx context.Context, unit byte, r Request, a attempt) ([]byte, error)
}

// attempt is how hard a request is tried. The zero value is the link's own
// retries and timeout.
type attempt struct {
	once    bool          // one try, no retries
	timeout time.Duration // at most this long to answer, when set
}

// on is how many tries a request gets, and how long each waits, on a link
// with these retries and timeout.
func (a attempt) on(retries int, timeout time.Duration) (int, time.Duration) {
	tries := max(retries, 0) + 1
	if a.once {
		tries = 1
	}
	if a.timeout > 0 {
		timeout = min(timeout, a.timeout)
	}
	return tries, timeout
}

// linkDownError is a link that cannot carry requests at all (port missing,
// endpoint refusing connections): every device on it is offline at once.
type linkDownError struct{ err error }

func (e *linkDownError) Error() string { return e.err.Error() }
func (e *linkDownError) Unwrap() error { return e.err }

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

// runDevices polls every device in its own goroutine until ctx ends, and
// returns when all of them have stopped.
func runDevices(ctx context.Context, w *line, devs []*device, rd reader, emit drivers.Emit, log *slog.Logger) {
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &poller{dev: d, line: w, rd: rd, emit: emit, log: log.With("device", d.cfg.ID), now: time.Now}
			p.run(ctx)
		}()
	}
	wg.Wait()
}

// How an offline device is probed.
const (
	// maxBackoff caps the interval between probes (unless the device's own
	// poll interval is longer).
	maxBackoff = 30 * time.Second
	// probeTimeout is how long a probe waits for an answer (beyond the
	// frames' wire time on a bus) while the backoff grows. Devices answer
	// in milliseconds to tens of them; a slower one is still found by the
	// probes at the cap, which wait the link's full timeout.
	probeTimeout = 200 * time.Millisecond
)

// poller polls one device.
type poller struct {
	dev    *device
	line   *line
	rd     reader
	emit   drivers.Emit
	log    *slog.Logger
	now    func() time.Time
	health tracker
}

// every is the device's poll interval.
func (d *device) every() time.Duration {
	if d.set.Poll > 0 {
		return d.set.Poll
	}
	return time.Second
}

// next says when the next poll is due, as an interval from the last one's
// due time, and how its first request is tried. A device that answered
// nothing at its last poll gets one try: retries ride over a frame lost now
// and then, not over a device that is not there. Once it is offline for
// silence, it is probed: one try of its first request with a short timeout,
// at an interval that doubles from its poll interval up to maxBackoff, where
// probes wait the full timeout. Any answer makes the poll go on with the
// rest of the plan, at the normal rate from then on. A device that answers
// badly (exceptions, CRC errors) keeps its rate: it costs no timeouts, and
// its readings are wanted as soon as it recovers.
func (p *poller) next() (time.Duration, attempt) {
	base, t := p.dev.every(), &p.health
	switch {
	case t.silent == 0:
		return base, attempt{}
	case t.state != model.Offline:
		return base, attempt{once: true}
	}
	limit := max(maxBackoff, base)
	d := base
	for i := offlineAfter; i < t.silent && d < limit; i++ {
		d *= 2
	}
	if d < limit {
		return d, attempt{once: true, timeout: probeTimeout}
	}
	return limit, attempt{once: true}
}

// nextSlot is when the next poll runs: one interval after the last one's
// slot, so that a poll that had to wait does not shift every later one;
// slots missed entirely are skipped, not made up in a burst.
func nextSlot(slot time.Time, interval time.Duration, now time.Time) time.Time {
	slot = slot.Add(interval)
	if behind := now.Sub(slot); behind > interval {
		slot = slot.Add(behind / interval * interval)
	}
	return slot
}

func (p *poller) run(ctx context.Context) {
	interval, first := p.next()
	slot := time.Now()
	due := slot // the slot before skipping: how late a poll is counts from it
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		msg, res := p.poll(ctx, due, interval, first)
		if ctx.Err() != nil {
			return
		}
		p.emit(msg)
		if h, changed := p.health.observe(res); changed {
			level := slog.LevelInfo
			if h.State == model.Offline {
				level = slog.LevelWarn
			}
			p.log.Log(ctx, level, "device health", "state", h.State, "reason", h.Reason)
			p.emit(model.Message{
				Device: p.dev.cfg.ID, DeviceKind: p.dev.kind, Kind: model.KindHealth,
				Time: p.now().UTC(), Health: &h,
			})
		}
		interval, first = p.next()
		due, slot = slot.Add(interval), nextSlot(slot, interval, time.Now())
		timer.Reset(time.Until(slot))
	}
}

// pollResult sums up one poll for the health tracker.
type pollResult struct {
	requests, failed int  // requests made, and how many of them failed
	linkDown         bool // the link could not carry them
	silent           bool // nothing answered any request
	late             bool // the poll started late (see lateness)
	reason           string
	counters         []string // one counter name per failure
}

// poll runs the device's plan once, due at due, and builds its telemetry
// message. When a request gets no answer, or the link is down, the rest of
// the plan is not asked: it would only cost more timeouts, keep the
// device's readings waiting, and hold up the other devices on the link.
func (p *poller) poll(ctx context.Context, due time.Time, interval time.Duration, first attempt) (model.Message, pollResult) {
	d := p.dev
	regs := d.tmpl.Registers
	readings := make([]model.Reading, len(regs))
	for i := range regs {
		readings[i] = model.Reading{Signal: regs[i].Signal, Unit: regs[i].Unit, Quality: model.Bad}
	}
	var res pollResult
	var held time.Duration
	answered, silent := false, true
	for i, r := range d.plan {
		a := attempt{}
		if i == 0 {
			a = first
		}
		p.line.lock.Lock()
		got := time.Now()
		if i == 0 {
			res.late = p.line.started(d.cfg.ID, got.Sub(due), interval)
		}
		data, err := p.rd.read(ctx, d.unit, r, a)
		held += time.Since(got)
		p.line.held(d.cfg.ID, held, interval)
		p.line.lock.Unlock()
		if err != nil && ctx.Err() != nil {
			break
		}
		res.requests++
		if err == nil {
			answered, silent = true, false
			for _, s := range r.Signals {
				v, derr := DecodeSignal(&regs[s], data, r.Start)
				if derr != nil {
					res.counters = append(res.counters, "decode_errors")
					p.log.Debug("decode failed", "signal", regs[s].Signal, "err", derr)
					continue
				}
				readings[s].Value, readings[s].Quality = v, Quality(&regs[s], v)
			}
			continue
		}
		res.failed++
		counter, reason := errClass(err)
		res.linkDown = res.linkDown || counter == "link_down"
		res.counters = append(res.counters, counter)
		quiet := noAnswer(err)
		silent = silent && quiet
		if counter == "exceptions" && !quiet {
			answered = true
		}
		if res.reason == "" {
			res.reason = fmt.Sprintf("%s reading %s", reason, describe(r))
			if counter == "exceptions" {
				res.reason += ": " + d.signals(r)
			}
		}
		p.log.Debug("request failed", "err", fmt.Errorf("device %s on %s: reading %s: %w", d.cfg.ID, d.link, r, err))
		if quiet || res.linkDown {
			break
		}
	}
	res.silent = res.requests > 0 && silent
	p.line.heard(d.unit, answered)
	if res.silent {
		res.reason = p.line.silence(d.unit)
	}
	msg := model.Message{
		Device: d.cfg.ID, DeviceKind: d.kind, Kind: model.KindTelemetry,
		Time: p.now().UTC(), Readings: readings,
	}
	return msg, res
}

// signals lists the signals a request reads, as the template names them.
func (d *device) signals(r Request) string {
	names := make([]string, len(r.Signals))
	for i, s := range r.Signals {
		names[i] = d.tmpl.Registers[s].Signal
	}
	return strings.Join(names, ", ")
}

// offlineAfter is how many polls in a row that got no answer at all make a
// device offline.
const offlineAfter = 3

// tracker follows one device's health. It is pure: observe gets the result
// of each poll and says when the state changed.
type tracker struct {
	state    model.HealthState
	silent   int // polls in a row that got no answer at all
	counters map[string]uint64
}

// observe records a poll and returns the health and whether its state
// changed: online when every request succeeded; offline at once when the
// link is down, or after offlineAfter polls in a row that got no answer;
// degraded otherwise: some requests failed, or values did not decode, or
// the device answered with exceptions or damaged frames only. A device that
// answers is there, and says what is wrong with it.
func (t *tracker) observe(r pollResult) (model.Health, bool) {
	if t.counters == nil {
		t.counters = map[string]uint64{}
	}
	t.counters["polls"]++
	t.counters["requests"] += uint64(r.requests)
	for _, c := range r.counters {
		t.counters[c]++
	}
	if r.late {
		t.counters["late_polls"]++
	}
	if r.failed > 0 {
		t.counters["failures"]++
	}
	state := model.Degraded
	switch {
	case r.linkDown:
		t.silent = 0
		state = model.Offline
	case r.silent:
		t.silent++
		if t.silent >= offlineAfter {
			state = model.Offline
		}
	default:
		t.silent = 0
		if r.failed == 0 && len(r.counters) == 0 {
			state = model.Online
		} else if r.failed == 0 {
			r.reason = "values that do not decode"
		}
	}
	changed := state != t.state
	t.state = state
	return model.Health{State: state, Reason: r.reason, Counters: maps.Clone(t.counters)}, changed
}
