package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"outpost/gateway/queue"
)

// TestServeSystemd speaks the sd_notify protocol to a real unix datagram
// socket, as systemd listens on one: READY=1 first, WATCHDOG=1 while the
// pipeline moves, none while it is stalled, STOPPING=1 at the end.
func TestServeSystemd(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", sock)
	t.Setenv("WATCHDOG_USEC", "150000") // a ping every 50 ms
	t.Setenv("WATCHDOG_PID", "")
	var stalled atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		serveSystemd(ctx, func() error {
			if stalled.Load() {
				return errors.New("no message from any driver for 3m0s")
			}
			return nil
		}, slog.New(slog.DiscardHandler))
	}()
	next := func(within time.Duration) string {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(within))
		b := make([]byte, 256)
		n, err := conn.Read(b)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(b[:n]))
	}
	if got := next(5 * time.Second); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	for range 3 {
		if got := next(time.Second); got != "WATCHDOG=1" {
			t.Fatalf("while the pipeline moves: %q, want WATCHDOG=1", got)
		}
	}
	stalled.Store(true)
	next(100 * time.Millisecond) // one may have been on its way
	if got := next(300 * time.Millisecond); got != "" {
		t.Fatalf("while the pipeline is stalled: %q, want nothing", got)
	}
	stalled.Store(false)
	if got := next(time.Second); got != "WATCHDOG=1" {
		t.Fatalf("once it moves again: %q, want WATCHDOG=1", got)
	}
	cancel()
	<-done
	for got := next(time.Second); got != "STOPPING=1"; got = next(time.Second) {
		if got == "" {
			t.Fatal("no STOPPING=1 at the end")
		}
	}
}

// TestPipelineAlive: the pipeline is stalled when no driver emitted for
// longer than the stall time, and alive otherwise; a station without
// polled devices is not judged by it.
func TestPipelineAlive(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	queues := map[string]*queue.Queue{"mqtt": q}
	ago := func(d time.Duration) func() time.Time { return func() time.Time { return time.Now().Add(-d) } }
	if err := pipelineAlive(ago(time.Second), 2*time.Minute, queues); err != nil {
		t.Errorf("emitted a second ago: %v", err)
	}
	if err := pipelineAlive(ago(3*time.Minute), 2*time.Minute, queues); err == nil || err.Error() != "no message from any driver for 3m0s" {
		t.Errorf("silent for 3 minutes: %v", err)
	}
	if err := pipelineAlive(ago(time.Hour), 0, queues); err != nil {
		t.Errorf("no polled devices: %v", err)
	}
}
