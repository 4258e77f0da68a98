package main

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"outpost/gateway/queue"
)

// TestSpareProcs: the gateway takes spare Go processors while a queue holds
// a backlog of telemetry, and gives them back once it drained; while it
// drains its collector runs at GOGC 100, quiet at 50.
func TestSpareProcs(t *testing.T) {
	t.Setenv("GOMAXPROCS", "")
	t.Setenv("GOGC", "")
	base := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(base)
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	gogc := func() int {
		p := debug.SetGCPercent(-1)
		debug.SetGCPercent(p)
		return p
	}
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		spareProcs(ctx, map[string]*queue.Reader{"mqtt": q.Reader("")}, slog.New(slog.DiscardHandler))
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
	// The collector is set just after the Ps.
	waitGC := func(want int, when string) {
		t.Helper()
		for deadline := time.Now().Add(time.Second); gogc() != want; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC %d %s, want %d", gogc(), when, want)
			}
		}
	}
	waitProcs(base * procsPerCPU)
	waitGC(busyGCPercent, "with a backlog")
	b, err := q.Next(ctx, 10, queue.LaneTelemetry)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	waitProcs(1) // drained, and at rest: this test uses little CPU
	waitGC(quietGCPercent, "when quiet")
}

// TestBacklogged: a queue left by the last run, an outage or a drain is a
// backlog; a steady flow batched for InfluxDB, or a few readings, is not.
func TestBacklogged(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name     string
		readings int64
		oldest   time.Time
		want     bool
	}{
		{"left by the last run", backlogReadings + 1, time.Time{}, true},
		{"an outage: the batch in flight waited long", 50000, now.Add(-time.Minute), true},
		{"just long enough", backlogReadings + 1, now.Add(-backlogAge), true},
		{"a steady flow between two InfluxDB writes", 15000, now.Add(-1500 * time.Millisecond), false},
		{"few readings, long waited", 100, now.Add(-time.Hour), false},
		{"empty", 0, time.Time{}, false},
	} {
		if got := backlogged(queue.LaneStats{Readings: c.readings, Oldest: c.oldest}, now); got != c.want {
			t.Errorf("%s (%d readings, oldest %v): backlog %v, want %v", c.name, c.readings, c.oldest, got, c.want)
		}
	}
}

// TestProcsFor: one P while it is enough, as many as the CPUs when it is
// not, until the gateway fits one again; four times as many under a
// backlog; a measure not known leaves the count as it is.
func TestProcsFor(t *testing.T) {
	nan := math.NaN()
	for _, c := range []struct {
		name        string
		cur         int
		backlog     bool
		busy, share float64
		want        int
	}{
		{"at rest", 2, false, 0.02, nan, 1},
		{"one P does: busy half its time", 1, false, 0.42, 0.50, 1},
		{"just under full", 1, false, 0.60, oneFull, 1},
		{"one P is not enough", 1, false, 0.70, 0.85, 2},
		{"the start: nothing measured", 2, false, nan, nan, 2},
		{"the collector did not run", 1, false, 0.70, nan, 1},
		{"busier than one P does", 2, false, 0.80, 0.55, 2},
		{"fits one again", 2, false, 0.65, 0.95, 1},
		{"a backlog", 1, true, 0.01, 0.10, 8},
		{"draining", 8, true, 1.90, 0.90, 8},
		{"drained, busy", 8, false, 1.20, 0.60, 2},
		{"drained, at rest", 8, false, 0.05, 0.02, 1},
	} {
		if got := procsFor(2, c.cur, c.backlog, c.busy, c.share); got != c.want {
			t.Errorf("%s: 2 CPUs, %d Ps, backlog %v, %.2f cores busy, Ps busy %.2f of their time: %d Ps, want %d",
				c.name, c.cur, c.backlog, c.busy, c.share, got, c.want)
		}
	}
}

// TestPShare: the Ps' busy share comes from the collector's cycles: a
// busy P between two of them shows, and none between two calls is not
// known.
func TestPShare(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var p pShare
	runtime.GC() // none running while the next two calls come
	p.share()
	if got := p.share(); !math.IsNaN(got) {
		t.Errorf("no collection between two calls: share %v, want NaN", got)
	}
	for end := time.Now().Add(200 * time.Millisecond); time.Now().Before(end); {
	}
	runtime.GC()
	if got := p.share(); !(got > 0.5 && got < 1+1e-9) {
		t.Errorf("one P spinning 200 ms, then a collection: share %v, want over 0.5 and at most 1", got)
	}
}
