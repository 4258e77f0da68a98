package modbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/goburrow/modbus"
	"go.bug.st/serial"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/drivers"
)

// serialPort is what the RTU transport needs of a serial port.
type serialPort interface {
	io.ReadWriteCloser
	SetReadTimeout(time.Duration) error
	ResetInputBuffer() error
}

// rtuTransport sends RTU frames on a serial port and reads the answers. It
// implements goburrow's Transporter; goburrow's RTU packager frames the
// requests. It is not safe for concurrent use: the bus lock serialises it.
type rtuTransport struct {
	port    serialPort
	timeout time.Duration // per request, beyond the frames' own wire time
	silence time.Duration // between frames on the line
	char    time.Duration // one character on the line
	last    time.Time     // when the line last carried a byte
	buf     [256]byte
}

var _ modbus.Transporter = (*rtuTransport)(nil)

// portError is a failure of the port itself (EIO, unplugged, closed): the
// port is closed and reopened.
type portError struct{ err error }

func (e *portError) Error() string { return e.err.Error() }
func (e *portError) Unwrap() error { return e.err }

// Send writes one request after the inter-frame silence and reads its
// response by expected length, stopping early on an exception frame.
func (t *rtuTransport) Send(req []byte) ([]byte, error) {
	want, err := rtuResponseLength(req)
	if err != nil {
		return nil, err
	}
	if d := time.Until(t.last.Add(t.silence)); d > 0 {
		time.Sleep(d)
	}
	// Whatever arrived since the last frame is stale: a late answer or noise.
	if err := t.port.ResetInputBuffer(); err != nil {
		return nil, &portError{fmt.Errorf("flush input: %w", err)}
	}
	if _, err := t.port.Write(req); err != nil {
		return nil, &portError{fmt.Errorf("write: %w", err)}
	}
	t.last = time.Now()
	// The device has Timeout to answer once both frames had time to cross
	// the line; at 9600 baud 125 registers take 0.27 s on the wire.
	deadline := t.last.Add(t.timeout + time.Duration(len(req)+want)*t.char)
	n := 0
	for n < want {
		remaining := time.Until(deadline)
		if remaining <= 0 {
			return nil, &TimeoutError{After: t.timeout, Got: n}
		}
		if err := t.port.SetReadTimeout(remaining); err != nil {
			return nil, &portError{err}
		}
		m, err := t.port.Read(t.buf[n:want])
		if err != nil {
			return nil, &portError{fmt.Errorf("read: %w", err)}
		}
		if m == 0 {
			continue
		}
		n += m
		t.last = time.Now()
		if t.buf[0] != req[0] {
			return nil, t.resync(deadline, n, badUnit, fmt.Sprintf("got %d, want %d", t.buf[0], req[0]))
		}
		if n >= 2 {
			switch t.buf[1] {
			case req[1]:
			case req[1] | 0x80:
				want = rtuExceptionBytes
				n = min(n, want)
			default:
				return nil, t.resync(deadline, n, badFunction, fmt.Sprintf("got %d, want %d", t.buf[1], req[1]))
			}
		}
		if n >= 3 && t.buf[1] == req[1] && int(t.buf[2]) != want-rtuResponseBytes {
			return nil, t.resync(deadline, n, badLength, fmt.Sprintf("byte count %d, want %d", t.buf[2], want-rtuResponseBytes))
		}
	}
	if fe, ok := checkRTU(req, t.buf[:n]).(*FrameError); ok {
		return nil, t.resync(deadline, n, fe.Kind, fe.Detail)
	}
	return append([]byte(nil), t.buf[:n]...), nil
}

// rtuExceptionBytes is the length of an exception frame.
const rtuExceptionBytes = 5

// resync drains the line until it has been silent for a frame gap (or the
// deadline passes) and reports the bad frame with the bytes it dropped.
func (t *rtuTransport) resync(deadline time.Time, got int, kind, detail string) error {
	dropped := got
	gap := max(t.silence, 2*time.Millisecond)
	var scratch [256]byte
	for time.Now().Before(deadline) {
		if err := t.port.SetReadTimeout(gap); err != nil {
			break
		}
		m, err := t.port.Read(scratch[:])
		if err != nil || m == 0 {
			break
		}
		dropped += m
		t.last = time.Now()
	}
	return &FrameError{Kind: kind, Detail: detail, Dropped: dropped}
}

// openFunc opens a serial port.
type openFunc func(path string, mode *serial.Mode) (serialPort, error)

func openSerial(path string, mode *serial.Mode) (serialPort, error) {
	return serial.Open(path, mode)
}

// serialMode is the port mode of a bus. InitialStatusBits stays unset:
// virtual ports refuse it.
func serialMode(b *configs.Serial) (*serial.Mode, error) {
	m := &serial.Mode{BaudRate: b.Baud, DataBits: b.DataBits, StopBits: serial.OneStopBit}
	switch b.StopBits {
	case 0, 1:
	case 2:
		m.StopBits = serial.TwoStopBits
	default:
		return nil, fmt.Errorf("stop bits %d not supported", b.StopBits)
	}
	switch b.Parity {
	case "", configs.ParityNone:
		m.Parity = serial.NoParity
	case configs.ParityEven:
		m.Parity = serial.EvenParity
	case configs.ParityOdd:
		m.Parity = serial.OddParity
	default:
		return nil, fmt.Errorf("parity %q not supported", b.Parity)
	}
	return m, nil
}

// Port reopen and redial backoff.
const (
	reopenMin = 250 * time.Millisecond
	reopenMax = 10 * time.Second
)

// reopen paces attempts to open a port or dial an endpoint after failures,
// remembering the last failure to report meanwhile.
type reopen struct {
	next  time.Time
	delay time.Duration
	err   error // the last failure; nil while the link works
}

// waiting says whether the next attempt must wait.
func (r *reopen) waiting() bool { return time.Now().Before(r.next) }

// fail records a failed attempt and doubles the pause before the next one.
func (r *reopen) fail(err error) {
	r.delay = min(max(2*r.delay, reopenMin), reopenMax)
	r.next = time.Now().Add(r.delay)
	r.err = err
}

// ok records a success.
func (r *reopen) ok() { r.delay, r.err = 0, nil }

// rtuBus is the driver of one RS-485 bus: one port, one wire lock, every
// device on the bus polled by its own goroutine, one request at a time.
type rtuBus struct {
	bus     *mb.RTU
	devices []*device
	log     *slog.Logger
	open    openFunc
	mode    *serial.Mode
	line    *line

	// Under the wire lock:
	tr        *rtuTransport
	packagers map[byte]modbus.Packager
	reopen    reopen
}

var _ drivers.Driver = (*rtuBus)(nil)

func newRTU(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	bus, ok := link.Config.Settings.(*mb.RTU)
	if !ok {
		return nil, fmt.Errorf("modbus-rtu: link %s is not a serial bus", link.Name())
	}
	mode, err := serialMode(&bus.Serial)
	if err != nil {
		return nil, fmt.Errorf("bus %s: %w", link.Name(), err)
	}
	devs, err := buildDevices(link, BusCost(bus))
	if err != nil {
		return nil, err
	}
	b := &rtuBus{bus: bus, devices: devs, log: log, open: openSerial, mode: mode, packagers: map[byte]modbus.Packager{},
		line: newLine(link.Name(), busHint, devs, log)}
	for _, d := range devs {
		h := modbus.NewRTUClientHandler("")
		h.SlaveId = d.unit
		b.packagers[d.unit] = h
	}
	return b, nil
}

// Run polls the bus's devices until ctx ends.
func (b *rtuBus) Run(ctx context.Context, emit drivers.Emit) error {
	runDevices(ctx, b.line, b.devices, b, emit, b.log)
	b.closePort() // every poller has stopped
	return nil
}

func (b *rtuBus) timeout() time.Duration {
	if b.bus.Timeout > 0 {
		return b.bus.Timeout
	}
	return 500 * time.Millisecond
}

// ensurePort opens the port unless it is open or waiting out a backoff.
// The caller holds the wire lock.
func (b *rtuBus) ensurePort() error {
	if b.tr != nil {
		return nil
	}
	if b.reopen.waiting() {
		return &linkDownError{b.reopen.err}
	}
	p, err := b.open(b.bus.Port, b.mode)
	if err != nil {
		b.reopen.fail(fmt.Errorf("open %s: %w", b.bus.Port, err))
		b.log.Warn("serial port unavailable", "port", b.bus.Port, "retry_in", b.reopen.delay, "err", err)
		return &linkDownError{b.reopen.err}
	}
	if b.reopen.err != nil {
		b.log.Info("serial port open again", "port", b.bus.Port)
	}
	b.reopen.ok()
	b.tr = &rtuTransport{port: p, timeout: b.timeout(), silence: Silence(b.bus), char: b.bus.CharTime()}
	return nil
}

func (b *rtuBus) closePort() {
	if b.tr != nil {
		b.tr.port.Close()
		b.tr = nil
	}
}

// read executes one request for a unit, with the bus's retries unless the
// attempt says once. The caller holds the wire lock.
func (b *rtuBus) read(ctx context.Context, unit byte, r Request, a attempt) ([]byte, error) {
	tries, timeout := a.on(b.bus.Retries, b.timeout())
	var err error
	for try := 0; try < tries; try++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err = b.ensurePort(); err != nil {
			return nil, err
		}
		b.tr.timeout = timeout
		var data []byte
		data, err = readRequest(modbus.NewClient2(b.packagers[unit], b.tr), r)
		if err == nil {
			return data, nil
		}
		var pe *portError
		if errors.As(err, &pe) {
			b.closePort()
			b.reopen.fail(fmt.Errorf("port %s failed: %w", b.bus.Port, pe.err))
			b.log.Warn("serial port failed, closing", "port", b.bus.Port, "err", pe.err)
			return nil, &linkDownError{b.reopen.err}
		}
		if isException(err) {
			return nil, err // a device's answer; asking again changes nothing
		}
	}
	return nil, err
}
