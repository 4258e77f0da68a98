package mqtt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/uplink"
	"outpost/testbench/hub"
	"outpost/testbench/testlog"
)

var station = configs.StationID{ID: "pr-0001", Type: model.PoliceRoom}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

type received struct {
	topic    string
	payload  string
	retained bool
}

// subscribe connects a plain paho client to url and subscribes to topic;
// every message lands on the returned channel.
func subscribe(t *testing.T, url, id, topic string) <-chan received {
	t.Helper()
	ch := make(chan received, 100000)
	subscribed := make(chan error, 1)
	o := paho.NewClientOptions().AddBroker(url).SetClientID(id).SetCleanSession(true).SetAutoReconnect(true).SetMaxReconnectInterval(100 * time.Millisecond).
		SetOnConnectHandler(func(c paho.Client) {
			tok := c.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
				ch <- received{m.Topic(), string(m.Payload()), m.Retained()}
			})
			tok.WaitTimeout(5 * time.Second)
			select {
			case subscribed <- tok.Error():
			default:
			}
		})
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber connect: %v", tok.Error())
	}
	if err := <-subscribed; err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return ch
}

func next(t *testing.T, ch <-chan received) received {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10 s")
		return received{}
	}
}

// nextStatus skips messages until one on the status topic arrives.
func nextStatus(t *testing.T, ch <-chan received) (Status, received) {
	t.Helper()
	for {
		r := next(t, ch)
		if strings.HasSuffix(r.topic, "/status") {
			s, err := ParseStatus([]byte(r.payload))
			if err != nil {
				t.Fatal(err)
			}
			return s, r
		}
	}
}

func startBroker(t *testing.T) *hub.Mosquitto { return startBrokerWith(t, "") }

// startBrokerWith starts a broker with these lines added to its
// configuration.
func startBrokerWith(t *testing.T, config string) *hub.Mosquitto {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := hub.StartMosquittoWith(ctx, t.TempDir(), quiet(), hub.MosquittoOptions{Config: config})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

func connect(t *testing.T, url string) *Uplink {
	t.Helper()
	u := New(configs.MQTT{URL: url}, station, quiet())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close(context.Background()) })
	return u
}

func messages(n int, readings int) []model.Message {
	ms := make([]model.Message, n)
	t0 := time.Date(2026, 11, 28, 13, 37, 0, 0, time.UTC)
	for i := range ms {
		rs := make([]model.Reading, readings)
		for j := range rs {
			rs[j] = model.Reading{Signal: fmt.Sprintf("s%d", j), Value: model.Number(float64(i) + float64(j)/10), Unit: "V", Quality: model.Good}
		}
		ms[i] = model.Message{Station: station.ID, StationType: station.Type, Device: "meter-main", DeviceKind: "power_meter",
			Seq: uint64(i + 1), Time: t0.Add(time.Duration(i) * time.Millisecond), Kind: model.KindTelemetry, Readings: rs}
	}
	return ms
}

func TestTopics(t *testing.T) {
	m := model.Message{Station: "pr-0001", Device: "th-hall", Kind: model.KindEvent}
	if got := Topic(Prefix(""), &m); got != "outpost/v1/pr-0001/th-hall/event" {
		t.Errorf("Topic = %q", got)
	}
	if got := StatusTopic(Prefix("city/"), "pr-0001"); got != "city/pr-0001/status" {
		t.Errorf("StatusTopic = %q", got)
	}
	if DefaultPrefix != fmt.Sprintf("outpost/v%d", model.ContractVersion) {
		t.Errorf("DefaultPrefix %q does not carry contract version %d", DefaultPrefix, model.ContractVersion)
	}
	ts := time.Date(2026, 11, 28, 13, 37, 0, 5, time.UTC)
	for _, c := range []struct {
		broker, want string
	}{
		{"", `{"v":1,"station":"pr-0001","state":"online","ts":"2026-11-28T13:37:00.000000005Z"}`},
		{"tcp://hub-b:1883", `{"v":1,"station":"pr-0001","state":"online","broker":"tcp://hub-b:1883","ts":"2026-11-28T13:37:00.000000005Z"}`},
	} {
		b := AppendStatus(nil, "pr-0001", StateOnline, c.broker, ts)
		if string(b) != c.want {
			t.Errorf("AppendStatus = %s, want %s", b, c.want)
		}
		s, err := ParseStatus(b)
		if err != nil || s != (Status{V: 1, Station: "pr-0001", State: StateOnline, Broker: c.broker, Time: ts}) {
			t.Errorf("ParseStatus = %+v, %v", s, err)
		}
	}
	for _, bad := range []string{`{`, `{"v":2,"station":"s","state":"online"}`, `{"v":1,"state":"online"}`, `{"v":1,"station":"s","state":"asleep"}`} {
		if _, err := ParseStatus([]byte(bad)); err == nil {
			t.Errorf("ParseStatus(%s) accepted", bad)
		}
	}
}

func TestSendArrivesExactly(t *testing.T) {
	b := startBroker(t)
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/#")
	u := connect(t, b.URL())
	if st, r := nextStatus(t, sub); st.State != StateOnline || r.topic != "outpost/v1/pr-0001/status" {
		t.Fatalf("status %+v on %s, want online", st, r.topic)
	}
	msgs := messages(3, 2)
	msgs[1].Kind, msgs[1].Readings, msgs[1].Device, msgs[1].DeviceKind = model.KindEvent, nil, "panic-1", "panic_button"
	msgs[1].Event = &model.Event{Kind: model.EventPanic, Severity: model.Critical, Details: map[string]string{"button": "reception"}}
	msgs[2].Kind, msgs[2].Readings = model.KindHealth, nil
	msgs[2].Health = &model.Health{State: model.Degraded, Reason: "2 timeouts", Counters: map[string]uint64{"timeouts": 2}}
	if err := uplink.SendAll(context.Background(), u.NewBatch(), msgs); err != nil {
		t.Fatalf("Send: %v", err)
	}
	want := []received{
		{"outpost/v1/pr-0001/meter-main/telemetry", `{"v":1,"station":"pr-0001","station_type":"police_room","device":"meter-main","device_kind":"power_meter","seq":1,"ts":"2026-11-28T13:37:00Z","kind":"telemetry","readings":[{"signal":"s0","value":0,"unit":"V","quality":"good"},{"signal":"s1","value":0.1,"unit":"V","quality":"good"}]}`, false},
		{"outpost/v1/pr-0001/panic-1/event", `{"v":1,"station":"pr-0001","station_type":"police_room","device":"panic-1","device_kind":"panic_button","seq":2,"ts":"2026-11-28T13:37:00.001Z","kind":"event","event":{"kind":"panic","severity":"critical","details":{"button":"reception"}}}`, false},
		{"outpost/v1/pr-0001/meter-main/health", `{"v":1,"station":"pr-0001","station_type":"police_room","device":"meter-main","device_kind":"power_meter","seq":3,"ts":"2026-11-28T13:37:00.002Z","kind":"health","health":{"state":"degraded","reason":"2 timeouts","counters":{"timeouts":2}}}`, false},
	}
	got := map[string]received{}
	for range want {
		r := next(t, sub)
		got[r.topic] = r
	}
	for _, w := range want {
		if got[w.topic] != w {
			t.Errorf("on %s got\n %+v\nwant\n %+v", w.topic, got[w.topic], w)
		}
	}
	if err := uplink.SendAll(context.Background(), u.NewBatch(), nil); err != nil {
		t.Errorf("Send of nothing: %v", err)
	}
}

func TestStatusLastWillAndClose(t *testing.T) {
	b := startBroker(t)
	early := subscribe(t, b.URL(), "early", "outpost/v1/+/status")
	u := connect(t, b.URL())
	// The online status goes out from paho's connect handler, which may run
	// after connect returns: once a subscriber has it, the broker keeps it.
	if st, _ := nextStatus(t, early); st.State != StateOnline {
		t.Fatalf("status %+v, want online", st)
	}
	// A late subscriber sees the retained online status.
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/+/status")
	st, r := nextStatus(t, sub)
	if st.State != StateOnline || !r.retained || st.Station != "pr-0001" {
		t.Fatalf("status %+v retained=%v, want retained online", st, r.retained)
	}
	// The connection dies without DISCONNECT: the broker publishes the will.
	// (Shut the socket down rather than close it: paho ignores a read error
	// on a connection closed under it and would notice only at the next
	// keepalive.)
	first := u.cur.Load()
	raw, err := first.conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		if err := syscall.Shutdown(int(fd), syscall.SHUT_RDWR); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	if st, _ := nextStatus(t, sub); st.State != StateOffline {
		t.Fatalf("after the connection died: %+v, want offline (last will)", st)
	}
	// The uplink reconnects by itself and says online again.
	if st, _ := nextStatus(t, sub); st.State != StateOnline {
		t.Fatalf("after reconnect: %+v, want online", st)
	}
	// The online status goes out from paho's connect handler, a moment
	// before the supervisor takes the new client in: wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for !u.Connected() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if l := u.cur.Load(); l == first || !u.Connected() {
		t.Fatalf("no new connection after reconnect (link %d, connected %v)", l.id, u.Connected())
	}
	if err := u.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st, _ := nextStatus(t, sub); st.State != StateOffline {
		t.Fatalf("after Close: %+v, want offline", st)
	}
	late := subscribe(t, b.URL(), "late", "outpost/v1/+/status")
	if st, r := nextStatus(t, late); st.State != StateOffline || !r.retained {
		t.Fatalf("retained status after Close: %+v retained=%v, want offline", st, r.retained)
	}
	if err := uplink.SendAll(context.Background(), u.NewBatch(), messages(1, 1)); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send after Close = %v, want ErrNotConnected", err)
	}
}

func TestSendNotConnected(t *testing.T) {
	u := New(configs.MQTT{URL: "tcp://127.0.0.1:1"}, station, quiet())
	if err := uplink.SendAll(context.Background(), u.NewBatch(), messages(1, 1)); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Send before Connect = %v, want ErrNotConnected", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	err := u.Connect(ctx)
	defer u.Close(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect to a closed port = %v, want deadline exceeded", err)
	}
	start := time.Now()
	if err := uplink.SendAll(context.Background(), u.NewBatch(), messages(1, 1)); !errors.Is(err, ErrNotConnected) {
		t.Fatalf("Send while connecting = %v, want ErrNotConnected", err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("Send without a connection took %v, want an immediate error", d)
	}
}

// A broker killed in the middle of a batch must fail the batch, even when it
// is back before the batch's remaining acknowledgements could arrive; the
// next batch then succeeds on the new connection.
func TestBrokerKilledDuringSend(t *testing.T) {
	b := startBroker(t)
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/pr-0001/meter-main/telemetry")
	u := connect(t, b.URL())
	msgs := messages(5000, 8)
	var got atomic.Int64
	killed := make(chan struct{})
	go func() {
		defer close(killed)
		for range sub {
			if got.Add(1) == 200 {
				b.Kill()
				return
			}
		}
	}()
	err := uplink.SendAll(context.Background(), u.NewBatch(), msgs)
	<-killed
	if err == nil {
		t.Fatal("Send returned nil although the broker was killed during the batch")
	}
	t.Logf("Send failed as it must: %v (subscriber saw %d)", err, got.Load())

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := b.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	for !u.Connected() {
		if ctx.Err() != nil {
			t.Fatal("uplink did not reconnect within 20 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	sub2 := subscribe(t, b.URL(), "hub2", "outpost/v1/pr-0001/meter-main/telemetry")
	if err := uplink.SendAll(ctx, u.NewBatch(), msgs[:100]); err != nil {
		t.Fatalf("Send after restart: %v", err)
	}
	// The new batch arrives whole and exact, and nothing else: the failed
	// batch is not replayed behind the gateway's back (its queue resends).
	for i := range msgs[:100] {
		r := next(t, sub2)
		if want := string(model.AppendJSON(nil, &msgs[i])); r.payload != want {
			t.Fatalf("message %d after restart:\n got %s\nwant %s", i, r.payload, want)
		}
	}
	select {
	case r := <-sub2:
		t.Fatalf("unexpected message after the batch: %s %s", r.topic, r.payload)
	case <-time.After(200 * time.Millisecond):
	}
}

// A broker that is killed and restarted while tokens are outstanding makes
// paho complete old tokens on the new connection; Send must not take those
// for acknowledgements.
func TestBrokerBouncedDuringSend(t *testing.T) {
	b := startBroker(t)
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/pr-0001/meter-main/telemetry")
	u := connect(t, b.URL())
	msgs := messages(5000, 8)
	var got atomic.Int64
	bounced := make(chan error, 1)
	go func() {
		for range sub {
			if got.Add(1) == 200 {
				b.Kill()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				bounced <- b.Restart(ctx)
				cancel()
				return
			}
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := uplink.SendAll(ctx, u.NewBatch(), msgs)
	if rerr := <-bounced; rerr != nil {
		t.Fatal(rerr)
	}
	if err == nil {
		t.Fatal("Send returned nil although the broker was bounced during the batch")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Send hung until its deadline instead of failing on the connection loss: %v", err)
	}
}

// BenchmarkSend publishes batches of 100 telemetry messages of 8 readings
// to a real Mosquitto.
func BenchmarkSend(b *testing.B) {
	dir := b.TempDir()
	ctx := context.Background()
	m, err := hub.StartMosquitto(ctx, dir, quiet())
	if err != nil {
		b.Fatal(err)
	}
	defer m.Stop()
	u := New(configs.MQTT{URL: m.URL()}, station, quiet())
	if err := u.Connect(ctx); err != nil {
		b.Fatal(err)
	}
	defer u.Close(ctx)
	msgs := messages(100, 8)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := uplink.SendAll(ctx, u.NewBatch(), msgs); err != nil {
			b.Fatal(err)
		}
	}
	s := b.Elapsed().Seconds()
	b.ReportMetric(float64(b.N*len(msgs))/s, "msgs/s")
	b.ReportMetric(float64(b.N*len(msgs)*8)/s, "readings/s")
}

// TestRefusedCredentials: a broker that refuses the gateway's password is
// logged once at warning level with the cause an installer acts on, not at
// every retry, the uplink's connection state says so, and the password in
// the URL appears in no log line at any level.
func TestRefusedCredentials(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := hub.PasswordFile(pw, "outpost", "right-secret"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := hub.StartMosquittoWith(ctx, filepath.Join(dir, "broker"), quiet(), hub.MosquittoOptions{
		Config: "allow_anonymous false\npassword_file " + pw + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Stop)
	var logs testlog.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	url := "tcp://outpost:wrong-secret@" + b.Addr()
	u := New(configs.MQTT{URL: url}, station, log)
	short, cancel2 := context.WithTimeout(ctx, 2*time.Second) // several retries
	defer cancel2()
	if err := u.Connect(short); err == nil {
		t.Fatal("connected with a wrong password")
	}
	u.Close(context.Background())
	text := logs.String()
	if strings.Contains(text, "wrong-secret") {
		t.Errorf("the password appears in the log:\n%s", text)
	}
	// Mosquitto answers a wrong password with "not authorised".
	cause := "the broker refused the gateway: not authorised (check hub.mqtt.username and password, and that the broker allows its client id)"
	want := `level=WARN msg="mqtt uplink: cannot connect to the hub broker; retrying" broker=tcp://outpost:xxxxx@` + b.Addr() +
		` cause="` + cause + `"`
	if n := strings.Count(text, "level=WARN"); n != 1 || !strings.Contains(text, want) {
		t.Errorf("%d warnings; want one:\n%s\nlog:\n%s", n, want, text)
	}
	if n := strings.Count(text, "connect failed"); n < 3 {
		t.Errorf("only %d connect attempts in 2 s: the test did not see retries", n)
	}
	if c := u.Connection(); c.Connected || c.Cause != cause {
		t.Errorf("connection %+v", c)
	}

	ok := New(configs.MQTT{URL: "tcp://outpost:right-secret@" + b.Addr()}, station, quiet())
	if err := ok.Connect(ctx); err != nil {
		t.Fatalf("with the right password: %v", err)
	}
	ok.Close(context.Background())
}

// TestSecondGatewaySameClientID: two gateways with one station id (an old
// box left running beside its replacement) take the broker's connection
// from each other; each says what is wrong, with the client id, instead of
// a bare "connection lost".
func TestSecondGatewaySameClientID(t *testing.T) {
	m := startBroker(t)
	var logs testlog.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	a := New(configs.MQTT{URL: m.URL()}, station, log)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	connect(t, m.URL()) // the second gateway
	want := "another client may use the client id outpost-" + station.ID + " (a second gateway with station id " + station.ID + "?)"
	for !strings.Contains(logs.String(), "the broker keeps closing the gateway's connection") {
		if ctx.Err() != nil {
			t.Fatalf("no warning after 30 s; log:\n%s", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	for c := a.Connection(); !strings.Contains(c.Cause, want); c = a.Connection() {
		if ctx.Err() != nil {
			t.Fatalf("cause %q, want it to say %q", c.Cause, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBrokerRestartsAreNotADuplicate: a broker stopped and restarted three
// times in a minute also closes the connection three times, but refuses
// the gateway while it is away: that is no second gateway.
func TestBrokerRestartsAreNotADuplicate(t *testing.T) {
	m := startBroker(t)
	var logs testlog.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	u := New(configs.MQTT{URL: m.URL()}, station, log)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := u.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer u.Close(context.Background())
	for range 3 {
		m.Stop()                       // it closes its connections: the gateway reads EOF
		for u.Connection().Connected { // the loss is seen
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // down long enough for a refused attempt
		if err := m.Restart(ctx); err != nil {
			t.Fatal(err)
		}
		for !u.Connection().Connected {
			if ctx.Err() != nil {
				t.Fatal("not connected again")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if strings.Contains(logs.String(), "keeps closing") || strings.Contains(u.Connection().Cause, "another client") {
		t.Errorf("three broker restarts taken for a second gateway; log:\n%s", logs.String())
	}
}

// TestBrokerClosesAsSetUp: a broker that took the gateway's connection and
// then closes every new one as it is set up (Mosquitto out of its
// memory_limit; here a relay whose broker is gone) is said to be
// overloaded, not to be a TLS listener the station file should name with
// ssl://: the settings that worked a moment ago are not the cause.
func TestBrokerClosesAsSetUp(t *testing.T) {
	b := startBroker(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p, err := hub.NewPath(ctx, b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	u := connect(t, "tcp://"+p.Addr())
	b.Kill()
	const want = "the broker closed the connection as it was set up, though it took the gateway's before: it is overloaded, out of memory or shutting down (its log says which)"
	for c := u.Connection(); c.Cause != want; c = u.Connection() {
		if ctx.Err() != nil {
			t.Fatalf("connection %+v, want cause %q", c, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestOverLimitRefused: a message over the broker's stated packet limit is
// not published; the batch publishes the others, exactly, and refuses it
// by its place in the batch, with the sizes in the reason.
func TestOverLimitRefused(t *testing.T) {
	b := startBroker(t)
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/pr-0001/+/telemetry")
	u := New(configs.MQTT{URL: b.URL(), MaxPacketSize: 1024}, station, quiet())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	defer u.Close(context.Background())
	msgs := messages(4, 2)
	msgs[1].Readings = messages(1, 60)[0].Readings // about 3 kB of JSON
	msgs[3].Readings = msgs[1].Readings
	size := PacketSize(DefaultPrefix, &msgs[1])
	err := uplink.SendAll(ctx, u.NewBatch(), msgs)
	var rej *uplink.Rejected
	if !errors.As(err, &rej) {
		t.Fatalf("Send = %v, want the messages over the limit refused", err)
	}
	want := fmt.Sprintf("%d bytes, over the 1024 bytes the hub takes (hub.mqtt.max_packet_size, or learned from the broker dropping the connection)", size)
	if len(rej.Items) != 2 || rej.Items[0].Index != 1 || rej.Items[1].Index != 3 || rej.Items[0].Reason != want {
		t.Errorf("refused %+v, want messages 1 and 3: %s", rej.Items, want)
	}
	for _, i := range []int{0, 2} {
		if r := next(t, sub); r.payload != string(model.AppendJSON(nil, &msgs[i])) {
			t.Errorf("published %s, want message %d", r.payload, i)
		}
	}
	// Nor is a retained message over the limit published.
	err = u.Retain(ctx, "outpost/v1/pr-0001/snapshot", make([]byte, 1000))
	if want := "mqtt uplink: outpost/v1/pr-0001/snapshot not published: 1034 bytes, over the 1024 bytes the hub takes"; !errors.Is(err, ErrOverLimit) || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("Retain over the limit = %v, want %s...", err, want)
	}
	// A batch of nothing but such messages is refused without a connection.
	u.Close(context.Background())
	err = uplink.SendAll(ctx, u.NewBatch(), msgs[1:2])
	if !errors.As(err, &rej) || len(rej.Items) != 1 || rej.Items[0].Index != 0 {
		t.Errorf("Send of one message over the limit = %v, want it refused", err)
	}
}

// TestRetainDropNotBlamedOnBatch: when the broker drops the connection on
// a retained message (the health snapshot, over a limit the gateway has
// not learned), a batch in flight fails as an outage, not as one the
// broker dropped the connection on: no telemetry message is blamed for it.
func TestRetainDropNotBlamedOnBatch(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := startBrokerWith(t, "max_packet_size 2000\n")
	sub := subscribe(t, b.URL(), "hub", "outpost/v1/pr-0001/meter-main/telemetry")
	u := connect(t, b.URL())
	sent := make(chan error, 1)
	go func() { sent <- uplink.SendAll(ctx, u.NewBatch(), messages(20000, 1)) }()
	next(t, sub) // the batch is under way
	if err := u.Retain(ctx, "outpost/v1/pr-0001/snapshot", make([]byte, 3000)); err == nil {
		t.Fatal("the broker took a retained message over its max_packet_size")
	}
	err := <-sent
	if err == nil {
		t.Fatal("Send returned nil although the broker dropped the connection during the batch")
	}
	if errors.Is(err, uplink.ErrDropped) {
		t.Errorf("Send = %v: the batch is blamed for the retained message's drop", err)
	}
}

// TestRetainLearnsLimit: a broker that drops the connection on a retained
// message over its max_packet_size, three times in a row, teaches the
// uplink its limit: the uplink stops publishing that message (which would
// take every batch in flight down with it) and says why.
func TestRetainLearnsLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := startBrokerWith(t, "max_packet_size 2000\n")
	u := connect(t, b.URL())
	topic := "outpost/v1/pr-0001/snapshot"
	size := packetSize(len(topic), 3000)
	var last error
	connected := func() {
		for !u.Connected() {
			if ctx.Err() != nil {
				t.Fatal("the uplink did not reconnect")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for i := 1; i <= dropsToLearn; i++ {
		connected()
		err := u.Retain(ctx, topic, make([]byte, 3000))
		if err == nil {
			t.Fatalf("Retain %d: the broker took a packet over its max_packet_size", i)
		}
		if learned := errors.Is(err, ErrOverLimit); learned != (i == dropsToLearn) {
			t.Fatalf("Retain %d = %v: limit learned %v, want it learned at the %dth drop", i, err, learned, dropsToLearn)
		}
		t.Logf("Retain %d: %v", i, err)
		last = err
	}
	if n := u.Limit.Max(); n != size-size/8 {
		t.Errorf("learned limit %d, want %d: an eighth below the %d bytes the broker dropped", n, size-size/8, size)
	}
	if want := fmt.Sprintf("may exceed its packet size limit; from now on no message over %d bytes is published", size-size/8); !strings.Contains(last.Error(), want) {
		t.Errorf("Retain %d = %v, want it to say %q", dropsToLearn, last, want)
	}
	if err := u.Retain(ctx, topic, make([]byte, 3000)); !errors.Is(err, ErrOverLimit) {
		t.Errorf("Retain after the limit was learned = %v, want ErrOverLimit", err)
	}
	connected()
	if err := u.Retain(ctx, topic, make([]byte, 100)); err != nil {
		t.Errorf("Retain of 100 bytes = %v", err)
	}
}
