package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
	"outpost/testbench/testlog"
)

// TestSupervisorBackoff: a part that fails is restarted after a pause that
// doubles up to the maximum, and is back to the minimum after a healthy
// run; a panic is a failure like any other.
func TestSupervisorBackoff(t *testing.T) {
	ms := time.Millisecond
	// How long each run lasts before it fails; the fourth is healthy.
	runs := []time.Duration{0, 0, 0, 60 * ms, 0, 0}
	var pauses []time.Duration
	var errs []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := 0
	s := Supervisor{Min: ms, Max: 4 * ms, Healthy: 50 * ms, Failed: func(err error, restarts int, pause time.Duration) {
		pauses = append(pauses, pause)
		errs = append(errs, strings.SplitN(err.Error(), "\n", 2)[0])
	}}
	s.Run(ctx, func(ctx context.Context) error {
		if n == len(runs) {
			cancel()
			<-ctx.Done()
			return nil
		}
		time.Sleep(runs[n])
		n++
		if n == 2 {
			panic("boom")
		}
		return errors.New("failed")
	})
	want := []time.Duration{ms, 2 * ms, 4 * ms, ms, 2 * ms, 4 * ms}
	if len(pauses) != len(want) {
		t.Fatalf("pauses %v, want %v", pauses, want)
	}
	for i := range want {
		if pauses[i] != want[i] {
			t.Errorf("pause %d = %v, want %v (all: %v)", i, pauses[i], want[i], pauses)
		}
	}
	if errs[1] != "panic: boom" {
		t.Errorf("the panic was reported as %q", errs[1])
	}
}

// ackFails is a queue whose first Ack fails.
type ackFails struct {
	*queue.Queue
	mu    sync.Mutex
	fails int
}

func (a *ackFails) Ack(b queue.Batch) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fails > 0 {
		a.fails--
		return errors.New("ack file: input/output error")
	}
	return a.Queue.Ack(b)
}

// TestForwarderRestarted: a forwarder that fails is restarted, the hub is
// told with a forwarder_failed event of the gateway, and the queue drains.
func TestForwarderRestarted(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := 1; i <= 3; i++ {
		m := model.Message{Station: "s", Device: "d", Seq: uint64(i), Kind: model.KindTelemetry, Time: time.Now().UTC()}
		q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m)})
	}
	up := &flaky{sent: make(chan struct{}, 10)}
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	f := &Forwarder{Name: "mqtt/telemetry", Queue: &ackFails{Queue: q, fails: 1}, Lanes: []queue.Lane{queue.LaneTelemetry},
		Uplink: up, Batch: 10, Report: in.Emit, Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Supervise(ctx, Supervisor{Min: time.Millisecond, Max: time.Millisecond, Healthy: time.Minute})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for q.Stats().Lanes[queue.LaneTelemetry].Records > 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if n := q.Stats().Lanes[queue.LaneTelemetry].Records; n != 0 {
		t.Fatalf("%d records still queued: the failed forwarder was not restarted", n)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.msgs) != 1 || rec.msgs[0].Event == nil || rec.msgs[0].Event.Kind != model.EventForwarderFailed {
		t.Fatalf("reported %+v, want one forwarder_failed event", rec.msgs)
	}
	got := rec.msgs[0]
	want := map[string]string{"forwarder": "mqtt/telemetry", "error": "mqtt/telemetry queue: ack file: input/output error", "restarts": "1", "retry_in": "1ms"}
	if got.Device != model.GatewayDevice || got.Event.Severity != model.Warning || !equalMaps(got.Event.Details, want) {
		t.Errorf("event %s %s %v, want gateway warning %v", got.Device, got.Event.Severity, got.Event.Details, want)
	}
	if st := f.State(); st.Restarts != 1 {
		t.Errorf("the forwarder's state says %d restarts, want 1", st.Restarts)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestOutageLoggedOnce: while the hub refuses batch after batch the log
// says so once, with the reason, and once when it is back, with how long
// the outage lasted and what waited.
func TestOutageLoggedOnce(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	m := model.Message{Station: "s", Device: "d", Seq: 1, Kind: model.KindTelemetry, Time: time.Now().UTC(),
		Readings: []model.Reading{{Signal: "x", Value: model.Number(1), Quality: model.Good}}}
	q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m), Readings: 1})
	var buf testlog.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	up := &flaky{fails: 5, sent: make(chan struct{}, 1)}
	outage := &Outage{Uplink: "mqtt", Log: log}
	f := &Forwarder{Name: "mqtt/telemetry", Queue: q, Uplink: up, Batch: 10, Outage: outage, Log: log}
	if down, since, why := outage.Down(); down || !since.IsZero() || why != "" {
		t.Errorf("before any send: down=%v since %v %q, want up since never", down, since, why)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	start := time.Now()
	go func() { done <- f.Run(ctx) }()
	select {
	case <-up.sent:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing sent")
	}
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().Lanes[queue.LaneTelemetry].Acked == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	// Up again since the delivery that ended the outage, after the five
	// refusals' backoff.
	if down, since, _ := outage.Down(); down || since.Sub(start) < 5*minBackoff || time.Since(since) < 0 {
		t.Errorf("after the recovery: down=%v since %v (started %v), want up since the delivery", down, since, start)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("5 refused batches and a recovery logged %d lines, want 2:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for i, want := range []string{`level=WARN msg="hub uplink down; queueing until it is back" uplink=mqtt err="hub away"`,
		`level=INFO msg="hub uplink back" uplink=mqtt outage=`} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %s\nwant it to hold %s", i, lines[i], want)
		}
	}
	if !strings.Contains(lines[1], "backlog_messages=1 backlog_readings=1") {
		t.Errorf("recovery line lacks the backlog: %s", lines[1])
	}
}

// TestOutageSinceTheFailedSend: a hub that hangs fails a send only at its
// timeout; the outage dates from when that send began.
func TestOutageSinceTheFailedSend(t *testing.T) {
	o := &Outage{Uplink: "influx", Log: slog.New(slog.DiscardHandler)}
	began := time.Now().Add(-30 * time.Second)
	o.down("influx/telemetry", errors.New("context deadline exceeded"), began)
	o.down("influx/telemetry", errors.New("later failure"), time.Now())
	if down, since, why := o.Down(); !down || !since.Equal(began) || why != "context deadline exceeded" {
		t.Errorf("down=%v since %v %q, want down since %v (the first failed send's start) for its reason", down, since, why, began)
	}
}

// TestOutageUntilEveryLaneDelivers: an uplink whose alarm lane delivers
// while its telemetry lane's sends fail (InfluxDB over a slow link takes
// small writes, not large ones) is still down; it is back once the
// telemetry lane delivers too.
func TestOutageUntilEveryLaneDelivers(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	o := &Outage{Uplink: "influx", Log: slog.New(slog.DiscardHandler)}
	began := time.Now()
	o.down("influx/telemetry", errors.New("no answer in time"), began)
	o.down("influx/alarm", errors.New("no answer in time"), time.Now())
	o.up("influx/alarm", q)
	if down, since, _ := o.Down(); !down || !since.Equal(began) {
		t.Errorf("with the alarm lane delivering and telemetry not: down=%v since %v, want down since %v", down, since, began)
	}
	o.up("influx/telemetry", q)
	if down, _, _ := o.Down(); down {
		t.Error("with both lanes delivering: still down")
	}
}
