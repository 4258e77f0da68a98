package main

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"time"

	"outpost/gateway/queue"
)

// Go processors (Ps): as many as the CPUs the gateway may use, and
// procsPerCPU times as many while a queue drains a backlog. Go's scheduler
// looks at the network when a P runs out of work, or from its monitor
// every 10 ms: while a drain keeps every P busy, a panel's frame waits up
// to that long to be read. With Ps to spare one is nearly always idle,
// blocked on the network, and the kernel, which preempts, shares the CPUs
// among them: on 2 CPUs shared with the hub, alarm-under-backlog's DC-09
// p99 is 14.5-16 ms with 8 Ps and 19.7-22.7 ms with 2. Idle, spare Ps
// cost: each wakeup wakes another thread to look for work, and the
// 200-device station took 3.4% of a core with 8 Ps, 2.3% with 2. A
// GOMAXPROCS in the environment is left alone.
const (
	procsPerCPU     = 4
	backlogReadings = 10000 // queued telemetry readings that make a backlog
)

// spareProcs gives the gateway spare Ps while a queue holds a backlog,
// checking every 5 s until ctx ends.
func spareProcs(ctx context.Context, queues map[string]*queue.Queue, log *slog.Logger) {
	if os.Getenv("GOMAXPROCS") != "" {
		return
	}
	base := runtime.GOMAXPROCS(0)
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	cur := base
	for {
		want := base
		for _, q := range queues {
			if q.Stats().Lanes[queue.LaneTelemetry].Readings > backlogReadings {
				want = base * procsPerCPU
			}
		}
		if want != cur {
			runtime.GOMAXPROCS(want)
			log.Debug("go processors", "gomaxprocs", want)
			cur = want
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
