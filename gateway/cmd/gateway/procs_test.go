package main

import (
	"context"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"outpost/gateway/queue"
)

// TestSpareProcs: the gateway takes spare Go processors while a queue holds
// a backlog of telemetry, and gives them back once it drained.
func TestSpareProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	base := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(base)
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		spareProcs(ctx, map[string]*queue.Queue{"mqtt": q}, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	waitProcs := func(want int) {
		t.Helper()
		deadline := time.Now().Add(12 * time.Second)
		for runtime.GOMAXPROCS(0) != want {
			if time.Now().After(deadline) {
				t.Fatalf("GOMAXPROCS %d, want %d", runtime.GOMAXPROCS(0), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := q.Append(queue.LaneTelemetry, queue.Record{Data: []byte("backlog"), Readings: backlogReadings + 1}); err != nil {
		t.Fatal(err)
	}
	waitProcs(base * procsPerCPU)
	b, err := q.Next(ctx, 10, queue.LaneTelemetry)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	waitProcs(base)
}
