package modbus

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/goburrow/modbus"

	"outpost/drivers"
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
	stale   uint64 // late replies discarded

	redial reopen
}

var _ modbus.Transporter = (*tcpTransport)(nil)

// connectError is a failure to reach the endpoint at all.
type connectError struct{ err error }

func (e *connectError) Error() string { return e.err.Error() }
func (e *connectError) Unwrap() error { return e.err }

// Send writes one request and reads frames until the one carrying the
// request's transaction id. Replies to earlier requests that arrive late are
// discarded. A timeout or I/O error closes the connection, so the next
// request starts on a clean one.
func (t *tcpTransport) Send(req []byte) ([]byte, error) {
	if len(req) < mbapHeader+1 {
		return nil, fmt.Errorf("request of %d bytes is too short", len(req))
	}
	if t.conn == nil {
		if t.redial.waiting() {
			return nil, &connectError{t.redial.err}
		}
		c, err := net.DialTimeout("tcp", t.addr, t.timeout)
		if err != nil {
			t.redial.fail(fmt.Errorf("connect %s: %w", t.addr, err))
			return nil, &connectError{t.redial.err}
		}
		t.conn = c
		t.redial.ok()
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
		if _, err := io.ReadFull(t.conn, head[:]); err != nil {
			return nil, t.fail(err)
		}
		length, err := checkMBAP(head[:])
		if err != nil {
			t.close()
			return nil, err
		}
		frame := make([]byte, mbapHeader-1+length)
		copy(frame, head[:])
		if _, err := io.ReadFull(t.conn, frame[mbapHeader:]); err != nil {
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

// checkMBAP validates a response header and returns its length field (unit
// id, function and data). It is pure, for fuzzing.
func checkMBAP(head []byte) (int, error) {
	if len(head) < mbapHeader {
		return 0, &FrameError{Kind: badLength, Detail: fmt.Sprintf("header of %d bytes", len(head))}
	}
	if p := binary.BigEndian.Uint16(head[2:]); p != 0 {
		return 0, &FrameError{Kind: "protocol id", Detail: fmt.Sprintf("got %d, want 0", p)}
	}
	length := int(binary.BigEndian.Uint16(head[4:]))
	if length < 3 || length > 254 {
		return 0, &FrameError{Kind: badLength, Detail: fmt.Sprintf("length field %d outside 3-254", length)}
	}
	return length, nil
}

// checkTCPData checks that a normal answer to a read carries as many data
// bytes as the request asked for. It is pure, for fuzzing.
func checkTCPData(req, frame []byte) error {
	if len(req) < 12 || len(frame) < 9 || frame[7] != req[7] {
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

func (t *tcpTransport) fail(err error) error {
	t.close()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return &TimeoutError{After: t.timeout}
	}
	return fmt.Errorf("connection %s: %w", t.addr, err)
}

func (t *tcpTransport) close() {
	if t.conn != nil {
		t.conn.Close()
		t.conn = nil
	}
}

// tcpLink is the driver of one Modbus TCP endpoint: one connection shared by
// the endpoint's unit ids under one lock.
type tcpLink struct {
	retries int
	devices []*device
	log     *slog.Logger

	mu       sync.Mutex // one request on the connection at a time
	tr       *tcpTransport
	packager *modbus.TCPClientHandler // its SlaveId is set per request
}

var _ drivers.Driver = (*tcpLink)(nil)

func newTCP(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	if link.Endpoint == nil {
		return nil, fmt.Errorf("modbus-tcp: link %s is not a network endpoint", link.Name())
	}
	devs, err := buildDevices(link, EndpointCost(link.Endpoint))
	if err != nil {
		return nil, err
	}
	timeout := link.Endpoint.Timeout
	if timeout <= 0 {
		timeout = time.Second
	}
	return &tcpLink{
		retries: max(link.Endpoint.Retries, 0), devices: devs, log: log,
		tr:       &tcpTransport{addr: link.Endpoint.Address, timeout: timeout, log: log},
		packager: modbus.NewTCPClientHandler(link.Endpoint.Address),
	}, nil
}

// Run polls the endpoint's devices until ctx ends.
func (l *tcpLink) Run(ctx context.Context, emit drivers.Emit) error {
	runDevices(ctx, l.devices, l, emit, l.log)
	l.mu.Lock()
	l.tr.close()
	l.mu.Unlock()
	return nil
}

func (l *tcpLink) read(ctx context.Context, unit byte, r Request) ([]byte, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.packager.SlaveId = unit
	c := modbus.NewClient2(l.packager, l.tr)
	var err error
	for try := 0; try <= l.retries; try++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var data []byte
		data, err = readRequest(c, r)
		if err == nil {
			return data, nil
		}
		var ce *connectError
		if errors.As(err, &ce) {
			return nil, &linkDownError{err}
		}
		if isException(err) {
			return nil, err
		}
	}
	return nil, err
}
