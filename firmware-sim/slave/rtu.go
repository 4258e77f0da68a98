package slave

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"time"

	"outpost/configs"
)

// Port is the device end of a serial line.
type Port interface {
	io.ReadWriter
	SetReadDeadline(t time.Time) error
}

// LineSensor is an optional interface of a Port that reports the line
// settings the master set on its end (baud, parity, …).
type LineSensor interface {
	MasterLine() (Line, error)
}

// RTU serves Modbus RTU for the units on one serial line. Fields are set
// before Serve and not changed after.
type RTU struct {
	Port Port
	// Line is the devices' line settings; wire times follow it.
	Line Line
	// Turnaround is how long a device takes between the end of a request
	// and the start of its answer.
	Turnaround time.Duration
	// Units are the slaves on the line by unit id. Frames for other ids get
	// no answer, as on a real bus.
	Units map[byte]Unit
	Log   *slog.Logger
	// Deaf, when set and true, makes every device on the line ignore
	// requests, as if unplugged (see firmware-sim's control API, POST /deaf).
	Deaf *atomic.Bool
	// Faults say what each unit does wrong now.
	Faults Faults
	// OtherMaster, when set, puts another master on the line (an old
	// controller left polling): every OtherMaster, when the line is quiet,
	// it reads one holding register of the line's lowest unit, and that
	// unit answers. Both frames reach the gateway, as a bus carries every
	// frame to every node.
	OtherMaster time.Duration

	frames, crcErrors, dropped, mismatched, others atomic.Int64
}

// BusStats counts what a line saw.
type BusStats struct {
	Frames       int64 `json:"frames"`        // good frames, for any unit
	CRCErrors    int64 `json:"crc_errors"`    // resynchronisations
	DroppedBytes int64 `json:"dropped_bytes"` // bytes dropped while resynchronising
	// Mismatched counts requests answered with garbage because the master's
	// line settings differ from the devices'.
	Mismatched int64 `json:"line_mismatch"`
	// OtherMaster counts the other master's requests (see RTU.OtherMaster).
	OtherMaster int64 `json:"other_master_requests,omitempty"`
}

// Stats returns the line's counters.
func (s *RTU) Stats() BusStats {
	return BusStats{
		Frames:       s.frames.Load(),
		CRCErrors:    s.crcErrors.Load(),
		DroppedBytes: s.dropped.Load(),
		Mismatched:   s.mismatched.Load(),
		OtherMaster:  s.others.Load(),
	}
}

// idlePoll bounds how long a read waits, so Serve notices its context end.
const idlePoll = 100 * time.Millisecond

// minSilence is the shortest silence after which a partial frame is taken for
// garbage; the 3.5 characters of the standard are too short for a scheduler.
const minSilence = 20 * time.Millisecond

// Serve reads requests and answers them until ctx ends (it then returns nil)
// or the port fails.
func (s *RTU) Serve(ctx context.Context) error {
	silence := max(s.Line.Gap(), minSilence)
	var (
		buf      = make([]byte, 0, 2*MaxFrame)
		rd       = make([]byte, 1024)
		t0       time.Time // when the first byte in buf arrived
		lastByte time.Time
		busFree  time.Time // when the line is quiet again after our answer
		silent   bool      // no byte came for a silence; buf is all there is
		inBad    bool      // resynchronising
	)
	other := time.Now().Add(s.OtherMaster) // the other master's next request
	for {
		if s.OtherMaster > 0 && len(buf) == 0 && !time.Now().Before(other) && !time.Now().Before(busFree) {
			end, err := s.otherMaster(ctx)
			if err != nil {
				return err
			}
			busFree, other = end, end.Add(s.OtherMaster)
		}
		for len(buf) > 0 {
			n, st := ParseRequest(buf)
			if st == Incomplete && silent {
				st = Bad
			}
			if st == Incomplete {
				break
			}
			if st == Bad {
				if !inBad {
					inBad = true
					s.crcErrors.Add(1)
					if r, ok := s.Units[buf[0]].(Recorder); ok {
						r.BadFrame()
					}
					s.Log.Debug("bad frame; resynchronising", "head", fmt.Sprintf("% x", buf[:min(len(buf), 12)]))
				}
				s.dropped.Add(1)
				buf = buf[:copy(buf, buf[1:])]
				continue
			}
			inBad = false
			s.frames.Add(1)
			start := t0
			if busFree.After(start) {
				start = busFree
			}
			end, err := s.answer(ctx, buf[:n], start.Add(s.Line.Wire(n)))
			if err != nil {
				return err
			}
			busFree = end
			buf = buf[:copy(buf, buf[n:])]
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := idlePoll
		if len(buf) > 0 {
			wait = min(wait, time.Until(lastByte.Add(silence)))
		}
		if s.OtherMaster > 0 {
			wait = max(min(wait, time.Until(other)), time.Millisecond)
		}
		if err := s.Port.SetReadDeadline(time.Now().Add(wait)); err != nil {
			return fmt.Errorf("rtu: set deadline: %w", err)
		}
		n, err := s.Port.Read(rd)
		now := time.Now()
		if n > 0 {
			if len(buf) == 0 {
				t0 = now
			}
			buf = append(buf, rd[:n]...)
			lastByte = now
			silent = false
		}
		switch {
		case err == nil:
		case errors.Is(err, os.ErrDeadlineExceeded):
			if len(buf) > 0 && !now.Before(lastByte.Add(silence)) {
				silent = true
			}
		default:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("rtu: read: %w", err)
		}
		if len(buf) > 8*MaxFrame {
			// A flood of bytes that never frames: keep the newest.
			drop := len(buf) - MaxFrame
			s.dropped.Add(int64(drop))
			buf = buf[:copy(buf, buf[drop:])]
		}
	}
}

// otherMaster puts the other master's request on the line, and its unit's
// answer, and returns when the line is quiet again.
func (s *RTU) otherMaster(ctx context.Context) (time.Time, error) {
	unit := byte(0)
	for id := range s.Units {
		if unit == 0 || id < unit {
			unit = id
		}
	}
	if unit == 0 {
		return time.Now(), nil
	}
	s.others.Add(1)
	req := AppendCRC([]byte{unit, 3, 0, 0, 0, 1}) // one holding register from 0
	start := time.Now()
	if err := WritePaced(ctx, s.Port, req, start, s.Line.Char()); err != nil {
		if ctx.Err() != nil {
			return start, nil
		}
		return start, fmt.Errorf("rtu: the other master's request: %w", err)
	}
	return s.answer(ctx, req, start.Add(s.Line.Wire(len(req))))
}

// answer handles one good frame whose last byte left the master at reqEnd,
// and returns when the line is quiet again.
func (s *RTU) answer(ctx context.Context, frame []byte, reqEnd time.Time) (time.Time, error) {
	if s.Deaf != nil && s.Deaf.Load() {
		return reqEnd, nil
	}
	id := frame[0]
	pdu := frame[1 : len(frame)-2]
	if id == 0 {
		// Broadcast: writes apply to every unit, nobody answers.
		if len(pdu) > 0 && (pdu[0] == 5 || pdu[0] == 6 || pdu[0] == 15 || pdu[0] == 16) {
			for _, u := range s.Units {
				Process(u, pdu)
			}
		}
		return reqEnd, nil
	}
	u, ok := s.Units[id]
	if !ok || s.Faults.silent(id) {
		return reqEnd, nil
	}
	resp, commit := Process(u, pdu)
	out := AppendCRC(append([]byte{id}, resp...))
	switch s.Faults.fault(id) {
	case lose:
		return reqEnd, nil
	case damage:
		out[rand.IntN(len(out))] ^= 1 << rand.IntN(8)
		commit = nil
	}
	if ls, ok := s.Port.(LineSensor); ok {
		if got, err := ls.MasterLine(); err == nil && !sameLine(got, s.Line) {
			s.mismatched.Add(1)
			out, commit = Garble(out, s.Line, got), nil
		}
	}
	start := reqEnd.Add(s.Turnaround + s.Faults.slow(id))
	if err := WritePaced(ctx, s.Port, out, start, s.Line.Char()); err != nil {
		if ctx.Err() != nil {
			return start, nil
		}
		return start, fmt.Errorf("rtu: write unit %d: %w", id, err)
	}
	if commit != nil {
		commit()
	}
	return start.Add(s.Line.Wire(len(out))), nil
}

// sameLine reports whether a master at m hears devices at d correctly.
// Linux ptys keep 8 data bits and refuse parity whatever the master asks, so
// 8 data bits and no parity on the master's side match anything.
func sameLine(m, d Line) bool {
	bits := m.DataBits == d.DataBits || m.DataBits == 8
	parity := m.Parity == d.Parity || m.Parity == "" || m.Parity == configs.ParityNone
	return m.Baud == d.Baud && bits && parity
}

// chunk is the least time between two writes of one paced answer.
const chunk = time.Millisecond

// WritePaced writes out as a line at one character per char would deliver
// it when its first byte starts at start: byte i is written no earlier than
// start + (i+1)*char. It writes in chunks at least a millisecond apart.
func WritePaced(ctx context.Context, w io.Writer, out []byte, start time.Time, char time.Duration) error {
	sent := 0
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for sent < len(out) {
		k := len(out)
		if char > 0 {
			k = min(k, max(0, int(time.Since(start)/char)))
		}
		if k > sent {
			if _, err := w.Write(out[sent:k]); err != nil {
				return err
			}
			sent = k
			if sent == len(out) {
				return nil
			}
		}
		wait := time.Until(start.Add(time.Duration(sent+1) * char))
		if sent > 0 {
			wait = max(wait, chunk)
		}
		if wait <= 0 {
			continue
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
		}
	}
	return nil
}
