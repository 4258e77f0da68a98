package main

import (
	"context"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"syscall"
	"time"

	"outpost/gateway/queue"
)

// Go processors (Ps) follow the gateway's work, as spareProcs measures it
// every procsEvery:
//
//   - One while that one is enough: busy under oneFull of its time (see
//     pShare). Each wakeup of the gateway (a poll's timer, an answer on
//     the wire) also wakes threads to look for work on the other Ps, and
//     Go's monitor thread polls fast for a while after each. At rest the
//     200-device station took 1.95-2.10% of a core with 2 Ps, 1.55-1.65%
//     with 1 (testbench run idle-200). At load too: bench-tcp -units 200
//     -poll 30ms -endpoints 4 took 6.17-6.58 µs a reading with 2 Ps
//     (0.53-0.56 cores, at 83,500-85,400 readings/s) and 4.97-5.04 with 1
//     (0.41-0.42 cores, at 82,000-82,900), that P busy half of its time:
//     the round trips to the units, not the CPU, set the pace there.
//   - As many as the CPUs it may use when one is not enough, until the
//     gateway uses under fitsOne cores again (a second P costs a quarter
//     more CPU, so it goes back to one below what made it take more).
//   - procsPerCPU times as many while a queue drains a backlog. Go's
//     scheduler looks at the network when a P runs out of work, or from
//     its monitor every 10 ms: while a drain keeps every P busy, a panel's
//     frame waits up to that long to be read. With Ps to spare one is
//     nearly always idle, blocked on the network, and the kernel, which
//     preempts, shares the CPUs among them: on 2 CPUs shared with the hub,
//     alarm-under-backlog's DC-09 p99 is 14.5-16 ms with 8 Ps and
//     19.7-22.7 ms with 2. A backlog is many readings queued that
//     waited long (see backlogged), not a steady flow batched for
//     InfluxDB: 100 devices polled every 100 ms queue 15,000 readings
//     between two writes, and took 8 Ps for nothing until this said so.
//
// A quiet gateway's collector also runs at half the heap growth it allows
// a busier one (GOGC 50 against Go's 100). The collector's CPU grows with
// what is allocated, so that costs a quiet station little, while the heap,
// not the code, is what varies in its memory: bench-tcp at 1,500
// readings/s (0.03 cores), peak RSS 19.7-20.1 MB against 20.9-21.2. The
// start counts as quiet, or the heap would have grown by then. At 15,000
// readings/s (0.19 cores) GOGC 50 saved 4.5 MB (41.9 against 46.4) for a
// fifth more CPU, so a gateway past quietBelow, or draining a backlog,
// keeps 100.
//
// A GOMAXPROCS or GOGC in the environment is left alone.
const (
	procsEvery      = 5 * time.Second
	procsPerCPU     = 4
	backlogReadings = 10000            // queued telemetry readings that may make a backlog,
	backlogAge      = 10 * time.Second // when the oldest of those waited this long
	// The share of its time one P is busy over which it is not enough,
	// and the CPU (in cores, over procsEvery) under which one will do
	// again.
	oneFull = 0.8
	fitsOne = 0.7
	// The CPU (in cores) under which the gateway is quiet, and the
	// collector's GOGC then and otherwise.
	quietBelow     = 0.1
	quietGCPercent = 50
	busyGCPercent  = 100
)

// gcPercent is the GOGC for a gateway with a backlog or not, using busy
// cores.
func gcPercent(backlog bool, busy float64) int {
	if backlog || busy >= quietBelow {
		return busyGCPercent
	}
	return quietGCPercent
}

// procsFor is how many Ps the gateway wants, with cpus CPUs, cur Ps now,
// a backlog or not, using busy cores over the last interval, its Ps busy
// share of their time (see pShare). Either measure may be NaN (not
// known), which leaves the count as it is.
func procsFor(cpus, cur int, backlog bool, busy, share float64) int {
	switch {
	case backlog:
		return cpus * procsPerCPU
	case cur == 1 && !(share > oneFull), cur > 1 && busy < fitsOne:
		return 1
	}
	return cpus
}

// backlogged says whether a telemetry lane holds a backlog at now: more
// than backlogReadings, the oldest of them handed out backlogAge ago or
// more (an outage, a drain), or none handed out yet (a queue left by the
// last run).
func backlogged(s queue.LaneStats, now time.Time) bool {
	return s.Readings > backlogReadings && (s.Oldest.IsZero() || now.Sub(s.Oldest) >= backlogAge)
}

// spareProcs sets the gateway's Ps (see procsFor) and its collector's
// GOGC (see gcPercent) every procsEvery until ctx ends.
func spareProcs(ctx context.Context, queues map[string]*queue.Reader, log *slog.Logger) {
	setProcs, setGC := os.Getenv("GOMAXPROCS") == "", os.Getenv("GOGC") == ""
	if !setProcs && !setGC {
		return
	}
	cpus := runtime.GOMAXPROCS(0)
	t := time.NewTicker(procsEvery)
	defer t.Stop()
	cur, gc := cpus, busyGCPercent // Go's default
	lastCPU, lastAt := cpuTime(), time.Now()
	// Not measured yet: NaN is below no threshold and above none, so the
	// start is neither at rest (procsFor) nor busy (gcPercent).
	busy, share := math.NaN(), math.NaN()
	var ps pShare
	ps.share()
	for {
		backlog := false
		for _, q := range queues {
			backlog = backlog || backlogged(q.Stats().Lanes[queue.LaneTelemetry], time.Now())
		}
		if want := procsFor(cpus, cur, backlog, busy, share); want != cur && setProcs {
			runtime.GOMAXPROCS(want)
			log.Debug("go processors", "gomaxprocs", want, "backlog", backlog, "cpu", busy, "busy_share", share)
			cur = want
		}
		if want := gcPercent(backlog, busy); want != gc && setGC {
			debug.SetGCPercent(want)
			log.Debug("collector", "gogc", want, "backlog", backlog, "cpu", busy)
			gc = want
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, now := cpuTime(), time.Now()
		busy = float64(c-lastCPU) / float64(now.Sub(lastAt))
		lastCPU, lastAt = c, now
		share = ps.share()
	}
}

// pShare measures the share of their time the Ps were busy: running the
// gateway's code, the runtime's or the collector's, or looking for work
// (with more than one P, their threads spin a while before they sleep,
// so only one P's share tells how loaded it is). The runtime counts it
// at each cycle of its collector, which runs every few milliseconds at
// load and may not for minutes at rest.
type pShare struct {
	s           []metrics.Sample
	busy, total float64 // in CPU seconds, at the collector's last cycle
}

// share is the Ps' busy share of their time since the collector's cycle
// of the last call, NaN when it has not run since.
func (p *pShare) share() float64 {
	if p.s == nil {
		p.s = []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}, {Name: "/cpu/classes/total:cpu-seconds"}}
	}
	metrics.Read(p.s)
	idle, total := p.s[0].Value, p.s[1].Value
	if idle.Kind() != metrics.KindFloat64 || total.Kind() != metrics.KindFloat64 {
		return math.NaN() // a runtime without them
	}
	busy := total.Float64() - idle.Float64()
	share := math.NaN()
	if d := total.Float64() - p.total; d > 0 {
		share = (busy - p.busy) / d
	}
	p.busy, p.total = busy, total.Float64()
	return share
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
