// Package device is one simulated device: its template's register map filled
// with changing signal values, the writes a master made, and counters of what
// it served.
package device

import (
	"context"
	"fmt"
	"maps"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
	"outpost/firmware-sim/enc"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
	"outpost/firmware-sim/slave"
)

type sig struct {
	reg *modbus.Register
	gen *signal.Generator
}

// table is what one Modbus table of the device maps.
type table struct {
	sigs   []sig
	mapped map[int]bool
	lo, hi int // lowest and highest mapped address
}

// Device is one simulated device. It implements slave.Unit and
// slave.Recorder and is safe for concurrent use.
type Device struct {
	id     string
	unit   byte
	gaps   bool
	tables map[modbus.Table]*table
	sink   sim.Sink
	now    func() time.Time

	mu      sync.Mutex
	coils   map[int]bool   // written coils
	holding map[int]uint16 // written holding registers

	polls, served, exceptions, crc, events atomic.Int64

	rules    map[string]*configs.EventRule // signal -> its event rule
	evMu     sync.Mutex
	lastBool map[string]bool // signal -> last value served, for signals with a rule

	fast   map[string]bool  // the fast signals (configs.Signal.Fast)
	inputs *Inputs          // the bool signals, for the testbench's actions
	writes map[string]int64 // signal -> writes carried out; under mu
}

var (
	_ slave.Unit     = (*Device)(nil)
	_ slave.Recorder = (*Device)(nil)
	_ sim.Actor      = (*Device)(nil)
)

// Options tune a device.
type Options struct {
	// Seed makes the values deterministic.
	Seed int64
	// Start is when the signals start; zero means now.
	Start time.Time
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Sink, if set, receives every served reading.
	Sink sim.Sink
}

// New builds device d, a Modbus device, from its template.
func New(d configs.Device, t *configs.Template, o Options) (*Device, error) {
	if t == nil {
		return nil, fmt.Errorf("device %s: no template %q", d.ID, d.Template)
	}
	set, ok := d.Settings.(*modbus.Device)
	body, ok2 := t.Body.(*modbus.Template)
	if !ok || !ok2 {
		return nil, fmt.Errorf("device %s: not a Modbus device", d.ID)
	}
	if set.UnitID < 0 || set.UnitID > 255 {
		return nil, fmt.Errorf("device %s: unit id %d out of range", d.ID, set.UnitID)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Start.IsZero() {
		o.Start = o.Now()
	}
	dev := &Device{
		id:      d.ID,
		unit:    byte(set.UnitID),
		gaps:    body.ReadGaps,
		tables:  map[modbus.Table]*table{},
		sink:    o.Sink,
		now:     o.Now,
		coils:   map[int]bool{},
		holding: map[int]uint16{},

		rules:    map[string]*configs.EventRule{},
		lastBool: map[string]bool{},
		writes:   map[string]int64{},
	}
	var bools []Input
	dev.fast = map[string]bool{}
	for _, sg := range body.Signals() {
		dev.fast[sg.Name] = d.Fast(sg)
	}
	for i := range body.Registers {
		r := &body.Registers[i]
		if r.Event != nil {
			dev.rules[r.Signal] = r.Event
		}
		if r.Type == modbus.TypeBool {
			bools = append(bools, Input{Signal: r.Signal, Event: r.Event})
		}
		sim := configs.Sim{Wave: "constant"}
		if r.Type == modbus.TypeString {
			sim.Wave = "text"
		}
		if r.Sim != nil {
			sim = *r.Sim
		}
		g, err := signal.New(sim, o.Seed, d.ID+"/"+r.Signal, o.Start)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", d.ID, err)
		}
		if r.Span() <= 0 {
			return nil, fmt.Errorf("device %s: signal %s spans no registers", d.ID, r.Signal)
		}
		if _, _, err := enc.Encode(r, g.At(o.Start)); err != nil {
			return nil, fmt.Errorf("device %s: %w", d.ID, err)
		}
		tb := dev.tables[r.Table]
		if tb == nil {
			tb = &table{mapped: map[int]bool{}, lo: r.Address, hi: r.Address}
			dev.tables[r.Table] = tb
		}
		tb.sigs = append(tb.sigs, sig{reg: r, gen: g})
		for a := r.Address; a < r.Address+r.Span(); a++ {
			tb.mapped[a] = true
			tb.lo, tb.hi = min(tb.lo, a), max(tb.hi, a)
		}
	}
	dev.inputs = NewInputs(d.ID, "modbus", bools, o.Sink, o.Now)
	for _, tb := range dev.tables {
		sort.SliceStable(tb.sigs, func(i, j int) bool { return tb.sigs[i].reg.Address < tb.sigs[j].reg.Address })
	}
	return dev, nil
}

// ID is the device id.
func (d *Device) ID() string { return d.id }

// Unit is the device's Modbus unit id.
func (d *Device) Unit() byte { return d.unit }

// Actions lists what the device's bool signals can be made to do (see
// Inputs).
func (d *Device) Actions() []string { return d.inputs.Actions() }

// Act forces one of its bool signals: press a button, open a door.
func (d *Device) Act(ctx context.Context, action string, args map[string]string) error {
	return d.inputs.Act(ctx, action, args)
}

// Close stops what the device's actions left pending.
func (d *Device) Close() { d.inputs.Close() }

// value is a signal's value at t: what an action forced it to, or what its
// simulation says.
func (d *Device) value(s sig, t time.Time) signal.Value {
	if s.reg.Type == modbus.TypeBool {
		if v, ok := d.inputs.Forced(s.reg.Signal); ok {
			return signal.B(v)
		}
	}
	return s.gen.At(t)
}

// Stats returns the device's counters.
func (d *Device) Stats() sim.Stats {
	d.mu.Lock()
	writes := maps.Clone(d.writes)
	d.mu.Unlock()
	return sim.Stats{
		Writes:         writes,
		Polls:          d.polls.Load(),
		ReadingsServed: d.served.Load(),
		Exceptions:     d.exceptions.Load(),
		CRCErrors:      d.crc.Load(),
		EventsServed:   d.events.Load(),
	}
}

// Answered counts an answered request.
func (d *Device) Answered(exc slave.Exception) {
	d.polls.Add(1)
	if exc != 0 {
		d.exceptions.Add(1)
	}
}

// BadFrame counts a damaged frame.
func (d *Device) BadFrame() { d.crc.Add(1) }

// check says whether [addr, addr+qty) of table t may be read or written.
func (d *Device) check(t modbus.Table, addr, qty int) slave.Exception {
	tb := d.tables[t]
	if tb == nil {
		return slave.IllegalAddress
	}
	if d.gaps && addr >= tb.lo && addr+qty-1 <= tb.hi {
		return 0
	}
	return d.checkMapped(t, addr, qty)
}

// commit returns the func that records rs as served.
func (d *Device) commit(rs []sim.Reading) func() {
	if len(rs) == 0 {
		return nil
	}
	return func() {
		d.countEdges(rs)
		d.served.Add(int64(countable(rs, d.fast)))
		if d.sink != nil {
			d.sink.Served(d.id, rs)
		}
	}
}

// countable is how many of rs count as readings served: those of signals
// that are not fast (configs.Signal.Fast). The gateway reads a fast signal
// at its alarm_poll too and publishes what changed: the changes of alarm
// inputs are counted as events.
func countable(rs []sim.Reading, fast map[string]bool) int {
	n := 0
	for _, r := range rs {
		if !fast[r.Signal] {
			n++
		}
	}
	return n
}

// countEdges counts the event edges in served readings.
func (d *Device) countEdges(rs []sim.Reading) {
	d.evMu.Lock()
	defer d.evMu.Unlock()
	for _, r := range rs {
		rule := d.rules[r.Signal]
		if rule == nil {
			continue
		}
		on := r.Value.Truth()
		was, known := d.lastBool[r.Signal]
		d.lastBool[r.Signal] = on
		if on && (!known || !was) || !on && known && was && rule.Clear {
			d.events.Add(1)
		}
	}
}

// ReadBits reads coils or discrete inputs.
func (d *Device) ReadBits(t modbus.Table, addr, qty int) ([]bool, func(), slave.Exception) {
	if exc := d.check(t, addr, qty); exc != 0 {
		return nil, nil, exc
	}
	now := d.now()
	bits := make([]bool, qty)
	var rs []sim.Reading
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.tables[t].sigs {
		a := s.reg.Address
		if a < addr || a >= addr+qty {
			continue
		}
		_, want, err := enc.Encode(s.reg, d.value(s, now))
		if err != nil {
			continue // checked in New
		}
		if t == modbus.Coil {
			if w, ok := d.coils[a]; ok {
				want = signal.B(w)
			}
		}
		bits[a-addr] = want.Bool
		rs = append(rs, sim.Reading{Signal: s.reg.Signal, Value: want})
	}
	return bits, d.commit(rs), 0
}

// ReadWords reads holding or input registers.
func (d *Device) ReadWords(t modbus.Table, addr, qty int) ([]uint16, func(), slave.Exception) {
	if exc := d.check(t, addr, qty); exc != 0 {
		return nil, nil, exc
	}
	now := d.now()
	words := make([]uint16, qty)
	type whole struct {
		reg  *modbus.Register
		want signal.Value
	}
	var full []whole
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, s := range d.tables[t].sigs {
		a, n := s.reg.Address, s.reg.Span()
		if a+n <= addr || a >= addr+qty {
			continue
		}
		ws, want, err := enc.Encode(s.reg, d.value(s, now))
		if err != nil {
			continue // checked in New
		}
		for i, w := range ws {
			if j := a + i - addr; j >= 0 && j < qty {
				words[j] |= w
			}
		}
		if a >= addr && a+n <= addr+qty {
			full = append(full, whole{s.reg, want})
		}
	}
	written := false
	if t == modbus.Holding {
		for j := range words {
			if w, ok := d.holding[addr+j]; ok {
				words[j], written = w, true
			}
		}
	}
	rs := make([]sim.Reading, 0, len(full))
	for _, f := range full {
		if written {
			// A master wrote some of these registers: the value is what
			// they now hold.
			a := f.reg.Address - addr
			if v, err := enc.Decode(f.reg, words[a:a+f.reg.Span()]); err == nil {
				f.want = v
			}
		}
		rs = append(rs, sim.Reading{Signal: f.reg.Signal, Value: f.want})
	}
	return words, d.commit(rs), 0
}

// WriteBits writes coils; they read back as written from then on.
func (d *Device) WriteBits(addr int, bits []bool) slave.Exception {
	if exc := d.checkMapped(modbus.Coil, addr, len(bits)); exc != 0 {
		return exc
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, b := range bits {
		d.coils[addr+i] = b
	}
	d.countWrites(modbus.Coil, addr, len(bits))
	return 0
}

// countWrites counts a write of [addr, addr+n) of table t for every
// signal it touched. The caller holds d.mu.
func (d *Device) countWrites(t modbus.Table, addr, n int) {
	for _, s := range d.tables[t].sigs {
		a := s.reg.Address
		if a < addr+n && a+s.reg.Span() > addr {
			d.writes[s.reg.Signal]++
		}
	}
}

// WriteWords writes holding registers; they read back as written from then
// on.
func (d *Device) WriteWords(addr int, words []uint16) slave.Exception {
	if exc := d.checkMapped(modbus.Holding, addr, len(words)); exc != 0 {
		return exc
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, w := range words {
		d.holding[addr+i] = w
	}
	d.countWrites(modbus.Holding, addr, len(words))
	return 0
}

// checkMapped says whether every address of [addr, addr+qty) is mapped:
// writes never reach gaps, and reads do only where the template allows.
func (d *Device) checkMapped(t modbus.Table, addr, qty int) slave.Exception {
	tb := d.tables[t]
	if tb == nil {
		return slave.IllegalAddress
	}
	for a := addr; a < addr+qty; a++ {
		if !tb.mapped[a] {
			return slave.IllegalAddress
		}
	}
	return 0
}
