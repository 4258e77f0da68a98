package model

import (
	"bytes"
	"fmt"
	"math"
	"reflect"
	"testing"
	"time"
)

func telemetry8() *Message {
	return &Message{
		Station:     "ws-0042",
		StationType: Workstation,
		Device:      "pm-1",
		DeviceKind:  "power_meter",
		Seq:         1234567,
		Time:        time.Date(2026, 11, 28, 13, 45, 1, 123456789, time.UTC),
		Kind:        KindTelemetry,
		Readings: []Reading{
			{Signal: "voltage_l1", Value: Number(229.7), Unit: "V", Quality: Good},
			{Signal: "voltage_l2", Value: Number(231.2), Unit: "V", Quality: Good},
			{Signal: "voltage_l3", Value: Number(230.1), Unit: "V", Quality: Good},
			{Signal: "current_l1", Value: Number(4.21), Unit: "A", Quality: Good},
			{Signal: "current_l2", Value: Number(3.98), Unit: "A", Quality: Good},
			{Signal: "current_l3", Value: Number(4.05), Unit: "A", Quality: Good},
			{Signal: "power_total", Value: Number(2874.5), Unit: "W", Quality: Good},
			{Signal: "energy_total", Value: Number(123456.78), Unit: "kWh", Quality: Good},
		},
	}
}

func TestBinaryRoundTrip(t *testing.T) {
	cet := time.FixedZone("CET", 3600)
	cases := []struct {
		name string
		in   Message
		want Message // zero: same as in
	}{
		{name: "telemetry with 8 readings", in: *telemetry8()},
		{name: "zero message", in: Message{}},
		{name: "empty readings stay empty, not nil", in: Message{Kind: KindTelemetry, Readings: []Reading{}}},
		{name: "every value kind", in: Message{
			Station: "pr-7", StationType: PoliceRoom, Device: "d", DeviceKind: "k", Seq: math.MaxUint64,
			Time: time.Unix(0, 1).UTC(), Kind: KindTelemetry, Historical: true,
			Readings: []Reading{
				{Signal: "n", Value: Number(math.Copysign(0, -1)), Quality: Good},
				{Signal: "inf", Value: Number(math.Inf(-1)), Quality: Uncertain},
				{Signal: "max", Value: Number(math.MaxFloat64), Unit: "°C"},
				{Signal: "t", Value: Bool(true), Quality: Good},
				{Signal: "f", Value: Bool(false), Quality: Good},
				{Signal: "s", Value: String("网格警立方 ok"), Quality: Good},
				{Signal: "empty string", Value: String(""), Quality: Good},
				{Signal: "none", Quality: Bad},
				{Signal: "odd quality", Value: Number(1), Quality: "stale"},
			},
		}},
		{name: "event with details", in: Message{
			Station: "sp-1", StationType: SafetyPost, Device: "btn", DeviceKind: "panic_button", Seq: 9,
			Time: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Kind: KindEvent,
			Event: &Event{Kind: EventPanic, Severity: Critical, Details: map[string]string{"zone": "reception", "b": "", "": "empty key"}},
		}},
		{name: "event with nil details", in: Message{Kind: KindEvent, Event: &Event{Kind: "custom", Severity: "urgent"}}},
		{name: "event with empty details", in: Message{Kind: KindEvent, Event: &Event{Kind: EventDoor, Severity: Info, Details: map[string]string{}}}},
		{name: "health with counters", in: Message{
			Station: "gs-3", StationType: GridStation, Device: "ups", DeviceKind: "ups", Seq: 1,
			Time: time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC), Kind: KindHealth,
			Health: &Health{State: Degraded, Reason: "timeouts", Counters: map[string]uint64{"timeouts": 3, "ok": math.MaxUint64, "crc": 0}},
		}},
		{name: "health with nil counters and unknown state", in: Message{Kind: KindHealth, Health: &Health{State: "booting"}}},
		{name: "result", in: Message{Station: "sp-1", Device: "siren", Seq: 4, Kind: KindResult,
			Result: &Result{ID: "c-1", Action: "siren_on", Status: ResultFailed, Reason: "timeout"}}},
		{name: "result with unknown status", in: Message{Kind: KindResult, Result: &Result{ID: "c-2", Status: "later"}}},
		{name: "unknown kind and station type", in: Message{Kind: "future", StationType: "moon_base"}},
		{name: "time far in the past and future", in: Message{Time: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC), Readings: []Reading{{Signal: "x", Value: Number(1)}}}},
		{name: "time in another zone comes back in UTC",
			in:   Message{Time: time.Date(2026, 5, 1, 12, 0, 0, 42, cet)},
			want: Message{Time: time.Date(2026, 5, 1, 11, 0, 0, 42, time.UTC)}},
		{name: "monotonic reading is dropped",
			in:   Message{Time: time.Unix(1700000000, 5).UTC().Add(0)},
			want: Message{Time: time.Unix(1700000000, 5).UTC()}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want := c.want
			if reflect.ValueOf(want).IsZero() {
				want = c.in
			}
			b := AppendBinary([]byte("prefix"), &c.in)
			if !bytes.HasPrefix(b, []byte("prefix")) || b[6] != BinaryVersion {
				t.Fatalf("AppendBinary did not append after dst, version byte first: % x", b[:8])
			}
			got, err := DecodeBinary(b[6:])
			if err != nil {
				t.Fatalf("DecodeBinary: %v", err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("round trip differs\n got  %#v\n want %#v", got, want)
			}
			// The encoding is canonical: the decoded message encodes the same.
			if b2 := AppendBinary(nil, &got); !bytes.Equal(b2, b[6:]) {
				t.Fatalf("re-encoding differs:\n % x\n % x", b2, b[6:])
			}
		})
	}
}

func TestBinaryNaNKeepsItsBits(t *testing.T) {
	for _, bits := range []uint64{0x7ff8000000000001, 0xfff0000000000abc, math.Float64bits(math.NaN())} {
		m := Message{Readings: []Reading{{Signal: "x", Value: Number(math.Float64frombits(bits))}}}
		got, err := DecodeBinary(AppendBinary(nil, &m))
		if err != nil {
			t.Fatal(err)
		}
		f, ok := got.Readings[0].Value.Float()
		if !ok || math.Float64bits(f) != bits {
			t.Errorf("NaN %#x came back as %#x (number %v)", bits, math.Float64bits(f), ok)
		}
	}
}

func TestBinaryMalformed(t *testing.T) {
	good := AppendBinary(nil, telemetry8())
	event := AppendBinary(nil, &Message{Event: &Event{Kind: "k", Details: map[string]string{"a": "1", "b": "2"}}})
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "binary message: empty"},
		{"unknown version", []byte{2, 0}, "binary message: unknown version 2"},
		{"unknown flags", []byte{1, 0x20}, "binary message: unknown flags 0x20"},
		{"version only", []byte{1}, "binary message: at byte 1: truncated"},
		{"truncated in the middle", good[:40], "binary message: at byte 40: truncated"},
		{"trailing byte", append(append([]byte{}, good...), 0), fmt.Sprintf("binary message: at byte %d: 1 trailing bytes", len(good))},
		{"lying string length", []byte{1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}, "binary message: at byte 7: truncated"},
		{"lying reading count", []byte{1, flagReadings, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0},
			"binary message: at byte 15: count 4294967295 exceeds the 3 bytes left"},
		{"lying map count", []byte{1, flagEvent, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0x80, 0x80, 0x04, 0, 0},
			"binary message: at byte 15: map of 65535 entries exceeds the 2 bytes left"},
		{"varint too long", []byte{1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f},
			"binary message: at byte 16: varint overflows 64 bits"},
		{"nanoseconds out of range", []byte{1, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03, 1},
			"binary message: at byte 13: nanoseconds 1000000000 out of range"},
		{"unknown enum code", []byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 9}, "binary message: at byte 10: unknown code 9"},
		{"unknown value tag", []byte{1, flagReadings, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 'x', 7, 0, 0},
			"binary message: at byte 14: unknown value tag 7"},
		{"duplicate map key", bytes.Replace(event, []byte{1, 'b'}, []byte{1, 'a'}, 1), `binary message: at byte 27: map key "a" out of order`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, err := DecodeBinary(c.in)
			if err == nil {
				t.Fatalf("no error; decoded %#v", m)
			}
			if err.Error() != c.want {
				t.Fatalf("error %q, want %q", err, c.want)
			}
			if !reflect.ValueOf(m).IsZero() {
				t.Errorf("a failed decode returned a non-zero message: %#v", m)
			}
		})
	}
}

// Every proper prefix of a valid encoding is an error.
func TestBinaryEveryPrefixFails(t *testing.T) {
	msgs := []*Message{telemetry8(), {Kind: KindHealth, Health: &Health{State: Offline, Reason: "lost", Counters: map[string]uint64{"x": 1 << 40}}}}
	for _, m := range msgs {
		b := AppendBinary(nil, m)
		for n := 0; n < len(b); n++ {
			if _, err := DecodeBinary(b[:n]); err == nil {
				t.Errorf("%s: prefix of %d of %d bytes decoded without error", m.Kind, n, len(b))
			}
		}
	}
}

// TestDecodeBinaryToReuses: messages decoded one after another into the
// same Message are each as DecodeBinary gives it, and a telemetry message
// takes its readings in the array of the one before.
func TestDecodeBinaryToReuses(t *testing.T) {
	short := telemetry8()
	short.Seq, short.Readings = 7, short.Readings[5:]
	health := &Message{Device: "pm-1", Kind: KindHealth, Health: &Health{State: Online, Counters: map[string]uint64{"polls": 3}}}
	var m Message
	var array *Reading
	for i, want := range []*Message{telemetry8(), short, health, {Kind: KindTelemetry, Readings: []Reading{}}, telemetry8()} {
		if err := DecodeBinaryTo(&m, AppendBinary(nil, want)); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if !reflect.DeepEqual(&m, want) {
			t.Fatalf("message %d decoded\n got  %#v\n want %#v", i, m, *want)
		}
		switch {
		case i == 0:
			array = &m.Readings[0]
		case i == 1 && &m.Readings[0] != array:
			t.Error("the second telemetry message did not reuse the first one's readings")
		}
	}
	if err := DecodeBinaryTo(&m, []byte{BinaryVersion, 0xff}); err == nil || !reflect.DeepEqual(m, Message{}) {
		t.Errorf("malformed input: err %v, message %#v; want an error and the zero Message", err, m)
	}
}

func FuzzDecodeBinary(f *testing.F) {
	f.Add(AppendBinary(nil, telemetry8()))
	f.Add(AppendBinary(nil, &Message{Kind: KindEvent, Event: &Event{Kind: EventPanic, Severity: Critical, Details: map[string]string{"a": "b"}}}))
	f.Add(AppendBinary(nil, &Message{Kind: KindHealth, Health: &Health{State: Online, Counters: map[string]uint64{"n": 7}}}))
	f.Add(AppendBinary(nil, &Message{Readings: []Reading{{Signal: "s", Value: String("v"), Quality: "q"}, {Value: Bool(true)}}}))
	f.Add([]byte{1})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeBinary(b)
		if err != nil {
			return
		}
		// Whatever decodes, re-encodes to something that decodes the same.
		b2 := AppendBinary(nil, &m)
		m2, err := DecodeBinary(b2)
		if err != nil {
			t.Fatalf("re-encoded message fails to decode: %v", err)
		}
		if b3 := AppendBinary(nil, &m2); !bytes.Equal(b2, b3) {
			t.Fatalf("encoding not stable:\n % x\n % x", b2, b3)
		}
		if len(m.Readings) > len(b) {
			t.Fatalf("%d readings from %d bytes", len(m.Readings), len(b))
		}
		// Into a message that held another, it decodes the same.
		reused := *telemetry8()
		reused.Health = &Health{Reason: "stale"}
		// (Compared encoded: a NaN is not equal to itself.)
		if err := DecodeBinaryTo(&reused, b); err != nil || !bytes.Equal(AppendBinary(nil, &reused), b2) {
			t.Fatalf("DecodeBinaryTo into a used message: %v\n got  %#v\n want %#v", err, reused, m)
		}
	})
}

func BenchmarkBinary(b *testing.B) {
	m := telemetry8()
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendBinary(buf[:0], m)
		if _, err := DecodeBinary(buf); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(buf)), "bytes/msg")
}
