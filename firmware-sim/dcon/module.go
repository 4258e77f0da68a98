package dcon

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"outpost/configs"
	dc "outpost/configs/dcon"
	"outpost/firmware-sim/device"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// Module is one simulated DCON module. It is safe for concurrent use.
type Module struct {
	id       string
	addr     int
	checksum bool
	tmpl     *dc.Template
	fast     bool // its signals are fast (configs.Signal.Fast)
	baudCode string
	sink     sim.Sink
	inputs   *device.Inputs
	inByte   [2]int // data byte of inputs 0-7 and 8-15, -1 if none
	outByte  [2]int

	mu     sync.Mutex
	out    uint16           // the outputs' state
	latch  [2]uint16        // inputs low ([0]) and high ([1]) since $AAC, of a module that latches
	shown  map[string]bool  // inputs an answer showed active since $AAC (see serveLatch)
	garble garble           // damage to the next answers to $AA6
	writes map[string]int64 // signal -> writes carried out
	last   map[string]bool  // input -> value last served, for edges

	polls, served, checksumErrors, invalid, events atomic.Int64
}

var (
	_ sim.Device = (*Module)(nil)
	_ sim.Actor  = (*Module)(nil)
)

// baudCodes are the codes of $AA2's answer (ADAM-4000 manual, table of
// baud rate codes).
var baudCodes = map[int]string{1200: "03", 2400: "04", 4800: "05", 9600: "06", 19200: "07", 38400: "08", 57600: "09", 115200: "0A"}

// NewModule builds module d from its template.
func NewModule(d *configs.Device, t *configs.Template, baud int, s sim.Sink) (*Module, error) {
	if t == nil {
		return nil, fmt.Errorf("device %s: no template %q", d.ID, d.Template)
	}
	set, ok := d.Settings.(*dc.Device)
	body, ok2 := t.Body.(*dc.Template)
	if !ok || !ok2 {
		return nil, fmt.Errorf("device %s: not a DCON module", d.ID)
	}
	m := &Module{id: d.ID, addr: set.Address, checksum: set.Checksum, tmpl: body, baudCode: baudCodes[baud], sink: s,
		writes: map[string]int64{}, last: map[string]bool{}, shown: map[string]bool{}}
	if m.baudCode == "" {
		m.baudCode = "06"
	}
	m.inByte, m.outByte = body.Bytes()
	m.fast = slices.ContainsFunc(body.Signals(), func(s configs.Signal) bool { return s.Fast })
	var ins []device.Input
	for _, in := range body.Inputs {
		ins = append(ins, device.Input{Signal: in.Signal, Event: in.Event})
	}
	m.inputs = device.NewInputs(d.ID, "dcon", ins, s, nil)
	if body.Latch {
		m.clearLatch()
		m.inputs.Watch(m.latchInput)
	}
	return m, nil
}

// levels are the module's inputs as they are now, a bit per channel.
func (m *Module) levels() uint16 {
	var in uint16
	for _, i := range m.tmpl.Inputs {
		if on, _ := m.inputs.Forced(i.Signal); on != i.Invert { // an input no one touched is off
			in |= 1 << i.Channel
		}
	}
	return in
}

// latchInput latches the level an action gave an input.
func (m *Module) latchInput(sig string, on bool) {
	for _, i := range m.tmpl.Inputs {
		if i.Signal != sig {
			continue
		}
		m.mu.Lock()
		if on != i.Invert {
			m.latch[1] |= 1 << i.Channel
		} else {
			m.latch[0] |= 1 << i.Channel
		}
		m.mu.Unlock()
	}
}

// clearLatch is $AAC: the latch then holds only the levels of now.
func (m *Module) clearLatch() {
	in := m.levels()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.latch = [2]uint16{^in, in}
	m.shown = maps.Clone(m.last)
}

// ID is the module's device id.
func (m *Module) ID() string { return m.id }

// Stats returns the module's counters: Polls counts commands answered,
// CRCErrors commands to its address with a bad checksum.
func (m *Module) Stats() sim.Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return sim.Stats{Polls: m.polls.Load(), ReadingsServed: m.served.Load(), Exceptions: m.invalid.Load(),
		CRCErrors: m.checksumErrors.Load(), EventsServed: m.events.Load(), Writes: maps.Clone(m.writes)}
}

// garble is damage the module's next answers to $AA6 carry: a signal's
// bit flipped, in n answers in a row.
type garble struct {
	in, out uint16
	n       int
}

// Actions lists what the module's inputs can be made to do, and garble.
func (m *Module) Actions() []string {
	return append(m.inputs.Actions(), "garble signal=S [answers=2] (S shows flipped in the next answers, as if the line damaged the same bit each time)")
}

// Act presses, holds, releases, tampers with or sets an input, or garbles
// the next answers.
func (m *Module) Act(ctx context.Context, action string, args map[string]string) error {
	if action != "garble" {
		return m.inputs.Act(ctx, action, args)
	}
	g := garble{n: 2}
	if a, ok := args["answers"]; ok {
		if _, err := fmt.Sscanf(a, "%d", &g.n); err != nil || g.n < 1 {
			return fmt.Errorf("answers=%s: want a count of answers", a)
		}
	}
	for _, i := range m.tmpl.Inputs {
		if i.Signal == args["signal"] {
			g.in = 1 << i.Channel
		}
	}
	for _, o := range m.tmpl.Outputs {
		if o.Signal == args["signal"] {
			g.out = 1 << o.Channel
		}
	}
	if g.in|g.out == 0 {
		return fmt.Errorf("garble: no signal %q", args["signal"])
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.garble = g
	return nil
}

// Handle answers one command to the module's address (without its CR): the
// answer frame, or nil for none, and a func to call once it was sent.
func (m *Module) Handle(cmd string) (out []byte, commit func()) {
	if m.checksum {
		if len(cmd) < 5 {
			m.checksumErrors.Add(1)
			return nil, nil
		}
		body, sum := cmd[:len(cmd)-2], cmd[len(cmd)-2:]
		if want := fmt.Sprintf("%02X", sumOf(body)); !strings.EqualFold(sum, want) {
			m.checksumErrors.Add(1)
			return nil, nil // a module ignores a command whose checksum fails
		}
		cmd = body
	}
	aa := cmd[1:3]
	reply, commit := m.reply(cmd[0], cmd[3:], aa)
	if reply == "" {
		return nil, nil
	}
	if m.checksum {
		reply += fmt.Sprintf("%02X", sumOf(reply))
	}
	m.polls.Add(1)
	return append([]byte(reply), '\r'), commit
}

// sumOf is the DCON checksum: the sum of the characters, mod 256.
func sumOf(s string) byte {
	var c byte
	for i := 0; i < len(s); i++ {
		c += s[i]
	}
	return c
}

// reply is the answer to a command (delimiter, the rest after the
// address), without checksum and CR.
func (m *Module) reply(delim byte, rest, aa string) (string, func()) {
	invalid := func() (string, func()) {
		m.invalid.Add(1)
		return "?" + strings.ToUpper(aa), nil
	}
	switch {
	case delim == '$' && rest == "6":
		data, served := m.read()
		return "!" + data, func() { m.serve(served) }
	case delim == '$' && (rest == "L0" || rest == "L1") && m.tmpl.Latch:
		data, served := m.readLatch(rest == "L1")
		return "!" + data, func() { m.serveLatch(served) }
	case delim == '$' && rest == "C" && m.tmpl.Latch:
		m.clearLatch()
		return "!" + strings.ToUpper(aa), nil
	case delim == '$' && strings.EqualFold(rest, "M"):
		return "!" + strings.ToUpper(aa) + m.tmpl.Module, nil
	case delim == '$' && rest == "2":
		ff := "00"
		if m.checksum {
			ff = "40" // bit 6 of the data format: checksum on
		}
		return "!" + strings.ToUpper(aa) + "40" + m.baudCode + ff, nil
	case delim == '#' && len(rest) == 4 && rest[:2] == "00":
		v, ok := hex(rest[2:])
		if !ok || m.outByte[0] < 0 {
			return invalid()
		}
		m.write(0xFF, uint16(v))
		return ">", nil
	case delim == '#' && len(rest) == 4 && rest[0] == '1':
		ch, ok := hex("0" + rest[1:2])
		if !ok || ch >= m.tmpl.DOChannels || (rest[2:] != "00" && rest[2:] != "01") {
			return invalid()
		}
		m.write(1<<ch, uint16(rest[3]-'0')<<ch)
		return ">", nil
	}
	return invalid()
}

// write sets the outputs under mask to v, and counts a write for every
// output signal it covered.
func (m *Module) write(mask, v uint16) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.out = m.out&^mask | v&mask
	for _, o := range m.tmpl.Outputs {
		if mask>>o.Channel&1 == 1 {
			m.writes[o.Signal]++
		}
	}
}

// read is the data of $AA6's answer now, and the readings it carries.
func (m *Module) read() (string, []sim.Reading) {
	in := m.levels()
	var rs []sim.Reading
	for _, i := range m.tmpl.Inputs {
		rs = append(rs, sim.Reading{Signal: i.Signal, Value: signal.B(i.On(in))})
	}
	m.mu.Lock()
	out := m.out
	g := m.garble
	if m.garble.n > 0 {
		m.garble.n--
	}
	m.mu.Unlock()
	for _, o := range m.tmpl.Outputs {
		rs = append(rs, sim.Reading{Signal: o.Signal, Value: signal.B(out>>o.Channel&1 == 1)})
	}
	if g.n > 0 {
		in, out = in^g.in, out^g.out // after the readings: they are what the module holds
	}
	return m.data(in, out), rs
}

// readLatch is the data of $AAL1's answer (high) or $AAL0's now, and the
// readings of the inputs it shows at their active level: a master that
// reads it sees those presses. Its output bytes say what the outputs are.
func (m *Module) readLatch(high bool) (string, []sim.Reading) {
	m.mu.Lock()
	in, out := m.latch[0], m.out
	if high {
		in = m.latch[1]
	}
	m.mu.Unlock()
	var rs []sim.Reading
	for _, i := range m.tmpl.Inputs {
		if in>>i.Channel&1 == 1 && high != i.Invert {
			rs = append(rs, sim.Reading{Signal: i.Signal, Value: signal.B(true)})
		}
	}
	return m.data(in, out), rs
}

// data is the six hex digits of an answer carrying in and out in the
// module's layout.
func (m *Module) data(in, out uint16) string {
	var data [3]byte
	for i, b := range m.inByte {
		if b >= 0 {
			data[b] = byte(in >> (8 * i))
		}
	}
	for i, b := range m.outByte {
		if b >= 0 {
			data[b] = byte(out >> (8 * i))
		}
	}
	return fmt.Sprintf("%02X%02X%02X", data[0], data[1], data[2])
}

// serveLatch records the inputs a latch answer showed active: a press
// for a master reading every answer, unless an answer showed it active
// since the latch was last cleared (or at the clear: the latch may hold
// its level from then).
func (m *Module) serveLatch(rs []sim.Reading) {
	m.mu.Lock()
	rs = slices.DeleteFunc(rs, func(r sim.Reading) bool { return m.shown[r.Signal] })
	m.mu.Unlock()
	m.serve(rs)
}

// serve records readings sent in full: served counts, the edges of inputs
// with an event rule a master reading every answer saw, and the sink.
func (m *Module) serve(rs []sim.Reading) {
	m.mu.Lock()
	for _, r := range rs {
		if r.Value.Truth() {
			m.shown[r.Signal] = true
		}
	}
	for _, i := range m.tmpl.Inputs {
		if i.Event == nil {
			continue
		}
		for _, r := range rs {
			if r.Signal != i.Signal {
				continue
			}
			on := r.Value.Truth()
			was, known := m.last[r.Signal]
			m.last[r.Signal] = on
			if on && (!known || !was) || !on && known && was && i.Event.Clear {
				m.events.Add(1)
			}
		}
	}
	m.mu.Unlock()
	// The signals of a module with an alarm input are all fast (see
	// configs.Signal.Fast): their reads are not counted as served.
	if !m.fast {
		m.served.Add(int64(len(rs)))
	}
	if m.sink != nil {
		m.sink.Served(m.id, rs)
	}
}
