package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
)

// limited is an uplink that carries at most n messages a send for now.
type limited struct {
	*flaky
	n int
}

func (l limited) SendLimit() int { return l.n }

// TestForwarderFillsBatches: with a batch size and a linger (InfluxDB's
// batch_size and batch_wait), a backlog goes out in full batches, though
// the queue hands out at most queue.MaxBatchBytes at a time, and a steady
// flow goes out in one send per linger with all that came meanwhile, none
// of it waiting much longer than the linger.
func TestForwarderFillsBatches(t *testing.T) {
	// About 400 bytes a message: 5000 of them are more than the queue
	// hands out at once.
	pad := model.String(strings.Repeat("x", 400))
	appendN := func(q *queue.Queue, from, n int) {
		for i := from; i < from+n; i++ {
			m := model.Message{Station: "s", Device: "d", Seq: uint64(i), Kind: model.KindTelemetry, Time: time.Now().UTC(),
				Readings: []model.Reading{{Signal: "pad", Value: pad, Quality: model.Good}}}
			if err := q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m), Readings: 1}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// run forwards until want messages were sent and returns the batch
	// sizes and the longest time a message waited in the queue.
	run := func(t *testing.T, q *queue.Queue, linger time.Duration, want int, feed func(), limit int) (sizes []int, longest time.Duration) {
		up := &flaky{sent: make(chan struct{}, 1000)}
		var uplink Uplink = up
		if limit > 0 {
			uplink = limited{up, limit}
		}
		ctx, cancel := context.WithCancel(context.Background())
		f := &Forwarder{Name: "test", Queue: q, Uplink: uplink, Batch: 5000, Linger: linger, Log: slog.New(slog.DiscardHandler),
			Waited: func(d time.Duration) { longest = max(longest, d) }}
		done := make(chan error)
		go func() { done <- f.Run(ctx) }()
		if feed != nil {
			feed()
		}
		for n := 0; n < want; {
			select {
			case <-up.sent:
				up.mu.Lock()
				n = 0
				for _, b := range up.got {
					n += len(b)
				}
				up.mu.Unlock()
			case <-time.After(10 * time.Second):
				t.Fatalf("%d of %d messages sent", n, want)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		seq := uint64(0)
		for _, b := range up.got {
			sizes = append(sizes, len(b))
			for _, m := range b {
				if m.Seq != seq+1 {
					t.Fatalf("message %d after %d: out of order", m.Seq, seq)
				}
				seq = m.Seq
			}
		}
		return sizes, longest
	}
	open := func(t *testing.T) *queue.Queue {
		q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { q.Close() })
		return q
	}

	for _, c := range []struct {
		name           string
		backlog, limit int // limit: the uplink's, 0 for none
		want           string
	}{
		{"backlog", 12000, 0, "[5000 5000 2000]"},
		{"backlog, an uplink that carries fewer", 4000, 1500, "[1500 1500 1000]"}, // InfluxDB's writes cut down on a slow link
	} {
		t.Run(c.name, func(t *testing.T) {
			q := open(t)
			appendN(q, 1, c.backlog)
			sizes, _ := run(t, q, 200*time.Millisecond, c.backlog, nil, c.limit)
			if got := fmt.Sprint(sizes); got != c.want {
				t.Errorf("a backlog of %d went in batches of %s, want %s", c.backlog, got, c.want)
			}
		})
	}
	t.Run("steady flow", func(t *testing.T) {
		q := open(t)
		const linger = 300 * time.Millisecond
		const n = 500 // one every 2 ms: a second's worth
		sizes, longest := run(t, q, linger, n, func() {
			for i := 1; i <= n; i++ {
				appendN(q, i, 1)
				time.Sleep(2 * time.Millisecond)
			}
		}, 0)
		// The first message leaves at once, then one send per linger:
		// about four for a second or so of flow (a busy machine makes
		// the flow last longer, and so more sends).
		if len(sizes) < 3 || len(sizes) > 8 {
			t.Errorf("%d messages over a second went in batches of %v, want 3 to 8 batches", n, sizes)
		}
		if sizes[0] != 1 {
			t.Errorf("the first message after a quiet time went in a batch of %d, want 1 (at once)", sizes[0])
		}
		if longest > linger+200*time.Millisecond {
			t.Errorf("a message waited %s in the queue, want at most the linger %s (and a little)", longest, linger)
		}
	})
	t.Run("a poll each linger", func(t *testing.T) {
		// A reading that comes in the last tenth of the linger after the
		// previous send leaves at once, with the poll that brought it,
		// not on a timer of its own: here 0.8 s early.
		q := open(t)
		appendN(q, 1, 1)
		const linger = 10 * time.Second
		f := &Forwarder{Name: "test", Queue: q, Batch: 5000, limit: 5000, Linger: linger}
		start := time.Now()
		batches, err := f.take(context.Background(), nil, start.Add(-linger*92/100))
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(start); len(batches) != 1 || took > 400*time.Millisecond {
			t.Errorf("a reading 9.2 s after a send with a 10 s linger: %d batches after %s, want 1 at once", len(batches), took)
		}
	})
}
