package slave

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// TCP serves Modbus TCP (MBAP) for the units behind one endpoint, on any
// number of concurrent connections. Requests for unknown unit ids are
// answered with exception 0x0B (gateway target failed to respond).
type TCP struct {
	Units map[byte]Unit
	Log   *slog.Logger
	// Deaf, when set and true, makes the devices ignore requests.
	Deaf *atomic.Bool
	// Faults say what each unit does wrong now. A silent unit id gets no
	// answer at all, not even an exception: a device that is off, or a
	// unit id that is wrong, behind a Modbus gateway that stays silent for
	// it as many do; a flaky one loses answers (TCP carries no damage).
	Faults Faults
}

// mbapLen is the MBAP header length (transaction, protocol, length, unit).
const mbapLen = 7

// Serve accepts connections on ln until ctx ends; it then closes ln and
// every connection and returns nil once all their goroutines are done.
func (s *TCP) Serve(ctx context.Context, ln net.Listener) error {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]struct{}{}
	)
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tcp %s: accept: %w", ln.Addr(), err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = struct{}{}
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := s.serveConn(c)
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			c.Close()
			if err != nil && ctx.Err() == nil {
				s.Log.Debug("modbus tcp connection closed", "remote", c.RemoteAddr().String(), "err", err)
			}
		}()
	}
}

// serveConn answers requests on one connection until it closes or sends
// something that is not MBAP.
func (s *TCP) serveConn(c net.Conn) error {
	r := bufio.NewReader(c)
	hdr := make([]byte, mbapLen)
	for {
		if _, err := io.ReadFull(r, hdr); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		tid, pid, n := binary.BigEndian.Uint16(hdr), binary.BigEndian.Uint16(hdr[2:]), int(binary.BigEndian.Uint16(hdr[4:]))
		if pid != 0 || n < 2 || n > 254 {
			return fmt.Errorf("not modbus: protocol %d, length %d", pid, n)
		}
		pdu := make([]byte, n-1)
		if _, err := io.ReadFull(r, pdu); err != nil {
			return err
		}
		id := hdr[6]
		if s.Deaf != nil && s.Deaf.Load() || s.Faults.silent(id) || s.Faults.fault(id) != none {
			continue
		}
		var resp []byte
		var commit func()
		if u, ok := s.Units[id]; ok {
			resp, commit = Process(u, pdu)
		} else {
			resp = ExceptionPDU(pdu[0], GatewayNoResponse)
		}
		out := AppendMBAP(nil, tid, id, resp)
		time.Sleep(s.Faults.slow(id))
		if _, err := c.Write(out); err != nil {
			return err
		}
		if commit != nil && !askedAgain(c, r) {
			commit()
		}
	}
}

// askedAgain says whether the master already sent its next request while
// this one was being answered: it gave up waiting (its timeout ran out, as
// on a loaded machine), and will discard the late answer by its
// transaction id, so the readings in it count as not served.
func askedAgain(c net.Conn, r *bufio.Reader) bool {
	if r.Buffered() > 0 {
		return true
	}
	if err := c.SetReadDeadline(time.Now()); err != nil {
		return false
	}
	_, err := r.Peek(1)
	c.SetReadDeadline(time.Time{})
	return err == nil
}

// AppendMBAP appends an MBAP frame carrying pdu for unit id to b.
func AppendMBAP(b []byte, tid uint16, id byte, pdu []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, tid)
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(pdu)+1))
	b = append(b, id)
	return append(b, pdu...)
}
