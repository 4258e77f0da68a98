package modbus

import (
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/goburrow/modbus"
)

// tcpAnswer is the MBAP frame answering a read request frame with
// regValue registers.
func tcpAnswer(req []byte) []byte {
	rtu := readAnswer(append([]byte{req[6]}, req[7:12]...))
	pdu := rtu[1 : len(rtu)-2] // function, byte count, data
	f := make([]byte, 7, 7+len(pdu))
	copy(f, req[:4])
	binary.BigEndian.PutUint16(f[4:], uint16(1+len(pdu)))
	f[6] = req[6]
	return append(f, pdu...)
}

// tcpPeer is an in-test Modbus TCP device: for the n-th request (from 1)
// it writes what handle returns, after handle's delay. It answers requests
// one after the other on each connection, as a serial gateway does.
func tcpPeer(t *testing.T, handle func(n int, req []byte) (delay time.Duration, out []byte)) string {
	addr, _ := tcpPeerConns(t, handle)
	return addr
}

// tcpPeerConns is tcpPeer, and says how many connections it accepted.
func tcpPeerConns(t *testing.T, handle func(n int, req []byte) (delay time.Duration, out []byte)) (string, func() int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	count := 0
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				req := make([]byte, 12)
				for {
					if _, err := io.ReadFull(c, req); err != nil {
						return
					}
					mu.Lock()
					count++
					n := count
					mu.Unlock()
					delay, out := handle(n, append([]byte(nil), req...))
					time.Sleep(delay)
					c.Write(out)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	accepted := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
	return ln.Addr().String(), accepted
}

func newTCPClient(addr string, timeout time.Duration) (modbus.Client, *tcpTransport, *modbus.TCPClientHandler) {
	tr := &tcpTransport{addr: addr, timeout: timeout, log: slog.New(slog.DiscardHandler)}
	p := modbus.NewTCPClientHandler(addr)
	p.SlaveId = 1
	return modbus.NewClient2(p, tr), tr, p
}

func wantRegs(start, n int) string {
	var b []byte
	for i := 0; i < n; i++ {
		v := regValue(start + i)
		b = append(b, byte(v>>8), byte(v))
	}
	return string(b)
}

// TestTCPLateReplyOnce: the peer answers the first request after the
// timeout. The connection stays up (other units behind the endpoint use it
// too); the late reply is discarded by its transaction id, and every later
// request gets its own answer, not the one before it (goburrow's own TCP
// transporter stays one transaction behind here: its issue 64).
func TestTCPLateReplyOnce(t *testing.T) {
	addr, accepted := tcpPeerConns(t, func(n int, req []byte) (time.Duration, []byte) {
		if n == 1 {
			return 150 * time.Millisecond, tcpAnswer(req)
		}
		return 0, tcpAnswer(req)
	})
	c, tr, _ := newTCPClient(addr, 100*time.Millisecond)
	_, err := c.ReadHoldingRegisters(0, 2)
	var te *TimeoutError
	if !errors.As(err, &te) || err.Error() != "timeout after 100ms" {
		t.Fatalf("first read: %v, want timeout after 100ms", err)
	}
	for i := 1; i <= 5; i++ {
		got, err := c.ReadHoldingRegisters(uint16(10*i), 2)
		if err != nil || string(got) != wantRegs(10*i, 2) {
			t.Fatalf("read %d: % x, %v; want % x", i, got, err, wantRegs(10*i, 2))
		}
	}
	if n := accepted(); n != 1 || tr.stale != 1 {
		t.Errorf("%d connections, %d late replies discarded; want 1 connection kept and 1 late reply discarded", n, tr.stale)
	}
}

// lateConn is a connection whose reader looks late: a deadline set with
// SetDeadline has passed by the time it reads.
type lateConn struct{ *net.TCPConn }

func (c lateConn) SetDeadline(d time.Time) error {
	c.TCPConn.SetWriteDeadline(d)
	return c.TCPConn.SetReadDeadline(time.Now().Add(-time.Second))
}

// TestTCPReplyReadLate: a reply that came in time is the device's answer
// even when the gateway, on a loaded machine, looks at the connection only
// after its timeout. Here the reply waits in the socket before the request
// is sent, and the timeout has passed by the first read.
func TestTCPReplyReadLate(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	req := []byte{0, 1, 0, 0, 0, 6, 1, fcReadHolding, 0, 0, 0, 2}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write(tcpAnswer(req))
		io.Copy(io.Discard, c)
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tr := &tcpTransport{addr: ln.Addr().String(), timeout: 100 * time.Millisecond, log: slog.New(slog.DiscardHandler)}
	tr.use(lateConn{conn.(*net.TCPConn)})
	defer tr.close()
	waitFor(t, 5*time.Second, "the reply in the socket", tr.waiting)
	got, err := tr.Send(req)
	if err != nil || string(got) != string(tcpAnswer(req)) {
		t.Fatalf("Send: % x, %v; want % x", got, err, tcpAnswer(req))
	}
}

// TestTCPTimeoutInFrame: a reply cut off in the middle by the timeout
// leaves the stream out of step, so the connection is closed and the next
// request gets a clean one.
func TestTCPTimeoutInFrame(t *testing.T) {
	addr, accepted := tcpPeerConns(t, func(n int, req []byte) (time.Duration, []byte) {
		if n == 1 {
			return 0, tcpAnswer(req)[:5]
		}
		return 0, tcpAnswer(req)
	})
	c, _, _ := newTCPClient(addr, 100*time.Millisecond)
	var te *TimeoutError
	if _, err := c.ReadHoldingRegisters(0, 2); !errors.As(err, &te) {
		t.Fatalf("first read: %v, want a timeout", err)
	}
	if got, err := c.ReadHoldingRegisters(10, 2); err != nil || string(got) != wantRegs(10, 2) {
		t.Fatalf("second read: % x, %v", got, err)
	}
	if n := accepted(); n != 2 {
		t.Errorf("%d connections, want 2: the one with half a frame in it closed", n)
	}
}

// TestTCPStaleReplyDiscarded: on one connection the peer sends a reply to
// an older transaction before the right one (as a late reply does when the
// connection stays up); the driver discards it and keeps reading.
// goburrow's own TCP transporter takes it and stays one id behind.
func TestTCPStaleReplyDiscarded(t *testing.T) {
	var prev []byte
	addr := tcpPeer(t, func(n int, req []byte) (time.Duration, []byte) {
		ans := tcpAnswer(req)
		out := ans
		if n == 3 {
			out = append(append([]byte(nil), prev...), ans...)
		}
		prev = ans
		return 0, out
	})
	c, tr, _ := newTCPClient(addr, 500*time.Millisecond)
	for i := 1; i <= 5; i++ {
		got, err := c.ReadHoldingRegisters(uint16(10*i), 2)
		if err != nil || string(got) != wantRegs(10*i, 2) {
			t.Fatalf("read %d: % x, %v; want % x", i, got, err, wantRegs(10*i, 2))
		}
	}
	if tr.stale != 1 {
		t.Errorf("stale replies discarded: %d, want 1", tr.stale)
	}

	// The same peer behaviour against goburrow's own client, for contrast.
	addr2 := tcpPeer(t, func(n int, req []byte) (time.Duration, []byte) {
		ans := tcpAnswer(req)
		out := ans
		if n == 1 {
			out = append(append([]byte(nil), ans...), ans...)
		}
		return 0, out
	})
	h := modbus.NewTCPClientHandler(addr2)
	h.SlaveId, h.Timeout = 1, 500*time.Millisecond
	defer h.Close()
	gc := modbus.NewClient(h)
	if _, err := gc.ReadHoldingRegisters(0, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := gc.ReadHoldingRegisters(10, 2); err == nil {
		t.Log("goburrow's client took the duplicate without error")
	} else {
		t.Logf("goburrow's client after a duplicate reply: %v", err)
	}
}

func TestTCPConnectRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, _, _ := newTCPClient(addr, 200*time.Millisecond)
	_, err = c.ReadHoldingRegisters(0, 1)
	var ce *connectError
	if !errors.As(err, &ce) {
		t.Fatalf("err %v, want a connect error", err)
	}
}

func TestCheckMBAP(t *testing.T) {
	cases := []struct {
		head []byte
		n    int
		err  string
	}{
		{[]byte{0, 1, 0, 0, 0, 5, 1}, 5, ""},
		{[]byte{0, 1, 0, 1, 0, 5, 1}, 0, "bad frame (protocol id: got 1, want 0), 0 bytes dropped"},
		{[]byte("HTTP/1."), 0, `bad frame (not Modbus TCP: the answer begins with the text "HTTP/1.": another service listens at this address and port), 0 bytes dropped`},
		{[]byte("SSH-2.0"), 0, `bad frame (not Modbus TCP: the answer begins with the text "SSH-2.0": another service listens at this address and port), 0 bytes dropped`},
		{[]byte{0, 1, 0, 0, 0, 2, 1}, 0, "bad frame (length: length field 2 outside 3-254), 0 bytes dropped"},
		{[]byte{0, 1, 0, 0, 1, 0, 1}, 0, "bad frame (length: length field 256 outside 3-254), 0 bytes dropped"},
		{[]byte{0, 1}, 0, "bad frame (length: header of 2 bytes), 0 bytes dropped"},
	}
	for _, c := range cases {
		n, err := checkMBAP(c.head)
		es := ""
		if err != nil {
			es = err.Error()
		}
		if n != c.n || es != c.err {
			t.Errorf("checkMBAP(% x) = %d, %q; want %d, %q", c.head, n, es, c.n, c.err)
		}
	}
}

// TestTCPNotModbus: a link whose address is another service's (a wrong
// IP or port; here a web server that answers 400 to what it cannot
// read, as one on this network did) reads as such, not as a damaged
// Modbus frame.
func TestTCPNotModbus(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Read(make([]byte, 512))
			conn.Write([]byte("HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"))
			conn.Close()
		}
	}()
	c, _, _ := newTCPClient(ln.Addr().String(), time.Second)
	_, err = c.ReadHoldingRegisters(0, 1)
	want := `bad frame (not Modbus TCP: the answer begins with the text "HTTP/1.": another service listens at this address and port), 0 bytes dropped`
	if err == nil || err.Error() != want {
		t.Errorf("err %v\nwant %s", err, want)
	}
}

// TestTCPClosedBeforeAnswer: an endpoint that takes every connection and
// closes it before any answer (a device whose connection slots another
// master holds) is down as one that refuses connections: every unit behind
// it offline at once, saying why, and dialled again with backoff, not at
// every request.
func TestTCPClosedBeforeAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	c, _, _ := newTCPClient(ln.Addr().String(), time.Second)
	var errs []string
	for range 5 {
		_, err := c.ReadHoldingRegisters(0, 1)
		var ce *connectError
		if !errors.As(err, &ce) {
			t.Fatalf("err %v, want a connect error", err)
		}
		errs = append(errs, err.Error())
	}
	want := ln.Addr().String() + " closed the connection before any answer: it may take no more connections (another master, or a Modbus tool on a laptop, holds them)"
	for i, e := range errs {
		if e != want {
			t.Errorf("request %d: %q, want %q", i, e, want)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("%d connections in 5 requests made at once, want 1: the next waits out the backoff", n)
	}
}
