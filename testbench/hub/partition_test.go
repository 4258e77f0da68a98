package hub

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestPathPartition: through a whole path a line comes back from an echo
// server; while it is cut nothing passes either way and a new connection
// reaches nothing, without an error at the station's end; once healed,
// what was held arrives, in order.
func TestPathPartition(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s := bufio.NewScanner(c)
				for s.Scan() {
					c.Write(append(s.Bytes(), '\n'))
				}
			}()
		}
	}()
	p, err := NewPath(ctx, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", p.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c, bufio.NewReader(c)
	}
	echo := func(c net.Conn, r *bufio.Reader, line string, within time.Duration) (string, error) {
		t.Helper()
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatalf("write %q: %v", line, err)
		}
		c.SetReadDeadline(time.Now().Add(within))
		return r.ReadString('\n')
	}
	c, r := dial()
	if got, err := echo(c, r, "one", 5*time.Second); got != "one\n" || err != nil {
		t.Fatalf("through a whole path: %q, %v", got, err)
	}
	p.Cut()
	if got, err := echo(c, r, "two", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("through a cut path: %q, %v; want nothing", got, err)
	}
	c2, r2 := dial() // accepted, reaching nothing yet
	if got, err := echo(c2, r2, "new", 300*time.Millisecond); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("a new connection through a cut path: %q, %v; want nothing", got, err)
	}
	p.Heal()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r.ReadString('\n'); got != "two\n" || err != nil {
		t.Fatalf("held line after healing: %q, %v", got, err)
	}
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if got, err := r2.ReadString('\n'); got != "new\n" || err != nil {
		t.Fatalf("the connection made while cut, after healing: %q, %v", got, err)
	}
}
