// Package device is one simulated device: its template's register map filled
// with changing signal values, the writes a master made, and counters of what
// it served.
package device

import (
	"fmt"
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
}

var (
	_ slave.Unit     = (*Device)(nil)
	_ slave.Recorder = (*Device)(nil)
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
	}
	for i := range body.Registers {
		r := &body.Registers[i]
		if r.Event != nil {
			dev.rules[r.Signal] = r.Event
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
	for _, tb := range dev.tables {
		sort.SliceStable(tb.sigs, func(i, j int) bool { return tb.sigs[i].reg.Address < tb.sigs[j].reg.Address })
	}
	return dev, nil
}

// ID is the device id.
func (d *Device) ID() string { return d.id }

// Unit is the device's Modbus unit id.
func (d *Device) Unit() byte { return d.unit }

// Stats returns the device's counters.
func (d *Device) Stats() sim.Stats {
	return sim.Stats{
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
		d.served.Add(int64(len(rs)))
		if d.sink != nil {
			d.sink.Served(d.id, rs)
		}
	}
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
		_, want, err := enc.Encode(s.reg, s.gen.At(now))
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
		ws, want, err := enc.Encode(s.reg, s.gen.At(now))
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
	return 0
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
