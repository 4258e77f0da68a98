package mqtt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/drivers"
	"outpost/gateway/model"
)

// devTime is the kiosks' own clock in these tests: an hour behind the
// gateway's, within the skew it trusts (a fixed date would fall outside it
// a day later).
var (
	devTime = time.Now().UTC().Add(-time.Hour).Truncate(time.Millisecond)
	ts      = `"ts":"` + devTime.Format("2006-01-02T15:04:05.000Z") + `"`
)

// A kiosk logs in with its own password; what it publishes reaches the
// gateway as the template maps it, events with the device's time and
// the station file's location.
func TestKioskMessages(t *testing.T) {
	d, out := start(t, station(t, ""))
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", true)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	kioskMessages(t, k, out)
	// Gone is offline at once.
	k.c.Disconnect(0)
	if h := out.health(t, "kiosk-1", model.Offline); !strings.Contains(h.Health.Reason, "disconnected") {
		t.Errorf("offline reason %q, want it to say disconnected", h.Health.Reason)
	}
}

// kioskMessages has kiosk-1 publish its telemetry and events, and checks
// what the gateway emits of them, whichever the broker.
func kioskMessages(t *testing.T, k *kiosk, out *emitted) {
	t.Helper()
	if err := k.publish("dev/kiosk-1/telemetry", `{`+ts+`,"enclosure":{"temp_c":23.5,"rh_pct":120},"door":{"open":false,"tamper":true}}`); err != nil {
		t.Fatal(err)
	}
	m := out.nextOf(t, "kiosk-1", model.KindTelemetry)
	got := map[string]string{}
	for _, r := range m.Readings {
		got[r.Signal] = r.Value.String() + " " + string(r.Quality)
	}
	want := map[string]string{"enclosure_temp": "23.5 good", "enclosure_humidity": "120 uncertain", "door_open": "false good", "tamper": "true good"}
	if !equalMaps(got, want) {
		t.Errorf("readings %v, want %v", got, want)
	}
	if m.DeviceKind != "kiosk" || !m.Time.Equal(devTime) {
		t.Errorf("kind %q time %v, want kiosk at the device's ts", m.DeviceKind, m.Time)
	}
	if err := k.publish("dev/kiosk-1/service_request", `{`+ts+`,"ticket":"K1-000017","category":"fire","text":"烟味很重，三楼"}`); err != nil {
		t.Fatal(err)
	}
	e := out.nextOf(t, "kiosk-1", model.KindEvent).Event
	wantDet := map[string]string{"state": "active", "ticket": "K1-000017", "category": "fire", "text": "烟味很重，三楼", "location": "Xinhua Rd 12"}
	if e.Kind != "service_request" || e.Severity != model.Warning || !equalMaps(e.Details, wantDet) {
		t.Errorf("event %s %s %v, want service_request warning %v", e.Kind, e.Severity, e.Details, wantDet)
	}
	for _, st := range []struct{ state, sev string }{{"active", "critical"}, {"cleared", "info"}} {
		if err := k.publish("dev/kiosk-1/emergency_call", `{`+ts+`,"state":"`+st.state+`","call_id":"c-9"}`); err != nil {
			t.Fatal(err)
		}
		e := out.nextOf(t, "kiosk-1", model.KindEvent).Event
		if e.Kind != "emergency_call" || string(e.Severity) != st.sev || e.Details["state"] != st.state || e.Details["call_id"] != "c-9" {
			t.Errorf("emergency_call %s: got %s %s %v", st.state, e.Kind, e.Severity, e.Details)
		}
	}
	// A wrong payload is refused the same way.
	if err := k.publish("dev/kiosk-1/telemetry", `{"enclosure":{"temp_c":"hot"}}`); err != nil {
		t.Fatal(err)
	}
	if h := out.health(t, "kiosk-1", model.Degraded); !strings.HasPrefix(h.Health.Reason, BadField+": telemetry:") {
		t.Errorf("degraded reason %q, want bad_field", h.Health.Reason)
	}
}

// A device's health goes to the hub on change and every report_every
// while unchanged, with the messages it sent counted.
func TestHealthReportedWhileUnchanged(t *testing.T) {
	d, out := start(t, station(t, "health: {report_every: 5s}"))
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	first := out.health(t, "kiosk-1", model.Online)
	if err := k.publish("dev/kiosk-1/heartbeat", `{"uptime_s":1}`); err != nil {
		t.Fatal(err)
	}
	again := out.health(t, "kiosk-1", model.Online)
	if took := again.Time.Sub(first.Time); took < 5*time.Second || took > 7*time.Second {
		t.Errorf("health again %s after the first, want every 5 s", took)
	}
	if n := again.Health.Counters["messages"]; n != first.Health.Counters["messages"]+1 {
		t.Errorf("messages %d, want %d", n, first.Health.Counters["messages"]+1)
	}
}

// Wrong payloads are refused, counted by reason, and leave the device
// degraded; nothing of them is emitted, and the next good message is.
func TestRefusedPayloads(t *testing.T) {
	d, out := start(t, station(t, ""))
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	for _, c := range []struct{ topic, payload, reason string }{
		{"telemetry", `not json`, BadJSON},
		{"telemetry", `{"enclosure":{"temp_c":"hot"}}`, BadField},
		{"telemetry", `{"enclosure":{"temp_c":20,"co2":400}}`, UnknownField},
		{"service_request", `{"ticket":"K1","text":"x"}`, MissingField},
		{"service_request", `{"ticket":"K1","category":"weather"}`, BadField},
		{"service_request", `{"ticket":"K1","category":"fire","text":"` + strings.Repeat("长", 201) + `"}`, BadField},
		{"service_request", "{\"ticket\":\"K1\",\"category\":\"fire\",\"text\":\"\xff\xfe\"}", BadJSON},
		{"selfie", `{}`, UnknownTopic},
		{"telemetry", `{"pad":"` + strings.Repeat("x", 5000) + `"}`, Oversize},
	} {
		if err := k.publish("dev/kiosk-1/"+c.topic, c.payload); err != nil {
			t.Fatalf("%s %.40s: %v", c.topic, c.payload, err)
		}
	}
	h := out.health(t, "kiosk-1", model.Degraded)
	if !strings.HasPrefix(h.Health.Reason, BadJSON+": telemetry: not a JSON object") {
		t.Errorf("degraded reason %q, want the first refusal", h.Health.Reason)
	}
	if err := k.publish("dev/kiosk-1/telemetry", `{"enclosure":{"temp_c":21}}`); err != nil {
		t.Fatal(err)
	}
	m := out.nextOf(t, "kiosk-1", model.KindTelemetry)
	if len(m.Readings) != 1 || m.Readings[0].Value.String() != "21" {
		t.Errorf("good message after refused ones: %+v", m.Readings)
	}
	d.devices["kiosk-1"].mu.Lock()
	c := d.devices["kiosk-1"].counters
	want := map[string]uint64{BadJSON: 2, BadField: 3, UnknownField: 1, MissingField: 1, UnknownTopic: 1, Oversize: 1}
	for k, n := range want {
		if c[k] != n {
			t.Errorf("counter %s = %d, want %d (all: %v)", k, c[k], n, c)
		}
	}
	d.devices["kiosk-1"].mu.Unlock()
}

// A device faster than its rate is refused what is over it, and counted.
func TestRateLimit(t *testing.T) {
	d, out := start(t, station(t, ""))
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	const sent = 200 // burst 20, 50/s: at most ~20 + 50 * the seconds it takes
	start := time.Now()
	for i := 0; i < sent; i++ {
		if err := k.publish("dev/kiosk-1/telemetry", `{"enclosure":{"temp_c":21}}`); err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(start)
	d.devices["kiosk-1"].mu.Lock()
	limited := d.devices["kiosk-1"].counters[RateLimited]
	d.devices["kiosk-1"].mu.Unlock()
	passed := uint64(sent) - limited
	if most := 20 + uint64(50*took.Seconds()) + 1; passed > most || limited == 0 {
		t.Errorf("%d of %d passed in %s, want at most %d and some refused", passed, sent, took, most)
	}
	for i := uint64(0); i < passed; i++ {
		out.nextOf(t, "kiosk-1", model.KindTelemetry)
	}
	out.none(t, "kiosk-1")
}

// A device's events over its rate wait their turn and all arrive: a
// kiosk sending what it kept while its network was down is slowed, not
// cut. Its answers to commands likewise.
func TestEventsThrottledNotDropped(t *testing.T) {
	d, out := start(t, station(t, ""))
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	const sent = 80 // burst 20, then 50 a second: 1.2 s at least
	start := time.Now()
	toks := make([]paho.Token, sent)
	for i := range toks {
		toks[i] = k.c.Publish("dev/kiosk-1/service_request", 1, false, fmt.Sprintf(`{"ticket":"K1-%d","category":"other"}`, i))
	}
	for i := 0; i < sent; i++ {
		e := out.nextOf(t, "kiosk-1", model.KindEvent).Event
		if want := fmt.Sprintf("K1-%d", i); e.Details["ticket"] != want {
			t.Fatalf("event %d is %s, want %s", i, e.Details["ticket"], want)
		}
	}
	for _, tok := range toks {
		if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish: %v", tok.Error())
		}
	}
	if took := time.Since(start); took < 1100*time.Millisecond {
		t.Errorf("%d events over a rate of 50/s with a burst of 20 took %s: not throttled", sent, took)
	}
	d.devices["kiosk-1"].mu.Lock()
	defer d.devices["kiosk-1"].mu.Unlock()
	if c := d.devices["kiosk-1"].counters; c[RateLimited] != 0 || c["throttled"] == 0 {
		t.Errorf("counters %v, want some throttled and none refused", c)
	}
}

// A device may not log in as another, nor publish or subscribe under
// another's topics: refused, counted, and reported to the hub.
func TestDevicesKeptApart(t *testing.T) {
	d, out := start(t, station(t, ""))
	if _, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-2", false); err == nil {
		t.Fatal("kiosk-1 logged in with kiosk-2's password")
	}
	if _, err := connect(t, d.Addr(), "intruder", "pw-kiosk-1", false); err == nil {
		t.Fatal("an unknown client logged in")
	}
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	tok := k.c.Subscribe("dev/kiosk-2/cmd", 1, nil)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("no answer to a subscription: %v", tok.Error())
	}
	if qos := tok.(*paho.SubscribeToken).Result()["dev/kiosk-2/cmd"]; qos != 0x80 {
		t.Errorf("kiosk-1 subscribing to kiosk-2's commands got %#x, want the failure 0x80", qos)
	}
	k.c.Publish("dev/kiosk-2/service_request", 1, false, `{"ticket":"K2-1","category":"fire"}`) // the broker drops the connection
	e := out.nextOf(t, "kiosk-1", model.KindEvent).Event
	if e.Kind != model.EventSpoofing || e.Details["as_device"] != "kiosk-2" || e.Details["topic"] != "dev/kiosk-2/service_request" {
		t.Errorf("event %s %v, want spoofing as kiosk-2", e.Kind, e.Details)
	}
	out.none(t, "kiosk-2")
	d.devices["kiosk-1"].mu.Lock()
	defer d.devices["kiosk-1"].mu.Unlock()
	if c := d.devices["kiosk-1"].counters; c[AuthFailed] != 1 || c[Refused] != 1 {
		t.Errorf("counters %v, want auth_failed 1 and refused_topic 1", c)
	}
}

// mosquitto_pub, a client written apart from the project, plays a kiosk:
// its request reaches the gateway, and its publish under another
// device's topic is refused.
func TestMosquittoClientAsKiosk(t *testing.T) {
	pub, err := exec.LookPath("mosquitto_pub")
	if err != nil {
		t.Fatal("mosquitto_pub not installed (make test-deps installs mosquitto-clients)")
	}
	d, out := start(t, station(t, ""))
	host, port, _ := strings.Cut(d.Addr(), ":")
	run := func(topic, msg string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		b, err := exec.CommandContext(ctx, pub, "-h", host, "-p", port, "-i", "kiosk-2", "-u", "kiosk-2", "-P", "pw-kiosk-2",
			"-q", "1", "-t", topic, "-m", msg).CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(b)))
		}
		return nil
	}
	if err := run("dev/kiosk-2/service_request", `{"ticket":"K2-000001","category":"work_safety","text":"scaffold loose"}`); err != nil {
		t.Fatal(err)
	}
	e := out.nextOf(t, "kiosk-2", model.KindEvent).Event
	if e.Kind != "service_request" || e.Details["ticket"] != "K2-000001" || e.Details["category"] != "work_safety" {
		t.Errorf("event %s %v", e.Kind, e.Details)
	}
	_ = run("dev/kiosk-1/emergency_call", `{"state":"active","call_id":"fake"}`)
	if e := out.nextOf(t, "kiosk-2", model.KindEvent).Event; e.Kind != model.EventSpoofing || e.Details["as_device"] != "kiosk-1" {
		t.Errorf("event %s %v, want spoofing as kiosk-1", e.Kind, e.Details)
	}
	out.none(t, "kiosk-1")
}

// A command reaches the device, and Send returns with its answer; a
// device away gets it when it returns; a refusal carries the device's
// reason; one never answered ends with the command's expiry.
func TestSend(t *testing.T) {
	d, out := start(t, station(t, ""))
	cmd := drivers.Outgoing{ID: "s-1", Action: "request_status", Args: map[string]any{"ticket": "K1-1", "status": "dispatched"},
		Sent: time.Now(), Expires: time.Now().Add(time.Minute)}
	done := make(chan error, 1)
	send := func(c drivers.Outgoing, wait time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		go func() { defer cancel(); done <- d.Send(ctx, "kiosk-1", c) }()
	}
	send(cmd, time.Minute) // kiosk-1 is not there yet
	k, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-1", false)
	if err != nil {
		t.Fatal(err)
	}
	out.health(t, "kiosk-1", model.Online)
	// answer answers command id. A command comes again when the device
	// (re)connects and when it subscribes, and both may reach it: a
	// device takes a repeat by its id (here, leaves it).
	answer := func(id, status, reason string) drivers.Outgoing {
		t.Helper()
		for {
			select {
			case m := <-k.cmd:
				var got drivers.Outgoing
				if err := json.Unmarshal(m.Payload(), &got); err != nil {
					t.Fatal(err)
				}
				if got.ID != id {
					continue
				}
				b, _ := json.Marshal(map[string]string{"id": got.ID, "status": status, "reason": reason})
				if err := k.publish("dev/kiosk-1/cmd/ack", string(b)); err != nil {
					t.Fatal(err)
				}
				return got
			case <-time.After(10 * time.Second):
				t.Fatalf("no command %s within 10s", id)
			}
		}
	}
	if got := answer("s-1", "ok", ""); got.Action != "request_status" || got.Args["status"] != "dispatched" {
		t.Errorf("command %+v", got)
	}
	if err := <-done; err != nil {
		t.Errorf("Send: %v", err)
	}
	cmd.ID = "s-2"
	send(cmd, time.Minute)
	answer("s-2", "failed", "screen broken")
	var de *DeviceError
	if err := <-done; !errors.As(err, &de) || de.Reason != "screen broken" {
		t.Errorf("Send: %v, want the device's reason", err)
	}
	cmd.ID = "s-3"
	send(cmd, 300*time.Millisecond)
	<-k.cmd // not answered
	if err := <-done; err == nil || !strings.Contains(err.Error(), "did not answer before the command expired") {
		t.Errorf("Send: %v, want no answer before expiry", err)
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

// TestDeviceNotIn: a device whose logins are refused is offline at once
// with what to do; one that never connects is offline after its silence,
// with where it should connect.
func TestDeviceNotIn(t *testing.T) {
	st := withSilence(t, station(t, ""), "kiosk-2", "1s")
	d, out := start(t, st)
	if _, err := connect(t, d.Addr(), "kiosk-1", "pw-kiosk-2", false); err == nil {
		t.Fatal("kiosk-1 logged in with kiosk-2's password")
	}
	got := map[string]string{}
	deadline := time.After(10 * time.Second)
	for len(got) < 2 {
		select {
		case m := <-out.ch:
			if m.Kind == model.KindHealth && m.Health.State == model.Offline {
				got[m.Device] = m.Health.Reason
			}
		case <-deadline:
			t.Fatalf("offline within 10 s: %v; want both kiosks", got)
		}
	}
	want := map[string]string{
		"kiosk-1": "its logins to the station broker are refused (auth_failed: wrong password for kiosk-1 from 127.0.0.1): give the device and the gateway the same password again (gateway passwd -file " +
			filepath.Join(filepath.Dir(st.File), "devices.passwd") + " kiosk-1, then gateway reload if the gateway runs)",
		"kiosk-2": "kiosk-2 has not connected to the station broker at " + d.Addr() + " since the gateway started: is it powered, on the station LAN, and set to this address?",
	}
	if !equalMaps(got, want) {
		t.Errorf("offline reasons:\n%v\nwant\n%v", got, want)
	}
}

// TestCleanSession: a kiosk that connects with a clean session, against
// docs/kiosks.md, is degraded with the reason and counted: its client
// would drop an emergency call in flight when its connection breaks.
func TestCleanSession(t *testing.T) {
	d, out := start(t, station(t, ""))
	o := paho.NewClientOptions().AddBroker("tcp://" + d.Addr()).SetClientID("kiosk-1").SetUsername("kiosk-1").SetPassword("pw-kiosk-1").
		SetProtocolVersion(4).SetCleanSession(true).SetAutoReconnect(false)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("connect: %v", tok.Error())
	}
	defer c.Disconnect(0)
	h := out.health(t, "kiosk-1", model.Degraded).Health
	const want = "clean_session: kiosk-1 connects with a clean session: its MQTT client drops what the broker has not acknowledged when the connection breaks (an emergency call, say); set clean session off, as docs/kiosks.md asks"
	if h.Reason != want || h.Counters[CleanSession] != 1 {
		t.Errorf("health %q %v, want %q and %s 1", h.Reason, h.Counters, want, CleanSession)
	}
}
