package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"

	"outpost/configs"
	"outpost/gateway/pipeline"
)

// serveSystemd tells systemd that the gateway is ready, and feeds its
// watchdog (WatchdogSec of gateway/dist/outpost.service) while alive says
// the pipeline moves, until ctx ends; then it says the gateway stops.
// Outside systemd (no NOTIFY_SOCKET) it does nothing. A stalled pipeline
// is logged once and the feeding stops: systemd restarts the gateway.
func serveSystemd(ctx context.Context, alive func() error, log *slog.Logger) {
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); !ok || err != nil {
		return
	}
	defer daemon.SdNotify(false, daemon.SdNotifyStopping)
	every, err := daemon.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(every / 3)
	defer t.Stop()
	stalled := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := alive(); err != nil {
			if !stalled {
				log.Error("pipeline stalled: no longer feeding systemd's watchdog, which will restart the gateway", "err", err)
			}
			stalled = true
			continue
		}
		if stalled {
			log.Info("pipeline moves again")
		}
		stalled = false
		daemon.SdNotify(false, daemon.SdNotifyWatchdog)
	}
}

// stallAfter is how long the drivers of a station with polled devices may
// emit nothing at all before the pipeline counts as stalled: ten of the
// longest poll intervals, at least two minutes (a device that fails still
// reports, as bad readings and health). A station of alarm panels alone
// is not judged so: a panel may rightly say nothing for a day.
func stallAfter(st *configs.Station) time.Duration {
	var longest time.Duration
	for _, d := range st.Devices {
		if p, ok := d.Settings.(configs.Poller); ok {
			longest = max(longest, p.PollEvery())
		}
	}
	if longest == 0 {
		return 0
	}
	return max(10*longest, 2*time.Minute)
}

// pipelineAlive says whether the pipeline moves: the drivers emitted within
// stall (unless it is 0), and every queue answers (a queue whose disk
// hangs holds its lock).
func pipelineAlive[Q pipeline.StatsSource](lastEmit func() time.Time, stall time.Duration, queues map[string]Q) error {
	if since := time.Since(lastEmit()); stall > 0 && since > stall {
		return fmt.Errorf("no message from any driver for %s", since.Round(time.Second))
	}
	for name, q := range queues {
		if !within(5*time.Second, func() { q.Stats() }) {
			return fmt.Errorf("the %s queue does not answer (its disk hangs?)", name)
		}
	}
	return nil
}
