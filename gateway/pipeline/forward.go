package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
)

// Uplink sends a batch to the hub and returns nil only when the hub has
// accepted every message of it.
type Uplink interface {
	Send(ctx context.Context, msgs []model.Message) error
}

// Source is a durable queue as a Forwarder needs it.
type Source interface {
	Next(ctx context.Context, max int, lanes ...queue.Lane) (queue.Batch, error)
	Ack(b queue.Batch) error
	Rewind(lanes ...queue.Lane)
	Stats() queue.Stats
}

// Forwarder drains lanes of one queue into one uplink: a batch is
// acknowledged (and so deleted) only after the uplink said the hub accepted
// it; on failure the batch is handed out again after a backoff. Delivery is
// at least once. The gateway runs one Forwarder per lane, so that an alarm
// never waits for a telemetry batch in flight.
type Forwarder struct {
	Name   string
	Queue  Source
	Lanes  []queue.Lane // the lanes it drains; all when empty
	Uplink Uplink
	Batch  int // messages per send
	// HistoricalAfter marks a message historical when it leaves more than
	// this long after its timestamp: it waited out an outage, and reaches
	// the hub with its original time.
	HistoricalAfter time.Duration
	// Outage is shared by the forwarders of one uplink: it logs an outage
	// once when it starts and once when it ends.
	Outage *Outage
	Log    *slog.Logger

	failures atomic.Uint64 // sends the hub did not accept
}

// Retry pacing of a failed send. A failed send costs little (the uplink
// fails at once while it has no connection), and the sooner a retry comes
// after the hub is back, the shorter the outage seen at the hub.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// Run forwards until ctx ends.
func (f *Forwarder) Run(ctx context.Context) error {
	// Batches an earlier run took and never acknowledged (it failed) come
	// again.
	f.Queue.Rewind(f.Lanes...)
	backoff := minBackoff
	msgs := make([]model.Message, 0, f.Batch)
	for {
		b, err := f.Queue.Next(ctx, f.Batch, f.Lanes...)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s queue: %w", f.Name, err)
		}
		msgs = msgs[:0]
		now := time.Now()
		for _, e := range b.Entries {
			m, err := model.DecodeBinary(e.Data)
			if err != nil {
				// The queue checks records with a CRC, so this is a record
				// written by an incompatible version: log it and go on.
				f.Log.Error("undecodable queue record skipped", "uplink", f.Name, "err", err)
				continue
			}
			if f.HistoricalAfter > 0 && now.Sub(m.Time) > f.HistoricalAfter {
				m.Historical = true
			}
			msgs = append(msgs, m)
		}
		if err := f.Uplink.Send(ctx, msgs); err != nil {
			f.failures.Add(1)
			f.Queue.Rewind(f.Lanes...)
			if ctx.Err() != nil {
				return nil
			}
			f.Outage.down(err)
			f.Log.Debug("hub did not accept a batch; will retry", "forwarder", f.Name, "messages", len(msgs), "retry_in", backoff, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = minBackoff
		f.Outage.up(f.Queue) // the backlog still counts this batch
		if err := f.Queue.Ack(b); err != nil {
			return fmt.Errorf("%s queue: %w", f.Name, err)
		}
	}
}

// Supervise runs the forwarder until ctx ends, restarting it whenever it
// fails, and reports every failure to the hub as a forwarder_failed event
// of the gateway, so that no queue is left undrained without a word.
func (f *Forwarder) Supervise(ctx context.Context, s Supervisor, report *Ingest) {
	s.Failed = func(err error, restarts int, pause time.Duration) {
		f.Log.Error("forwarder failed; restarting it", "forwarder", f.Name, "err", err, "restarts", restarts, "in", pause)
		report.Emit(GatewayEvent(model.EventForwarderFailed, model.Warning, map[string]string{
			"forwarder": f.Name,
			"error":     err.Error(),
			"restarts":  strconv.Itoa(restarts + 1),
			"retry_in":  pause.String(),
		}))
	}
	s.Run(ctx, f.Run)
}

// Outage follows one uplink's outages, as its forwarders see them, so that
// the log says once when the hub stopped accepting, with the reason, and
// once when it accepts again, with how long it took and what waited.
type Outage struct {
	Uplink string
	Log    *slog.Logger

	mu    sync.Mutex
	since time.Time // zero while the uplink works
}

func (o *Outage) down(err error) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.since.IsZero() {
		return
	}
	o.since = time.Now()
	o.Log.Warn("hub uplink down; queueing until it is back", "uplink", o.Uplink, "err", err)
}

func (o *Outage) up(q Source) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.since.IsZero() {
		return
	}
	var recs, readings int64
	for _, l := range q.Stats().Lanes {
		recs += l.Records
		readings += l.Readings
	}
	o.Log.Info("hub uplink back", "uplink", o.Uplink, "outage", time.Since(o.since).Round(time.Millisecond),
		"backlog_messages", recs, "backlog_readings", readings)
	o.since = time.Time{}
}
