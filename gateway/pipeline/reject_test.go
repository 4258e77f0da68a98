package pipeline

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/queue"
	"outpost/gateway/uplink"
	"outpost/gateway/uplink/mqtt"
	"outpost/testbench/hub"
)

// refuses is an Uplink that refuses for good every message of device
// "bad", as InfluxDB refuses a point of the wrong field type, and takes
// the rest.
type refuses struct {
	mu    sync.Mutex
	got   []string
	sizes []int // of the batches sent
}

func (r *refuses) NewBatch() uplink.Batch { return &decoded{send: r.Send} }

func (r *refuses) Send(_ context.Context, msgs []model.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sizes = append(r.sizes, len(msgs))
	var rej []uplink.Rejection
	for i, m := range msgs {
		if m.Device == "bad" {
			rej = append(rej, uplink.Rejection{Index: i, Reason: "InfluxDB 400: field type conflict", Payload: []byte("m status=\"on\" 1")})
			continue
		}
		r.got = append(r.got, m.ID())
	}
	if rej != nil {
		return &uplink.Rejected{Items: rej}
	}
	return nil
}

// queued returns a queue of one telemetry message of each device, with
// sequence numbers from 1: a reading of its number, or, for device "big",
// a text of 5000 bytes.
func queued(t *testing.T, devices ...string) *queue.Queue {
	t.Helper()
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	for i, d := range devices {
		m := model.Message{Station: "s", StationType: model.SafetyPost, Device: d, DeviceKind: "k", Seq: uint64(i + 1),
			Kind: model.KindTelemetry, Time: time.Now().UTC(), Readings: []model.Reading{{Signal: "n", Value: model.Number(float64(i)), Quality: model.Good}}}
		if d == "big" {
			m.Readings = []model.Reading{{Signal: "text", Value: model.String(bigText), Quality: model.Good}}
		}
		if err := q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m)}); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

var bigText = strings.Repeat("x", 5000)

// readDeadLetters returns the lines of an uplink's dead-letter file.
func readDeadLetters(t *testing.T, path string) []deadLetter {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []deadLetter
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var d deadLetter
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("dead letter %q: %v", sc.Text(), err)
		}
		out = append(out, d)
	}
	return out
}

// runUntilDrained runs f until its queue is empty.
func runUntilDrained(t *testing.T, f *Forwarder, q *queue.Queue) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for q.Stats().Lanes[queue.LaneTelemetry].Records > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := q.Stats().Lanes[queue.LaneTelemetry].Records; n > 0 {
		t.Fatalf("%d messages still queued: the forwarder is stuck", n)
	}
}

// TestRejectedSetAside: messages the hub refuses for good go to the dead
// letters with the hub's reason, the hub is told, and every other message
// is delivered; the queue does not stall on them.
func TestRejectedSetAside(t *testing.T) {
	q := queued(t, "a", "bad", "b", "bad", "c")
	up := &refuses{}
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	f := &Forwarder{Name: "influx/telemetry", Queue: q, Uplink: up, UplinkName: "influx", Batch: 10,
		DeadLetters: &DeadLetters{Dir: dir}, Report: in.Emit, Log: slog.New(slog.DiscardHandler)}
	runUntilDrained(t, f, q)
	if strings.Join(up.got, " ") != "s/a/1 s/b/3 s/c/5" {
		t.Errorf("delivered %v, want s/a/1 s/b/3 s/c/5", up.got)
	}
	dl := readDeadLetters(t, filepath.Join(dir, "influx.jsonl"))
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	for i, seq := range []uint64{2, 4} {
		m, err := model.ParseJSON(dl[i].Message)
		if err != nil || m.Device != "bad" || m.Seq != seq || dl[i].Reason != "InfluxDB 400: field type conflict" || dl[i].Payload != `m status="on" 1` {
			t.Errorf("dead letter %d: %+v (%v)", i, dl[i], err)
		}
	}
	if len(rec.msgs) != 1 || rec.msgs[0].Event.Kind != model.EventRejected {
		t.Fatalf("reported %v, want one messages_rejected event", rec.msgs)
	}
	if d := rec.msgs[0].Event.Details; d["messages"] != "2" || d["kept"] != "2" || d["device"] != "bad" || d["seq"] != "2" ||
		d["reason"] != "InfluxDB 400: field type conflict" || d["dead_letter"] != filepath.Join(dir, "influx.jsonl") {
		t.Errorf("event details %v", d)
	}
}

// TestRejectionsHeldBack: a refusal that lasts is told at once, then at
// most once each RejectEvery, with the counts summed: of bad messages sent
// one at a time, the first at once, the next two together RejectEvery
// later, and the last as the forwarder stops. The readings of the events
// add up to those set aside, which the hub counts on.
func TestRejectionsHeldBack(t *testing.T) {
	q := queued(t, "bad", "a", "bad", "b", "bad")
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	f := &Forwarder{Name: "influx/telemetry", Queue: q, Uplink: &refuses{}, UplinkName: "influx", Batch: 1,
		DeadLetters: &DeadLetters{Dir: t.TempDir()}, Report: in.Emit, Log: slog.New(slog.DiscardHandler)}
	events := func() []string {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		var got []string
		for _, m := range rec.msgs {
			d := m.Event.Details
			got = append(got, fmt.Sprintf("messages=%s readings=%s kept=%s first=%s/%s", d["messages"], d["readings"], d["kept"], d["device"], d["seq"]))
		}
		return got
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	start := time.Now()
	for len(events()) < 2 && time.Since(start) < RejectEvery+5*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	took := time.Since(start)
	bad := model.Message{Station: "s", StationType: model.SafetyPost, Device: "bad", DeviceKind: "k", Seq: 6,
		Kind: model.KindTelemetry, Time: time.Now().UTC(), Readings: []model.Reading{{Signal: "n", Value: model.Number(6), Quality: model.Good}}}
	if err := q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &bad)}); err != nil {
		t.Fatal(err)
	}
	for q.Stats().Lanes[queue.LaneTelemetry].Records > 0 && time.Since(start) < RejectEvery+10*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	want := []string{
		"messages=1 readings=1 kept=1 first=bad/1",
		"messages=2 readings=2 kept=2 first=bad/3",
		"messages=1 readings=1 kept=1 first=bad/6",
	}
	if got := events(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("reported\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if took < RejectEvery-time.Second {
		t.Errorf("the second event came %v after the first set aside, want %v", took, RejectEvery)
	}
}

// TestBatchGrowsAfterRejection: a forwarder sending one message at a time
// (after the broker kept dropping the connection) doubles its batch after
// a send the hub took but for a message it refused, as after one it took
// whole: once the message at fault is found, the backlog goes out in full
// batches again.
func TestBatchGrowsAfterRejection(t *testing.T) {
	q := queued(t, "bad", "a", "b", "c", "d")
	up := &refuses{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{&recorder{}}, slog.New(slog.DiscardHandler))
	f := &Forwarder{Name: "mqtt/telemetry", Queue: q, Uplink: up, UplinkName: "mqtt", Batch: 10,
		DeadLetters: &DeadLetters{Dir: t.TempDir()}, Report: in.Emit, Log: slog.New(slog.DiscardHandler)}
	f.limit = 1 // as poisoned leaves it
	runUntilDrained(t, f, q)
	if fmt.Sprint(up.sizes) != "[1 2 2]" {
		t.Errorf("batches of %v, want [1 2 2]: bad alone, then twice as many after each send", up.sizes)
	}
}

// TestOverLimitSetAsideOnce: a queued message over the broker's stated
// packet limit is set aside once, with one event, however many times the
// hub is away when its batch is sent; the others are delivered when it is
// back. A real Mosquitto; the gateway's uplink is not connected for the
// first sends.
func TestOverLimitSetAsideOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b, err := hub.StartMosquitto(ctx, t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Stop()
	got := subscribe(t, b.URL(), "outpost/v1/s/+/telemetry")
	q := queued(t, "a", "big", "c")
	up := mqtt.New(configs.MQTT{URL: b.URL(), ClientID: "outpost-s", MaxPacketSize: 1024}, configs.StationID{ID: "s", Type: model.SafetyPost}, slog.New(slog.DiscardHandler))
	defer up.Close(context.Background())
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	f := &Forwarder{Name: "mqtt/telemetry", Queue: q, Uplink: up, UplinkName: "mqtt", Batch: 10,
		DeadLetters: &DeadLetters{Dir: dir}, Report: in.Emit, Limit: up.Limit, Log: slog.New(slog.DiscardHandler)}
	fctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- f.Run(fctx) }()
	for f.State().Failures < 3 {
		if dl, err := os.ReadFile(filepath.Join(dir, "mqtt.jsonl")); err == nil {
			t.Fatalf("set aside while the hub was away: %.100s", dl)
		}
		if ctx.Err() != nil {
			t.Fatal("the forwarder did not try to send 3 times")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for q.Stats().Lanes[queue.LaneTelemetry].Records > 0 && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var devices []string
	for range 2 {
		select {
		case d := <-got:
			devices = append(devices, d)
		case <-ctx.Done():
			t.Fatalf("delivered %v, want a and c", devices)
		}
	}
	if strings.Join(devices, " ") != "a c" {
		t.Errorf("delivered %v, want a c", devices)
	}
	dl := readDeadLetters(t, filepath.Join(dir, "mqtt.jsonl"))
	if len(dl) != 1 {
		t.Fatalf("%d dead letters, want 1 (the hub was away for 3 sends of its batch)", len(dl))
	}
	if m, err := model.ParseJSON(dl[0].Message); err != nil || m.Device != "big" || m.Seq != 2 || !strings.Contains(dl[0].Reason, "over the 1024 bytes the hub takes") {
		t.Errorf("dead letter %.100s, reason %q (%v), want big/2 over the 1024 bytes", dl[0].Message, dl[0].Reason, err)
	}
	if len(rec.msgs) != 1 || rec.msgs[0].Event.Kind != model.EventRejected || rec.msgs[0].Event.Details["device"] != "big" {
		t.Errorf("reported %v, want one messages_rejected event for big", rec.msgs)
	}
}

// TestPoisonMessageQuarantined: a real Mosquitto that takes packets of at
// most 2000 bytes drops the connection whenever the gateway publishes a
// larger one. The forwarder finds that message, sets it aside and tells the
// hub, and every other message arrives: one message the broker will never
// take does not stop the station.
func TestPoisonMessageQuarantined(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	m, err := hub.StartMosquittoWith(ctx, t.TempDir(), slog.New(slog.DiscardHandler), hub.MosquittoOptions{Config: "max_packet_size 2000\n"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	st := configs.StationID{ID: "s", Type: model.SafetyPost}
	up := mqtt.New(configs.MQTT{URL: m.URL(), ClientID: "outpost-s"}, st, slog.New(slog.DiscardHandler))
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer up.Close(context.Background())
	got := subscribe(t, m.URL(), "outpost/v1/s/+/telemetry")

	q := queued(t, "a", "b", "big", "c", "big", "d", "e")
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	drops := &dropCounter{up: up}
	f := &Forwarder{Name: "mqtt/telemetry", Queue: q, Uplink: drops, UplinkName: "mqtt", Batch: 100,
		DeadLetters: &DeadLetters{Dir: dir}, Report: in.Emit, Limit: up.Limit, Log: slog.New(slog.DiscardHandler)}
	runUntilDrained(t, f, q)

	want := map[string]bool{"a": true, "b": true, "c": true, "d": true, "e": true}
	deadline := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case d := <-got:
			delete(want, d)
		case <-deadline:
			t.Fatalf("these devices' messages never reached the hub: %v", want)
		}
	}
	// The second big message is set aside at once: the gateway learned
	// the broker's limit from the first.
	dl := readDeadLetters(t, filepath.Join(dir, "mqtt.jsonl"))
	if len(dl) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dl))
	}
	for i, seq := range []uint64{3, 5} {
		msg, err := model.ParseJSON(dl[i].Message)
		if err != nil || msg.Device != "big" || msg.Seq != seq || len(msg.Readings) != 1 || msg.Readings[0].Value != model.String(bigText) {
			t.Errorf("dead letter %d: %.200s (%v), want the message big/%d, its text whole", i, dl[i].Message, err, seq)
		}
	}
	if !strings.Contains(dl[1].Reason, "bytes, over the") {
		t.Errorf("second dead letter's reason %q: not set aside by the learned limit", dl[1].Reason)
	}
	// The limit settles an eighth below the message the broker refused.
	big, _ := model.ParseJSON(dl[0].Message)
	if n, size := up.Limit.Max(), mqtt.PacketSize(mqtt.DefaultPrefix, &big); n != size-size/8 {
		t.Errorf("learned limit %d, want %d: an eighth below the message the broker refused", n, size-size/8)
	}
	if len(rec.msgs) != 2 || rec.msgs[0].Event.Kind != model.EventRejected || rec.msgs[0].Event.Details["device"] != "big" {
		t.Fatalf("reported %v, want two messages_rejected events for device big", rec.msgs)
	}
	// The whole batch twice, then a, b and the first big one at a time, big
	// three times: the batch does not grow again before big is found.
	if n := drops.n.Load(); n != dropsToHalve+dropsToQuarantine {
		t.Errorf("the broker dropped the connection %d times, want %d", n, dropsToHalve+dropsToQuarantine)
	}
	t.Logf("reason: %s", rec.msgs[0].Event.Details["reason"])
}

// dropCounter counts the sends of its uplink that met a dropped
// connection.
type dropCounter struct {
	up Uplink
	n  atomic.Int32
}

func (d *dropCounter) NewBatch() uplink.Batch { return &countedBatch{d.up.NewBatch(), d} }

type countedBatch struct {
	uplink.Batch
	d *dropCounter
}

func (b *countedBatch) Send(ctx context.Context) error {
	err := b.Batch.Send(ctx)
	if errors.Is(err, uplink.ErrDropped) {
		b.d.n.Add(1)
	}
	return err
}

// subscribe returns the devices of the messages that arrive on topic.
func subscribe(t *testing.T, url, topic string) <-chan string {
	t.Helper()
	ch := make(chan string, 100)
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("hub-watch").SetCleanSession(true))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe(topic, 1, func(_ paho.Client, msg paho.Message) {
		if m, err := model.ParseJSON(msg.Payload()); err == nil {
			ch <- m.Device
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	return ch
}
