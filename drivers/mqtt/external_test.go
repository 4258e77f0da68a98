package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/model"
	"outpost/testbench/hub"
)

// gatewayUser is the gateway's user at the external test broker.
const gatewayUser = "outpost-gw"

// acl is the external broker's ACL as docs/kiosks.md gives it: each
// device writes below its own topic and reads its commands; the gateway
// reads every device's topics and writes their commands.
const acl = `pattern write dev/%u/#
pattern read dev/%u/cmd

user outpost-gw
topic read dev/#
topic write dev/+/cmd
`

// mosquitto starts a Mosquitto that checks passwords (each user's is
// "pw-" and its name) and the ACL of docs/kiosks.md, with options o but
// its configuration, until the test ends. kiosk-9 is a user of the broker
// but no device of the link.
func mosquitto(t *testing.T, o hub.MosquittoOptions) *hub.Mosquitto {
	t.Helper()
	tool, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		t.Fatal("mosquitto_passwd not installed (make test-deps installs mosquitto)")
	}
	dir := t.TempDir()
	passwd, aclFile := filepath.Join(dir, "passwd"), filepath.Join(dir, "acl")
	for i, user := range []string{"kiosk-1", "kiosk-2", "kiosk-9", gatewayUser} {
		args := []string{"-b", passwd, user, "pw-" + user}
		if i == 0 {
			args = append([]string{"-c"}, args...)
		}
		if out, err := exec.Command(tool, args...).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	if err := os.WriteFile(aclFile, []byte(acl), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o.Config = fmt.Sprintf("allow_anonymous false\npassword_file %s\nacl_file %s\n", passwd, aclFile)
	m, err := hub.StartMosquittoWith(ctx, filepath.Join(dir, "broker"), slog.New(slog.NewTextHandler(io.Discard, nil)), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	return m
}

// externalStation is the test station with a link to the broker at url,
// where the gateway logs in with password.
func externalStation(t *testing.T, url, password string) *configs.Station {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "gw.pass"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return stationIn(t, dir, fmt.Sprintf(`broker: %q, username: %s, password_file: gw.pass, max_payload: 4096`, url, gatewayUser), "")
}

// startExternal runs the driver of a link to a fresh test broker.
func startExternal(t *testing.T) (*hub.Mosquitto, *Driver, *emitted) {
	t.Helper()
	m := mosquitto(t, hub.MosquittoOptions{})
	d, out := start(t, externalStation(t, m.URL(), "pw-"+gatewayUser))
	return m, d, out
}

// online connects a kiosk to the external broker with its will, and
// publishes its birth, as docs/kiosks.md asks.
func online(t *testing.T, m *hub.Mosquitto, id string) *kiosk {
	t.Helper()
	k, err := dial(t, m.URL(), id, "pw-"+id, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	tok := k.c.Publish("dev/"+id+"/state", 1, true, "online")
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("birth of %s: %v", id, tok.Error())
	}
	return k
}

// Through an external broker a kiosk's messages reach the gateway as
// through the embedded one; its will makes it offline.
func TestExternalKiosk(t *testing.T) {
	m, d, out := startExternal(t)
	if d.Addr() != m.URL() {
		t.Errorf("Addr %s, want the broker's URL %s", d.Addr(), m.URL())
	}
	k := online(t, m, "kiosk-1")
	out.health(t, "kiosk-1", model.Online)
	kioskMessages(t, k, out)
	k.cut()
	if h := out.health(t, "kiosk-1", model.Offline); !strings.Contains(h.Health.Reason, "dev/kiosk-1/state says offline") {
		t.Errorf("offline reason %q, want the will", h.Health.Reason)
	}
	out.none(t, "kiosk-2")
}

// The broker keeps the devices apart: a kiosk publishing under another's
// topic is refused there, and nothing reaches the gateway for the other.
// A device of the broker that is not on the link is counted.
func TestExternalDevicesKeptApart(t *testing.T) {
	m, d, out := startExternal(t)
	k1, k2 := online(t, m, "kiosk-1"), online(t, m, "kiosk-2")
	out.health(t, "kiosk-1", model.Online)
	out.health(t, "kiosk-2", model.Online)
	if err := k1.publish("dev/kiosk-2/emergency_call", `{"state":"active","call_id":"fake"}`); err != nil {
		t.Fatal(err) // Mosquitto acknowledges what it drops (MQTT 3.1.1 has no other answer)
	}
	if err := k2.publish("dev/kiosk-2/service_request", `{"ticket":"K2-1","category":"fire"}`); err != nil {
		t.Fatal(err)
	}
	// kiosk-2's own event is the first of kiosk-2 the gateway emits.
	if e := nextNotHealth(t, out, "kiosk-2"); e.Event == nil || e.Event.Kind != "service_request" {
		t.Errorf("first message of kiosk-2: %s %+v, want its own service_request", e.Kind, e.Event)
	}
	stranger, err := dial(t, m.URL(), "kiosk-9", "pw-kiosk-9", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := stranger.publish("dev/kiosk-9/telemetry", `{}`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for d.counts.get("unknown_device") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("unknown_device = %d, want 1", d.counts.get("unknown_device"))
		}
		time.Sleep(10 * time.Millisecond)
	}
	out.none(t, "kiosk-1")
}

// nextNotHealth is the next message of a device that is not its health.
func nextNotHealth(t *testing.T, out *emitted, device string) model.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-out.ch:
			if m.Device == device && m.Kind != model.KindHealth {
				return m
			}
		case <-deadline:
			t.Fatalf("nothing of %s emitted within 10s", device)
		}
	}
}

// A command for a kiosk away reaches it through the broker once it says
// online, and Send returns with its answer.
func TestExternalSend(t *testing.T) {
	m, d, out := startExternal(t)
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		done <- d.Send(ctx, "kiosk-1", drivers.Outgoing{ID: "x-1", Action: "request_status",
			Args: map[string]any{"ticket": "K1-1", "status": "on_scene"}, Sent: time.Now(), Expires: time.Now().Add(time.Minute)})
	}()
	k := online(t, m, "kiosk-1")
	out.health(t, "kiosk-1", model.Online)
	select {
	case c := <-k.cmd:
		var got drivers.Outgoing
		if err := json.Unmarshal(c.Payload(), &got); err != nil || got.ID != "x-1" || got.Args["status"] != "on_scene" {
			t.Fatalf("command %s: %v", c.Payload(), err)
		}
		if err := k.publish("dev/kiosk-1/cmd/ack", `{"id":"x-1","status":"failed","reason":"no such ticket"}`); err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no command within 10s")
	}
	var de *DeviceError
	if err := <-done; !errors.As(err, &de) || de.Reason != "no such ticket" {
		t.Errorf("Send: %v, want the kiosk's reason", err)
	}
}

// Events over a kiosk's rate wait their turn, all of them, in order; the
// other kiosk's messages do not wait behind them.
func TestExternalThrottleKeepsDevicesApart(t *testing.T) {
	m, d, out := startExternal(t)
	k1, k2 := online(t, m, "kiosk-1"), online(t, m, "kiosk-2")
	out.health(t, "kiosk-1", model.Online)
	out.health(t, "kiosk-2", model.Online)
	const sent = 80 // burst 20, then 50 a second: 1.2 s at least
	toks := make([]paho.Token, sent)
	for i := range toks {
		toks[i] = k1.c.Publish("dev/kiosk-1/service_request", 1, false, fmt.Sprintf(`{"ticket":"K1-%d","category":"other"}`, i))
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	begin := time.Now()
	if err := k2.publish("dev/kiosk-2/emergency_call", `{"state":"active","call_id":"c-2"}`); err != nil {
		t.Fatal(err)
	}
	var got []string
	var k2at time.Time
	deadline := time.After(10 * time.Second)
	for len(got) < sent || k2at.IsZero() {
		select {
		case msg := <-out.ch:
			switch {
			case msg.Kind != model.KindEvent:
			case msg.Device == "kiosk-1":
				got = append(got, msg.Event.Details["ticket"])
			case msg.Device == "kiosk-2":
				k2at = time.Now()
				if len(got) == sent {
					t.Errorf("kiosk-2's call came after all of kiosk-1's %d events", sent)
				}
			}
		case <-deadline:
			t.Fatalf("%d of kiosk-1's events and kiosk-2's call (%v) within 10s", len(got), !k2at.IsZero())
		}
	}
	for i, ticket := range got {
		if want := fmt.Sprintf("K1-%d", i); ticket != want {
			t.Fatalf("event %d is %s, want %s", i, ticket, want)
		}
	}
	if took := k2at.Sub(begin); took > 600*time.Millisecond {
		t.Errorf("kiosk-2's call took %s behind kiosk-1's events", took)
	}
	dev := d.devices["kiosk-1"]
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if c := dev.counters; c[RateLimited] != 0 || c["throttled"] == 0 {
		t.Errorf("counters %v, want some throttled and none refused", c)
	}
}

// An event the disk refuses is not acknowledged: the gateway drops its
// connection, and the broker sends the event again when it is back.
func TestExternalEventNotKept(t *testing.T) {
	m, _, out := startExternal(t)
	k := online(t, m, "kiosk-1")
	out.health(t, "kiosk-1", model.Online)
	out.failing(errors.New("disk full"))
	if err := k.publish("dev/kiosk-1/emergency_call", `{"state":"active","call_id":"c-1"}`); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for out.refusals() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the event never reached emit")
		}
		time.Sleep(10 * time.Millisecond)
	}
	out.failing(nil)
	if e := out.nextOf(t, "kiosk-1", model.KindEvent).Event; e.Kind != "emergency_call" || e.Details["call_id"] != "c-1" {
		t.Errorf("event %s %v, want the call sent again", e.Kind, e.Details)
	}
}

// The link comes back on its own after the broker restarts.
func TestExternalReconnects(t *testing.T) {
	m, _, out := startExternal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	k := online(t, m, "kiosk-2")
	if err := k.publish("dev/kiosk-2/service_request", `{"ticket":"K2-9","category":"other"}`); err != nil {
		t.Fatal(err)
	}
	if e := out.nextOf(t, "kiosk-2", model.KindEvent).Event; e.Details["ticket"] != "K2-9" {
		t.Errorf("event %v", e.Details)
	}
}

// A broker that refuses the gateway's password makes the link unusable:
// Run says why at once.
func TestExternalRefusesGateway(t *testing.T) {
	m := mosquitto(t, hub.MosquittoOptions{})
	d := build(t, externalStation(t, m.URL(), "wrong"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	begin := time.Now()
	err := d.Run(ctx, func(model.Message) error { return nil })
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("Run returned after %s", took)
	}
	if err == nil || !strings.Contains(err.Error(), "not Authorized") && !strings.Contains(err.Error(), "bad user name or password") {
		t.Errorf("Run: %v, want the broker's refusal", err)
	}
}

// A device silent while the gateway cannot reach the external broker is
// offline with the broker as the reason, not the device; once the broker
// is back and the device still silent, the reason is the device's.
func TestExternalBrokerDown(t *testing.T) {
	m := mosquitto(t, hub.MosquittoOptions{})
	st := withSilence(t, externalStation(t, m.URL(), "pw-"+gatewayUser), "kiosk-2", "1s")
	_, out := start(t, st)
	m.Kill()
	prefix, suffix := "no connection to the station broker "+m.URL()+" since ", "): is it running, and reachable from the gateway?"
	offline(t, out, "kiosk-2", func(r string) bool { return strings.HasPrefix(r, prefix) && strings.HasSuffix(r, suffix) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	want := "nothing from kiosk-2 for 1s (it should send a heartbeat every 30s)"
	offline(t, out, "kiosk-2", func(r string) bool { return r == want })
}

// offline waits for an offline health of a device whose reason is one
// ok takes, and fails with the reasons seen otherwise.
func offline(t *testing.T, out *emitted, device string, ok func(reason string) bool) {
	t.Helper()
	var seen []string
	deadline := time.After(15 * time.Second)
	for {
		select {
		case m := <-out.ch:
			if m.Device != device || m.Kind != model.KindHealth || m.Health.State != model.Offline {
				continue
			}
			if ok(m.Health.Reason) {
				return
			}
			seen = append(seen, m.Health.Reason)
		case <-deadline:
			t.Fatalf("%s: no offline health with the reason wanted within 15s; reasons seen: %q", device, seen)
		}
	}
}

// A broker that lost the gateway's session (killed before it saved it)
// is told to the hub when the gateway connects again, even when the
// gateway restarted meanwhile: what the devices sent in between went to
// no one. A broker that kept it, and the first connection, say nothing.
func TestExternalSessionLost(t *testing.T) {
	m := mosquitto(t, hub.MosquittoOptions{NoAutosave: true})
	st := externalStation(t, m.URL(), "pw-"+gatewayUser)
	restart := func(kill bool) {
		t.Helper()
		if kill {
			m.Kill()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// delivered publishes a request of kiosk-1 and waits for the driver
	// to take it: the driver is subscribed again. It fails on a session
	// lost reported before.
	delivered := func(out *emitted, ticket string) {
		t.Helper()
		k := online(t, m, "kiosk-1")
		defer k.c.Disconnect(0)
		if err := k.publish("dev/kiosk-1/service_request", `{"ticket":"`+ticket+`","category":"other"}`); err != nil {
			t.Fatal(err)
		}
		for {
			e := out.next(t)
			if e.Device == model.GatewayDevice {
				t.Fatalf("before the request %s: %s %v", ticket, e.Event.Kind, e.Event.Details)
			}
			if e.Kind == model.KindEvent && e.Event.Details["ticket"] == ticket {
				return
			}
		}
	}
	lost := func(out *emitted) model.Message {
		t.Helper()
		for {
			if e := out.next(t); e.Device == model.GatewayDevice {
				return e
			}
		}
	}

	_, out, stop := run(t, st)
	delivered(out, "T-1") // the first connection: no session yet
	stop()

	// The gateway away, the broker loses the session (it never saved
	// it): the next gateway tells it at its first connection.
	restart(true)
	_, out = start(t, st)
	if e := lost(out); e.Event.Kind != model.EventBrokerSessionLost || e.Event.Details["away_since"] != "" {
		t.Errorf("after a restart of the gateway: %s %v", e.Event.Kind, e.Event.Details)
	}
	delivered(out, "T-2")

	// The broker loses it while the gateway runs.
	restart(true)
	e := lost(out)
	want := map[string]string{"link": "station-mqtt", "broker": m.URL(), "client_id": "outpost-pc-0001-station-mqtt",
		"devices": "kiosk-1,kiosk-2"}
	got := maps.Clone(e.Event.Details)
	if !strings.Contains(got["reason"], "what kiosk-1, kiosk-2 published while the gateway was away from the broker went to no one") ||
		got["away_since"] == "" {
		t.Errorf("details %v", got)
	}
	delete(got, "reason")
	delete(got, "away_since")
	if e.Event.Kind != model.EventBrokerSessionLost || e.Event.Severity != model.Critical || !equalMaps(got, want) {
		t.Errorf("event %s %s %v, want %s critical %v", e.Event.Kind, e.Event.Severity, got, model.EventBrokerSessionLost, want)
	}
	delivered(out, "T-3")

	restart(false) // saved at its exit
	delivered(out, "T-4")
}

// A run for an installer's tool (gateway read, commission: Link.Once)
// takes a clean session of its own: what waits at the broker for the
// gateway, while it is stopped, still reaches it.
func TestExternalOnceLeavesSession(t *testing.T) {
	m := mosquitto(t, hub.MosquittoOptions{})
	st := externalStation(t, m.URL(), "pw-"+gatewayUser)
	_, _, stop := run(t, st) // the gateway's session, subscribed
	stop()
	k := online(t, m, "kiosk-1")
	if err := k.publish("dev/kiosk-1/service_request", `{"ticket":"T-1","category":"other"}`); err != nil {
		t.Fatal(err)
	}

	link := drivers.Links(st)[0]
	link.Once = true
	drv, err := New(link, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	d := drv.(*Driver)
	tool := &emitted{ch: make(chan model.Message, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, tool.emit) }()
	select {
	case <-d.Ready():
	case err := <-done:
		t.Fatalf("the tool's driver stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the tool's driver not subscribed within 10s")
	}
	// A request made while the tool runs reaches it, and waits for the
	// gateway too; the tool has taken what came before it, if anything.
	if err := k.publish("dev/kiosk-1/service_request", `{"ticket":"T-2","category":"other"}`); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for len(seen) == 0 || seen[len(seen)-1] != "T-2" {
		if e := tool.nextOf(t, "kiosk-1", model.KindEvent); e.Event.Details["ticket"] != "" {
			seen = append(seen, e.Event.Details["ticket"])
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(seen, []string{"T-2"}) {
		t.Errorf("the tool took requests %v, want only T-2, made while it ran", seen)
	}

	_, out := start(t, st)
	for _, want := range []string{"T-1", "T-2"} {
		if e := out.nextOf(t, "kiosk-1", model.KindEvent); e.Event.Details["ticket"] != want {
			t.Errorf("the gateway got request %s, want %s", e.Event.Details["ticket"], want)
		}
	}
}
