package pipeline

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
)

// TestWatchQueuesDiskRefuses: the state directory refuses writes (chattr
// +i, as a failing disk or a read-only remount does). The hub must be told
// with a queue_write_failed event naming the error (held in memory, as
// what the disk refuses is, until it can be sent), and with
// queue_write_recovered when the disk takes writes again; the telemetry of
// the outage is held in memory too, and every reading reaches the queue's
// reader, in order, with no drop to report.
func TestWatchQueuesDiskRefuses(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files immutable")
	}
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	q, err := queue.Open(dir, queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	in := NewIngest(policeRoom(t), counter{}, []Appender{q}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go WatchQueues(ctx, in, map[string]*queue.Queue{"mqtt": q}, q.Changed(), 10*time.Millisecond, time.Hour)

	chattr := func(flag string) {
		if out, err := exec.Command("chattr", "-R", flag, dir).CombinedOutput(); err != nil {
			t.Fatalf("chattr -R %s: %v: %s", flag, err, out)
		}
	}
	emit := func(v float64) {
		if err := in.Emit(telemetry("th-hall", model.Reading{Signal: "temperature", Value: model.Number(v), Quality: model.Good})); err != nil {
			t.Errorf("telemetry %v: %v", v, err)
		}
	}
	began := time.Now()
	chattr("+i")
	for i := range 5 { // emitted while the disk refuses them
		emit(float64(i))
	}
	failed := nextEvent(t, q, model.EventQueueWriteFailed)
	if d := failed.Event.Details; d["uplink"] != "mqtt" || !strings.Contains(d["error"], "operation not permitted") || d["alarms_lost"] != "0" || d["readings_lost"] != "0" {
		t.Errorf("queue_write_failed details: %v", d)
	}
	if failed.Event.Severity != model.Critical || failed.Device != model.GatewayDevice {
		t.Errorf("queue_write_failed from %s, severity %s; want the gateway's, critical", failed.Device, failed.Event.Severity)
	}
	chattr("-i")
	emit(9)
	// The recovery, and no queue_drops before it.
	recovered := nextEvent(t, q, model.EventQueueWriteRecovered)
	d := recovered.Event.Details
	if d["readings_lost"] != "0" || d["alarms_lost"] != "0" {
		t.Errorf("queue_write_recovered details: %v, want 0 readings and 0 alarms lost", d)
	}
	// From the first write refused to the first taken again: more than
	// nothing, and within the test's span.
	if o, err := time.ParseDuration(d["outage"]); err != nil || o <= 0 || o > time.Since(began) {
		t.Errorf("queue_write_recovered outage %q, want the time the disk refused writes (at most %v)", d["outage"], time.Since(began))
	}
	var got []string
	for len(got) < 6 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		b, err := q.Next(ctx, 100, queue.LaneTelemetry)
		cancel()
		if err != nil {
			t.Fatalf("readings %v, then: %v", got, err)
		}
		for _, e := range b.Entries {
			m, err := model.DecodeBinary(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, m.Readings[0].Value.String())
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	if want := []string{"0", "1", "2", "3", "4", "9"}; !slices.Equal(got, want) {
		t.Errorf("the queue's reader got readings %v, want %v", got, want)
	}
	if tl := q.Stats().Lanes[queue.LaneTelemetry]; tl.Dropped != 0 || tl.Memory != 0 {
		t.Errorf("telemetry lane: %d dropped, %d still in memory; want none", tl.Dropped, tl.Memory)
	}
}

// nextEvent waits for the next event of the queue's alarm lane, which must
// be of one of kinds.
func nextEvent(t *testing.T, q *queue.Queue, kinds ...string) model.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := q.Next(ctx, 1, queue.LaneAlarm)
	if err != nil {
		t.Fatalf("no %s event: %v", strings.Join(kinds, " or "), err)
	}
	m, err := model.DecodeBinary(b.Entries[0].Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.Kind != model.KindEvent || !slices.Contains(kinds, m.Event.Kind) {
		t.Fatalf("got %s %v, want a %s event", m.Kind, m.Event, strings.Join(kinds, " or "))
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	return m
}

// statsSeq is a queue whose counters the test sets.
type statsSeq struct {
	mu sync.Mutex
	s  queue.Stats
}

func (q *statsSeq) Stats() queue.Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.s
}

func (q *statsSeq) set(f func(*queue.Stats)) {
	q.mu.Lock()
	defer q.mu.Unlock()
	f(&q.s)
}

// TestWatchQueuesBetweenChecks: a disk that refused writes and took them
// again between two checks is still reported, failed then recovered,
// drops a full disk forced are reported as the disk's, not the cap's, and
// a deleted queue as such.
func TestWatchQueuesBetweenChecks(t *testing.T) {
	q := &statsSeq{}
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go WatchQueues(ctx, in, map[string]*statsSeq{"influx": q}, nil, 5*time.Millisecond, 5*time.Millisecond)
	events := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			rec.mu.Lock()
			var got []string
			for _, m := range rec.msgs {
				got = append(got, m.Event.Kind+": "+m.Event.Details["reason"])
			}
			rec.mu.Unlock()
			if len(got) >= n || time.Now().After(deadline) {
				return got
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Refused twice and writing again before the next check, with three
	// readings dropped.
	q.set(func(s *queue.Stats) {
		s.WriteErrors, s.WriteError, s.MemoryDrops = 2, "write seg: no space left on device", 1
		s.Lanes[queue.LaneTelemetry].DroppedReadings = 3
	})
	want := []string{
		model.EventQueueWriteFailed + ": the disk refuses the queue's writes or does not answer: what it refuses is held in memory and still sent; telemetry beyond the memory reserve is dropped",
		model.EventQueueWriteRecovered + ": the disk takes the queue's writes again",
		model.EventQueueDrops + ": the disk refuses writes and the memory reserve is full: telemetry was dropped (write seg: no space left on device)",
	}
	if got := events(3); !slices.Equal(got, want) {
		t.Errorf("events %q\nwant %q", got, want)
	}
	// A full disk made room by dropping the oldest telemetry; the write
	// itself succeeded.
	q.set(func(s *queue.Stats) {
		s.FullDrops, s.FullDrop = 1, "queue: the volume is down to the room kept for the state files: no space left on device"
		s.Lanes[queue.LaneTelemetry].DroppedReadings = 10
	})
	if got := events(4); len(got) != 4 || got[3] != model.EventQueueDrops+": the disk is full: the oldest telemetry was dropped to make room (queue: the volume is down to the room kept for the state files: no space left on device)" {
		t.Errorf("events %q, want a fourth: queue_drops for the full disk, with its cause", got)
	}
	// The state directory was deleted: two alarms and seven readings not
	// yet sent to InfluxDB went with it.
	q.set(func(s *queue.Stats) {
		s.Deleted, s.Unreadable = 2, 3
		s.Lanes[queue.LaneAlarm].Dropped = 2
		s.Lanes[queue.LaneTelemetry].DroppedReadings = 17
	})
	got := events(6)
	want = []string{
		model.EventQueueDrops + ": queue files were deleted or could not be read: the telemetry in them was lost",
		model.EventQueueDamage + ": the queue's files were deleted while the gateway ran, or could not be read: it made them again; alarms and health changes not yet sent from them are lost",
	}
	if len(got) != 6 || !slices.Equal(got[4:], want) {
		t.Fatalf("events %q, want two more: %q", got, want)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if e := rec.msgs[4].Event; e.Details["dropped_readings"] != "7" {
		t.Errorf("queue_drops says %s readings dropped, want 7", e.Details["dropped_readings"])
	}
	if e := rec.msgs[5].Event; e.Severity != model.Critical || e.Details["alarms_lost"] != "2" || e.Details["lanes_deleted"] != "2" {
		t.Errorf("queue_damage: %s, %s alarms lost, %s lanes deleted; want critical, 2, 2", e.Severity, e.Details["alarms_lost"], e.Details["lanes_deleted"])
	}
}

func TestOutageText(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want string
	}{
		{2400 * time.Millisecond, "2s"},
		{90 * time.Second, "1m30s"},
		{350*time.Millisecond + 400*time.Microsecond, "350ms"},
		{1234 * time.Microsecond, "1ms"},
		{650*time.Microsecond + 300*time.Nanosecond, "650µs"}, // a full disk the queue made room on at once
	} {
		if got := outage(c.d); got != c.want {
			t.Errorf("outage(%v) = %q, want %q", c.d, got, c.want)
		}
	}
}
