package mqtt

import (
	"errors"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// kiosk is the built-in kiosk template.
func kiosk(t *testing.T) (*cfg.Template, []configs.Action) {
	t.Helper()
	// The other families are not registered here: their templates fail.
	all, err := configs.BuiltinTemplates()
	for _, tm := range all {
		if tm.Name == "outpost-kiosk" {
			return tm.Body.(*cfg.Template), tm.Actions
		}
	}
	t.Fatalf("no built-in template outpost-kiosk (%v)", err)
	return nil, nil
}

var at = time.Date(2026, 11, 30, 8, 0, 0, 123_456_789, time.FixedZone("CST", 8*3600))

func TestStamp(t *testing.T) {
	if got, want := stamp(at), "2026-11-30T00:00:00.123Z"; got != want {
		t.Errorf("stamp = %s, want %s", got, want)
	}
	if got, want := stamp(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), "2026-01-02T03:04:05.000Z"; got != want {
		t.Errorf("stamp = %s, want %s", got, want)
	}
}

func TestTelemetryPayload(t *testing.T) {
	tm, _ := kiosk(t)
	vals := map[string]signal.Value{
		"enclosure_temp":     signal.Num(25.12789),
		"enclosure_humidity": signal.Num(51.5),
		"door_open":          signal.Num(0), // a constant wave's number, sent as a bool
		"tamper":             signal.B(true),
		"paper_ok":           signal.Num(1),
	}
	b, rs, err := telemetryPayload(tm.Message("telemetry"), at, vals)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"ts":"2026-11-30T00:00:00.123Z","enclosure":{"temp_c":25.13,"rh_pct":51.5},"door":{"open":false,"tamper":true},"printer":{"paper_ok":true}}`
	if string(b) != want {
		t.Errorf("payload\n got %s\nwant %s", b, want)
	}
	wantRs := []sim.Reading{
		{Signal: "enclosure_temp", Value: signal.Num(25.13)}, {Signal: "enclosure_humidity", Value: signal.Num(51.5)},
		{Signal: "door_open", Value: signal.B(false)}, {Signal: "tamper", Value: signal.B(true)}, {Signal: "paper_ok", Value: signal.B(true)},
	}
	if len(rs) != len(wantRs) {
		t.Fatalf("readings %v, want %v", rs, wantRs)
	}
	for i := range rs {
		if rs[i] != wantRs[i] {
			t.Errorf("reading %d = %v, want %v", i, rs[i], wantRs[i])
		}
	}
}

// A signal with a scale and an offset is sent as the number the gateway
// turns back into the value; without a value, it is left out.
func TestTelemetryScaleAndMissing(t *testing.T) {
	m := &cfg.Message{Name: "env", Signals: []cfg.Value{
		{Signal: "temp", Path: "t", Type: configs.Number, Scale: 0.1, Offset: -40},
		{Signal: "label", Path: "meta.label", Type: configs.Text, Scale: 1},
		{Signal: "absent", Path: "meta.absent", Type: configs.Number, Scale: 1},
	}}
	b, rs, err := telemetryPayload(m, at, map[string]signal.Value{"temp": signal.Num(21.5), "label": signal.Str(`a "b" <c>`)})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"t":615,"meta":{"label":"a \"b\" <c>"}}`; string(b) != want {
		t.Errorf("payload\n got %s\nwant %s", b, want)
	}
	if len(rs) != 2 || rs[0].Value.Num != 615*0.1-40 || rs[1].Value.Text != `a "b" <c>` {
		t.Errorf("readings %v", rs)
	}
}

func TestEventPayload(t *testing.T) {
	tm, _ := kiosk(t)
	for _, c := range []struct {
		name, msg, state string
		details          map[string]string
		want, err        string
	}{
		{name: "call", msg: "emergency_call", state: "active", details: map[string]string{"call_id": "k-1-call1", "button": "front"},
			want: `{"ts":"2026-11-30T00:00:00.123Z","state":"active","call_id":"k-1-call1","button":"front"}`},
		{name: "call ends", msg: "emergency_call", state: "cleared", details: map[string]string{"call_id": "k-1-call1"},
			want: `{"ts":"2026-11-30T00:00:00.123Z","state":"cleared","call_id":"k-1-call1"}`},
		{name: "request", msg: "service_request", details: map[string]string{"session_id": "s-9", "text": "路灯坏了 & <dark>", "ticket": "k-1-1", "category": "other", "location": "east gate"},
			want: `{"ts":"2026-11-30T00:00:00.123Z","ticket":"k-1-1","category":"other","text":"路灯坏了 & <dark>","location":"east gate","session_id":"s-9"}`},
		{name: "session", msg: "session", state: "active", details: map[string]string{"session_id": "k-1-s1", "service": "id_card"},
			want: `{"ts":"2026-11-30T00:00:00.123Z","state":"active","session_id":"k-1-s1","service":"id_card"}`},
		{name: "fault", msg: "fault", state: "active", details: map[string]string{"part": "printer", "code": "E12", "text": "paper jam"},
			want: `{"ts":"2026-11-30T00:00:00.123Z","state":"active","part":"printer","code":"E12","text":"paper jam"}`},
		{name: "bad category", msg: "service_request", details: map[string]string{"ticket": "k-1-1", "category": "noise"},
			err: `category is "noise" (expected one of: social_stability, violent_crime, fire, work_safety, other)`},
		{name: "required missing", msg: "service_request", details: map[string]string{"category": "fire"},
			err: "service_request needs ticket"},
		{name: "unknown detail", msg: "fault", state: "active", details: map[string]string{"part": "printer", "colour": "red"},
			err: "fault has no detail colour (it has part, code, text)"},
		{name: "too long", msg: "emergency_call", state: "active", details: map[string]string{"call_id": strings.Repeat("x", 65)},
			err: "call_id is 65 bytes long (at most 64)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := eventPayload(tm.Message(c.msg), at, c.state, c.details)
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("error %v, want %s", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(b) != c.want {
				t.Errorf("payload\n got %s\nwant %s", b, c.want)
			}
		})
	}
}

// Details at a dotted path, and of a number or bool type, are written
// there and as such.
func TestEventPayloadPaths(t *testing.T) {
	m := &cfg.Message{Name: "alarm", Time: "meta.at", Event: &cfg.Event{Kind: "alarm", State: "meta.state", Details: []cfg.Detail{
		{Field: configs.Field{Name: "zone", Type: configs.Number, MaxLen: 256}, Path: "where.zone"},
		{Field: configs.Field{Name: "armed", Type: configs.Bool, MaxLen: 256}},
	}}}
	b, err := eventPayload(m, at, "active", map[string]string{"zone": "5", "armed": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"meta":{"at":"2026-11-30T00:00:00.123Z","state":"active"},"where":{"zone":5},"armed":true}`; string(b) != want {
		t.Errorf("payload\n got %s\nwant %s", b, want)
	}
	if _, err := eventPayload(m, at, "active", map[string]string{"zone": "five"}); err == nil || err.Error() != `zone="five": want a number` {
		t.Errorf("error %v", err)
	}
}

func TestHeartbeatPayload(t *testing.T) {
	tm, _ := kiosk(t)
	b, err := heartbeatPayload(tm.Message("heartbeat"), at, 3723*time.Second+900*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"ts":"2026-11-30T00:00:00.123Z","uptime_s":3723,"fw_version":"outpost-firmware-sim 1"}`; string(b) != want {
		t.Errorf("payload\n got %s\nwant %s", b, want)
	}
	// Without allow, only the time.
	b, _ = heartbeatPayload(&cfg.Message{Name: "hb", Time: "ts"}, at, time.Hour)
	if want := `{"ts":"2026-11-30T00:00:00.123Z"}`; string(b) != want {
		t.Errorf("payload %s, want %s", b, want)
	}
}

func TestParseCommand(t *testing.T) {
	_, actions := kiosk(t)
	sent := time.Date(2026, 11, 30, 8, 0, 1, 500_000_000, time.UTC)
	for _, c := range []struct {
		name, in string
		want     command
		err      string
	}{
		{name: "status", in: `{"id":"c-1","action":"request_status","args":{"ticket":"k-1-1","status":"dispatched","note":"on the way"},"ts":"2026-11-30T08:00:01.500Z","expires":"2026-11-30T08:05:01.500Z"}`,
			want: command{ID: "c-1", Action: "request_status", Args: map[string]string{"ticket": "k-1-1", "status": "dispatched", "note": "on the way"}, Sent: sent}},
		{name: "call answered", in: `{"id":"c-2","action":"call_answered","args":{"call_id":"k-1-call1"}}`,
			want: command{ID: "c-2", Action: "call_answered", Args: map[string]string{"call_id": "k-1-call1"}}},
		{name: "unknown action", in: `{"id":"c-3","action":"reboot"}`,
			want: command{ID: "c-3", Action: "reboot", Args: map[string]string{}}, err: `unknown action "reboot" (the device takes: request_status, call_answered)`},
		{name: "bad status", in: `{"id":"c-4","action":"request_status","args":{"ticket":"k-1-1","status":"lost"}}`,
			err: `status is "lost" (expected one of: received, dispatched, on_scene, closed)`},
		{name: "missing arg", in: `{"id":"c-5","action":"request_status","args":{"status":"closed"}}`,
			err: "request_status needs argument ticket"},
		{name: "unknown arg", in: `{"id":"c-6","action":"call_answered","args":{"call_id":"x","volume":3}}`,
			err: "call_answered takes no argument volume"},
		{name: "wrong type", in: `{"id":"c-7","action":"call_answered","args":{"call_id":7}}`,
			err: "call_id must be a string, not a number"},
		{name: "no id", in: `{"action":"call_answered","args":{"call_id":"x"}}`, err: errNoID.Error()},
		{name: "not JSON", in: `{"id":`, err: errNoID.Error() + " (unexpected end of JSON input)"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseCommand([]byte(c.in), actions)
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("error %v, want %s", err, c.err)
				}
				if strings.HasPrefix(c.err, errNoID.Error()) && !errors.Is(err, errNoID) {
					t.Errorf("error %v is not errNoID", err)
				}
				if c.want.ID == "" {
					return
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if got.ID != c.want.ID || got.Action != c.want.Action || !got.Sent.Equal(c.want.Sent) || len(got.Args) != len(c.want.Args) {
				t.Fatalf("command %+v, want %+v", got, c.want)
			}
			for k, v := range c.want.Args {
				if got.Args[k] != v {
					t.Errorf("arg %s = %q, want %q", k, got.Args[k], v)
				}
			}
		})
	}
}

func TestAckPayload(t *testing.T) {
	if got, want := string(ackPayload("c-1", nil)), `{"id":"c-1","status":"ok"}`; got != want {
		t.Errorf("ack %s, want %s", got, want)
	}
	if got, want := string(ackPayload("c-2", errors.New(`unknown action "reboot"`))), `{"id":"c-2","status":"failed","reason":"unknown action \"reboot\""}`; got != want {
		t.Errorf("ack %s, want %s", got, want)
	}
}

func TestOversizePayload(t *testing.T) {
	for _, n := range []int{1, 10, 44, 45, 1000} {
		b := oversizePayload(at, n)
		if len(b) != n {
			t.Errorf("oversize %d: %d bytes", n, len(b))
		}
	}
	if got, want := string(oversizePayload(at, 48)), `{"ts":"2026-11-30T00:00:00.123Z","pad":"xxxxxx"}`; got != want {
		t.Errorf("oversize 48: %s, want %s", got, want)
	}
}

func TestMalformedPayloads(t *testing.T) {
	tm, _ := kiosk(t)
	tele := tm.Message("telemetry")
	vals := map[string]signal.Value{"enclosure_temp": signal.Num(20), "door_open": signal.B(false)}
	fresh := func() (*object, error) {
		o, _, err := telemetryObject(tele, at, vals)
		return o, err
	}
	got, err := malformedPayloads(tm, tele, at, fresh)
	if err != nil {
		t.Fatal(err)
	}
	want := []badMessage{
		{"telemetry", "not JSON", []byte(`{"ts":"2026-11-30T00:00:00.123Z","enclosure":{"temp_c":20},"door":{"open":false}`)},
		{"telemetry", "wrong type", []byte(`{"ts":"2026-11-30T00:00:00.123Z","enclosure":{"temp_c":"warm"},"door":{"open":false}}`)},
		{"telemetry", "unknown field", []byte(`{"ts":"2026-11-30T00:00:00.123Z","enclosure":{"temp_c":20},"door":{"open":false},"unknown_field":true}`)},
		{"emergency_call", "required field missing", []byte(`{"ts":"2026-11-30T00:00:00.123Z","state":"active"}`)},
	}
	if len(got) != len(want) {
		t.Fatalf("%d messages, want %d: %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].message != want[i].message || got[i].what != want[i].what || string(got[i].payload) != string(want[i].payload) {
			t.Errorf("message %d\n got %s %s %s\nwant %s %s %s", i, got[i].message, got[i].what, got[i].payload, want[i].message, want[i].what, want[i].payload)
		}
	}
}
