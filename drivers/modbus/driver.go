// Package modbus is the Modbus driver: RTU on serial buses ("modbus-rtu")
// and TCP endpoints ("modbus-tcp"). Every device on a link gets its own
// poller; the link's lock lets one request at a time onto the wire, so
// devices interleave request by request. Decoding and request planning are
// pure functions of bytes and templates (decode.go, plan.go).
package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"time"

	"github.com/goburrow/modbus"

	"outpost/configs"
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
	tmpl *configs.Template
	unit byte
	plan []Request
	link string
}

func buildDevices(link drivers.Link, cost Cost) ([]*device, error) {
	var out []*device
	for _, d := range link.Devices {
		var t *configs.Template
		if link.Station != nil {
			t = link.Station.Templates[d.Template]
		}
		if t == nil {
			return nil, fmt.Errorf("device %s on %s: template %q not loaded", d.ID, link.Name(), d.Template)
		}
		if d.UnitID < 0 || d.UnitID > 255 {
			return nil, fmt.Errorf("device %s on %s: unit id %d outside 0-255", d.ID, link.Name(), d.UnitID)
		}
		plan, err := Plan(t, cost)
		if err != nil {
			return nil, fmt.Errorf("device %s on %s: template %s: %w", d.ID, link.Name(), t.Name, err)
		}
		out = append(out, &device{cfg: d, tmpl: t, unit: byte(d.UnitID), plan: plan, link: link.Name()})
	}
	return out, nil
}

// reader executes one planned request for a unit under its link's lock.
type reader interface {
	read(ctx context.Context, unit byte, r Request) ([]byte, error)
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
	case configs.Coil:
		return c.ReadCoils(a, n)
	case configs.Discrete:
		return c.ReadDiscreteInputs(a, n)
	case configs.Input:
		return c.ReadInputRegisters(a, n)
	case configs.Holding:
		return c.ReadHoldingRegisters(a, n)
	}
	return nil, fmt.Errorf("unknown table %q", r.Table)
}

// runDevices polls every device in its own goroutine until ctx ends, and
// returns when all of them have stopped.
func runDevices(ctx context.Context, devs []*device, rd reader, emit drivers.Emit, log *slog.Logger) {
	var wg sync.WaitGroup
	for _, d := range devs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &poller{dev: d, rd: rd, emit: emit, log: log.With("device", d.cfg.ID), now: time.Now}
			p.run(ctx)
		}()
	}
	wg.Wait()
}

// Backoff of a failing device.
const (
	maxBackoff = 30 * time.Second
)

// poller polls one device.
type poller struct {
	dev    *device
	rd     reader
	emit   drivers.Emit
	log    *slog.Logger
	now    func() time.Time
	health tracker
}

func (p *poller) interval() time.Duration {
	base := p.dev.cfg.Poll
	if base <= 0 {
		base = time.Second
	}
	if p.health.linkDown {
		// Nothing reaches the wire while the link is down; the link's own
		// reopen backoff paces the attempts, and the device is read as
		// soon as the link is back.
		return base
	}
	d := base
	for i := 1; i < p.health.failedPolls && d < maxBackoff; i++ {
		d *= 2
	}
	return min(d, max(maxBackoff, base))
}

func (p *poller) run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		msg, res := p.poll(ctx)
		if ctx.Err() != nil {
			return
		}
		p.emit(msg)
		if h, changed := p.health.observe(res); changed {
			p.log.Info("device health", "state", h.State, "reason", h.Reason)
			p.emit(model.Message{
				Device: p.dev.cfg.ID, DeviceKind: p.dev.tmpl.Kind, Kind: model.KindHealth,
				Time: p.now().UTC(), Health: &h,
			})
		}
		timer.Reset(max(0, p.interval()-time.Since(start)))
	}
}

// pollResult sums up one poll for the health tracker.
type pollResult struct {
	requests, failed int
	linkDown         bool
	reason           string   // of the first failure
	counters         []string // one counter name per failure
}

// poll runs the device's plan once and builds its telemetry message.
func (p *poller) poll(ctx context.Context) (model.Message, pollResult) {
	d := p.dev
	regs := d.tmpl.Registers
	readings := make([]model.Reading, len(regs))
	for i := range regs {
		readings[i] = model.Reading{Signal: regs[i].Signal, Unit: regs[i].Unit, Quality: model.Bad}
	}
	res := pollResult{requests: len(d.plan)}
	for _, r := range d.plan {
		data, err := p.rd.read(ctx, d.unit, r)
		if err == nil {
			for _, i := range r.Signals {
				v, derr := DecodeSignal(&regs[i], data, r.Start)
				if derr != nil {
					res.counters = append(res.counters, "decode_errors")
					p.log.Debug("decode failed", "signal", regs[i].Signal, "err", derr)
					continue
				}
				readings[i].Value, readings[i].Quality = v, model.Good
			}
			continue
		}
		if ctx.Err() != nil {
			break
		}
		res.failed++
		counter, reason := errClass(err)
		res.linkDown = res.linkDown || counter == "link_down"
		res.counters = append(res.counters, counter)
		if res.reason == "" {
			res.reason = fmt.Sprintf("%s reading %s", reason, r)
		}
		p.log.Debug("request failed", "err", fmt.Errorf("device %s on %s: reading %s: %w", d.cfg.ID, d.link, r, err))
	}
	msg := model.Message{
		Device: d.cfg.ID, DeviceKind: d.tmpl.Kind, Kind: model.KindTelemetry,
		Time: p.now().UTC(), Readings: readings,
	}
	return msg, res
}

// offlineAfter is how many failed polls in a row make a device offline.
const offlineAfter = 3

// tracker follows one device's health. It is pure: observe gets the result
// of each poll and says when the state changed.
type tracker struct {
	state       model.HealthState
	failedPolls int  // in a row
	linkDown    bool // the last poll failed for the link
	counters    map[string]uint64
}

// observe records a poll and returns the health and whether its state
// changed: online when every request succeeded, degraded when some failed
// or a whole poll failed fewer than offlineAfter times in a row, offline
// after offlineAfter failed polls in a row or at once when the link is down.
func (t *tracker) observe(r pollResult) (model.Health, bool) {
	if t.counters == nil {
		t.counters = map[string]uint64{}
	}
	t.counters["polls"]++
	t.linkDown = r.linkDown
	t.counters["requests"] += uint64(r.requests)
	for _, c := range r.counters {
		t.counters[c]++
	}
	var state model.HealthState
	switch {
	case r.failed == 0:
		t.failedPolls = 0
		state = model.Online
	case r.failed < r.requests:
		t.failedPolls = 0
		t.counters["failures"]++
		state = model.Degraded
	default:
		t.failedPolls++
		t.counters["failures"]++
		state = model.Degraded
		if r.linkDown || t.failedPolls >= offlineAfter {
			state = model.Offline
		}
	}
	if r.failed == 0 && len(r.counters) > 0 {
		// Every request answered but some values did not decode.
		state = model.Degraded
		r.reason = "values that do not decode"
	}
	changed := state != t.state
	t.state = state
	return model.Health{State: state, Reason: r.reason, Counters: maps.Clone(t.counters)}, changed
}
