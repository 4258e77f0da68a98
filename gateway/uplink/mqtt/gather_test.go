package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// countConn counts the writes that reach the connection.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestGather: over a real TCP connection, a lone packet goes at once in
// one write; a burst of a thousand goes in few writes, every byte in
// order; a failed write fails the link and every later write.
func TestGather(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	defer peer.Close()
	conn := &countConn{Conn: raw}
	var failed atomic.Bool
	g := newGather(conn, func() { failed.Store(true) })

	// A lone packet: written before Write returns.
	lone := []byte("a lone packet")
	if _, err := g.Write(lone); err != nil {
		t.Fatal(err)
	}
	if n := conn.writes.Load(); n != 1 {
		t.Fatalf("a lone packet made %d writes before Write returned, want 1", n)
	}
	got := make([]byte, len(lone))
	peer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(peer, got); err != nil || !bytes.Equal(got, lone) {
		t.Fatalf("the peer read %q, %v; want %q", got, err, lone)
	}

	// A burst, as paho writes a batch of publishes: 1000 packets of 1 KB,
	// read by the peer as they come.
	const packets, size = 1000, 1000
	read := make(chan error, 1)
	got = make([]byte, packets*size)
	go func() {
		_, err := io.ReadFull(peer, got)
		read <- err
	}()
	before := conn.writes.Load()
	var want bytes.Buffer
	for i := range packets {
		p := bytes.Repeat([]byte{byte(i)}, size)
		want.Write(p)
		if _, err := g.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-read; err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("the burst reached the peer altered (%v)", err)
	}
	// The first goes at once, then one write per gatherBytes or per
	// gatherWait: about 32 on an idle machine, more when the burst is
	// slowed (the race detector, a busy machine), far fewer than one per
	// packet.
	if n := conn.writes.Load() - before; n > packets/4 {
		t.Errorf("a burst of %d packets, %d bytes, made %d writes, want at most %d (about %d)", packets, want.Len(), n, packets/4, 1+want.Len()/gatherBytes)
	} else {
		t.Logf("a burst of %d packets, %d bytes, in %d writes", packets, want.Len(), n)
	}

	// The connection breaks: the failed write drops the link, and every
	// later write fails.
	raw.Close()
	for i := 0; !failed.Load(); i++ {
		if _, err := g.Write([]byte("after the close")); err != nil {
			break
		}
		if i > 1000 {
			t.Fatal("writes on a closed connection never failed")
		}
		time.Sleep(time.Millisecond)
	}
	if _, err := g.Write([]byte("one more")); !errors.Is(err, net.ErrClosed) {
		t.Errorf("a write after the failure: %v, want %v", err, net.ErrClosed)
	}
	if !failed.Load() {
		t.Error("the failed write did not drop the link")
	}
}
