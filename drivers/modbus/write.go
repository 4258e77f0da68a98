package modbus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"

	"github.com/goburrow/modbus"

	mb "outpost/configs/modbus"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// Writes for commands from the hub.
//
// A write is sent once, with the wire lock at command priority (ahead of
// normal polls). When the device answers, that is the outcome: done, or
// refused with an exception (asking again changes nothing). When the
// answer is lost (a timeout, a damaged frame), the write may or may not
// have happened: the device may have carried it out and its answer been
// garbled on the way back. Writing coils and registers is idempotent, so
// writing again would do no harm to the output itself; but a command must
// act exactly once, and a second write is a second act on the device (a
// relay pulsed twice, a counter of writes, a log entry). So the driver
// reads the value back first: when it holds what was written, the write
// happened and is not sent again; when it does not, the write certainly
// did not happen and is retried, within the link's retries. Only when
// neither the write nor any read-back got an answer does Set fail, saying
// the outcome is unknown.

// write is one planned write: the function, address and what it sets.
type write struct {
	reg   *mb.Register
	coil  bool     // a coil's state
	words []uint16 // a holding register's words, as they travel
}

// EncodeWrite turns a value into what a write of reg sends, refusing a
// value of the wrong type, outside the register's limits, or that the
// register cannot hold exactly (after scale and offset, in its type).
func EncodeWrite(reg *mb.Register, v model.Value) (words []uint16, coil bool, err error) {
	if !reg.Writable {
		return nil, false, fmt.Errorf("signal %s is not writable", reg.Signal)
	}
	if reg.Type == mb.TypeBool {
		b, ok := v.AsBool()
		if !ok {
			return nil, false, fmt.Errorf("signal %s takes true or false, not %s", reg.Signal, v)
		}
		if reg.Table == mb.Coil {
			return nil, b, nil
		}
		if b {
			return []uint16{1}, false, nil
		}
		return []uint16{0}, false, nil
	}
	f, ok := v.Float()
	if !ok {
		return nil, false, fmt.Errorf("signal %s takes a number, not %s", reg.Signal, v)
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, false, fmt.Errorf("signal %s: %w", reg.Signal, ErrNotFinite)
	}
	if l := reg.Limits; l != nil && !l.Contains(f) {
		return nil, false, fmt.Errorf("signal %s: %v is outside its limits %v to %v", reg.Signal, f, l.Min, l.Max)
	}
	scale := reg.Scale
	if scale == 0 {
		scale = 1
	}
	raw := (f - reg.Offset) / scale
	var w []uint16
	var back float64 // the value a read of w means
	switch reg.Type {
	case mb.TypeUint16, mb.TypeInt16, mb.TypeUint32, mb.TypeInt32:
		raw = math.Round(raw)
		lo, hi := intRange(reg.Type)
		if raw < lo || raw > hi {
			return nil, false, fmt.Errorf("signal %s: %v needs a raw value of %v, beyond a %s", reg.Signal, f, raw, reg.Type)
		}
		back = Meant(raw, 0, scale, reg.Offset)
		n := int64(raw)
		if reg.Words() == 1 {
			w = []uint16{uint16(n)}
		} else {
			w = []uint16{uint16(uint32(n) >> 16), uint16(n)}
		}
	case mb.TypeFloat32:
		f32 := float32(raw)
		if math.IsInf(float64(f32), 0) {
			return nil, false, fmt.Errorf("signal %s: %v is beyond a float32", reg.Signal, f)
		}
		r, places := shortest(float64(f32), 32)
		back = Meant(r, places, scale, reg.Offset)
		b := math.Float32bits(f32)
		w = []uint16{uint16(b >> 16), uint16(b)}
	case mb.TypeFloat64:
		back = Meant(raw, decimals(raw), scale, reg.Offset)
		b := math.Float64bits(raw)
		w = []uint16{uint16(b >> 48), uint16(b >> 32), uint16(b >> 16), uint16(b)}
	default:
		return nil, false, fmt.Errorf("signal %s: a %s cannot be written", reg.Signal, reg.Type)
	}
	if back != f {
		return nil, false, fmt.Errorf("signal %s: %v cannot be written exactly (the nearest the register holds is %v)", reg.Signal, f, back)
	}
	order := reg.Order
	if order.SwapWords() {
		for i, j := 0, len(w)-1; i < j; i, j = i+1, j-1 {
			w[i], w[j] = w[j], w[i]
		}
	}
	if order.SwapBytes() {
		for i := range w {
			w[i] = w[i]<<8 | w[i]>>8
		}
	}
	return w, false, nil
}

// decimals is the count of fraction digits of a float64's shortest form.
func decimals(f float64) int {
	_, places := shortest(f, 64)
	return places
}

func intRange(t mb.DataType) (float64, float64) {
	switch t {
	case mb.TypeUint16:
		return 0, math.MaxUint16
	case mb.TypeInt16:
		return math.MinInt16, math.MaxInt16
	case mb.TypeUint32:
		return 0, math.MaxUint32
	}
	return math.MinInt32, math.MaxInt32
}

// send writes w with a goburrow client: function 05 for a coil, 06 for one
// register, 16 for several.
func (w *write) send(c modbus.Client) error {
	addr := uint16(w.reg.Address)
	var err error
	switch {
	case w.reg.Table == mb.Coil:
		v := uint16(0)
		if w.coil {
			v = 0xFF00
		}
		_, err = c.WriteSingleCoil(addr, v)
	case len(w.words) == 1:
		_, err = c.WriteSingleRegister(addr, w.words[0])
	default:
		b := make([]byte, 2*len(w.words))
		for i, x := range w.words {
			binary.BigEndian.PutUint16(b[2*i:], x)
		}
		_, err = c.WriteMultipleRegisters(addr, uint16(len(w.words)), b)
	}
	return err
}

// holds says whether the data of a read of the written entries shows what
// w wrote.
func (w *write) holds(data []byte) bool {
	if w.reg.Table == mb.Coil {
		return len(data) > 0 && (data[0]&1 == 1) == w.coil
	}
	if len(data) != 2*len(w.words) {
		return false
	}
	for i, x := range w.words {
		if binary.BigEndian.Uint16(data[2*i:]) != x {
			return false
		}
	}
	return true
}

// request is the read of what w writes.
func (w *write) request() Request {
	return Request{Table: w.reg.Table, Start: w.reg.Address, Count: w.reg.Span()}
}

// errUnknown is a write whose outcome could not be learnt.
var errUnknown = errors.New("outcome unknown: neither the write nor a read-back was answered")

// Set writes a writable signal of a device for a command from the hub and
// returns once the device confirmed it (see the comment at the top of this
// file), or with an error naming the device, the link and what failed. A
// value the signal cannot take is refused before anything is sent.
func (l *links) Set(ctx context.Context, device, signal string, v model.Value) error {
	d := l.byID[device]
	if d == nil {
		return fmt.Errorf("no device %s on %s", device, l.line.Name())
	}
	var reg *mb.Register
	for i := range d.tmpl.Registers {
		if d.tmpl.Registers[i].Signal == signal {
			reg = &d.tmpl.Registers[i]
		}
	}
	if reg == nil {
		return fmt.Errorf("device %s on %s: no signal %s", device, l.line.Name(), signal)
	}
	words, coil, err := EncodeWrite(reg, v)
	if err != nil {
		return fmt.Errorf("device %s on %s: %w", device, l.line.Name(), err)
	}
	w := &write{reg: reg, coil: coil, words: words}
	fail := func(err error) error {
		return fmt.Errorf("device %s on %s: writing %s (%s): %w", device, l.line.Name(), signal, describe(w.request()), err)
	}
	// What an exchange met on the way (another master heard) counts in
	// the device's health, as a poll's does; its failures are the
	// command's result.
	var met []string
	heard := counting(&met)
	defer func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		d.health.Count(met...)
	}()
	uncertain, silent := false, true // silent: no exchange got an answer
	var last error
	for try := 0; try <= l.cl.retries(); try++ {
		if uncertain {
			data, err := l.exchange(ctx, func() ([]byte, error) {
				return l.cl.read(ctx, d.unit, w.request(), bus.Attempt{Once: true}, heard)
			})
			switch {
			case ctx.Err() != nil:
				return fail(ctx.Err())
			case err != nil:
				last, silent = err, silent && noAnswer(err)
				continue // still not known: try to learn it again
			case w.holds(data):
				return nil // the write happened; its answer was lost
			}
			uncertain = false // it certainly did not happen
		}
		_, err := l.exchange(ctx, func() ([]byte, error) {
			return nil, l.cl.do(ctx, d.unit, w.send, heard)
		})
		var ld *bus.LinkDownError
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return fail(ctx.Err())
		case isException(err):
			_, reason := errClass(err)
			return fail(fmt.Errorf("refused: %s", reason))
		case errors.As(err, &ld):
			return fail(err) // nothing was sent
		}
		uncertain, last, silent = true, err, silent && noAnswer(err)
	}
	if uncertain {
		// The tries are spent; one last look at what the device holds.
		data, err := l.exchange(ctx, func() ([]byte, error) {
			return l.cl.read(ctx, d.unit, w.request(), bus.Attempt{Once: true}, heard)
		})
		if err == nil && w.holds(data) {
			return nil
		}
		if err == nil {
			return fail(fmt.Errorf("not carried out: the device still holds another value (last: %v)", last))
		}
		silent = silent && noAnswer(err)
	}
	err = fmt.Errorf("%w (last: %v)", errUnknown, last)
	if silent {
		// What a poll's health says of it: the device or the link at fault.
		err = fmt.Errorf("%w; %s", err, l.line.Silence(ctx, int(d.unit)))
	}
	return fail(err)
}

// exchange runs f with the wire at command priority.
func (l *links) exchange(ctx context.Context, f func() ([]byte, error)) ([]byte, error) {
	if err := l.line.Lock.Lock(ctx, bus.Command); err != nil {
		return nil, err
	}
	defer l.line.Lock.Unlock()
	return f()
}
