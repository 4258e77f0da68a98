package durable

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrStalled is returned for a write to the state disk that did not
// return within StallAfter, and at once for every write after it until
// that one returns: the disk hangs (a failing SD card, a frozen or
// unreachable file system). Callers treat it as a refused write.
var ErrStalled = errors.New("the disk does not answer: a write hangs")

// StallAfter is how long a write may take before the disk is taken for
// hung; waits for the disk elsewhere (an alarm's fsync) take the same
// bound. A write to the page cache takes microseconds, and one throttled
// behind slow flash a few hundred milliseconds; a disk that makes an
// alarm wait longer than this has failed the station.
const StallAfter = time.Second

// stall is the state disk's: a write that hangs is the whole disk's
// trouble, so one hung write makes every later one fail at once.
var stall struct {
	mu    sync.Mutex
	hung  int       // writes that did not return in time and have not yet
	since time.Time // when the first of them began; zero when none
}

// Hung returns since when a write to the state disk hangs, or the zero
// time.
func Hung() time.Time {
	stall.mu.Lock()
	defer stall.mu.Unlock()
	return stall.since
}

// Bounded runs op, a write to the state disk, and waits for it at most
// StallAfter. When op has not returned by then, Bounded returns
// ErrStalled; op goes on, and when it returns, late (if not nil) is
// called with its error, to take back what it did now that the caller
// holds it for failed. Until then every Bounded returns ErrStalled at once,
// without running its op. A disk that hangs thus delays its callers once,
// by StallAfter, and never blocks them.
func Bounded(op func() error, late func(error)) error {
	stall.mu.Lock()
	if since := stall.since; !since.IsZero() {
		stall.mu.Unlock()
		return fmt.Errorf("%w (for %s)", ErrStalled, time.Since(since).Round(time.Millisecond))
	}
	stall.mu.Unlock()

	began := time.Now()
	done := make(chan error, 1)
	abandoned := false // guarded by stall.mu
	go func() {
		err := op()
		stall.mu.Lock()
		if !abandoned {
			done <- err
			stall.mu.Unlock()
			return
		}
		stall.mu.Unlock()
		if late != nil {
			late(err)
		}
		stall.mu.Lock()
		if stall.hung--; stall.hung == 0 {
			stall.since = time.Time{}
		}
		stall.mu.Unlock()
	}()
	t := time.NewTimer(StallAfter)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
	}
	stall.mu.Lock()
	defer stall.mu.Unlock()
	select {
	case err := <-done: // it returned as the time ran out
		return err
	default:
	}
	abandoned = true
	if stall.hung++; stall.hung == 1 {
		stall.since = began
	}
	return fmt.Errorf("%w (no answer in %s)", ErrStalled, StallAfter)
}
