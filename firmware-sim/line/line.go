// Package line simulates the line links of a station: devices that speak
// lines of text as their templates describe them (configs/line), on a
// virtual serial port linked at the link's port path, paced to the line's
// baud rate. A device that talks on its own sends each kind of line at its
// interval (every), and its event lines (on_change) at once when one of
// their bool signals changes: the testbench acts on them (press, hold,
// release, tamper, set). Polled devices answer their poll command, at
// their address, with a line of their template's first kind, and nothing
// to a command for another address or with a bad checksum. On request a
// device sends garbage, a line cut short followed by a whole one, a line
// with a bad checksum or one too long (see Device.Act), so that the
// gateway's resynchronisation and counters can be checked. It registers
// protocol "line" with the simulator.
//
// The encoding here is the simulator's own (encode.go): it shares the
// templates with the gateway, not the gateway's code.
package line

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"time"

	"outpost/configs"
	cl "outpost/configs/line"
	"outpost/firmware-sim/sim"
	"outpost/firmware-sim/slave"
	"outpost/firmware-sim/vport"
)

func init() { sim.Register(cl.Protocol, newLink) }

// defaultTurnaround is how long a simulated device takes to answer a
// poll command.
const defaultTurnaround = 2 * time.Millisecond

// Link is a simulated line link.
type Link struct {
	port   *vport.Port
	line   slave.Line
	turn   time.Duration
	polled bool
	devs   []*Device
	deaf   *atomic.Bool
	faults *sim.Faults
	log    *slog.Logger
	rng    *rand.Rand // for garbage; the writer's own
	// busFree is when the line is quiet again after the last write; only
	// the serving goroutine writes.
	busFree time.Time

	lines, damaged, commands, garbled, foreign atomic.Int64
}

func newLink(st *configs.Station, link *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	cfg, ok := link.Settings.(*cl.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not a line link", link.ID)
	}
	l := &Link{line: slave.Line{Baud: cfg.Baud, DataBits: cfg.DataBits, Parity: cfg.Parity, StopBits: cfg.StopBits},
		turn: defaultTurnaround, deaf: o.Deaf, faults: o.Faults, log: o.Log.With("link", link.ID),
		rng: rand.New(rand.NewPCG(uint64(o.Seed), 7))}
	if l.line.DataBits == 0 {
		l.line.DataBits = 8
	}
	if l.line.StopBits == 0 {
		l.line.StopBits = 1
	}
	if o.Turnaround >= 0 {
		l.turn = o.Turnaround
	}
	for i, d := range devs {
		dev, err := newDevice(d, st.Templates[d.Template], o)
		if err != nil {
			return nil, err
		}
		polled := dev.cmd != nil
		if i > 0 && polled != l.polled || !polled && len(devs) > 1 {
			return nil, fmt.Errorf("link %s: a device that talks on its own must be alone on its link", link.ID)
		}
		l.polled = polled
		l.devs = append(l.devs, dev)
	}
	p, err := o.OpenPort(link, cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", link.ID, err)
	}
	l.port = p
	o.Log.Info("link up", "link", link.ID, "protocol", cl.Protocol, "port", cfg.Port, "pty", p.Path(), "baud", cfg.Baud, "devices", len(l.devs), "noise", o.Noise)
	return l, nil
}

// Devices are the link's devices.
func (l *Link) Devices() []sim.Device {
	out := make([]sim.Device, len(l.devs))
	for i, d := range l.devs {
		out[i] = d
	}
	return out
}

// Close closes the port and stops what actions left pending.
func (l *Link) Close() error {
	for _, d := range l.devs {
		d.inputs.Close()
	}
	return l.port.Close()
}

// LinkStats are what the line saw.
type LinkStats struct {
	Lines      int64 `json:"lines"`       // whole lines sent
	Damaged    int64 `json:"damaged"`     // lines sent damaged on request (garbage, cut, bad checksum, too long) or by flaky
	Commands   int64 `json:"commands"`    // poll commands read
	Garbled    int64 `json:"garbled"`     // what no device could read as a command
	Foreign    int64 `json:"foreign"`     // commands for no device here
	NoiseBytes int64 `json:"noise_bytes"` // bytes the noise damaged
}

// Stats returns the line's counters.
func (l *Link) Stats() any {
	return LinkStats{Lines: l.lines.Load(), Damaged: l.damaged.Load(), Commands: l.commands.Load(), Garbled: l.garbled.Load(),
		Foreign: l.foreign.Load(), NoiseBytes: l.port.Noise().Corrupted()}
}

// quiet says whether a device says nothing now: switched off (silent),
// or every device deaf.
func (l *Link) quiet(d *Device) bool {
	return l.faults.Silent(d.id) || l.deaf != nil && l.deaf.Load()
}

// send writes lines, paced to the line, one after the other from start
// (or when the line is free), and counts what each served.
func (l *Link) send(ctx context.Context, d *Device, outs []out, start time.Time) error {
	start = later(start.Add(l.faults.Slow(d.id)), l.busFree)
	for _, o := range outs {
		o, ok := d.flaky(l.faults.Flaky(d.id), o)
		if !ok {
			l.damaged.Add(1)
			continue
		}
		if err := slave.WritePaced(ctx, l.port, o.bytes, start, l.line.Char()); err != nil {
			return err
		}
		start = start.Add(l.line.Wire(len(o.bytes)))
		if o.line == nil {
			l.damaged.Add(1)
			continue
		}
		l.lines.Add(1)
		d.serve(o.line)
	}
	l.busFree = start
	return nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// watch is how often a device that talks on its own looks at its inputs
// for an event line, besides when an action pokes it.
const watch = 10 * time.Millisecond

// Serve runs the link until ctx ends (it returns nil then) or the port
// fails.
func (l *Link) Serve(ctx context.Context) error {
	var err error
	if l.polled {
		err = l.answer(ctx)
	} else if len(l.devs) == 1 {
		err = l.talk(ctx, l.devs[0])
	}
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// talk makes a device that talks on its own send its lines: each kind at
// its interval, the first right away; event lines when their bools
// change; damage when asked.
func (l *Link) talk(ctx context.Context, d *Device) error {
	start := time.Now()
	next := make([]time.Time, len(d.tmpl.Lines))
	for k := range next {
		next[k] = start
	}
	d.prime(start)
	tick := time.NewTicker(watch)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-d.poke:
		}
		now := time.Now()
		if l.quiet(d) {
			for f := d.nextFault(); f != nil; f = d.nextFault() {
				close(f.done) // nothing goes out from a device switched off
			}
			continue
		}
		var outs []out
		var done []*fault
		for f := d.nextFault(); f != nil; f = d.nextFault() {
			outs = append(outs, d.damaged(f, l.faultKind(d), now, l.rng)...)
			done = append(done, f)
		}
		for _, k := range d.changed(now) {
			body, s := d.line(k, now)
			outs = append(outs, out{bytes: frame(d.tmpl, seal(d.tmpl, body)), line: s})
		}
		for k, ln := range d.tmpl.Lines {
			if ln.Every <= 0 || now.Before(next[k]) {
				continue
			}
			body, s := d.line(k, now)
			outs = append(outs, out{bytes: frame(d.tmpl, seal(d.tmpl, body)), line: s})
			next[k] = nextSlot(next[k], ln.Every, now)
		}
		if len(outs) > 0 {
			err := l.send(ctx, d, outs, now)
			for _, f := range done {
				close(f.done)
			}
			if err != nil {
				return fmt.Errorf("line: device %s: write: %w", d.id, err)
			}
		}
	}
}

// nextSlot is when a line sent every interval is due next after the one
// due at slot: slots missed (a busy line) are skipped, not sent in a
// burst.
func nextSlot(slot time.Time, interval time.Duration, now time.Time) time.Time {
	slot = slot.Add(interval)
	if behind := now.Sub(slot); behind > 0 {
		slot = slot.Add((behind/interval + 1) * interval)
	}
	return slot
}

// faultKind is the kind of line damage is made of: the first periodic
// one, else the first.
func (l *Link) faultKind(d *Device) int {
	for k, ln := range d.tmpl.Lines {
		if ln.Every > 0 {
			return k
		}
	}
	return 0
}

// Timing of the command reader.
const (
	idlePoll = 100 * time.Millisecond
	// staleAfter drops a partial command after this long without a byte:
	// its end was lost.
	staleAfter = 50 * time.Millisecond
	maxCommand = 256
)

// answer reads poll commands and answers them until ctx ends or the port
// fails.
func (l *Link) answer(ctx context.Context) error {
	var (
		buf  []byte
		rd   = make([]byte, 256)
		t0   time.Time // when the first byte of buf came
		last time.Time
	)
	var ends [][]byte // what ends the devices' commands
	for _, d := range l.devs {
		if e := []byte(d.tmpl.Terminator()); !slices.ContainsFunc(ends, func(o []byte) bool { return bytes.Equal(o, e) }) {
			ends = append(ends, e)
		}
	}
	for {
		n, stop, err := l.port.ReadFor(ctx, rd, idlePoll)
		switch {
		case stop:
			return nil
		case err != nil:
			return fmt.Errorf("line: %w", err)
		}
		now := time.Now()
		if len(buf) > 0 && now.Sub(last) > staleAfter {
			l.garbled.Add(1)
			buf = buf[:0]
		}
		for _, c := range rd[:n] {
			if len(buf) == 0 {
				t0 = now
			}
			last = now
			buf = append(buf, c)
			if slices.ContainsFunc(ends, func(e []byte) bool { return bytes.HasSuffix(buf, e) }) {
				l.commands.Add(1)
				// The master wrote at pty speed; on a real line the
				// command's last byte arrives its wire time after its first.
				if err := l.poll(ctx, buf, t0.Add(l.line.Wire(len(buf)))); err != nil {
					return err
				}
				buf = buf[:0]
				continue
			}
			if len(buf) >= maxCommand {
				l.garbled.Add(1)
				buf = buf[:0]
			}
		}
	}
}

// poll answers one command (with its end) that ended at end.
func (l *Link) poll(ctx context.Context, cmd []byte, end time.Time) error {
	var d *Device
	for _, dev := range l.devs {
		if string(dev.cmd) == string(cmd) {
			d = dev
		}
	}
	if d == nil {
		for _, dev := range l.devs {
			if dev.damagedCommand(cmd) {
				dev.badCommands.Add(1) // a device ignores a command whose checksum fails
				return nil
			}
		}
		l.foreign.Add(1)
		return nil
	}
	if l.quiet(d) {
		return nil
	}
	start := end.Add(l.turn)
	body, s := d.line(0, start)
	whole := out{bytes: frame(d.tmpl, seal(d.tmpl, body)), line: s}
	outs := []out{whole}
	f := d.nextFault()
	if f != nil {
		outs = d.damaged(f, 0, start, l.rng)
		if f.kind != truncate {
			// Garbage comes before the answer; a bad checksum or a line
			// too long is the answer.
			if len(f.kind) >= len(garbage) && f.kind[:len(garbage)] == garbage {
				outs = append(outs, whole)
			}
		}
		defer close(f.done)
	}
	d.polls.Add(1)
	if err := l.send(ctx, d, outs, start); err != nil {
		return fmt.Errorf("line: answer device %s: %w", d.id, err)
	}
	return nil
}
