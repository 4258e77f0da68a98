package line

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	cl "outpost/configs/line"
	"outpost/firmware-sim/device"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// Device is one simulated line device. It is safe for concurrent use.
type Device struct {
	id     string
	tmpl   *cl.Template
	cmd    []byte // the poll command it answers; nil when it talks on its own
	kinds  [][]cl.Part
	gens   map[string]*signal.Generator // by signal
	inputs *device.Inputs
	sink   sim.Sink
	poke   chan struct{} // an input changed by an action: send the event lines now

	mu     sync.Mutex
	faults []*fault          // damage for the next answers of a polled device
	last   map[string]bool   // signal with an event rule -> value last served, for edges
	sent   map[string]string // bool signal -> text in the last line sent, for on_change
	rng    *rand.Rand

	polls, served, events, badCommands atomic.Int64
}

var (
	_ sim.Device = (*Device)(nil)
	_ sim.Actor  = (*Device)(nil)
)

// newDevice builds device d from its template.
func newDevice(d *configs.Device, t *configs.Template, o sim.Options) (*Device, error) {
	if t == nil {
		return nil, fmt.Errorf("device %s: no template %q", d.ID, d.Template)
	}
	set, ok := d.Settings.(*cl.Device)
	body, ok2 := t.Body.(*cl.Template)
	if !ok || !ok2 {
		return nil, fmt.Errorf("device %s: not a line device", d.ID)
	}
	dev := &Device{id: d.ID, tmpl: body, gens: map[string]*signal.Generator{}, sink: o.Sink, poke: make(chan struct{}, 1),
		last: map[string]bool{}, sent: map[string]string{}, rng: rand.New(rand.NewPCG(uint64(o.Seed), uint64(len(d.ID))))}
	if body.Poll != nil {
		addr := 0
		if set.Address != nil {
			addr = *set.Address
		}
		cmd, err := command(body, addr)
		if err != nil {
			return nil, fmt.Errorf("device %s: poll command: %w", d.ID, err)
		}
		dev.cmd = cmd
	}
	for _, l := range body.Lines {
		parts, err := cl.Parts(l.Format)
		if err != nil {
			return nil, fmt.Errorf("device %s: line %s: %w", d.ID, l.Name, err)
		}
		dev.kinds = append(dev.kinds, parts)
	}
	var ins []device.Input
	for _, s := range body.SignalDefs {
		if s.Type == cl.Bool {
			ins = append(ins, device.Input{Signal: s.Signal, Event: s.Event})
		}
		if s.Sim == nil {
			continue
		}
		g, err := signal.New(*s.Sim, o.Seed, d.ID+"/"+s.Signal, o.Start)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.ID, err)
		}
		dev.gens[s.Signal] = g
	}
	dev.inputs = device.NewInputs(d.ID, cl.Protocol, ins, o.Sink, nil)
	return dev, nil
}

// damagedCommand says whether cmd is the device's poll command with a
// checksum that fails: the same but for the checksum's digits.
func (d *Device) damagedCommand(cmd []byte) bool {
	p := d.tmpl.Poll
	if p == nil || !p.Checksum || len(cmd) != len(d.cmd) {
		return false
	}
	n, end := d.tmpl.Checksum.Type.Digits(), len(d.tmpl.Terminator())
	at := len(cmd) - end - n
	return at >= 0 && string(cmd[:at]) == string(d.cmd[:at]) && string(cmd[len(cmd)-end:]) == string(d.cmd[len(cmd)-end:])
}

// ID is the device's id.
func (d *Device) ID() string { return d.id }

// Stats returns the device's counters: Polls counts poll commands
// answered, CRCErrors poll commands to it whose checksum failed.
func (d *Device) Stats() sim.Stats {
	return sim.Stats{Polls: d.polls.Load(), ReadingsServed: d.served.Load(), EventsServed: d.events.Load(),
		CRCErrors: d.badCommands.Load()}
}

// Damage a device can be asked to send (see Act).
const (
	garbage     = "garbage"
	truncate    = "truncate"
	badChecksum = "bad_checksum"
	tooLong     = "too_long"
)

// fault is damage for a polled device's next answer; done is closed once
// it was sent.
type fault struct {
	kind string
	done chan struct{}
}

// Actions lists what the device can be made to do: its bool inputs'
// actions, and damage on the line.
func (d *Device) Actions() []string {
	return append(d.inputs.Actions(),
		"garbage [bytes=12] (bytes that are no line, then the line's end)",
		"truncate (a line cut short, then a whole one right after)",
		"bad_checksum (a line whose checksum is wrong)",
		"too_long (a line longer than the template's max_length)")
}

// Act does one of its actions. Damage goes out at once from a device
// that talks on its own, and with the next answer of a polled one: Act
// returns once it was sent.
func (d *Device) Act(ctx context.Context, action string, args map[string]string) error {
	switch action {
	case garbage, truncate, badChecksum, tooLong:
	default:
		if err := d.inputs.Act(ctx, action, args); err != nil {
			return err
		}
		select {
		case d.poke <- struct{}{}:
		default:
		}
		return nil
	}
	if action == badChecksum && d.tmpl.Checksum.Type.Digits() == 0 {
		return fmt.Errorf("bad_checksum: template %s has no checksum", d.id)
	}
	f := &fault{kind: action, done: make(chan struct{})}
	if action == garbage {
		if b, ok := args["bytes"]; ok {
			n, err := strconv.Atoi(b)
			if err != nil || n < 1 || n > 4096 {
				return fmt.Errorf("bytes=%s: want a count of bytes, 1 to 4096", b)
			}
			f.kind = fmt.Sprintf("%s:%d", garbage, n)
		}
	}
	d.mu.Lock()
	d.faults = append(d.faults, f)
	d.mu.Unlock()
	select {
	case d.poke <- struct{}{}:
	default:
	}
	select {
	case <-f.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// nextFault takes the damage to send next, if any.
func (d *Device) nextFault() *fault {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.faults) == 0 {
		return nil
	}
	f := d.faults[0]
	d.faults = d.faults[1:]
	return f
}

// out is what goes on the wire for one line: its bytes, and what it
// serves once it went out whole (nil for damage).
type out struct {
	bytes []byte
	line  *served
}

// served is a line's readings a master reads, to be counted once sent.
type served struct {
	readings []sim.Reading
	bools    map[string]string // bool signal -> text sent
}

// line writes a line of kind k with the device's values at now.
func (d *Device) line(k int, now time.Time) (string, *served) {
	l := &d.tmpl.Lines[k]
	var b strings.Builder
	s := &served{bools: map[string]string{}}
	for _, p := range d.kinds[k] {
		if p.Field == "" {
			b.WriteString(p.Text)
			continue
		}
		sg, hemi := d.signalOf(p.Field, l)
		if sg == nil {
			continue // the template's check makes it impossible
		}
		w := d.write(sg, p.Spec, now)
		if hemi {
			v, _ := d.value(sg, now)
			if v.Num < 0 {
				b.WriteString(sg.Hemisphere.Negative)
			} else {
				b.WriteString(sg.Hemisphere.Positive)
			}
			continue
		}
		b.WriteString(w.text)
		if sg.Reads(l) && w.has {
			s.readings = append(s.readings, sim.Reading{Signal: sg.Signal, Value: w.value})
		}
		if sg.Type == cl.Bool && sg.Reads(l) {
			s.bools[sg.Signal] = w.text
		}
	}
	return b.String(), s
}

// signalOf is the signal whose value goes in a field of line l: the one
// that reads it from l, else any with that field; hemi says the field is
// the signal's hemisphere.
func (d *Device) signalOf(field string, l *cl.Line) (*cl.Signal, bool) {
	var any *cl.Signal
	anyHemi := false
	for i := range d.tmpl.SignalDefs {
		s := &d.tmpl.SignalDefs[i]
		hemi := s.Hemisphere != nil && s.Hemisphere.Field == field
		if s.Field != field && !hemi {
			continue
		}
		if s.Reads(l) {
			return s, hemi
		}
		if any == nil {
			any, anyHemi = s, hemi
		}
	}
	return any, anyHemi
}

// value is a signal's value now: what an action forced a bool to, or
// what its sim says (false, 0 or "" without one).
func (d *Device) value(s *cl.Signal, now time.Time) (signal.Value, bool) {
	if s.Type == cl.Bool {
		if v, ok := d.inputs.Forced(s.Signal); ok {
			return signal.B(v), true
		}
	}
	g := d.gens[s.Signal]
	if g == nil {
		switch s.Type {
		case cl.Bool:
			return signal.B(false), false
		case cl.String:
			return signal.Str(""), false
		}
		return signal.Num(0), false
	}
	return g.At(now), true
}

// write writes a signal's value now into its field.
func (d *Device) write(s *cl.Signal, sp cl.Spec, now time.Time) written {
	v, _ := d.value(s, now)
	switch s.Type {
	case cl.Bool:
		return boolean(s, v.Truth())
	case cl.String:
		if v.Kind == signal.Text {
			return text(v.Text)
		}
		return text(v.String())
	}
	return number(s, v.Float(), sp)
}

// changed says which on_change lines are due: one of the bool signals
// they carry differs from what the last line sent said.
func (d *Device) changed(now time.Time) []int {
	var due []int
	for k := range d.tmpl.Lines {
		l := &d.tmpl.Lines[k]
		if !l.OnChange {
			continue
		}
		for i := range d.tmpl.SignalDefs {
			s := &d.tmpl.SignalDefs[i]
			if s.Type != cl.Bool || !s.Reads(l) {
				continue
			}
			v, _ := d.value(s, now)
			w := boolean(s, v.Truth())
			d.mu.Lock()
			sent, ok := d.sent[s.Signal]
			d.mu.Unlock()
			if !ok || sent != w.text {
				due = append(due, k)
				break
			}
		}
	}
	return due
}

// prime takes the bools that the periodic lines carry as sent: those
// lines say them, and an event line is for a change. A bool only event
// lines carry goes out in one at the start.
func (d *Device) prime(now time.Time) {
	for i := range d.tmpl.SignalDefs {
		s := &d.tmpl.SignalDefs[i]
		if s.Type != cl.Bool || !slices.ContainsFunc(d.tmpl.Lines, func(l cl.Line) bool { return l.Every > 0 && s.Reads(&l) }) {
			continue
		}
		v, _ := d.value(s, now)
		d.mu.Lock()
		d.sent[s.Signal] = boolean(s, v.Truth()).text
		d.mu.Unlock()
	}
}

// damaged is a line of kind k as fault f says, followed (for a line cut
// short) by the whole line.
func (d *Device) damaged(f *fault, k int, now time.Time, rng *rand.Rand) []out {
	t := d.tmpl
	body, s := d.line(k, now)
	whole := frame(t, seal(t, body))
	kind, arg, _ := strings.Cut(f.kind, ":")
	switch kind {
	case garbage:
		n := 12
		if arg != "" {
			n, _ = strconv.Atoi(arg)
		}
		junk := make([]byte, 0, n+len(t.Framing.End))
		for len(junk) < n {
			c := byte(0x21 + rng.IntN(0x5E)) // printable, never a start or an end
			if !strings.ContainsRune(t.Framing.Start+t.Framing.End, rune(c)) {
				junk = append(junk, c)
			}
		}
		return []out{{bytes: append(junk, t.Framing.End...)}}
	case truncate:
		cut := whole[:max(len(t.Framing.Start)+1, len(whole)/2)]
		return []out{{bytes: cut}, {bytes: whole, line: s}}
	case badChecksum:
		sealed := []byte(seal(t, body))
		i := len(sealed) - 1 // the last digit, changed to another hex digit
		if sealed[i] == '0' {
			sealed[i] = '1'
		} else {
			sealed[i] = '0'
		}
		return []out{{bytes: frame(t, string(sealed))}}
	case tooLong:
		long := strings.Repeat("X", t.Framing.MaxLength+8)
		return []out{{bytes: frame(t, long)}}
	}
	return []out{{bytes: whole, line: s}}
}

// serve counts a line that went out whole: its readings, the edges of its
// signals with an event rule a master reading every line saw, and what
// its bools said; and tells the sink.
func (d *Device) serve(s *served) {
	if s == nil {
		return
	}
	d.mu.Lock()
	for _, r := range s.readings {
		sg := d.signal(r.Signal)
		if sg == nil || sg.Event == nil || r.Value.Kind != signal.Bool {
			continue
		}
		on := r.Value.Bool
		was, known := d.last[r.Signal]
		d.last[r.Signal] = on
		if on && (!known || !was) || !on && known && was && sg.Event.Clear {
			d.events.Add(1)
		}
	}
	maps.Copy(d.sent, s.bools)
	d.mu.Unlock()
	d.served.Add(int64(len(s.readings)))
	if d.sink != nil && len(s.readings) > 0 {
		d.sink.Served(d.id, s.readings)
	}
}

func (d *Device) signal(name string) *cl.Signal {
	i := slices.IndexFunc(d.tmpl.SignalDefs, func(s cl.Signal) bool { return s.Signal == name })
	if i < 0 {
		return nil
	}
	return &d.tmpl.SignalDefs[i]
}

// flaky damages or loses a line, as a failing transceiver does, when the
// dice say so for the share asked: half of those are lost, half have a
// byte flipped.
func (d *Device) flaky(share float64, o out) (out, bool) {
	if share <= 0 || o.line == nil {
		return o, true
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.rng.Float64() >= share {
		return o, true
	}
	if d.rng.IntN(2) == 0 {
		return out{}, false
	}
	b := slices.Clone(o.bytes)
	b[d.rng.IntN(len(b))] ^= 1 << d.rng.IntN(7)
	return out{bytes: b}, true
}
