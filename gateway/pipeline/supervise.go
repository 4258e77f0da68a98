package pipeline

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"
)

// Supervisor restarts a part of the gateway (a link's driver, a forwarder)
// that stopped before its context ended, so that no device goes unread and
// no queue undrained because one part failed once.
type Supervisor struct {
	// Min is the pause before the first restart; it doubles with every
	// failure up to Max, and is back to Min after a run that lasted
	// Healthy.
	Min, Max, Healthy time.Duration
	// Failed is told of every failure: the error (a panic becomes one),
	// how many restarts there were before, and the pause before the next.
	Failed func(err error, restarts int, pause time.Duration)
}

// DefaultSupervisor is how the gateway restarts its parts.
var DefaultSupervisor = Supervisor{Min: time.Second, Max: 30 * time.Second, Healthy: time.Minute}

// Run runs fn until ctx ends, restarting it whenever it returns (or
// panics) before then. It returns when ctx has ended and fn has returned.
func (s Supervisor) Run(ctx context.Context, fn func(context.Context) error) {
	pause := s.Min
	for restarts := 0; ; restarts++ {
		start := time.Now()
		err := protect(ctx, fn)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			err = fmt.Errorf("stopped by itself")
		}
		if time.Since(start) >= s.Healthy {
			pause = s.Min
		}
		if s.Failed != nil {
			s.Failed(err, restarts, pause)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, s.Max)
	}
}

// protect runs fn and turns a panic into an error with its stack.
func protect(ctx context.Context, fn func(context.Context) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return fn(ctx)
}
