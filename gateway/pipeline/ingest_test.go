package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/queue"
	"outpost/gateway/uplink"
)

// recorder is an in-memory Appender for unit tests of the ingest stage.
type recorder struct {
	mu   sync.Mutex
	msgs []model.Message
	lane []queue.Lane
	vals []int
	err  error
}

func (r *recorder) Append(l queue.Lane, recs ...queue.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	for _, rec := range recs {
		m, err := model.DecodeBinary(rec.Data)
		if err != nil {
			return err
		}
		r.msgs, r.lane, r.vals = append(r.msgs, m), append(r.lane, l), append(r.vals, rec.Readings)
	}
	return nil
}

// counter is a Sequencer that counts from 1 per device. Like the
// gateway's, it is safe for concurrent use: Ingest numbers the messages of
// different devices at once (a driver's and the queue watch's).
type counter map[string]uint64

var counterMu sync.Mutex

func (c counter) Next(dev string) (uint64, error) {
	counterMu.Lock()
	defer counterMu.Unlock()
	c[dev]++
	return c[dev], nil
}

func policeRoom(t *testing.T) *configs.Station {
	t.Helper()
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func telemetry(dev string, readings ...model.Reading) model.Message {
	return model.Message{Device: dev, DeviceKind: "k", Kind: model.KindTelemetry, Readings: readings}
}

func boolReading(sig string, on bool) model.Reading {
	return model.Reading{Signal: sig, Value: model.Bool(on), Quality: model.Good}
}

func TestIngestStampsAndSequences(t *testing.T) {
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	at := time.Date(2026, 11, 28, 8, 0, 0, 0, time.FixedZone("CST", 8*3600))
	in.now = func() time.Time { return at }
	in.Emit(telemetry("th-hall", model.Reading{Signal: "temperature", Value: model.Number(21.5), Quality: model.Good},
		model.Reading{Signal: "humidity", Quality: model.Bad}))
	in.Emit(telemetry("th-hall"))
	in.Emit(telemetry("ups-1"))
	want := []struct {
		dev  string
		seq  uint64
		vals int
	}{{"th-hall", 1, 1}, {"th-hall", 2, 0}, {"ups-1", 1, 0}}
	if len(rec.msgs) != len(want) {
		t.Fatalf("queued %d messages, want %d", len(rec.msgs), len(want))
	}
	for i, w := range want {
		m := rec.msgs[i]
		if m.Station != "pr-0001" || m.StationType != model.PoliceRoom || m.Device != w.dev || m.Seq != w.seq {
			t.Errorf("message %d = %s type %s, want pr-0001/%s/%d police_room", i, m.ID(), m.StationType, w.dev, w.seq)
		}
		if !m.Time.Equal(at) || m.Time.Location() != time.UTC {
			t.Errorf("message %d time = %v, want %v in UTC", i, m.Time, at)
		}
		if rec.lane[i] != queue.LaneTelemetry || rec.vals[i] != w.vals {
			t.Errorf("message %d: lane %s with %d values, want telemetry with %d", i, rec.lane[i], rec.vals[i], w.vals)
		}
	}
}

// TestIngestEvents holds the rules of the templates: generic-smoke-detector's alarm
// raises smoke (critical) and clears; generic-door-contact's tamper raises and
// never clears; a device going offline raises device_lost once, critical
// for an alarm device, and device_restored when it is back. Events go to
// the alarm lane.
func TestIngestEvents(t *testing.T) {
	steps := []struct {
		msg  model.Message
		want []string // kind/severity/state of the events it implies
	}{
		{telemetry("smoke-hall", boolReading("alarm", false)), nil},
		{telemetry("smoke-hall", boolReading("alarm", true)), []string{"smoke/critical/active"}},
		{telemetry("smoke-hall", boolReading("alarm", true)), nil},
		{telemetry("smoke-hall", model.Reading{Signal: "alarm", Quality: model.Bad}), nil},
		{telemetry("smoke-hall", boolReading("alarm", false)), []string{"smoke/info/cleared"}},
		{telemetry("door-front", boolReading("tamper", true), boolReading("open", true)), []string{"tamper/critical/active", "door/warning/active"}},
		{telemetry("door-front", boolReading("tamper", false), boolReading("open", false)), []string{"door/info/cleared"}},
		{telemetry("door-front", boolReading("tamper", true)), []string{"tamper/critical/active"}},
		{telemetry("th-hall", boolReading("alarm", true)), nil}, // no rule on this device
		{model.Message{Device: "ups-1", Kind: model.KindHealth, Health: &model.Health{State: model.Degraded, Reason: "timeout"}}, nil},
		{model.Message{Device: "ups-1", Kind: model.KindHealth, Health: &model.Health{State: model.Offline, Reason: "timeout after 500ms"}}, []string{"device_lost/warning/"}},
		{model.Message{Device: "ups-1", Kind: model.KindHealth, Health: &model.Health{State: model.Offline, Reason: "link down"}}, nil},
		{model.Message{Device: "ups-1", Kind: model.KindHealth, Health: &model.Health{State: model.Degraded, Reason: "timeout"}}, []string{"device_restored/info/degraded"}},
		{model.Message{Device: "ups-1", Kind: model.KindHealth, Health: &model.Health{State: model.Online}}, nil},
		// An alarm device (its template says alarm: true) is lost critically.
		{model.Message{Device: "smoke-hall", Kind: model.KindHealth, Health: &model.Health{State: model.Offline, Reason: "no answer"}}, []string{"device_lost/critical/"}},
		{model.Message{Device: "smoke-hall", Kind: model.KindHealth, Health: &model.Health{State: model.Online}}, []string{"device_restored/info/online"}},
	}
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	for i, s := range steps {
		before := len(rec.msgs)
		in.Emit(s.msg)
		var got []string
		for j := before; j < len(rec.msgs); j++ {
			m := rec.msgs[j]
			if m.Kind == model.KindEvent {
				got = append(got, fmt.Sprintf("%s/%s/%s", m.Event.Kind, m.Event.Severity, m.Event.Details["state"]))
			}
			want := map[model.Kind]queue.Lane{model.KindTelemetry: queue.LaneTelemetry, model.KindHealth: queue.LaneHealth, model.KindEvent: queue.LaneAlarm}[m.Kind]
			if rec.lane[j] != want {
				t.Errorf("step %d: %s message in the %s lane, want %s", i, m.Kind, rec.lane[j], want)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(s.want) {
			t.Errorf("step %d (%s): events %v, want %v", i, s.msg.Device, got, s.want)
		}
	}
	for _, m := range rec.msgs {
		if m.Kind == model.KindEvent && m.Event.Kind == model.EventDeviceLost && m.Device == "ups-1" && m.Event.Details["reason"] != "timeout after 500ms" {
			t.Errorf("device_lost details = %v, want the health's reason", m.Event.Details)
		}
	}
}

func TestIngestCountsFailures(t *testing.T) {
	rec := &recorder{err: errors.New("disk full")}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	in.Emit(telemetry("th-hall"))
	if in.Failed() != 1 {
		t.Errorf("Failed = %d, want 1", in.Failed())
	}
}

// flaky is an Uplink that fails its first sends.
type flaky struct {
	mu    sync.Mutex
	fails int
	got   [][]model.Message
	sent  chan struct{}
}

func (f *flaky) NewBatch() uplink.Batch { return &decoded{send: f.Send} }

// decoded is the batch of the fake uplinks: its messages as decoded.
type decoded struct {
	msgs []model.Message
	send func(context.Context, []model.Message) error
}

func (b *decoded) Add(m *model.Message) {
	c := *m
	c.Readings = slices.Clone(m.Readings) // the forwarder reuses them
	b.msgs = append(b.msgs, c)
}

func (b *decoded) Len() int                       { return len(b.msgs) }
func (b *decoded) Send(ctx context.Context) error { return b.send(ctx, b.msgs) }
func (b *decoded) Reset()                         { b.msgs = nil }

func (f *flaky) Send(ctx context.Context, msgs []model.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fails > 0 {
		f.fails--
		return errors.New("hub away")
	}
	f.got = append(f.got, append([]model.Message(nil), msgs...))
	f.sent <- struct{}{}
	return nil
}

// TestForwarderAcksOnlyAccepted runs the forwarder on a real queue: a batch
// the uplink refused comes again, in order, and is deleted only once
// accepted; old messages go out marked historical with their own time.
func TestForwarderAcksOnlyAccepted(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	old := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	for i := 1; i <= 3; i++ {
		m := model.Message{Station: "s", Device: "d", Seq: uint64(i), Kind: model.KindTelemetry, Time: old}
		if i == 3 {
			m.Time = time.Now().UTC()
		}
		if err := q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m)}); err != nil {
			t.Fatal(err)
		}
	}
	up := &flaky{fails: 2, sent: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	f := &Forwarder{Name: "test", Queue: q, Uplink: up, Batch: 10, HistoricalAfter: time.Minute, Log: slog.New(slog.DiscardHandler)}
	done := make(chan error)
	go func() { done <- f.Run(ctx) }()
	select {
	case <-up.sent:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing sent")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(up.got) != 1 || len(up.got[0]) != 3 {
		t.Fatalf("sent %v, want one batch of 3", up.got)
	}
	for i, m := range up.got[0] {
		wantHist := i < 2
		if m.Seq != uint64(i+1) || m.Historical != wantHist {
			t.Errorf("message %d: seq %d historical %v, want seq %d historical %v", i, m.Seq, m.Historical, i+1, wantHist)
		}
	}
	if !up.got[0][0].Time.Equal(old) {
		t.Errorf("historical message time = %v, want its original %v", up.got[0][0].Time, old)
	}
	if s := q.Stats().Lanes[queue.LaneTelemetry]; s.Records != 0 || s.Acked != 3 {
		t.Errorf("queue after the accepted send: %d queued, %d acked; want 0 and 3", s.Records, s.Acked)
	}
	if st := f.State(); st.Failures != 2 || st.Delivered != 3 || st.Restarts != 0 || st.LastDelivery.IsZero() {
		t.Errorf("state %+v, want 2 failures, 3 delivered, no restart and the time of the delivery", st)
	}
}

// lockedCounter is a Sequencer safe for concurrent use.
type lockedCounter struct {
	mu sync.Mutex
	c  counter
}

func (l *lockedCounter) Next(dev string) (uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.c.Next(dev)
}

// TestIngestSharesFsyncs: with an fsync per append (queue.sync: 0s), many
// devices emitting at once must share fsyncs rather than wait for each
// other's one at a time, and each device's messages keep their order.
func TestIngestSharesFsyncs(t *testing.T) {
	q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: 0}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	in := NewIngest(policeRoom(t), &lockedCounter{c: counter{}}, []Appender{q}, slog.New(slog.DiscardHandler))
	const devices, each = 8, 25
	var wg sync.WaitGroup
	for d := range devices {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				in.Emit(telemetry(fmt.Sprint("dev-", d), model.Reading{Signal: "x", Value: model.Number(1), Quality: model.Good}))
			}
		}()
	}
	wg.Wait()
	st := q.Stats()
	if n := st.Lanes[queue.LaneTelemetry].Appended; n != devices*each {
		t.Fatalf("appended %d, want %d", n, devices*each)
	}
	if st.Syncs > devices*each/2 {
		t.Errorf("%d fsyncs for %d appends from %d devices at once: appends do not share them", st.Syncs, devices*each, devices)
	}
	last := map[string]uint64{}
	for {
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // take what is there without waiting
		b, err := q.Next(ctx, 1000, queue.LaneTelemetry)
		if err != nil {
			break
		}
		for _, e := range b.Entries {
			m, err := model.DecodeBinary(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Seq != last[m.Device]+1 {
				t.Fatalf("%s: seq %d after %d in the queue", m.Device, m.Seq, last[m.Device])
			}
			last[m.Device] = m.Seq
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("%d appends, %d fsyncs", devices*each, st.Syncs)
}

// TestIngestSplitsLargeTelemetry: telemetry over the hub's packet limit is
// split into messages that fit, each with its own sequence number, and no
// reading is lost.
func TestIngestSplitsLargeTelemetry(t *testing.T) {
	rec := &recorder{}
	in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
	in.Limit = readingsOver(3)
	var rs []model.Reading
	for i := range 10 {
		rs = append(rs, model.Reading{Signal: fmt.Sprint("s", i), Value: model.Number(float64(i)), Quality: model.Good})
	}
	in.Emit(telemetry("th-hall", rs...))
	var got []string
	for _, m := range rec.msgs {
		var names []string
		for _, r := range m.Readings {
			names = append(names, r.Signal)
		}
		got = append(got, fmt.Sprintf("#%d %v", m.Seq, names))
	}
	want := "[#1 [s0 s1] #2 [s2 s3 s4] #3 [s5 s6] #4 [s7 s8 s9]]"
	if fmt.Sprint(got) != want {
		t.Errorf("queued %v\nwant   %s", got, want)
	}
}

// readingsOver is a limit of messages of at most so many readings.
type readingsOver int

func (n readingsOver) TooLarge(m *model.Message) bool { return len(m.Readings) > int(n) }

// TestForwarderLingers: with a shallow queue, a forwarder with a linger
// sends what came meanwhile in one batch, not a batch per message.
func TestForwarderLingers(t *testing.T) {
	for _, c := range []struct {
		linger  time.Duration
		atLeast int // batches for 20 messages that come 10 ms apart
		atMost  int
	}{{0, 10, 20}, {150 * time.Millisecond, 2, 3}} {
		q, err := queue.Open(t.TempDir(), queue.Options{SyncEvery: -1}, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		up := &flaky{sent: make(chan struct{}, 100)}
		ctx, cancel := context.WithCancel(context.Background())
		var waited []time.Duration // Waited runs on the forwarder's goroutine, read after it ended
		f := &Forwarder{Name: "test", Queue: q, Uplink: up, Batch: 1000, Linger: c.linger, Log: slog.New(slog.DiscardHandler),
			Waited: func(d time.Duration) { waited = append(waited, d) }}
		done := make(chan error)
		go func() { done <- f.Run(ctx) }()
		for i := 1; i <= 20; i++ {
			m := model.Message{Station: "s", Device: "d", Seq: uint64(i), Kind: model.KindTelemetry, Time: time.Now().UTC()}
			if err := q.Append(queue.LaneTelemetry, queue.Record{Data: model.AppendBinary(nil, &m)}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		for n := 0; n < 20; {
			select {
			case <-up.sent:
				up.mu.Lock()
				n = 0
				for _, b := range up.got {
					n += len(b)
				}
				up.mu.Unlock()
			case <-time.After(10 * time.Second):
				t.Fatalf("linger %s: %d of 20 messages sent", c.linger, n)
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		q.Close()
		if got := len(up.got); got < c.atLeast || got > c.atMost {
			t.Errorf("linger %s: 20 messages 10 ms apart went in %d batches, want %d to %d", c.linger, got, c.atLeast, c.atMost)
		}
		// Each message's time in the queue: up to the linger, and more
		// than none.
		if len(waited) != 20 || slices.ContainsFunc(waited, func(d time.Duration) bool { return d <= 0 || d > c.linger+time.Second }) {
			t.Errorf("linger %s: waited %v, want 20 times between 0 and %s", c.linger, waited, c.linger+time.Second)
		}
	}
}

// TestIngestAlarmStatesAcrossRestart: the signals last published active
// are kept in the state directory. A gateway restarted after a smoke alarm
// it published active was let go raises the clear it owes; one restarted
// with the alarm still on raises nothing again; a signal never published
// active (the door's) is raised when found active, as before; a file that
// cannot be read is started without.
func TestIngestAlarmStatesAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "alarm-states.json")
	events := func(in *Ingest, rec *recorder, msgs ...model.Message) []string {
		t.Helper()
		before := len(rec.msgs)
		for _, m := range msgs {
			if err := in.Emit(m); err != nil {
				t.Fatal(err)
			}
		}
		var got []string
		for _, m := range rec.msgs[before:] {
			if m.Kind == model.KindEvent {
				got = append(got, fmt.Sprintf("%s/%s/%s", m.Device, m.Event.Kind, m.Event.Details["state"]))
			}
		}
		return got
	}
	start := func() (*Ingest, *recorder) {
		rec := &recorder{}
		in := NewIngest(policeRoom(t), counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
		in.KeepAlarmStates(path)
		return in, rec
	}
	// Every step is a gateway started anew on the same state directory.
	for i, step := range []struct {
		msgs []model.Message
		want []string
	}{
		{[]model.Message{telemetry("smoke-hall", boolReading("alarm", true))}, []string{"smoke-hall/smoke/active"}},
		{[]model.Message{telemetry("smoke-hall", boolReading("alarm", true))}, nil},
		{[]model.Message{telemetry("smoke-hall", boolReading("alarm", false))}, []string{"smoke-hall/smoke/cleared"}},
		{[]model.Message{telemetry("smoke-hall", boolReading("alarm", false)), telemetry("door-front", boolReading("open", true))},
			[]string{"door-front/door/active"}},
	} {
		in, rec := start()
		if got := events(in, rec, step.msgs...); fmt.Sprint(got) != fmt.Sprint(step.want) {
			t.Errorf("step %d: events %v, want %v", i, got, step.want)
		}
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != `{"door-front":["open"]}` {
		t.Errorf("alarm states file %q, %v; want the door open only", b, err)
	}
	if err := os.WriteFile(path, []byte("{garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	in, rec := start()
	if got := events(in, rec, telemetry("door-front", boolReading("open", true))); fmt.Sprint(got) != "[door-front/door/active]" {
		t.Errorf("with an unreadable file: events %v, want the door raised as found", got)
	}
}

// TestIngestReportByException: the police room's th-hall sends its
// temperature and humidity by exception (0.5 °C and 3 %RH): a message
// whose readings are all within their deadbands is not queued and takes
// no sequence number, one with a change beyond is queued with that
// reading alone, the first after the device was offline is sent whole,
// and a station that turns report by exception off sends everything.
func TestIngestReportByException(t *testing.T) {
	th := func(temp, hum float64) model.Message {
		return telemetry("th-hall", model.Reading{Signal: "temperature", Value: model.Number(temp), Quality: model.Good},
			model.Reading{Signal: "humidity", Value: model.Number(hum), Quality: model.Good})
	}
	offline := model.Message{Device: "th-hall", DeviceKind: "k", Kind: model.KindHealth, Health: &model.Health{State: model.Offline, Reason: "no answer"}}
	type want struct {
		kind    model.Kind
		seq     uint64
		signals []string
	}
	both := []string{"temperature", "humidity"}
	for _, tc := range []struct {
		name string
		on   bool
		want []want
	}{
		{"on", true, []want{
			{model.KindTelemetry, 1, both},
			{model.KindTelemetry, 2, []string{"temperature"}},
			{model.KindHealth, 3, nil},
			{model.KindEvent, 4, nil}, // device_lost
			{model.KindTelemetry, 5, both},
		}},
		{"off", false, []want{
			{model.KindTelemetry, 1, both},
			{model.KindTelemetry, 2, both},
			{model.KindTelemetry, 3, both},
			{model.KindTelemetry, 4, both},
			{model.KindHealth, 5, nil},
			{model.KindEvent, 6, nil},
			{model.KindTelemetry, 7, both},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := policeRoom(t)
			st.ReportByException = tc.on
			rec := &recorder{}
			in := NewIngest(st, counter{}, []Appender{rec}, slog.New(slog.DiscardHandler))
			at := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
			for i, m := range []model.Message{th(21.0, 50), th(21.4, 52.9), th(20.6, 47.1), th(21.6, 50), offline, th(21.6, 50)} {
				m.Time = at.Add(time.Duration(i) * time.Second)
				if err := in.Emit(m); err != nil {
					t.Fatal(err)
				}
			}
			var got []want
			for _, m := range rec.msgs {
				var sigs []string
				for _, r := range m.Readings {
					sigs = append(sigs, r.Signal)
				}
				got = append(got, want{m.Kind, m.Seq, sigs})
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("queued:\n%v\nwant:\n%v", got, tc.want)
			}
			suppressed := uint64(0)
			if tc.on {
				suppressed = 5 // 2 + 2 + 1 (humidity at 21.6, 50)
			}
			if got := in.Unchanged("th-hall"); got != suppressed {
				t.Errorf("Unchanged(th-hall) = %d, want %d", got, suppressed)
			}
		})
	}
}
