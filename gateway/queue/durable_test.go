package queue

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// A group commit fsyncs what some reader has not acknowledged, SyncEvery
// after the first write it covers and not before; what every reader
// acknowledged by then needs none (a station at rest, whose hub takes each
// poll within milliseconds, fsyncs none of its readings). An alarm's
// Append returns after its own fsync, however long the window.
func TestGroupCommit(t *testing.T) {
	const window = 200 * time.Millisecond // long enough for both readers to take a record on a loaded machine
	var mu sync.Mutex
	var segSyncs int // fsyncs of a telemetry segment
	stop := durable.Observe(func(op, p string) {
		if op == "fsync" && strings.HasSuffix(p, ".seg") && filepath.Base(filepath.Dir(p)) == LaneTelemetry.String() {
			mu.Lock()
			segSyncs++
			mu.Unlock()
		}
	})
	defer stop()
	syncs := func() int {
		mu.Lock()
		defer mu.Unlock()
		return segSyncs
	}
	q := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, SyncEvery: window, SegmentBytes: 64 << 10, Readers: []string{"mqtt", "influx"}})
	mq, ix := q.Reader("mqtt"), q.Reader("influx")

	// Both readers take the records at once: no fsync, in three windows
	// (the last Ack retires their segment, delivered, for a new one).
	for i := range 100 {
		if err := q.Append(LaneTelemetry, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	takeN(t, mq, LaneTelemetry, 100, 100)
	takeN(t, ix, LaneTelemetry, 100, 100)
	for end := time.Now().Add(3 * window); time.Now().Before(end); time.Sleep(time.Millisecond) {
		if n := syncs(); n != 0 {
			t.Fatalf("records every reader acknowledged within the window: %d fsyncs of their segments, want 0", n)
		}
	}

	// One reader takes the next, the other does not: fsynced once the
	// window ends.
	wrote := time.Now()
	if err := q.Append(LaneTelemetry, rec(100)); err != nil {
		t.Fatal(err)
	}
	takeN(t, mq, LaneTelemetry, 1, 1)
	for deadline := wrote.Add(5 * time.Second); syncs() == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("a record one reader has not acknowledged: not fsynced in 5 s")
		}
	}
	if took := time.Since(wrote); took < window {
		t.Errorf("a record one reader has not acknowledged was fsynced %s after its write, want the window's end (%s)", took, window)
	}
	if n := syncs(); n != 1 {
		t.Errorf("%d fsyncs of its segment, want 1", n)
	}

	// An alarm does not wait for the window.
	q2 := open(t, t.TempDir(), Options{MaxBytes: 1 << 20, SyncEvery: time.Hour})
	if err := q2.Append(LaneTelemetry, rec(3)); err != nil {
		t.Fatal(err)
	}
	if err := q2.Append(LaneAlarm, rec(4)); err != nil {
		t.Fatal(err)
	}
	if n := q2.Stats().Syncs; n != 1 {
		t.Fatalf("alarm append returned after %d fsyncs, want 1 (its own, not telemetry's an hour later)", n)
	}
}

// What TestGroupCommit leaves without an fsync is what every reader took:
// a power cut may lose it from the segment and keep the ack files' positions
// past it. The next Open hands out nothing of it, deletes the segment
// without a word of damage (nothing in it was owed), and delivers what
// comes after.
func TestPowerCutLosesOnlyDelivered(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, testOpts)
	appendRange(t, q, LaneTelemetry, 0, 6)
	if _, tel := drain(t, q, 10, true); len(tel) != 6 {
		t.Fatalf("delivered %d records, want 6", len(tel))
	}
	q.Close()
	seg := filepath.Join(dir, LaneTelemetry.String(), segName(1))
	// The kernel had written back two records and a half, then garbage.
	if err := os.Truncate(seg, 2*124+50); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(seg, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(garbage(30, 1))
	f.Close()

	q = open(t, dir, testOpts)
	st := q.Stats()
	if tl := st.Lanes[LaneTelemetry]; tl.Records != 0 || st.TornBytes != 0 || st.Corrupt != 0 {
		t.Fatalf("after the cut: %d records queued, %d torn bytes, %d corrupt regions; want none", tl.Records, st.TornBytes, st.Corrupt)
	}
	if _, err := os.Stat(seg); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the delivered segment after the cut: %v, want it deleted", err)
	}
	appendRange(t, q, LaneTelemetry, 6, 9)
	_, tel := drain(t, q, 10, true)
	checkSeq(t, "telemetry after the power cut", tel, 6, 9)
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
