package model

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model/schema"
)

var point1, point2 = 0.1, 0.2 // variables: constant arithmetic would be exact

var testTime = time.Date(2026, 11, 28, 13, 37, 0, 123456789, time.UTC)

func telemetry() Message {
	return Message{
		Station: "pr-0001", StationType: PoliceRoom, Device: "th-hall", DeviceKind: "temp_humidity",
		Seq: 42, Time: testTime, Kind: KindTelemetry,
		Readings: []Reading{
			{Signal: "temperature", Value: Number(21.5), Unit: "°C", Quality: Good},
			{Signal: "humidity", Value: Number(point1 + point2), Unit: "%", Quality: Uncertain},
			{Signal: "alarm", Value: Bool(true), Quality: Good},
			{Signal: "model", Value: String("TH-\"2\"\n\\x\x01"), Quality: Good},
			{Signal: "pressure", Quality: Bad},
		},
	}
}

func event() Message {
	return Message{
		Station: "pr-0001", StationType: PoliceRoom, Device: "smoke-hall", DeviceKind: "smoke_detector",
		Seq: 7, Time: testTime, Kind: KindEvent, Historical: true,
		Event: &Event{Kind: EventSmoke, Severity: Critical, Details: map[string]string{"zone": "hall", "level": "3"}},
	}
}

func health() Message {
	return Message{
		Station: "pr-0001", StationType: PoliceRoom, Device: "ups-1", DeviceKind: "ups",
		Seq: math.MaxUint64, Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Kind: KindHealth,
		Health: &Health{State: Offline, Reason: "no answer after 3 polls", Counters: map[string]uint64{"polls": 12, "timeouts": 3}},
	}
}

func result() Message {
	return Message{
		Station: "sp-0007", StationType: SafetyPost, Device: "siren-1", DeviceKind: "siren",
		Seq: 3, Time: testTime, Kind: KindResult,
		Result: &Result{ID: "c-42", Action: "siren_on", Status: ResultRejected, Reason: "expired: sent 2026-11-28T12:37:00Z with ttl 30s"},
	}
}

func TestAppendJSONExact(t *testing.T) {
	tests := []struct {
		name string
		msg  Message
		want string
	}{
		{"telemetry", telemetry(), `{"v":1,"station":"pr-0001","station_type":"police_room","device":"th-hall","device_kind":"temp_humidity","seq":42,"ts":"2026-11-28T13:37:00.123456789Z","kind":"telemetry","readings":[` +
			`{"signal":"temperature","value":21.5,"unit":"°C","quality":"good"},` +
			`{"signal":"humidity","value":0.30000000000000004,"unit":"%","quality":"uncertain"},` +
			`{"signal":"alarm","value":true,"quality":"good"},` +
			`{"signal":"model","value":"TH-\"2\"\n\\x\u0001","quality":"good"},` +
			`{"signal":"pressure","quality":"bad"}]}`},
		{"event", event(), `{"v":1,"station":"pr-0001","station_type":"police_room","device":"smoke-hall","device_kind":"smoke_detector","seq":7,"ts":"2026-11-28T13:37:00.123456789Z","kind":"event","historical":true,"event":{"kind":"smoke","severity":"critical","details":{"level":"3","zone":"hall"}}}`},
		{"health", health(), `{"v":1,"station":"pr-0001","station_type":"police_room","device":"ups-1","device_kind":"ups","seq":18446744073709551615,"ts":"2026-01-02T03:04:05Z","kind":"health","health":{"state":"offline","reason":"no answer after 3 polls","counters":{"polls":12,"timeouts":3}}}`},
		{"result", result(), `{"v":1,"station":"sp-0007","station_type":"safety_post","device":"siren-1","device_kind":"siren","seq":3,"ts":"2026-11-28T13:37:00.123456789Z","kind":"result","result":{"id":"c-42","action":"siren_on","status":"rejected","reason":"expired: sent 2026-11-28T12:37:00Z with ttl 30s"}}`},
		{"bare result", Message{Station: "s", StationType: SafetyPost, Device: "d", DeviceKind: "k", Time: testTime, Kind: KindResult, Result: &Result{ID: "x", Status: ResultOK}},
			`{"v":1,"station":"s","station_type":"safety_post","device":"d","device_kind":"k","seq":0,"ts":"2026-11-28T13:37:00.123456789Z","kind":"result","result":{"id":"x","status":"ok"}}`},
		{"non-finite numbers become bad readings", Message{Station: "s", StationType: SafetyPost, Device: "d", DeviceKind: "k", Time: testTime, Kind: KindTelemetry,
			Readings: []Reading{{Signal: "a", Value: Number(math.NaN()), Quality: Good}, {Signal: "b", Value: Number(math.Inf(-1)), Unit: "V", Quality: Good}, {Signal: "c", Value: Number(1), Quality: Bad}}},
			`{"v":1,"station":"s","station_type":"safety_post","device":"d","device_kind":"k","seq":0,"ts":"2026-11-28T13:37:00.123456789Z","kind":"telemetry","readings":[{"signal":"a","quality":"bad"},{"signal":"b","unit":"V","quality":"bad"},{"signal":"c","quality":"bad"}]}`},
		{"local time is written in UTC, invalid UTF-8 replaced", Message{Station: "s\xff", StationType: SafetyPost, Device: "d", DeviceKind: "k", Time: time.Date(2026, 1, 1, 8, 0, 0, 500000000, time.FixedZone("CST", 8*3600)), Kind: KindTelemetry, Readings: []Reading{}},
			`{"v":1,"station":"s\ufffd","station_type":"safety_post","device":"d","device_kind":"k","seq":0,"ts":"2026-01-01T00:00:00.5Z","kind":"telemetry","readings":[]}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendJSON(nil, &tt.msg))
			if got != tt.want {
				t.Errorf("AppendJSON:\n got %s\nwant %s", got, tt.want)
			}
			if !json.Valid([]byte(got)) {
				t.Errorf("not valid JSON: %s", got)
			}
		})
	}
}

func TestJSONRoundTrip(t *testing.T) {
	numbers := []float64{0, math.Copysign(0, -1), 1, -1, 21.5, point1 + point2, 1e21, 1e-7, 123456789.123456789, math.MaxFloat64, math.SmallestNonzeroFloat64, -math.MaxFloat64, float64(math.MaxInt64), 1.0 / 3}
	var rs []Reading
	for _, f := range numbers {
		rs = append(rs, Reading{Signal: "n", Value: Number(f), Unit: "u", Quality: Good})
	}
	rs = append(rs, Reading{Signal: "b", Value: Bool(false), Quality: Uncertain}, Reading{Signal: "s", Value: String("多语言 ☃ \t"), Quality: Good}, Reading{Signal: "x", Quality: Bad})
	tele := telemetry()
	tele.Readings = append(tele.Readings, rs...)
	tele.Readings[3].Value = String("TH-\"2\"\n\\x\x01") // valid UTF-8, survives exactly
	for _, m := range []Message{tele, event(), health(), result()} {
		b := AppendJSON(nil, &m)
		got, err := ParseJSON(b)
		if err != nil {
			t.Fatalf("ParseJSON(%s): %v", b, err)
		}
		if !got.Time.Equal(m.Time) {
			t.Errorf("time %v, want %v", got.Time, m.Time)
		}
		got.Time = m.Time
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip of %s:\n got %+v\nwant %+v", m.Kind, got, m)
		}
		for i, r := range got.Readings {
			f, _ := r.Value.Float()
			w, _ := m.Readings[i].Value.Float()
			if math.Float64bits(f) != math.Float64bits(w) {
				t.Errorf("reading %d: %v (bits %x), want %v (bits %x)", i, f, math.Float64bits(f), w, math.Float64bits(w))
			}
		}
	}
}

func TestParseJSONRejects(t *testing.T) {
	good := string(AppendJSON(nil, &[]Message{telemetry()}[0]))
	tests := []struct {
		name, in, wantErr string
	}{
		{"empty", ``, "hub payload: jsontext: unexpected EOF"},
		{"not an object", `[1]`, "hub payload: json: cannot unmarshal JSON array into Go model.wireMessage"},
		{"trailing data", good + `{}`, "hub payload: jsontext: invalid character '{' after top-level value"},
		{"no version", `{"station":"s"}`, `hub payload: missing "v"`},
		{"version's name in capitals", strings.Replace(good, `"v":1`, `"V":1`, 1), `hub payload: missing "v"`},
		{"a name twice", strings.Replace(good, `"seq":42`, `"seq":42,"seq":43`, 1), `hub payload: jsontext: duplicate object member name "seq"`},
		{"invalid UTF-8", strings.Replace(good, `"th-hall"`, "\"th-\xffhall\"", 1), `hub payload: jsontext: invalid UTF-8 within "/device"`},
		{"version 2", `{"v":2}`, "hub payload: version 2, want 1"},
		{"no station", strings.Replace(good, `"station":"pr-0001",`, "", 1), `hub payload: missing "station"`},
		{"topic char in device", strings.Replace(good, `"th-hall"`, `"th/hall"`, 1), `hub payload: device "th/hall" contains a topic character (/ + #)`},
		{"bad station type", strings.Replace(good, `police_room`, `prison`, 1), `hub payload: unknown station_type "prison"`},
		{"negative seq", strings.Replace(good, `"seq":42`, `"seq":-1`, 1), "hub payload: json: cannot unmarshal JSON number -1 into Go uint64 within \"/seq\""},
		{"no seq", strings.Replace(good, `"seq":42,`, ``, 1), `hub payload: missing "seq"`},
		{"bad ts", strings.Replace(good, `13:37:00`, `13:37`, 1), "hub payload: ts: parsing time"},
		{"unknown kind", strings.Replace(good, `"kind":"telemetry"`, `"kind":"gossip"`, 1), `hub payload: unknown kind "gossip"`},
		{"telemetry without readings", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"telemetry"}`, `hub payload: telemetry without "readings"`},
		{"event without body", strings.Replace(strings.Replace(good, `"kind":"telemetry"`, `"kind":"event"`, 1), `"readings"`, `"x"`, 1), `hub payload: event without "event"`},
		{"bad without value has value", strings.Replace(good, `{"signal":"pressure","quality":"bad"}`, `{"signal":"pressure","value":1,"quality":"bad"}`, 1), "hub payload: reading 4: pressure: bad reading with a value"},
		{"good without value", strings.Replace(good, `{"signal":"pressure","quality":"bad"}`, `{"signal":"pressure","quality":"good"}`, 1), "hub payload: reading 4: pressure: no value but quality good"},
		{"null value", strings.Replace(good, `"value":21.5`, `"value":null`, 1), "hub payload: reading 0: temperature: value null is not a number, bool or string"},
		{"object value", strings.Replace(good, `"value":21.5`, `"value":{}`, 1), "hub payload: reading 0: temperature: value {} is not a number, bool or string"},
		{"huge number", strings.Replace(good, `"value":21.5`, `"value":1e400`, 1), "hub payload: reading 0: temperature: value: strconv.ParseFloat"},
		{"unknown quality", strings.Replace(good, `"quality":"good"`, `"quality":"fine"`, 1), `hub payload: reading 0: unknown quality "fine"`},
		{"no signal", strings.Replace(good, `"signal":"temperature",`, ``, 1), `hub payload: reading 0: missing "signal"`},
		{"bad severity", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"event","event":{"kind":"panic","severity":"doom"}}`, `hub payload: event: unknown severity "doom"`},
		{"bad state", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"health","health":{"state":"meh"}}`, `hub payload: health: unknown state "meh"`},
		{"negative counter", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"health","health":{"state":"online","counters":{"a":-1}}}`, "hub payload: json: cannot unmarshal JSON number -1 into Go uint64 within \"/health/counters/a\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseJSON([]byte(tt.in))
			if err == nil {
				t.Fatalf("ParseJSON(%s) = nil error, want %q", tt.in, tt.wantErr)
			}
			// The JSON decoder says "cannot" or "unable to", chosen
			// at random once a process.
			if got := strings.Replace(err.Error(), "unable to", "cannot", 1); !strings.HasPrefix(got, tt.wantErr) {
				t.Errorf("error %q, want prefix %q", err, tt.wantErr)
			}
		})
	}
}

func TestSchemaIDCarriesVersion(t *testing.T) {
	b, err := os.ReadFile("schema/message.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		ID     string `json:"$id"`
		Schema string `json:"$schema"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(doc.ID, "/v1/") || doc.Schema != "https://json-schema.org/draft/2020-12/schema" {
		t.Errorf("$id %q / $schema %q: want version v%d and draft 2020-12", doc.ID, doc.Schema, ContractVersion)
	}
}

func TestSchemaAcceptsEveryKind(t *testing.T) {
	nonFinite := telemetry()
	nonFinite.Readings = append(nonFinite.Readings, Reading{Signal: "nan", Value: Number(math.NaN()), Quality: Good})
	empty := telemetry()
	empty.Readings = nil
	bare := event()
	bare.Event.Details = nil
	bare.Historical = false
	bareHealth := health()
	bareHealth.Health = &Health{State: Degraded}
	bareResult := result()
	bareResult.Result = &Result{ID: "c-1", Status: ResultOK}
	for _, m := range []Message{telemetry(), event(), health(), result(), nonFinite, empty, bare, bareHealth, bareResult} {
		b := AppendJSON(nil, &m)
		if err := schema.Validate(b); err != nil {
			t.Errorf("schema rejects AppendJSON output %s: %v", b, err)
		}
	}
}

func TestSchemaRejectsBrokenPayloads(t *testing.T) {
	tele := telemetry()
	good := string(AppendJSON(nil, &tele))
	ev := event()
	goodEvent := string(AppendJSON(nil, &ev))
	tests := []struct{ name, in string }{
		{"version 2", strings.Replace(good, `"v":1`, `"v":2`, 1)},
		{"no station", strings.Replace(good, `"station":"pr-0001",`, "", 1)},
		{"slash in device", strings.Replace(good, `"th-hall"`, `"th/hall"`, 1)},
		{"unknown station type", strings.Replace(good, `police_room`, `prison`, 1)},
		{"negative seq", strings.Replace(good, `"seq":42`, `"seq":-1`, 1)},
		{"fractional seq", strings.Replace(good, `"seq":42`, `"seq":4.5`, 1)},
		{"ts not UTC", strings.Replace(good, `.123456789Z`, `+08:00`, 1)},
		{"unknown kind", strings.Replace(good, `"kind":"telemetry"`, `"kind":"gossip"`, 1)},
		{"telemetry without readings", strings.Replace(good, `"readings"`, `"x"`, 1)},
		{"telemetry with event", strings.Replace(good, `"readings"`, `"event":{"kind":"panic","severity":"info"},"readings"`, 1)},
		{"bad reading with value", strings.Replace(good, `{"signal":"pressure","quality":"bad"}`, `{"signal":"pressure","value":1,"quality":"bad"}`, 1)},
		{"good reading without value", strings.Replace(good, `{"signal":"pressure","quality":"bad"}`, `{"signal":"pressure","quality":"good"}`, 1)},
		{"null value", strings.Replace(good, `"value":21.5`, `"value":null`, 1)},
		{"NaN as string is fine but not as null", strings.Replace(good, `"value":21.5`, `"value":[]`, 1)},
		{"unknown quality", strings.Replace(good, `"quality":"good"`, `"quality":"fine"`, 1)},
		{"historical not bool", strings.Replace(goodEvent, `"historical":true`, `"historical":"yes"`, 1)},
		{"event without severity", strings.Replace(goodEvent, `"severity":"critical",`, ``, 1)},
		{"event detail not string", strings.Replace(goodEvent, `"level":"3"`, `"level":3`, 1)},
		{"event kind without body", strings.Replace(goodEvent, `"event":{`, `"evnt":{`, 1)},
		{"health negative counter", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"health","health":{"state":"online","counters":{"a":-1}}}`},
		{"result without id", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"result","result":{"status":"ok"}}`},
		{"result unknown status", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"result","result":{"id":"a","status":"maybe"}}`},
		{"result with readings", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"result","readings":[],"result":{"id":"a","status":"ok"}}`},
		{"health unknown state", `{"v":1,"station":"s","station_type":"workstation","device":"d","device_kind":"k","seq":1,"ts":"2026-01-01T00:00:00Z","kind":"health","health":{"state":"meh"}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.in == good || tt.in == goodEvent {
				t.Fatal("test input was not changed; fix the replacement")
			}
			if err := schema.Validate([]byte(tt.in)); err == nil {
				t.Errorf("schema accepts %s", tt.in)
			}
			if _, err := ParseJSON([]byte(tt.in)); err == nil {
				t.Errorf("ParseJSON accepts %s", tt.in)
			}
		})
	}
}

func FuzzParseJSON(f *testing.F) {
	for _, m := range []Message{telemetry(), event(), health(), result()} {
		f.Add(AppendJSON(nil, &m))
	}
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`{"v":1,"readings":[{"value":1e999}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseJSON(b)
		if err != nil {
			return
		}
		// Whatever parses must encode and parse back to the same message.
		b2 := AppendJSON(nil, &m)
		if err := schema.Validate(b2); err != nil {
			t.Fatalf("schema rejects the re-encoding %s of accepted input: %v", b2, err)
		}
		m2, err := ParseJSON(b2)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b2, err)
		}
		if b3 := AppendJSON(nil, &m2); !bytes.Equal(b2, b3) {
			t.Fatalf("not stable:\n%s\n%s", b2, b3)
		}
	})
}

func BenchmarkAppendJSON(b *testing.B) {
	m := telemetry()
	m.Readings = m.Readings[:0]
	for i := 0; i < 8; i++ {
		m.Readings = append(m.Readings, Reading{Signal: "signal_" + string(rune('a'+i)), Value: Number(20 + float64(i)*0.37), Unit: "V", Quality: Good})
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendJSON(buf[:0], &m)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkParseJSON(b *testing.B) {
	m := telemetry()
	buf := AppendJSON(nil, &m)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseJSON(buf); err != nil {
			b.Fatal(err)
		}
	}
}

// The examples of docs/hub-contract.md are valid payloads, written exactly
// as AppendJSON writes them.
func TestContractDocExamples(t *testing.T) {
	doc, err := os.ReadFile("../../docs/hub-contract.md")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, block := range strings.Split(string(doc), "```json\n")[1:] {
		ex := strings.TrimSpace(block[:strings.Index(block, "```")])
		if !strings.Contains(ex, `"kind"`) {
			continue // the status payload
		}
		n++
		if err := schema.Validate([]byte(ex)); err != nil {
			t.Errorf("schema rejects doc example %s: %v", ex, err)
		}
		m, err := ParseJSON([]byte(ex))
		if err != nil {
			t.Errorf("ParseJSON(doc example %s): %v", ex, err)
			continue
		}
		if got := string(AppendJSON(nil, &m)); got != ex {
			t.Errorf("doc example is not as AppendJSON writes it:\n doc %s\ncode %s", ex, got)
		}
	}
	if n != 4 {
		t.Errorf("found %d payload examples in the doc, want 4", n)
	}
}

// TestValueString: values as a person reads them, numbers in plain
// decimals unless very large or small.
func TestValueString(t *testing.T) {
	for _, c := range []struct {
		v    Value
		want string
	}{
		{Number(21.5), "21.5"},
		{Number(0), "0"},
		{Number(-40), "-40"},
		{Number(12345678.5), "12345678.5"},
		{Number(0.0000069806833), "0.0000069806833"},
		{Number(1e-7), "1e-07"},
		{Number(2.5e15), "2.5e+15"},
		{Bool(true), "true"},
		{String("ok"), "ok"},
		{Value{}, "<none>"},
	} {
		if got := c.v.String(); got != c.want {
			t.Errorf("%#v: %q, want %q", c.v, got, c.want)
		}
	}
}
