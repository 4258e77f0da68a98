package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"

	"outpost/configs"
	"outpost/gateway/queue"
)

// TestOpenQueueDrainsEarlierLayout starts on a state directory that a
// gateway of the earlier layout left (a queue per uplink in
// UplinkQueueDir(uplink)): each uplink gets what its old queue held, then the
// new records, and the old directories go once delivered.
func TestOpenQueueDrainsEarlierLayout(t *testing.T) {
	st := &configs.Station{StateDir: t.TempDir(), Hub: configs.Hub{Influx: &configs.Influx{}}}
	st.Queue.Sync = -1
	msg := func(i int) queue.Record { return queue.Record{Data: fmt.Appendf(nil, "m%d", i), Readings: 1} }
	for _, u := range st.Uplinks() {
		old, err := queue.Open(st.UplinkQueueDir(u), queue.Options{SyncEvery: -1}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := old.Append(queue.LaneTelemetry, msg(i)); err != nil {
				t.Fatal(err)
			}
		}
		if u == "mqtt" { // mqtt had delivered the first two
			b, err := old.Next(context.Background(), 2)
			if err != nil || old.Ack(b) != nil {
				t.Fatal(err)
			}
		}
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
	}
	q, err := OpenQueue(st, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Append(queue.LaneTelemetry, msg(5)); err != nil {
		t.Fatal(err)
	}
	for u, want := range map[string][]string{"mqtt": {"m2", "m3", "m4", "m5"}, "influx": {"m0", "m1", "m2", "m3", "m4", "m5"}} {
		r := q.Reader(u)
		var got []string
		for {
			ctx, cancel := context.WithCancel(context.Background())
			cancel() // what there is, without waiting
			b, err := r.Next(ctx, 100)
			if errors.Is(err, context.Canceled) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range b.Entries {
				got = append(got, string(e.Data))
			}
			if err := r.Ack(b); err != nil {
				t.Fatal(err)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s got %q, want %q", u, got, want)
		}
		if _, err := os.Stat(st.UplinkQueueDir(u)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: the earlier queue is still there once delivered: %v", u, err)
		}
	}
}
