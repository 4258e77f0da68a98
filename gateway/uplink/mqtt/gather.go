package mqtt

import (
	"net"
	"sync"
	"time"
)

// How the main connection gathers writes (see gather).
const (
	gatherWait  = 2 * time.Millisecond
	gatherBytes = 32 << 10
)

// gather writes to conn what a burst of publishes hands it in few system
// calls: paho writes each packet on its own, a thousand a second for a
// station of 100 devices polled every 100 ms, and each costs the gateway
// and the broker a wakeup. A write that follows a quiet gatherWait goes at
// once, so a lone message (a station at rest, a health change) waits for
// nothing; the writes that follow it closely are buffered and go together
// gatherWait after the first of them, or once gatherBytes are buffered.
//
// Every write to conn has writeTimeout to finish (gather sets the write
// deadline itself: a broker that stops reading fails the connection). A
// failed write fails every later one and is told to failed. A packet
// buffered and then lost to a failed write is never acknowledged by the
// broker, so the forwarder sends it again.
type gather struct {
	conn   net.Conn
	failed func()

	mu    sync.Mutex
	buf   []byte
	last  time.Time // when the last write to conn began
	err   error
	timer *time.Timer
}

func newGather(conn net.Conn, failed func()) *gather {
	g := &gather{conn: conn, failed: failed}
	g.timer = time.AfterFunc(time.Hour, func() { g.Flush() })
	g.timer.Stop()
	return g
}

func (g *gather) Write(b []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.err != nil {
		return 0, g.err
	}
	if len(g.buf) == 0 && time.Since(g.last) >= gatherWait {
		return g.write(b)
	}
	if len(g.buf) == 0 {
		g.timer.Reset(gatherWait)
	}
	g.buf = append(g.buf, b...)
	if len(g.buf) >= gatherBytes {
		if err := g.flush(); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

// Flush writes what is buffered; Close of the connection calls it, so
// that a DISCONNECT is not lost (the broker would publish the will).
func (g *gather) Flush() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.flush()
}

// flush writes the buffer, with g.mu held.
func (g *gather) flush() error {
	g.timer.Stop()
	if g.err != nil || len(g.buf) == 0 {
		return g.err
	}
	_, err := g.write(g.buf)
	g.buf = g.buf[:0]
	if cap(g.buf) > 4*gatherBytes {
		g.buf = nil // a large packet (a big event) is not kept
	}
	return err
}

// write writes b to conn within writeTimeout, with g.mu held.
func (g *gather) write(b []byte) (int, error) {
	g.last = time.Now()
	err := g.conn.SetWriteDeadline(g.last.Add(writeTimeout))
	n := 0
	if err == nil {
		n, err = g.conn.Write(b)
	}
	if err != nil {
		g.err = err
		g.failed()
		return n, err
	}
	return n, g.conn.SetWriteDeadline(time.Time{})
}
