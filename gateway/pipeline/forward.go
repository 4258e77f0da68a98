package pipeline

import (
	"context"
	"fmt"
	"log/slog"
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
	Log             *slog.Logger

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
			f.Log.Warn("hub did not accept a batch; will retry", "uplink", f.Name, "messages", len(msgs), "retry_in", backoff, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		backoff = minBackoff
		if err := f.Queue.Ack(b); err != nil {
			return fmt.Errorf("%s queue: %w", f.Name, err)
		}
	}
}
