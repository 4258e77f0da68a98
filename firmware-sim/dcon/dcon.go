// Package dcon simulates the DCON links of a station: ASCII I/O modules
// (ADAM-4000, I-7000 and clones) on a virtual serial port linked at the
// link's port path, answering $AA6, $AAM, $AA2, #AA00dd and #AA1cdd (and
// $AAL0, $AAL1 and $AAC when the template's inputs latch: the latch holds
// every level an input had since $AAC, which leaves it the levels of the
// moment), with their checksum on or off as the station file says, ?AA to
// a command they do not know, and nothing to a damaged command or one for another
// address. Answers are paced to the line's baud rate. Inputs change when
// the testbench acts on a module (press, hold, release, tamper, set); every
// alarm that raises is logged with the moment the input changed. It
// registers protocol "dcon" with the simulator.
//
// The encoding here is the simulator's own: it shares the templates with
// the gateway, not the gateway's code.
package dcon

import (
	"context"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"outpost/configs"
	dc "outpost/configs/dcon"
	"outpost/firmware-sim/sim"
	"outpost/firmware-sim/slave"
	"outpost/firmware-sim/vport"
)

func init() { sim.Register("dcon", newLink) }

// defaultTurnaround is how long a simulated module takes to answer: real
// ones take one to a few milliseconds.
const defaultTurnaround = 2 * time.Millisecond

// Link is a simulated DCON bus.
type Link struct {
	port    *vport.Port
	line    slave.Line
	turn    time.Duration
	modules map[int]*Module // by address
	all     []*Module
	deaf    *atomic.Bool
	faults  *sim.Faults
	log     *slog.Logger

	commands, garbled, foreign atomic.Int64
}

func newLink(st *configs.Station, link *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	cfg, ok := link.Settings.(*dc.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not a dcon link", link.ID)
	}
	l := &Link{line: slave.Line{Baud: cfg.Baud, DataBits: cfg.DataBits, Parity: cfg.Parity, StopBits: cfg.StopBits},
		turn: defaultTurnaround, modules: map[int]*Module{}, deaf: o.Deaf, faults: o.Faults, log: o.Log.With("bus", link.ID)}
	if l.line.DataBits == 0 {
		l.line.DataBits = 8
	}
	if l.line.StopBits == 0 {
		l.line.StopBits = 1
	}
	if o.Turnaround >= 0 {
		l.turn = o.Turnaround
	}
	for _, d := range devs {
		m, err := NewModule(d, st.Templates[d.Template], cfg.Baud, o.Sink)
		if err != nil {
			return nil, err
		}
		l.all = append(l.all, m)
		if o.Faults.Silent(d.ID) {
			o.Log.Info("device silent", "device", d.ID, "address", fmt.Sprintf("%02X", m.addr))
		}
		l.modules[m.addr] = m
	}
	p, err := o.OpenPort(link, cfg.Port)
	if err != nil {
		return nil, fmt.Errorf("bus %s: %w", link.ID, err)
	}
	l.port = p
	o.Log.Info("bus up", "bus", link.ID, "protocol", "dcon", "port", cfg.Port, "pty", p.Path(), "baud", cfg.Baud, "modules", len(l.modules), "noise", o.Noise)
	return l, nil
}

// Devices are the link's modules.
func (l *Link) Devices() []sim.Device {
	out := make([]sim.Device, len(l.all))
	for i, m := range l.all {
		out[i] = m
	}
	return out
}

// Close closes the port and stops what actions left pending.
func (l *Link) Close() error {
	for _, m := range l.all {
		m.inputs.Close()
	}
	return l.port.Close()
}

// LinkStats are what the line saw.
type LinkStats struct {
	Commands   int64 `json:"commands"`    // frames ending in a CR
	Garbled    int64 `json:"garbled"`     // frames no module could read
	Foreign    int64 `json:"foreign"`     // readable frames for no module here
	NoiseBytes int64 `json:"noise_bytes"` // bytes the noise damaged
}

// Stats returns the line's counters.
func (l *Link) Stats() any {
	return LinkStats{Commands: l.commands.Load(), Garbled: l.garbled.Load(), Foreign: l.foreign.Load(), NoiseBytes: l.port.Noise().Corrupted()}
}

// Timing of the reader.
const (
	idlePoll = 100 * time.Millisecond
	// staleAfter drops a partial command after this long without a byte:
	// its CR was lost.
	staleAfter = 50 * time.Millisecond
	maxCommand = 64
)

// isDelimiter says whether c starts a DCON command: it never appears
// inside one, so a partial command before it was damaged.
func isDelimiter(c byte) bool { return c == '$' || c == '#' || c == '%' || c == '@' || c == '~' }

// Serve reads commands and answers them until ctx ends (it returns nil
// then) or the port fails.
func (l *Link) Serve(ctx context.Context) error {
	var (
		buf     []byte
		rd      = make([]byte, 256)
		t0      time.Time // when the first byte of buf arrived
		last    time.Time
		busFree time.Time // when the line is quiet again after an answer
	)
	for {
		n, stop, err := l.port.ReadFor(ctx, rd, idlePoll)
		switch {
		case stop:
			return nil
		case err != nil:
			return fmt.Errorf("dcon: %w", err)
		}
		now := time.Now()
		if len(buf) > 0 && now.Sub(last) > staleAfter {
			l.garbled.Add(1)
			buf = buf[:0]
		}
		for _, c := range rd[:n] {
			last = now
			switch {
			case isDelimiter(c):
				if len(buf) > 0 {
					l.garbled.Add(1)
				}
				buf, t0 = append(buf[:0], c), now
			case c == '\r':
				l.commands.Add(1)
				// The master wrote at pty speed; on a real line the
				// command's last character arrives a wire time after its
				// first.
				end := t0.Add(l.line.Wire(len(buf) + 1))
				if len(buf) == 0 {
					end = now
				}
				if busFree.After(end) {
					end = busFree
				}
				done, err := l.answer(ctx, string(buf), end)
				if err != nil {
					return err
				}
				busFree = done
				buf = buf[:0]
			case len(buf) >= maxCommand:
				l.garbled.Add(1)
				buf = buf[:0]
			default:
				if len(buf) == 0 {
					t0 = now
				}
				buf = append(buf, c)
			}
		}
	}
}

// answer handles one command (without its CR) that ended at end, and
// returns when the line is quiet again.
func (l *Link) answer(ctx context.Context, cmd string, end time.Time) (time.Time, error) {
	if len(cmd) < 3 || !isDelimiter(cmd[0]) {
		l.garbled.Add(1)
		return end, nil
	}
	addr, ok := hex(cmd[1:3])
	if !ok {
		l.garbled.Add(1)
		return end, nil
	}
	m := l.modules[addr]
	if m == nil {
		l.foreign.Add(1)
		return end, nil
	}
	if l.faults.Silent(m.id) {
		return end, nil
	}
	if l.deaf != nil && l.deaf.Load() {
		return end, nil
	}
	out, commit := m.Handle(cmd)
	if out == nil {
		return end, nil
	}
	start := end.Add(l.turn + l.faults.Slow(m.id))
	if err := slave.WritePaced(ctx, l.port, out, start, l.line.Char()); err != nil {
		if ctx.Err() != nil {
			return start, nil
		}
		return start, fmt.Errorf("dcon: answer module %02X: %w", addr, err)
	}
	if commit != nil {
		commit()
	}
	return start.Add(l.line.Wire(len(out))), nil
}

// hex reads two hex digits (DCON modules take either case).
func hex(s string) (int, bool) {
	if len(s) != 2 {
		return 0, false
	}
	v := 0
	for i := 0; i < 2; i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			v = v<<4 | int(c-'0')
		case 'A' <= c && c <= 'F':
			v = v<<4 | int(c-'A'+10)
		case 'a' <= c && c <= 'f':
			v = v<<4 | int(c-'a'+10)
		default:
			return 0, false
		}
	}
	return v, true
}
