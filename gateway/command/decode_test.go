package command

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model"
)

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		want    Command
		wantErr string
	}{
		{"named action", `{"v":1,"id":"c-1","action":"siren_on","ts":"2026-11-29T08:00:00Z","ttl":30}`,
			Command{ID: "c-1", Device: "siren-1", Action: "siren_on", Sent: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), TTL: 30 * time.Second}, ""},
		{"lasting action for less, default ttl", `{"v":1,"id":"c-2","action":"siren_on","args":{"for":12.5},"ts":"2026-11-29T16:00:00+08:00"}`,
			Command{ID: "c-2", Device: "siren-1", Action: "siren_on", For: 12500 * time.Millisecond, Sent: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), TTL: DefaultTTL}, ""},
		{"set a bool", `{"v":1,"id":"c-3","action":"set","args":{"signal":"led","value":true},"ts":"2026-11-29T08:00:00Z"}`,
			Command{ID: "c-3", Device: "siren-1", Action: "set", Signal: "led", Value: model.Bool(true), Sent: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), TTL: DefaultTTL}, ""},
		{"set a number, ttl capped", `{"v":1,"id":"c-4","action":"set","args":{"signal":"volume","value":-2.5e1},"ts":"2026-11-29T08:00:00Z","ttl":86400}`,
			Command{ID: "c-4", Device: "siren-1", Action: "set", Signal: "volume", Value: model.Number(-25), Sent: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), TTL: time.Hour}, ""},
		{"unknown fields are ignored", `{"v":1,"id":"c-5","action":"ack","ts":"2026-11-29T08:00:00Z","operator":"desk 3"}`,
			Command{ID: "c-5", Device: "siren-1", Action: "ack", Sent: time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC), TTL: DefaultTTL}, ""},

		{"not JSON", `siren on!`, Command{Device: "siren-1"}, "malformed: not a JSON object"},
		{"trailing data", `{"v":1,"id":"c","action":"a","ts":"2026-11-29T08:00:00Z"} {}`, Command{ID: "c", Device: "siren-1", Action: "a"}, "malformed: data after the JSON object"},
		{"trailing garbage", `{"v":1,"id":"c","action":"a","ts":"2026-11-29T08:00:00Z"}A`, Command{ID: "c", Device: "siren-1", Action: "a"}, "malformed: data after the JSON object"},
		{"no version", `{"id":"c-6","action":"a","ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-6", Device: "siren-1", Action: "a"}, `malformed: missing "v"`},
		{"version 2", `{"v":2,"id":"c-6","action":"a","ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-6", Device: "siren-1", Action: "a"}, "malformed: version 2, this gateway speaks 1"},
		{"no id", `{"v":1,"action":"a","ts":"2026-11-29T08:00:00Z"}`, Command{Device: "siren-1", Action: "a"}, `malformed: missing "id"`},
		{"id with a control character", `{"v":1,"id":"a\u0000b","action":"a","ts":"2026-11-29T08:00:00Z"}`, Command{Device: "siren-1", Action: "a"}, "malformed: id must be 1 to 128 printable characters"},
		{"id too long", `{"v":1,"id":"` + strings.Repeat("x", 129) + `","action":"a","ts":"2026-11-29T08:00:00Z"}`, Command{Device: "siren-1", Action: "a"}, "malformed: id must be"},
		{"no action", `{"v":1,"id":"c-7","ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-7", Device: "siren-1"}, `malformed: missing "action"`},
		{"no ts", `{"v":1,"id":"c-8","action":"a"}`, Command{ID: "c-8", Device: "siren-1", Action: "a"}, `malformed: missing "ts"`},
		{"bad ts", `{"v":1,"id":"c-9","action":"a","ts":"yesterday"}`, Command{ID: "c-9", Device: "siren-1", Action: "a"}, `malformed: ts "yesterday" is not an RFC 3339 time`},
		{"ttl zero", `{"v":1,"id":"c-10","action":"a","ts":"2026-11-29T08:00:00Z","ttl":0}`, Command{ID: "c-10", Device: "siren-1", Action: "a"}, "malformed: ttl 0 is not a positive number of seconds"},
		{"ttl string", `{"v":1,"id":"c-10","action":"a","ts":"2026-11-29T08:00:00Z","ttl":"30s"}`, Command{ID: "c-10", Device: "siren-1", Action: "a"}, `malformed: ttl "30s" is not a positive number of seconds`},
		{"set without value", `{"v":1,"id":"c-11","action":"set","args":{"signal":"led"},"ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-11", Device: "siren-1", Action: "set"}, `malformed: set needs args {"signal": ..., "value": ...}`},
		{"set a string", `{"v":1,"id":"c-12","action":"set","args":{"signal":"led","value":"on"},"ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-12", Device: "siren-1", Action: "set", Signal: "led"}, `malformed: value "on" is not true, false or a number`},
		{"unknown argument of set", `{"v":1,"id":"c-13","action":"set","args":{"signal":"led","value":true,"volume":3},"ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-13", Device: "siren-1", Action: "set"}, `malformed: args: unknown field "volume" (expected signal, value, for)`},
		{"named action with a value", `{"v":1,"id":"c-14","action":"siren_on","args":{"value":true},"ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-14", Device: "siren-1", Action: "siren_on"}, "malformed: siren_on takes no signal or value (only set does)"},
		{"negative for", `{"v":1,"id":"c-15","action":"siren_on","args":{"for":-1},"ts":"2026-11-29T08:00:00Z"}`, Command{ID: "c-15", Device: "siren-1", Action: "siren_on"}, "malformed: for -1 is not a positive number of seconds"},
		{"too large", `{"v":1,"id":"c-16","action":"a","ts":"2026-11-29T08:00:00Z","pad":"` + strings.Repeat("x", MaxBytes) + `"}`, Command{Device: "siren-1"}, "malformed: the command is"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Decode("sp-0007", "siren-1", []byte(tt.payload), nil, time.Hour)
			if tt.wantErr != "" {
				var rej *Rejection
				if !errors.As(err, &rej) || !strings.HasPrefix(rej.Reason, tt.wantErr) {
					t.Fatalf("error %v, want a rejection starting %q", err, tt.wantErr)
				}
				if got.ID != tt.want.ID || got.Action != tt.want.Action {
					t.Errorf("rejected command carries id %q action %q, want %q %q (for its result)", got.ID, got.Action, tt.want.ID, tt.want.Action)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Decode:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestSignedCommands(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	cmd := []byte(`{"v":1,"id":"c-1","action":"set","args":{"signal":"led", "value":true},"ts":"2026-11-29T08:00:00Z","ttl":30}`)
	signed, err := Sign(key, "sp-0007", "btn-1", cmd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Decode("sp-0007", "btn-1", signed, key, time.Hour); err != nil {
		t.Fatalf("signed command refused: %v", err)
	}
	tamper := func(old, new string) []byte {
		b := strings.Replace(string(signed), old, new, 1)
		if b == string(signed) {
			t.Fatalf("replacement %q not in %s", old, signed)
		}
		return []byte(b)
	}
	for _, tt := range []struct {
		name, station, device string
		payload               []byte
		key                   []byte
		want                  string
	}{
		{"unsigned", "sp-0007", "btn-1", cmd, key, "unsigned: this station takes signed commands only (hmac)"},
		{"another station", "sp-0008", "btn-1", signed, key, "bad signature"},
		{"another device", "sp-0007", "btn-2", signed, key, "bad signature"},
		{"value changed", "sp-0007", "btn-1", tamper(`"value":true`, `"value":false`), key, "bad signature"},
		{"ttl changed", "sp-0007", "btn-1", tamper(`"ttl":30`, `"ttl":3000`), key, "bad signature"},
		{"ts changed", "sp-0007", "btn-1", tamper(`08:00:00Z`, `09:00:00Z`), key, "bad signature"},
		{"wrong key", "sp-0007", "btn-1", signed, []byte("another key of 16+ bytes"), "bad signature"},
		{"hmac not hex", "sp-0007", "btn-1", tamper(`"hmac":"`, `"hmac":"zz`), key, "bad signature"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decode(tt.station, tt.device, tt.payload, tt.key, time.Hour)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Errorf("error %v, want %q", err, tt.want)
			}
		})
	}
	// A station without a key takes signed and unsigned commands alike.
	for _, b := range [][]byte{cmd, signed} {
		if _, err := Decode("sp-0007", "btn-1", b, nil, time.Hour); err != nil {
			t.Errorf("station without a key refuses %s: %v", b, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	key := []byte("0123456789abcdef")
	for _, s := range []string{
		`{"v":1,"id":"c-1","action":"siren_on","ts":"2026-11-29T08:00:00Z","ttl":30}`,
		`{"v":1,"id":"c-3","action":"set","args":{"signal":"led","value":true},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c-4","action":"set","args":{"signal":"volume","value":1e400},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c-2","action":"siren_on","args":{"for":12.5},"ts":"2026-11-29T16:00:00+08:00","hmac":"00"}`,
		`{"v":1,"id":"c-2","action":"x","args":null,"ts":"2026-11-29T16:00:00Z","ttl":1e308}`,
		`[]`, `{"v":1}`, `{"args":{"for":"1"}}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, b []byte, signed bool) {
		var k []byte
		if signed {
			k = key
		}
		c, err := Decode("sp-1", "dev", b, k, time.Hour)
		if err != nil {
			var rej *Rejection
			if !errors.As(err, &rej) || rej.Reason == "" {
				t.Fatalf("error %v is not a rejection with a reason", err)
			}
			return
		}
		if c.ID == "" || c.Action == "" || c.TTL <= 0 || c.TTL > time.Hour || c.For < 0 {
			t.Fatalf("accepted an incomplete command %+v from %q", c, b)
		}
		if c.Action == ActionSet && (c.Signal == "" || c.Value.IsZero()) {
			t.Fatalf("accepted a set without signal or value %+v from %q", c, b)
		}
	})
}
