package bus

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"syscall"
	"time"

	"go.bug.st/serial"

	"outpost/configs"
)

// Port is what a transport needs of a serial port.
type Port interface {
	io.ReadWriteCloser
	// SetReadTimeout bounds the next reads; a read that times out
	// returns (0, nil).
	SetReadTimeout(time.Duration) error
	// ResetInputBuffer drops what arrived and was not read: a late answer,
	// or noise.
	ResetInputBuffer() error
}

// ReadBy reads what the port has, waiting at most until limit. Past the
// limit it still takes what already arrived: a gateway that was not
// scheduled in time must not count an answer that came in time as missing.
// expired says that nothing came and the limit has passed.
func ReadBy(p Port, buf []byte, limit time.Time) (n int, expired bool, err error) {
	if err := p.SetReadTimeout(max(time.Until(limit), 0)); err != nil {
		return 0, false, err
	}
	n, err = p.Read(buf)
	return n, n == 0 && err == nil && !time.Now().Before(limit), err
}

// OpenFunc opens a serial port.
type OpenFunc func(path string, mode *serial.Mode) (Port, error)

// OpenSerial opens a serial port: go.bug.st/serial sets the line up
// (speed, framing, exclusive access) and flushes it, and the bytes go
// through Go's network poller on a second descriptor of the same port,
// opened just before (exclusive access keeps others out, not one opened
// already). go.bug.st/serial's own Read waits in select(2): a goroutine
// blocked in a system call for the length of an answer makes the Go
// runtime's monitor wake every few tens of microseconds, and a station of
// 200 devices cost 3.6% of a core idle for it; through the poller, a
// waiting read costs nothing.
func OpenSerial(path string, mode *serial.Mode) (Port, error) {
	f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, openHint(err)
	}
	sp, err := serial.Open(path, mode)
	if err != nil {
		f.Close()
		return nil, openHint(err)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		sp.Close()
		return nil, err
	}
	return &polledPort{f: f, rc: rc, sp: sp, timeout: -1}, nil
}

// openHint adds to why a serial port did not open what an installer
// checks for it.
func openHint(err error) error {
	var pe *serial.PortError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: the adapter is unplugged, or the port is named wrong (gateway ports lists those there are)", err)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: the gateway's user may not open it: add the user to group dialout (the packaged service's user outpost is in it)", err)
	case errors.Is(err, syscall.EBUSY), errors.As(err, &pe) && pe.Code() == serial.PortBusy:
		return fmt.Errorf("%w: another program holds the port (another gateway, gateway read or commission while the service runs, or ModemManager)", err)
	}
	return err
}

// polledPort reads and writes a serial port through Go's poller, and
// leaves the line's settings to go.bug.st/serial.
type polledPort struct {
	f       *os.File
	rc      syscall.RawConn // f's descriptor, for a read that does not wait
	sp      serial.Port
	timeout time.Duration // < 0: none
}

// Read returns what came by the read timeout: (0, nil) when nothing did.
func (p *polledPort) Read(b []byte) (int, error) {
	if p.timeout == 0 {
		return p.readNow(b)
	}
	var deadline time.Time
	if p.timeout >= 0 {
		deadline = time.Now().Add(p.timeout)
	}
	if err := p.f.SetReadDeadline(deadline); err != nil {
		return 0, err
	}
	n, err := p.f.Read(b)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return n, nil
	}
	return n, err
}

// readNow reads what has arrived, without waiting. A read deadline that
// has passed would not do: Go's poller refuses the read before it looks.
func (p *polledPort) readNow(b []byte) (n int, err error) {
	if err := p.f.SetReadDeadline(time.Time{}); err != nil {
		return 0, err
	}
	if rerr := p.rc.Read(func(fd uintptr) bool {
		n, err = syscall.Read(int(fd), b)
		return true // never wait
	}); rerr != nil {
		return 0, rerr
	}
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return 0, nil
	case err != nil:
		return 0, &os.PathError{Op: "read", Path: p.f.Name(), Err: err}
	case n == 0 && len(b) > 0:
		return 0, io.EOF
	}
	return n, nil
}

func (p *polledPort) Write(b []byte) (int, error) { return p.f.Write(b) }

func (p *polledPort) SetReadTimeout(d time.Duration) error {
	p.timeout = d
	return nil
}

func (p *polledPort) ResetInputBuffer() error { return p.sp.ResetInputBuffer() }

func (p *polledPort) Close() error { return errors.Join(p.f.Close(), p.sp.Close()) }

// Mode is the port mode of a serial line. InitialStatusBits stays unset:
// virtual ports refuse it.
func Mode(s *configs.Serial) (*serial.Mode, error) {
	m := &serial.Mode{BaudRate: s.Baud, DataBits: s.DataBits, StopBits: serial.OneStopBit}
	switch s.StopBits {
	case 0, 1:
	case 2:
		m.StopBits = serial.TwoStopBits
	default:
		return nil, fmt.Errorf("stop bits %d not supported", s.StopBits)
	}
	switch s.Parity {
	case "", configs.ParityNone:
		m.Parity = serial.NoParity
	case configs.ParityEven:
		m.Parity = serial.EvenParity
	case configs.ParityOdd:
		m.Parity = serial.OddParity
	default:
		return nil, fmt.Errorf("parity %q not supported", s.Parity)
	}
	return m, nil
}

// Port reopen and redial backoff. A local port is tried again at least
// every PortReopenMax: opening one that is missing costs nothing, and an
// adapter plugged back in must carry a panic press at once, not up to
// ReopenMax later. A device's endpoint is redialled at most every
// ReopenMax.
const (
	ReopenMin     = 250 * time.Millisecond
	ReopenMax     = 10 * time.Second
	PortReopenMax = time.Second
)

// Reopen paces attempts to open a port or dial an endpoint after failures,
// remembering the last failure to report meanwhile.
type Reopen struct {
	Max   time.Duration // the longest pause; ReopenMax when 0
	next  time.Time
	delay time.Duration
	err   error // the last failure; nil while the link works
}

// Waiting says whether the next attempt must wait.
func (r *Reopen) Waiting() bool { return time.Now().Before(r.next) }

// Fail records a failed attempt and doubles the pause before the next one.
func (r *Reopen) Fail(err error) {
	longest := r.Max
	if longest == 0 {
		longest = ReopenMax
	}
	r.delay = min(max(2*r.delay, ReopenMin), longest)
	r.next = time.Now().Add(r.delay)
	r.err = err
}

// OK records a success.
func (r *Reopen) OK() { r.delay, r.err = 0, nil }

// Err is the last failure, nil while the link works.
func (r *Reopen) Err() error { return r.err }

// Delay is the pause before the next attempt.
func (r *Reopen) Delay() time.Duration { return r.delay }

// LinkDownError is a link that cannot carry requests at all (port missing,
// endpoint refusing connections): every device on it is offline at once.
type LinkDownError struct{ Err error }

func (e *LinkDownError) Error() string { return e.Err.Error() }
func (e *LinkDownError) Unwrap() error { return e.Err }

// PortError is a failure of the port itself (EIO, unplugged, closed): the
// port is closed and reopened.
type PortError struct{ Err error }

func (e *PortError) Error() string { return e.Err.Error() }
func (e *PortError) Unwrap() error { return e.Err }

// Serial is the port of a serial bus, opened when first needed and
// reopened with backoff after it failed. It is not safe for concurrent
// use: the bus's wire lock serialises it.
type Serial struct {
	path   string
	mode   *serial.Mode
	open   OpenFunc
	log    *slog.Logger
	port   Port
	reopen Reopen
	// warned is the open failure last logged, and when: the same one
	// again is logged once a minute, not at every try.
	warned   string
	warnedAt time.Time
}

// warnEvery is how often a port that stays unavailable for the same
// reason is logged again.
const warnEvery = time.Minute

// NewSerial is the port of a serial line; open is OpenSerial unless a test
// says otherwise. It does no I/O.
func NewSerial(s *configs.Serial, open OpenFunc, log *slog.Logger) (*Serial, error) {
	mode, err := Mode(s)
	if err != nil {
		return nil, err
	}
	if open == nil {
		open = OpenSerial
	}
	return &Serial{path: s.Port, mode: mode, open: open, log: log, reopen: Reopen{Max: PortReopenMax}}, nil
}

// Path is the port's path.
func (s *Serial) Path() string { return s.path }

// Port returns the open port, opening it unless it waits out a backoff;
// opened says it was opened now (a transport on it starts afresh). The
// error is a LinkDownError.
func (s *Serial) Port() (p Port, opened bool, err error) {
	if s.port != nil {
		return s.port, false, nil
	}
	if s.reopen.Waiting() {
		return nil, false, &LinkDownError{s.reopen.err}
	}
	p, err = s.open(s.path, s.mode)
	if err != nil {
		if pe := (*fs.PathError)(nil); !errors.As(err, &pe) || pe.Path != s.path {
			err = fmt.Errorf("open %s: %w", s.path, err) // name the port once
		}
		s.reopen.Fail(err)
		if now := time.Now(); err.Error() != s.warned || now.Sub(s.warnedAt) >= warnEvery {
			s.warned, s.warnedAt = err.Error(), now
			s.log.Warn("serial port unavailable", "port", s.path, "retry_in", s.reopen.delay, "err", err)
		}
		return nil, false, &LinkDownError{s.reopen.err}
	}
	if s.reopen.err != nil {
		s.log.Info("serial port open again", "port", s.path)
	}
	s.warned = ""
	s.reopen.OK()
	s.port = p
	return p, true, nil
}

// Fail closes the port after it failed (err, a PortError's cause) and
// returns the LinkDownError that its devices report until it is open
// again.
func (s *Serial) Fail(err error) error {
	s.Close()
	s.reopen.Fail(fmt.Errorf("port %s failed: %w", s.path, err))
	s.log.Warn("serial port failed, closing", "port", s.path, "err", err)
	return &LinkDownError{s.reopen.err}
}

// Close closes the port if it is open.
func (s *Serial) Close() {
	if s.port != nil {
		s.port.Close()
		s.port = nil
	}
}
