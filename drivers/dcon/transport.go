package dcon

import (
	"bytes"
	"fmt"
	"time"

	"outpost/drivers/bus"
)

// TimeoutError is a command that got no answer, or no complete one, in
// time.
type TimeoutError struct {
	After time.Duration
	Got   int // bytes received
	Late  int // bytes that came after the timeout, dropped
}

func (e *TimeoutError) Error() string {
	if e.Late > 0 {
		return fmt.Sprintf("timeout after %v (%d bytes of a late answer dropped)", e.After, e.Late)
	}
	if e.Got > 0 {
		return fmt.Sprintf("timeout after %v (%d bytes of an answer)", e.After, e.Got)
	}
	return fmt.Sprintf("timeout after %v", e.After)
}

// maxAnswer is the longest answer read: a DCON answer is a few dozen
// characters at most (the buffer holds an echo of the command before it).
const maxAnswer = 64

// transport exchanges commands and answers on a serial port. It is not
// safe for concurrent use: the bus's wire lock serialises it.
type transport struct {
	port     bus.Port
	timeout  time.Duration // per command, beyond the frames' wire time
	char     time.Duration // one character on the line
	late     int           // bytes of late answers dropped
	unsynced bool          // a command went unanswered: see sync
	buf      [2 * maxAnswer]byte
}

// sync realigns answers with commands after a command went unanswered:
// it sends cmd (a module's $AAM) and drops every frame until one that parse
// accepts (that module's name answer), or the timeout passes. An answer to
// $AA6 does not say which module sent it, so one that came after its
// timeout would otherwise be taken for the answer to a later command, to
// another module, and its I/O for that module's; the flush before each
// command cannot help when the late answer is still on its way. Modules
// answer in the order they are asked, so once a name answer came, every
// late answer came before it.
//
// want is the name answer the module's template expects. A frame that is
// want with one character damaged is taken for it, and parse's error of it
// returned as damage: it came after every late answer, as the whole one
// would have. Another module's name answer (a sync's that timed out) can
// be one character off too, and so can a late $AA6 answer without
// checksum; but after either no late $AA6 answer is still to come, only
// name answers, which fail to parse as I/O and set the bus out of step
// again (see Bus.ask). On a line that
// damages one byte in twenty, four name answers in ten are damaged, and a
// sync that waited on past them cost its command a timeout each time:
// failed syncs held the DCON line of serial-noise half of the time, and a
// panic box went a second without a whole answer.
func (t *transport) sync(cmd []byte, parse func([]byte) error, want []byte) (damage, err error) {
	frame, err := t.exchange(cmd, 0, true) // a byte at a time: the name answer may follow a late one at once
	deadline := time.Now().Add(t.timeout)
	for {
		if err != nil {
			return nil, err
		}
		perr := parse(frame)
		if perr == nil || oneOff(frame, want) {
			t.unsynced = false
			return perr, nil
		}
		t.late += len(frame)
		if !time.Now().Before(deadline) {
			return nil, &TimeoutError{After: t.timeout}
		}
		frame, err = t.read(deadline, 0, true, nil)
	}
}

// oneOff says whether a is b with one character changed.
func oneOff(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	diff := 0
	for i := range a {
		if a[i] != b[i] {
			diff++
		}
	}
	return diff == 1
}

// gap is how long a pause in the middle of an answer may be before the
// answer is taken for cut short (its CR lost to noise): a module sends its
// answer in one go, so a few characters' silence ends it; the floor leaves
// room for the scheduler of a loaded machine and the chunks of a USB
// adapter.
func (t *transport) gap() time.Duration { return max(8*t.char, 20*time.Millisecond) }

// exchange sends a command and reads an answer: the bytes up to and
// including its CR; or, when the answer's length is known (want > 0) and
// that many bytes came without a CR, those; or what came before a gap.
// Whatever was waiting before the command is dropped first: a late answer
// or noise. byByte leaves what follows the answer's CR in the port (see
// read). It returns a TimeoutError when nothing came, and a
// bus.PortError when the port failed.
func (t *transport) exchange(cmd []byte, want int, byByte bool) ([]byte, error) {
	if err := t.port.ResetInputBuffer(); err != nil {
		return nil, &bus.PortError{Err: fmt.Errorf("flush input: %w", err)}
	}
	if _, err := t.port.Write(cmd); err != nil {
		return nil, &bus.PortError{Err: fmt.Errorf("write: %w", err)}
	}
	deadline := time.Now().Add(t.timeout + time.Duration(len(cmd)+max(want, 8))*t.char)
	frame, err := t.read(deadline, want, byByte, cmd)
	if _, ok := err.(*TimeoutError); ok {
		t.unsynced = true // its answer may still come: see sync
	}
	return frame, err
}

// read reads a frame by the deadline: the bytes up to and including its
// CR; or, when want > 0 and that many came without a CR, those; or what
// came before a gap (cut short: the parser says how). byByte reads a byte
// at a time, so that what follows the CR (the next frame) stays in the
// port. It returns a TimeoutError when nothing came.
//
// A frame equal to echo, the command just sent, is the adapter's own
// transmission heard back (a two-wire RS-485 adapter whose receiver
// stays on while it sends): it is dropped and the answer read after it.
// An answer never equals its command (answers begin with !, ? or >).
func (t *transport) read(deadline time.Time, want int, byByte bool, echo []byte) ([]byte, error) {
	n := 0
	var last time.Time
	for {
		limit := deadline
		if gap := last.Add(t.gap()); n > 0 && gap.Before(limit) {
			limit = gap
		}
		end := len(t.buf)
		if byByte {
			end = n + 1
		}
		m, expired, err := bus.ReadBy(t.port, t.buf[n:end], limit)
		if err != nil {
			return nil, &bus.PortError{Err: fmt.Errorf("read: %w", err)}
		}
		if expired && n == 0 {
			return nil, &TimeoutError{After: t.timeout}
		}
		if expired {
			return t.buf[:n:n], nil
		}
		if m == 0 {
			continue
		}
		scan := n
		n += m
		last = time.Now()
		if i := bytes.IndexByte(t.buf[scan:n], cr); i >= 0 {
			end := scan + i + 1
			if echo == nil || !bytes.Equal(t.buf[:end], echo) {
				return t.buf[:end:end], nil
			}
			n, echo = copy(t.buf[:], t.buf[end:n]), nil
			if i := bytes.IndexByte(t.buf[:n], cr); i >= 0 {
				return t.buf[: i+1 : i+1], nil
			}
		}
		if echo != nil && bytes.HasPrefix(echo, t.buf[:n]) {
			continue // the echo, so far
		}
		if want > 0 && n >= want || n == len(t.buf) {
			return t.buf[:n:n], nil
		}
	}
}
