package dcon

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// Set switches an output of a module for a command from the hub, with
// #AA1cdd, and returns once the module confirmed it.
//
// The command is sent once, with the wire at command priority (ahead of
// normal polls). The module's > is the outcome, as is its ?AA (refused) or
// ! (ignored: host watchdog). When no valid answer comes, the output may
// have been switched and its answer lost. Switching an output on twice
// leaves it on, so a second #AA1cdd would do the output no harm; but a
// command must act once, so the driver reads the outputs back first, twice
// alike (see the package comment): when the output is as asked, the
// command acted; when it is not, it certainly did not, and is sent again,
// within the link's retries. When nothing can be learnt, Set says the
// outcome is unknown.
//
// An output the module is not known to have (its $AAM names another model,
// or was not asked yet) is not written, nor is a signal that is an input,
// nor a value that is not a bool.
func (b *Bus) Set(ctx context.Context, device, signal string, v model.Value) error {
	m := b.byID[device]
	if m == nil {
		return fmt.Errorf("no device %s on %s", device, b.line.Name())
	}
	channel := -1
	var outputs []string
	for _, o := range m.tmpl.Outputs {
		outputs = append(outputs, o.Signal)
		if o.Signal == signal {
			channel = o.Channel
		}
	}
	if channel < 0 {
		for _, in := range m.tmpl.Inputs {
			if in.Signal == signal {
				return fmt.Errorf("device %s on %s: %s is an input; only outputs (%s) can be set", device, b.line.Name(), signal, strings.Join(outputs, ", "))
			}
		}
		return fmt.Errorf("device %s on %s: no output %s (outputs: %s)", device, b.line.Name(), signal, strings.Join(outputs, ", "))
	}
	on, ok := v.AsBool()
	if !ok {
		return fmt.Errorf("device %s on %s: output %s takes true or false, not %s", device, b.line.Name(), signal, v)
	}
	fail := func(err error) error {
		return fmt.Errorf("device %s on %s: setting %s (DO%d) to %v: %w", device, b.line.Name(), signal, channel, on, err)
	}
	m.mu.Lock()
	known, wrong := m.known, m.wrong
	m.mu.Unlock()
	if !known {
		if wrong == "" {
			wrong = fmt.Sprintf("module at address %02X has not said it is a %s yet", m.set.Address, m.tmpl.Module)
		}
		return fail(fmt.Errorf("not written: %s", wrong))
	}
	p := &poller{b: b, m: m, log: b.log.With("device", device)}
	holds := func() (bool, error) {
		var r result
		s := p.state(ctx, bus.Command, bus.Attempt{}, &r, true)
		b.count(m, r.counters)
		if s == nil {
			if r.why != nil {
				return false, r.why
			}
			return false, errors.New("read-back not confirmed")
		}
		return s.Out>>channel&1 == 1 == on, nil
	}
	cmd := setOutput(m.set.Address, channel, on)
	uncertain := false
	var last error
	for try := 0; try <= max(b.cfg.Retries, 0); try++ {
		if uncertain {
			done, err := holds()
			switch {
			case ctx.Err() != nil:
				return fail(ctx.Err())
			case err != nil:
				last = err
				continue // still not known
			case done:
				return nil // it acted; its answer was lost
			}
			uncertain = false // it certainly did not act
		}
		if err := b.line.Lock.Lock(ctx, bus.Command); err != nil {
			return fail(err)
		}
		_, err := b.ask(m, cmd, KindWrite, b.timeout())
		b.line.Lock.Unlock()
		var ld *bus.LinkDownError
		var re *RefusedError
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fail(ctx.Err())
		case errors.As(err, &re), errors.Is(err, IgnoredError), errors.As(err, &ld):
			return fail(err)
		}
		b.count(m, []string{classify(err)})
		uncertain, last = true, err
	}
	if uncertain {
		done, err := holds()
		switch {
		case err == nil && done:
			return nil
		case err == nil:
			return fail(fmt.Errorf("not carried out: the output reads back unchanged (last: %v)", last))
		}
	}
	return fail(fmt.Errorf("outcome unknown: neither the command nor a read-back was answered (last: %v)", last))
}

// count adds counters to a module's health.
func (b *Bus) count(m *module, counters []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.health.Count(counters...)
}
