package hub

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Path is the network between a station and one hub server: a TCP relay on
// a loopback port of its own that the station is pointed at. Cut makes a
// network partition of it: nothing passes either way, connections stay
// open and new ones are accepted but reach nothing, as when a link in
// between fails and no host says so (no reset, no refusal: the station
// learns of it only by its own timeouts). Heal lets everything pass again,
// what was held first, as TCP would once its retransmissions get through.
// SetRate makes it a slow link instead (a weak cellular one).
type Path struct {
	ln       net.Listener
	upstream string
	rate     atomic.Int64 // bytes a second each way; 0 for no limit
	up, down pace         // the connections going each way share the rate

	mu   sync.Mutex
	open chan struct{} // closed while the path is whole
	wg   sync.WaitGroup
}

// NewPath relays a loopback port to upstream (host:port) until ctx ends or
// Close.
func NewPath(ctx context.Context, upstream string) (*Path, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("hub: path to %s: %w", upstream, err)
	}
	p := &Path{ln: ln, upstream: upstream, open: make(chan struct{})}
	close(p.open)
	p.wg.Go(func() { p.accept(ctx) })
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	return p, nil
}

// Addr is the address the station is given instead of the server's.
func (p *Path) Addr() string { return p.ln.Addr().String() }

// Cut partitions the path; Heal mends it. Each is idempotent.
func (p *Path) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
		p.open = make(chan struct{})
	default:
	}
}

func (p *Path) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.open:
	default:
		close(p.open)
	}
}

// SetRate makes the path carry at most bytesPerSecond each way, all its
// connections together, from now on; 0 lifts the limit.
func (p *Path) SetRate(bytesPerSecond int64) { p.rate.Store(max(bytesPerSecond, 0)) }

// whole waits until the path is whole; false if ctx ends first.
func (p *Path) whole(ctx context.Context) bool {
	p.mu.Lock()
	open := p.open
	p.mu.Unlock()
	select {
	case <-open:
		return true
	case <-ctx.Done():
		return false
	}
}

// Close stops accepting, closes every relayed connection and waits for
// the relay's goroutines.
func (p *Path) Close() {
	p.ln.Close()
	p.wg.Wait()
}

func (p *Path) accept(ctx context.Context) {
	var conns sync.WaitGroup
	defer conns.Wait() // after cancel, which ends them
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		conns.Go(func() { p.relay(ctx, c) })
	}
}

// relay carries one connection until either end closes it or the path is
// closed. A connection made while the path is cut reaches the server once
// it heals, if the station has not given up by then.
func (p *Path) relay(ctx context.Context, station net.Conn) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		<-ctx.Done()
		station.Close()
	}()
	if !p.whole(ctx) {
		return
	}
	server, err := net.Dial("tcp", p.upstream)
	if err != nil {
		return // as a server down: the station's connection closes
	}
	go func() {
		<-ctx.Done()
		server.Close()
	}()
	var both sync.WaitGroup
	both.Go(func() { p.pump(ctx, server, station, &p.up); cancel() })
	both.Go(func() { p.pump(ctx, station, server, &p.down); cancel() })
	both.Wait()
}

// pump copies src to dst, holding what it read while the path is cut, and
// pacing it to the path's rate with the other connections going that way.
func (p *Path) pump(ctx context.Context, dst io.Writer, src io.Reader, way *pace) {
	buf := make([]byte, 32<<10)
	for {
		chunk := buf
		rate := p.rate.Load()
		if rate > 0 {
			chunk = buf[:min(len(buf), max(int(rate/50), 64))] // 20 ms of the line at most
		}
		n, err := src.Read(chunk)
		if n > 0 {
			if rate > 0 && !sleepUntil(ctx, way.take(n, rate)) {
				return
			}
			if !p.whole(ctx) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // closed, at either end
		}
	}
}

// pace is one way of a path at its rate: when the line is free for the
// next byte.
type pace struct {
	mu   sync.Mutex
	free time.Time
}

// take sends n bytes down the line at rate bytes a second, after those
// sent before, and says when they are through.
func (w *pace) take(n int, rate int64) time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	if now := time.Now(); w.free.Before(now) {
		w.free = now // the line was idle
	}
	w.free = w.free.Add(time.Duration(n) * time.Second / time.Duration(rate))
	return w.free
}

// sleepUntil waits until t; false if ctx ends first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
