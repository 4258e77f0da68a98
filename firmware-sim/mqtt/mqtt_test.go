package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"outpost/configs"
	"outpost/firmware-sim/sim"
	"outpost/testbench/hub"
)

// recorder is the simulator's sink in tests: the alarms raised, the
// readings served and the statuses the kiosks received.
type recorder struct {
	sim.Recorder
	mu       sync.Mutex
	served   []sim.Reading
	statuses []Status
}

var _ StatusSink = (*recorder)(nil)

func (r *recorder) Served(_ string, rs []sim.Reading) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.served = append(r.served, rs...)
}

func (r *recorder) Status(s Status) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.statuses = append(r.statuses, s)
}

func (r *recorder) Statuses() []Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.statuses)
}

// received is a message the "gateway" got.
type received struct {
	topic   string
	payload string
	at      time.Time
}

// gateway is the other side of the broker in tests: a paho client with a
// persistent session subscribed to every device topic. It subscribes once:
// the broker keeps the subscription across its restarts (subscribing
// again would get the retained states again).
type gateway struct {
	c      paho.Client
	mu     sync.Mutex
	msgs   []received
	notify chan struct{}
}

func newGateway(t *testing.T, broker string) *gateway {
	t.Helper()
	g := &gateway{notify: make(chan struct{}, 1)}
	o := paho.NewClientOptions().AddBroker(broker).SetClientID("gateway").SetUsername("gateway").SetPassword("gw-secret").
		SetCleanSession(false).SetAutoReconnect(true).SetMaxReconnectInterval(500 * time.Millisecond).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) {
			g.mu.Lock()
			g.msgs = append(g.msgs, received{m.Topic(), string(m.Payload()), time.Now()})
			g.mu.Unlock()
			select {
			case g.notify <- struct{}{}:
			default:
			}
		})
	g.c = paho.NewClient(o)
	if tok := g.c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("gateway: connect: %v", tok.Error())
	}
	if tok := g.c.Subscribe("dev/#", 1, nil); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("gateway: subscribe: %v", tok.Error())
	}
	return g
}

func (g *gateway) all() []received {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.msgs)
}

// await waits until ok holds for the messages received so far, and
// returns them.
func (g *gateway) await(t *testing.T, what string, ok func([]received) bool) []received {
	t.Helper()
	deadline := time.NewTimer(15 * time.Second)
	defer deadline.Stop()
	for {
		msgs := g.all()
		if ok(msgs) {
			return msgs
		}
		select {
		case <-g.notify:
		case <-deadline.C:
			var b strings.Builder
			for _, m := range msgs {
				fmt.Fprintf(&b, "\n  %s %s", m.topic, trim(m.payload))
			}
			t.Fatalf("no %s within 15s; the gateway got:%s", what, b.String())
		}
	}
}

// on returns the payloads received on a topic, in order.
func on(msgs []received, topic string) []string {
	var out []string
	for _, m := range msgs {
		if m.topic == topic {
			out = append(out, m.payload)
		}
	}
	return out
}

func trim(s string) string {
	if len(s) > 160 {
		return s[:160] + fmt.Sprintf("…(%d bytes)", len(s))
	}
	return s
}

func (g *gateway) command(t *testing.T, payload string) {
	t.Helper()
	if tok := g.c.Publish("dev/kiosk-1/cmd", 1, false, payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("gateway: publish command: %v", tok.Error())
	}
}

var (
	tsPattern  = regexp.MustCompile(`"ts":"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)"`)
	numPattern = regexp.MustCompile(`"(temp_c|rh_pct|uptime_s)":-?\d+(\.\d+)?`)
)

// norm replaces a payload's time and its sensors' numbers, which change,
// after checking the time is recent.
func norm(t *testing.T, p string) string {
	t.Helper()
	if m := tsPattern.FindStringSubmatch(p); m != nil {
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || time.Since(ts) > time.Minute || time.Until(ts) > time.Second {
			t.Errorf("ts %s is not now (%v)", m[1], err)
		}
	}
	p = tsPattern.ReplaceAllString(p, `"ts":"TS"`)
	return numPattern.ReplaceAllString(p, `"$1":N`)
}

func normAll(t *testing.T, ps []string) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = norm(t, p)
	}
	return out
}

// until polls cond (the simulator's counters, which no message signals)
// until it holds or the deadline passes.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 15s", what)
		}
		<-tick.C
	}
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

const (
	telemetryOK = `{"ts":"TS","enclosure":{"temp_c":N,"rh_pct":N},"door":{"open":false,"tamper":false},"printer":{"paper_ok":true}}`
	doorOpen    = `{"ts":"TS","enclosure":{"temp_c":N,"rh_pct":N},"door":{"open":true,"tamper":false},"printer":{"paper_ok":true}}`
	heartbeat   = `{"ts":"TS","uptime_s":N,"fw_version":"outpost-firmware-sim 1"}`
)

// TestKioskAgainstMosquitto runs a simulated kiosk against a real broker
// with passwords, started after the kiosk, and a client in the gateway's
// place: what the kiosk publishes, exactly; its answers to commands, once
// each; its will; its misbehaviour, which never counts as served.
func TestKioskAgainstMosquitto(t *testing.T) {
	for _, tool := range []string{hub.MosquittoPath, "mosquitto_passwd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required by this test (%v): run `make test-deps`", tool, err)
		}
	}
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	passwd := filepath.Join(dir, "devices.passwd")
	run(t, "mosquitto_passwd", "-b", "-c", passwd, "kiosk-1", "kiosk-secret")
	run(t, "mosquitto_passwd", "-b", passwd, "gateway", "gw-secret")
	if err := os.Chmod(passwd, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	broker, err := hub.StartMosquittoWith(ctx, filepath.Join(dir, "broker"), log, hub.MosquittoOptions{
		Config: "allow_anonymous false\npassword_file " + passwd + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Stop()

	if err := os.WriteFile(filepath.Join(dir, "kiosk-1.pass"), []byte("kiosk-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	station := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(station, []byte(`version: 2
station: {id: cube-1, type: police_cube}
hub: {mqtt: {url: "tcp://127.0.0.1:1"}}
links:
  - {id: lan, protocol: mqtt, listen: "`+broker.Addr()+`", credentials: devices.passwd}
devices:
  - id: kiosk-1
    template: outpost-kiosk
    link: lan
    # Telemetry at connects and door actions only, so that the test
    # knows every message.
    sim: {password_file: kiosk-1.pass, telemetry: 1h}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(station)
	if err != nil {
		t.Fatal(err)
	}

	// The gateway's session is kept while the broker is down, so that it
	// gets what the kiosk sends as soon as the broker is back.
	gw := newGateway(t, broker.URL())
	defer gw.c.Disconnect(250)
	broker.Stop()

	rec := &recorder{}
	l, stop, err := sim.Start(st, &st.Links[0], sim.Options{Seed: 1, Start: time.Now(), Sink: rec, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			stop()
		}
	}()
	kiosk := l.Devices()[0]
	act := func(action string, args map[string]string) {
		t.Helper()
		if err := kiosk.(sim.Actor).Act(ctx, action, args); err != nil {
			t.Fatalf("%s %v: %v", action, args, err)
		}
	}
	// The broker comes up after the kiosk, which keeps trying.
	if err := broker.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	msgs := gw.await(t, "telemetry and heartbeat after the first connect", func(ms []received) bool {
		return len(on(ms, "dev/kiosk-1/telemetry")) == 1 && len(on(ms, "dev/kiosk-1/heartbeat")) == 1
	})
	if got := on(msgs, "dev/kiosk-1/state"); !slices.Equal(got, []string{"online"}) {
		t.Errorf("state %q, want online", got)
	}
	if got := norm(t, on(msgs, "dev/kiosk-1/telemetry")[0]); got != telemetryOK {
		t.Errorf("telemetry\n got %s\nwant %s", got, telemetryOK)
	}
	if got := norm(t, on(msgs, "dev/kiosk-1/heartbeat")[0]); got != heartbeat {
		t.Errorf("heartbeat\n got %s\nwant %s", got, heartbeat)
	}
	until(t, "the first telemetry's readings served", func() bool { return kiosk.Stats().ReadingsServed == 5 })

	// Events on request, each served once acknowledged.
	act("emergency", map[string]string{"hold": "20ms", "wait": "true"})
	act("request", map[string]string{"category": "fire", "text": "smoke & <sparks> at the gate"})
	act("session", map[string]string{"service": "id_card", "hold": "10ms", "wait": "true"})
	act("fault", map[string]string{"part": "printer", "code": "E12"})
	act("fault", map[string]string{"part": "printer", "clear": "true"})
	act("door", map[string]string{"open": "true"})
	msgs = gw.await(t, "the events", func(ms []received) bool {
		return len(on(ms, "dev/kiosk-1/telemetry")) == 2 && len(on(ms, "dev/kiosk-1/fault")) == 2 &&
			len(on(ms, "dev/kiosk-1/session")) == 2 && len(on(ms, "dev/kiosk-1/emergency_call")) == 2
	})
	for topic, want := range map[string][]string{
		"dev/kiosk-1/emergency_call": {
			`{"ts":"TS","state":"active","call_id":"kiosk-1-call1","button":"front"}`,
			`{"ts":"TS","state":"cleared","call_id":"kiosk-1-call1","button":"front"}`},
		"dev/kiosk-1/service_request": {`{"ts":"TS","ticket":"kiosk-1-1","category":"fire","text":"smoke & <sparks> at the gate"}`},
		"dev/kiosk-1/session": {
			`{"ts":"TS","state":"active","session_id":"kiosk-1-s1","service":"id_card"}`,
			`{"ts":"TS","state":"cleared","session_id":"kiosk-1-s1","service":"id_card"}`},
		"dev/kiosk-1/fault": {
			`{"ts":"TS","state":"active","part":"printer","code":"E12"}`,
			`{"ts":"TS","state":"cleared","part":"printer"}`},
		"dev/kiosk-1/telemetry": {telemetryOK, doorOpen},
	} {
		if got := normAll(t, on(msgs, topic)); !slices.Equal(got, want) {
			t.Errorf("%s\n got %q\nwant %q", topic, got, want)
		}
	}
	until(t, "the events served", func() bool { return kiosk.Stats().EventsServed == 8 && kiosk.Stats().ReadingsServed == 10 })
	var raised []string
	for _, r := range rec.All() {
		raised = append(raised, r.Kind+" "+r.State+" "+r.Source)
	}
	if want := []string{"emergency_call active mqtt", "emergency_call cleared mqtt", "service_request active mqtt", "door active mqtt"}; !slices.Equal(raised, want) {
		t.Errorf("raised %q, want %q", raised, want)
	}
	rec.mu.Lock()
	if n := len(rec.served); n != 10 || rec.served[5].Signal != "enclosure_temp" || rec.served[7].Value.Bool != true {
		t.Errorf("served %v", rec.served)
	}
	rec.mu.Unlock()

	// Commands: answered once each, again when delivered again.
	status := `{"id":"c-1","action":"request_status","args":{"ticket":"kiosk-1-1","status":"received","note":"we are on it"},"ts":"2026-11-30T08:00:01.500Z","expires":"2026-11-30T08:05:01.500Z"}`
	gw.command(t, status)
	gw.command(t, `{"id":"c-2","action":"reboot","args":{}}`)
	gw.command(t, status)
	gw.command(t, `{"id":"c-3","action":"request_status","args":{"ticket":"kiosk-1-1","status":"lost"}}`)
	msgs = gw.await(t, "four answers", func(ms []received) bool { return len(on(ms, "dev/kiosk-1/cmd/ack")) == 4 })
	wantAcks := []string{
		`{"id":"c-1","status":"ok"}`,
		`{"id":"c-2","status":"failed","reason":"unknown action \"reboot\" (the device takes: request_status, call_answered)"}`,
		`{"id":"c-1","status":"ok"}`,
		`{"id":"c-3","status":"failed","reason":"status is \"lost\" (expected one of: received, dispatched, on_scene, closed)"}`,
	}
	if got := on(msgs, "dev/kiosk-1/cmd/ack"); !slices.Equal(got, wantAcks) {
		t.Errorf("answers\n got %q\nwant %q", got, wantAcks)
	}
	if w := kiosk.Stats().Writes; len(w) != 1 || w["request_status"] != 1 {
		t.Errorf("writes %v, want request_status 1", w)
	}
	sts := rec.Statuses()
	if len(sts) != 1 || sts[0].Ticket != "kiosk-1-1" || sts[0].Status != "received" || sts[0].Note != "we are on it" || sts[0].ID != "c-1" ||
		!sts[0].Sent.Equal(time.Date(2026, 11, 30, 8, 0, 1, 500e6, time.UTC)) || time.Since(sts[0].At) > time.Minute {
		t.Errorf("statuses %+v", sts)
	}

	// Offline: the broker sends the will; a status sent meanwhile arrives
	// once the kiosk is back, and is answered then. (Commands whose PUBACK
	// the cut lost come again, and are answered again.)
	act("offline", map[string]string{"for": "1s"})
	gw.await(t, "the will", func(ms []received) bool {
		return slices.Contains(on(ms, "dev/kiosk-1/state"), "offline")
	})
	gw.command(t, `{"id":"c-4","action":"request_status","args":{"ticket":"kiosk-1-1","status":"dispatched"}}`)
	msgs = gw.await(t, "the answer, telemetry and heartbeat after the kiosk is back", func(ms []received) bool {
		return slices.Contains(on(ms, "dev/kiosk-1/cmd/ack"), `{"id":"c-4","status":"ok"}`) &&
			len(on(ms, "dev/kiosk-1/telemetry")) == 3 && len(on(ms, "dev/kiosk-1/heartbeat")) == 2
	})
	if got := on(msgs, "dev/kiosk-1/state"); !slices.Equal(got, []string{"online", "offline", "online"}) {
		t.Errorf("states %q, want online, offline (the will), online", got)
	}
	for _, a := range on(msgs, "dev/kiosk-1/cmd/ack")[4:] {
		if !slices.Contains(wantAcks, a) && a != `{"id":"c-4","status":"ok"}` {
			t.Errorf("answer after the kiosk is back: %s", a)
		}
	}
	var online, ack time.Time
	for _, m := range msgs {
		switch {
		case m.topic == "dev/kiosk-1/state" && m.payload == "online":
			online = m.at
		case m.topic == "dev/kiosk-1/cmd/ack" && strings.Contains(m.payload, "c-4"):
			ack = m.at
		}
	}
	if ack.Before(online) {
		t.Errorf("c-4 answered at %s, before the kiosk was back at %s", ack, online)
	}
	if sts := rec.Statuses(); len(sts) != 2 || sts[1].Status != "dispatched" || sts[1].At.Before(online.Add(-time.Second)) {
		t.Errorf("statuses %+v", sts)
	}
	until(t, "the telemetry after the kiosk is back served", func() bool { return kiosk.Stats().ReadingsServed == 15 })

	// Deaf: nothing sent, a command answered once it hears again.
	before := len(gw.all())
	act("deaf", map[string]string{"for": "300ms"})
	deafAt := time.Now()
	if err := kiosk.(sim.Actor).Act(ctx, "request", nil); err == nil {
		t.Error("a deaf kiosk sent a request")
	}
	gw.command(t, `{"id":"c-5","action":"call_answered","args":{"call_id":"kiosk-1-call1","desk":"desk-2"}}`)
	msgs = gw.await(t, "the answer after deafness", func(ms []received) bool {
		return slices.Contains(on(ms, "dev/kiosk-1/cmd/ack"), `{"id":"c-5","status":"ok"}`)
	})
	// The gateway gets its own command too (it subscribes to dev/#).
	if late := msgs[len(msgs)-1]; late.topic != "dev/kiosk-1/cmd/ack" || late.at.Sub(deafAt) < 250*time.Millisecond || len(msgs) != before+2 {
		t.Errorf("deaf: %d messages since, the last %s %s after %s", len(msgs)-before, late.topic, late.payload, late.at.Sub(deafAt))
	}

	// Misbehaviour: sent, never served.
	served := kiosk.Stats()
	act("malformed", nil)
	act("impersonate", map[string]string{"device": "kiosk-2"})
	act("oversize", map[string]string{"bytes": "2000"})
	act("flood", map[string]string{"rate": "2000", "count": "50"})
	beats := len(on(msgs, "dev/kiosk-1/heartbeat"))
	msgs = gw.await(t, "the misbehaviour", func(ms []received) bool {
		return len(on(ms, "dev/kiosk-1/telemetry")) == 3+3+1 && len(on(ms, "dev/kiosk-2/telemetry")) == 1 &&
			len(on(ms, "dev/kiosk-1/heartbeat")) >= beats+50
	})
	tele := on(msgs, "dev/kiosk-1/telemetry")[3:]
	if !strings.HasSuffix(tele[0], `,"door":{"open":true,"tamper":false},"printer":{"paper_ok":true}`) || json.Valid([]byte(tele[0])) {
		t.Errorf("not JSON: %s", tele[0])
	}
	wantBad := []string{
		`{"ts":"TS","enclosure":{"temp_c":"warm","rh_pct":N},"door":{"open":true,"tamper":false},"printer":{"paper_ok":true}}`,
		`{"ts":"TS","enclosure":{"temp_c":N,"rh_pct":N},"door":{"open":true,"tamper":false},"printer":{"paper_ok":true},"unknown_field":true}`,
	}
	if got := normAll(t, tele[1:3]); !slices.Equal(got, wantBad) {
		t.Errorf("malformed\n got %q\nwant %q", got, wantBad)
	}
	if got := on(msgs, "dev/kiosk-1/emergency_call"); len(got) != 3 || norm(t, got[2]) != `{"ts":"TS","state":"active"}` {
		t.Errorf("required field missing: %q", got)
	}
	if got := norm(t, on(msgs, "dev/kiosk-2/telemetry")[0]); got != doorOpen {
		t.Errorf("impersonation %s", got)
	}
	if len(tele[3]) != 2000 {
		t.Errorf("oversize: %d bytes", len(tele[3]))
	}
	for _, p := range on(msgs, "dev/kiosk-1/heartbeat")[beats:] {
		if !strings.Contains(p, `"uptime_s":`) || !strings.Contains(p, `"fw_version":`) {
			t.Errorf("flood: %s, want heartbeats", p)
			break
		}
	}

	// A broker restart: the kiosk comes back and still answers.
	if err := broker.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	gw.command(t, `{"id":"c-6","action":"request_status","args":{"ticket":"kiosk-1-1","status":"closed"}}`)
	gw.await(t, "the answer after a broker restart", func(ms []received) bool {
		return slices.Contains(on(ms, "dev/kiosk-1/cmd/ack"), `{"id":"c-6","status":"ok"}`)
	})
	// Telemetry at each connect (and the door's): the misbehaviour never
	// counts.
	until(t, "telemetry after the restart served", func() bool { return kiosk.Stats().ReadingsServed == served.ReadingsServed+5 })
	if got := kiosk.Stats().EventsServed; got != served.EventsServed {
		t.Errorf("events served %d, want %d", got, served.EventsServed)
	}
	msgs = gw.await(t, "the telemetry after the restart", func(ms []received) bool { return len(on(ms, "dev/kiosk-1/telemetry")) >= 8 })
	if got := on(msgs, "dev/kiosk-1/telemetry"); len(got) != 8 || norm(t, got[7]) != doorOpen {
		t.Errorf("%d telemetry messages, the last %s", len(got), got[len(got)-1])
	}
	// The flood is of heartbeats: no readings.
	rec.mu.Lock()
	if n := len(rec.served); n != 15+5 {
		t.Errorf("%d readings logged as served, want %d", n, 15+5)
	}
	rec.mu.Unlock()
	stopped = true
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	gw.await(t, "offline when the kiosk shut down", func(ms []received) bool {
		s := on(ms, "dev/kiosk-1/state")
		return s[len(s)-1] == "offline"
	})
	gw.c.Disconnect(250)
}
