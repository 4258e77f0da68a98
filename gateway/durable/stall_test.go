package durable

import (
	"errors"
	"testing"
	"time"
)

// TestBounded: a write that hangs returns ErrStalled after StallAfter,
// every write after it fails at once without running, and once it
// returns its late function runs and writes run again. (The disk itself
// hangs in gateway/queue's TestDiskHangs, a frozen file system.)
func TestBounded(t *testing.T) {
	release, lateErr := make(chan struct{}), make(chan error, 1)
	start := time.Now()
	err := Bounded(func() error { <-release; return errors.New("written late") }, func(err error) { lateErr <- err })
	if took := time.Since(start); !errors.Is(err, ErrStalled) || took < StallAfter || took > StallAfter+500*time.Millisecond {
		t.Fatalf("a write that hangs: %v after %s, want ErrStalled after %s", err, took, StallAfter)
	}
	if Hung().IsZero() {
		t.Errorf("Hung says no write hangs while one does")
	}
	ran := false
	start = time.Now()
	err = Bounded(func() error { ran = true; return nil }, nil)
	if !errors.Is(err, ErrStalled) || ran || time.Since(start) > 100*time.Millisecond {
		t.Fatalf("a write while one hangs: %v, ran %v, after %s; want ErrStalled at once, not run", err, ran, time.Since(start))
	}
	close(release)
	if err := <-lateErr; err == nil || err.Error() != "written late" {
		t.Fatalf("late got %v, want the hung write's own error", err)
	}
	for !Hung().IsZero() {
		time.Sleep(time.Millisecond) // cleared just after late returns
	}
	if err := Bounded(func() error { ran = true; return nil }, nil); err != nil || !ran {
		t.Fatalf("a write after the hung one returned: %v, ran %v; want run, nil", err, ran)
	}
}
