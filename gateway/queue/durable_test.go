package queue

import (
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/gateway/durable"
)

// TestNewSegmentNamesAreDurable: with SyncEvery 0 an Append returns only
// when what it wrote survives a power cut, and a record in a segment that
// was just created survives only if the segment's name does: its directory
// must be fsynced too, before the Append returns.
func TestNewSegmentNamesAreDurable(t *testing.T) {
	dir := t.TempDir()
	var mu sync.Mutex
	var ops []string
	stop := durable.Observe(func(op, p string) {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, op+" "+p)
	})
	defer stop()
	q := open(t, dir, Options{MaxBytes: 1 << 20, SyncEvery: 0, SegmentBytes: 4 << 10})
	laneDir := filepath.Join(dir, LaneTelemetry.String())
	for i := range 60 { // 60 records of 124 bytes roll over a 4 KiB segment
		mu.Lock()
		ops = ops[:0]
		mu.Unlock()
		before := len(q.lanes[LaneTelemetry].segs)
		if err := q.Append(LaneTelemetry, rec(i)); err != nil {
			t.Fatal(err)
		}
		if i > 0 && len(q.lanes[LaneTelemetry].segs) == before {
			continue
		}
		// This Append wrote into a segment created since the last
		// group commit (the first one after Open, or a rollover).
		mu.Lock()
		got := slices.Clone(ops)
		mu.Unlock()
		if !slices.Contains(got, "fsyncdir "+laneDir) {
			t.Fatalf("record %d went into a new segment, but Append returned without fsyncing %s; durable operations: %q", i, laneDir, got)
		}
	}
	if got := len(q.lanes[LaneTelemetry].segs); got < 2 {
		t.Fatalf("the test never rolled over a segment (%d segments)", got)
	}
}

// TestStateIsPrivate: a queue holds what the station recorded; no other
// user of the box may read it.
func TestStateIsPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "queue", "mqtt")
	q := open(t, dir, testOpts)
	if err := q.Append(LaneAlarm, rec(1)); err != nil {
		t.Fatal(err)
	}
	q.Close()
	err := filepath.Walk(filepath.Dir(dir), func(path string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: open to other users", path, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The first telemetry append after a quiet window is fsynced at once (a
// station at rest syncs each poll as it comes); the next ones wait for the
// window's end; an alarm's Append returns after its own fsync, however
// long the window.
func TestAlarmsDoNotWaitForGroupCommit(t *testing.T) {
	q, err := Open(t.TempDir(), Options{MaxBytes: 1 << 20, SyncEvery: time.Hour}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Append(LaneTelemetry, rec(1)); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); q.Stats().Syncs != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the first telemetry append of a quiet queue: %d fsyncs after 5 s, want 1 (at once, not an hour later)", q.Stats().Syncs)
		}
	}
	if err := q.Append(LaneTelemetry, rec(2)); err != nil {
		t.Fatal(err)
	}
	if n := q.Stats().Syncs; n != 1 {
		t.Fatalf("a telemetry append inside the window: %d fsyncs, want 1 (the window's first only)", n)
	}
	if err := q.Append(LaneAlarm, rec(3)); err != nil {
		t.Fatal(err)
	}
	if n := q.Stats().Syncs; n != 2 {
		t.Fatalf("alarm append returned after %d fsyncs, want 2 (its own)", n)
	}
}

// TestAlarmFsyncNeverWaitsForTelemetry: while a group commit of
// telemetry is stuck in a slow fsync (a busy disk takes tens of ms for a
// large one), an alarm's Append still returns after its own fsync.
func TestAlarmFsyncNeverWaitsForTelemetry(t *testing.T) {
	dir := t.TempDir()
	telDir := filepath.Join(dir, LaneTelemetry.String())
	stuck, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stop := durable.Observe(func(op, p string) {
		if filepath.Dir(p) == telDir {
			once.Do(func() { close(stuck) })
			<-release
		}
	})
	defer stop()
	q := open(t, dir, Options{MaxBytes: 1 << 20, SyncEvery: 10 * time.Millisecond, SegmentBytes: 64 << 10})
	defer q.Close()
	defer close(release)
	if err := q.Append(LaneTelemetry, rec(1)); err != nil {
		t.Fatal(err)
	}
	<-stuck
	done := make(chan error, 1)
	go func() { done <- q.Append(LaneAlarm, rec(2)) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the alarm's Append waited for telemetry's fsync")
	}
}
