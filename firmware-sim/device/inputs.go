package device

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"outpost/configs"
	"outpost/firmware-sim/sim"
)

// Inputs are the bool signals of a simulated device that a person (or the
// testbench) can act on: a panic button pressed and let go, a door opened,
// a cover pried off. It implements the press, hold, release, tamper and
// set actions of sim.Actor for a device of any protocol, and logs every
// alarm an input raises to the sink, with the moment the input changed.
// An input with no action taken follows whatever the device's own
// simulation says (Forced reports false).
type Inputs struct {
	device string
	source string // how the alarms travel, for sim.Raised
	sink   sim.Sink
	now    func() time.Time
	rules  map[string]*configs.EventRule // signal -> its event rule, if any
	names  []string                      // the bool signals, in template order
	button string                        // the default signal of press, hold, release
	tamper string                        // the signal with a tamper rule, if any

	mu      sync.Mutex
	forced  map[string]bool
	release map[string]*time.Timer // pending ends of presses
	closed  bool
	watch   func(signal string, v bool)
}

// Input is a bool signal of a template, with its event rule if it has one.
type Input struct {
	Signal string
	Event  *configs.EventRule
}

// NewInputs makes the inputs of a device. The default signal of press,
// hold and release is the first with a panic rule, else the first with any
// rule, else the first.
func NewInputs(device, source string, inputs []Input, s sim.Sink, now func() time.Time) *Inputs {
	if now == nil {
		now = time.Now
	}
	in := &Inputs{device: device, source: source, sink: s, now: now, rules: map[string]*configs.EventRule{},
		forced: map[string]bool{}, release: map[string]*time.Timer{}}
	for _, i := range inputs {
		in.names = append(in.names, i.Signal)
		if i.Event == nil {
			continue
		}
		in.rules[i.Signal] = i.Event
		switch {
		case i.Event.Kind == "panic" && (in.button == "" || in.rules[in.button].Kind != "panic"):
			in.button = i.Signal
		case in.button == "":
			in.button = i.Signal
		}
		if i.Event.Kind == "tamper" && in.tamper == "" {
			in.tamper = i.Signal
		}
	}
	if in.button == "" && len(in.names) > 0 {
		in.button = in.names[0]
	}
	return in
}

// Watch has f called with every value an action gives a signal, at once
// and in order (a module's latch, say). f must not call the inputs.
func (in *Inputs) Watch(f func(signal string, v bool)) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.watch = f
}

// Forced is the value an action gave a signal, if one did.
func (in *Inputs) Forced(signal string) (v, ok bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	v, ok = in.forced[signal]
	return v, ok
}

// Actions lists what the inputs can be asked to do.
func (in *Inputs) Actions() []string {
	if len(in.names) == 0 {
		return nil
	}
	sigs := strings.Join(in.names, "|")
	out := []string{
		fmt.Sprintf("press [signal=%s] [hold=300ms] [wait=false] (on, then off after hold; with wait, done once off)", in.button),
		fmt.Sprintf("hold [signal=%s] (on until release)", in.button),
		fmt.Sprintf("release [signal=%s]", in.button),
	}
	if in.tamper != "" {
		out = append(out, fmt.Sprintf("tamper (%s on until release signal=%s)", in.tamper, in.tamper))
	}
	return append(out, fmt.Sprintf("set signal=%s value=true|false", sigs))
}

// Act does one of the actions. A press returns once the input is on (with
// wait, once it is off again); it goes off by itself after hold.
func (in *Inputs) Act(ctx context.Context, action string, args map[string]string) error {
	sig := args["signal"]
	if sig == "" {
		sig = in.button
	}
	if !slices.Contains(in.names, sig) {
		return fmt.Errorf("no input %q (have %s)", sig, strings.Join(in.names, ", "))
	}
	switch action {
	case "press":
		hold := 300 * time.Millisecond
		if h, ok := args["hold"]; ok {
			d, err := time.ParseDuration(h)
			if err != nil || d <= 0 {
				return fmt.Errorf("hold=%s: want a duration such as 300ms", h)
			}
			hold = d
		}
		wait := false
		if w, ok := args["wait"]; ok {
			b, err := strconv.ParseBool(w)
			if err != nil {
				return fmt.Errorf("wait=%s: want true or false", w)
			}
			wait = b
		}
		in.set(sig, true)
		off := make(chan struct{})
		in.mu.Lock()
		if t := in.release[sig]; t != nil {
			t.Stop()
		}
		closed := in.closed
		if !closed {
			in.release[sig] = time.AfterFunc(hold, func() { in.set(sig, false); close(off) })
		}
		in.mu.Unlock()
		if !wait || closed {
			return nil
		}
		select {
		case <-off:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case "hold":
		in.cancel(sig)
		in.set(sig, true)
		return nil
	case "release":
		in.cancel(sig)
		in.set(sig, false)
		return nil
	case "tamper":
		if in.tamper == "" {
			return fmt.Errorf("the device has no tamper input")
		}
		in.cancel(in.tamper)
		in.set(in.tamper, true)
		return nil
	case "set":
		v, err := strconv.ParseBool(args["value"])
		if err != nil {
			return fmt.Errorf("value=%q: want true or false", args["value"])
		}
		in.cancel(sig)
		in.set(sig, v)
		return nil
	}
	return fmt.Errorf("unknown action %q (want one of: %s)", action, strings.Join(in.Actions(), "; "))
}

// cancel stops a pending end of a press.
func (in *Inputs) cancel(sig string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if t := in.release[sig]; t != nil {
		t.Stop()
		delete(in.release, sig)
	}
}

// set forces a signal's value and logs the alarm it raises, if any: its
// rule's kind, active when it turns on, cleared when it turns off again
// and the rule clears.
func (in *Inputs) set(sig string, v bool) {
	// The alarm is logged under the lock, so that the log has the order
	// of the changes.
	in.mu.Lock()
	defer in.mu.Unlock()
	was, known := in.forced[sig]
	in.forced[sig] = v
	if in.watch != nil {
		in.watch(sig, v)
	}
	at := in.now()
	rule := in.rules[sig]
	if rule == nil || in.sink == nil || (known && was == v) {
		return
	}
	switch {
	case v:
		in.sink.Raised(sim.Raised{Device: in.device, Kind: rule.Kind, State: "active", At: at.UTC(), Source: in.source})
	case known && rule.Clear:
		in.sink.Raised(sim.Raised{Device: in.device, Kind: rule.Kind, State: "cleared", At: at.UTC(), Source: in.source})
	}
}

// Close stops the pending ends of presses: nothing changes after it.
func (in *Inputs) Close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closed = true
	for _, t := range in.release {
		t.Stop()
	}
}
