package modbus

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/goburrow/modbus"
	"golang.org/x/sys/unix"

	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/drivers/bus"
)

// MBAP header: transaction id, protocol id, length, unit id.
const mbapHeader = 7

// tcpTransport keeps one connection to an endpoint and exchanges frames on
// it. It implements goburrow's Transporter; goburrow's TCP packager frames
// the requests. It is not safe for concurrent use: the endpoint lock
// serialises it.
type tcpTransport struct {
	addr    string
	timeout time.Duration
	log     *slog.Logger
	conn    net.Conn
	in      *bufio.Reader // of conn: a reply in one read, not its header and then the rest
	stale   uint64        // late replies discarded

	// A connection on which nothing at all came back for redialAfter
	// (default: redialSilence, or 3 timeouts if longer) is closed at its
	// next timeout: it may be half open (a firewall that forgot it, a peer
	// gone without a word). Any unit that answers keeps it alive, so one
	// silent unit never closes it.
	redialAfter time.Duration
	heard       time.Time // when the connection was made or last carried a frame
	answered    bool      // the connection carried a frame

	redial bus.Reopen
}

var _ modbus.Transporter = (*tcpTransport)(nil)

// connectError is a failure to reach the endpoint at all.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// Send writes one request and reads frames until the one carrying the
// request's transaction id. Replies to earlier requests that arrive late are
// discarded, so a timeout leaves the connection usable: it stays up for the
// other units behind the endpoint (a Modbus TCP gateway serves many, and one
// of them not answering says nothing about the others). A timeout in the
// middle of a frame, an I/O error or a bad frame closes it, so the next
// request starts on a clean one.
func (t *tcpTransport) Send(req []byte) ([]byte, error) {
	if len(req) < mbapHeader+1 {
		return nil, fmt.Errorf("request of %d bytes is too short", len(req))
	}
	if t.conn == nil {
		if t.redial.Waiting() {
			return nil, &connectError{t.redial.Err()}
		}
		c, err := net.DialTimeout("tcp", t.addr, t.timeout)
		if err != nil {
			t.redial.Fail(fmt.Errorf("connect %s: %w", t.addr, err))
			return nil, &connectError{t.redial.Err()}
		}
		t.use(c) // redial.OK at its first frame: see fail
	}
	if err := t.conn.SetDeadline(time.Now().Add(t.timeout)); err != nil {
		return nil, t.fail(err)
	}
	if _, err := t.conn.Write(req); err != nil {
		return nil, t.fail(err)
	}
	tid := binary.BigEndian.Uint16(req)
	for {
		var head [mbapHeader]byte
		if n, err := io.ReadFull(t.in, head[:]); err != nil {
			if n == 0 && isTimeout(err) && t.waiting() {
				// The reply came in time and the gateway looked late
				// (a loaded machine): read it.
				if err := t.conn.SetReadDeadline(time.Now().Add(t.timeout)); err != nil {
					return nil, t.fail(err)
				}
				continue
			}
			if n == 0 && isTimeout(err) {
				// Between frames: the stream is intact.
				limit := t.redialAfter
				if limit <= 0 {
					limit = max(redialSilence, 3*t.timeout)
				}
				if time.Since(t.heard) > limit {
					t.log.Debug("nothing heard on the connection; closing it", "for", time.Since(t.heard).Round(time.Millisecond))
					t.close()
				}
				return nil, &TimeoutError{After: t.timeout}
			}
			return nil, t.fail(err)
		}
		t.heard = time.Now()
		if !t.answered {
			t.answered = true
			t.redial.OK()
		}
		length, err := checkMBAP(head[:])
		if err != nil {
			t.close()
			return nil, err
		}
		frame := make([]byte, mbapHeader-1+length)
		copy(frame, head[:])
		if _, err := io.ReadFull(t.in, frame[mbapHeader:]); err != nil {
			return nil, t.fail(err)
		}
		got := binary.BigEndian.Uint16(frame)
		if got == tid {
			if err := checkTCPData(req, frame); err != nil {
				return nil, err
			}
			return frame, nil
		}
		if age := tid - got; age > 0 && age < 0x8000 {
			// A reply to an earlier request that timed out: skip it.
			t.stale++
			t.log.Debug("discarded late reply", "transaction", got, "want", tid)
			continue
		}
		t.close()
		return nil, &FrameError{Kind: "transaction id", Detail: fmt.Sprintf("got %d, want %d", got, tid)}
	}
}

// waiting says whether bytes wait in the connection's socket.
func (t *tcpTransport) waiting() bool {
	sc, ok := t.conn.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := 0
	rc.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
	return n > 0
}

// redialSilence is how long without a frame makes a connection suspect
// (see tcpTransport.redialAfter).
const redialSilence = 10 * time.Second

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkMBAP validates a response header and returns its length field (unit
// id, function and data). It is pure, for fuzzing.
func checkMBAP(head []byte) (int, error) {
	if len(head) < mbapHeader {
		return 0, &FrameError{Kind: badLength, Detail: fmt.Sprintf("header of %d bytes", len(head))}
	}
	if p := binary.BigEndian.Uint16(head[2:]); p != 0 {
		if text(head[:mbapHeader]) {
			// "HTTP/1.", "SSH-2.0": a service of another protocol.
			return 0, &FrameError{Kind: "not Modbus TCP", Detail: fmt.Sprintf("the answer begins with the text %q: another service listens at this address and port", head[:mbapHeader])}
		}
		return 0, &FrameError{Kind: "protocol id", Detail: fmt.Sprintf("got %d, want 0", p)}
	}
	length := int(binary.BigEndian.Uint16(head[4:]))
	if length < 3 || length > 254 {
		return 0, &FrameError{Kind: badLength, Detail: fmt.Sprintf("length field %d outside 3-254", length)}
	}
	return length, nil
}

// text says whether b is printable ASCII, as no MBAP header is (its
// protocol id is 0).
func text(b []byte) bool {
	for _, c := range b {
		if c < ' ' || c > '~' {
			return false
		}
	}
	return true
}

// checkTCPData checks that a normal answer to a read carries as many data
// bytes as the request asked for. It is pure, for fuzzing.
func checkTCPData(req, frame []byte) error {
	if len(req) < 12 || len(frame) < 9 || frame[7] != req[7] || !isRead(req[7]) {
		return nil // not a read, or an exception: goburrow judges it
	}
	want, err := rtuResponseLength(req[6:12])
	if err != nil {
		return nil
	}
	want -= rtuResponseBytes
	if int(frame[8]) != want || len(frame) != 9+want {
		return &FrameError{Kind: badLength, Detail: fmt.Sprintf("%d data bytes, byte count %d, want %d", len(frame)-9, frame[8], want)}
	}
	return nil
}

// fail closes the connection after a failure in the middle of an exchange.
func (t *tcpTransport) fail(err error) error {
	fresh := !t.answered
	t.close()
	if isTimeout(err) {
		return &TimeoutError{After: t.timeout}
	}
	if fresh {
		// Taken and closed before any frame: an endpoint whose
		// connections are all taken does that. As a refused connection,
		// every unit behind it is down, and it is dialled again with
		// backoff. The words are the same at every try (not the local
		// port of each), so that the device's health does not change at
		// each of them.
		t.log.Debug("connection closed before any answer", "err", err)
		t.redial.Fail(fmt.Errorf("%s closed the connection before any answer: it may take no more connections (another master, or a Modbus tool on a laptop, holds them)", t.addr))
		return &connectError{t.redial.Err()}
	}
	return fmt.Errorf("connection %s: %w", t.addr, err)
}

// use makes c the connection.
func (t *tcpTransport) use(c net.Conn) {
	t.conn, t.in, t.heard, t.answered = c, bufio.NewReaderSize(c, 1024), time.Now(), false
}

func (t *tcpTransport) close() {
	if t.conn != nil {
		t.conn.Close()
		t.conn, t.in = nil, nil
	}
}

// tcpLink is the driver of one Modbus TCP endpoint: one connection shared by
// the endpoint's unit ids under one wire lock.
type tcpLink struct {
	links
	nretries int
	wait     time.Duration // a request's timeout

	// Under the wire lock:
	tr       *tcpTransport
	packager *modbus.TCPClientHandler // its SlaveId is set per request
}

var (
	_ drivers.Driver    = (*tcpLink)(nil)
	_ drivers.Commander = (*tcpLink)(nil)
)

func newTCP(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	ep, ok := link.Config.Settings.(*mb.TCP)
	if !ok {
		return nil, fmt.Errorf("modbus-tcp: link %s is not a network endpoint", link.Name())
	}
	devs, err := buildDevices(link, EndpointCost(ep))
	if err != nil {
		return nil, err
	}
	timeout := ep.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	l := &tcpLink{
		nretries: max(ep.Retries, 0), wait: timeout,
		tr:       &tcpTransport{addr: ep.Address, timeout: timeout, log: log},
		packager: modbus.NewTCPClientHandler(ep.Address),
	}
	l.links = newLinks(link, endpointHint, devs, l, log)
	return l, nil
}

// Run polls the endpoint's devices until ctx ends.
func (l *tcpLink) Run(ctx context.Context, emit drivers.Emit) error {
	l.run(ctx, emit)
	l.tr.close() // every poller has stopped
	return nil
}

// exchange runs f on a client of the unit, once; an endpoint that cannot
// be reached is a bus.LinkDownError. The caller holds the wire lock.
func (l *tcpLink) exchange(unit byte, timeout time.Duration, f func(modbus.Client) error) error {
	l.packager.SlaveId = unit
	l.tr.timeout = timeout
	err := f(modbus.NewClient2(l.packager, l.tr))
	var ce *connectError
	if errors.As(err, &ce) {
		return &bus.LinkDownError{Err: err}
	}
	return err
}

// read executes one request for a unit, with the endpoint's retries unless
// the attempt says once. The caller holds the wire lock.
func (l *tcpLink) read(ctx context.Context, unit byte, r Request, a bus.Attempt, note func(error)) ([]byte, error) {
	tries, timeout := a.On(l.nretries, l.wait)
	var err error
	for try := 0; try < tries; try++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && note != nil {
			note(err)
		}
		var data []byte
		err = l.exchange(unit, timeout, func(c modbus.Client) (err error) {
			data, err = readRequest(c, r)
			return err
		})
		if err == nil {
			return data, nil
		}
		var ld *bus.LinkDownError
		if isException(err) || errors.As(err, &ld) {
			return nil, err
		}
	}
	return nil, err
}

// do runs one exchange of a write. The caller holds the wire lock. A
// connection carries no other master's frames: there is nothing to note.
func (l *tcpLink) do(ctx context.Context, unit byte, f func(modbus.Client) error, _ func(error)) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return l.exchange(unit, l.wait, f)
}

// retries are the endpoint's extra tries of a failed request.
func (l *tcpLink) retries() int { return l.nretries }

func (l *tcpLink) timeout() time.Duration { return l.wait }

// damaged is "": TCP carries frames whole, so a damaged one is the
// device's, not the link's.
func (l *tcpLink) damaged() string { return "" }
