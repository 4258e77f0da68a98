package mqtt

import (
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"

	cfg "outpost/configs/mqtt"
)

// FuzzDecode feeds payloads to every message of the kiosk template: no
// panic, and what is taken is a whole JSON object whose readings are the
// template's signals and whose details are valid UTF-8 within their
// lengths.
func FuzzDecode(f *testing.F) {
	st := station(&testing.T{}, "")
	tmpl := st.Templates["outpost-kiosk"].Body.(*cfg.Template)
	for _, s := range []string{
		`{"ts":"2026-11-30T08:00:00Z","enclosure":{"temp_c":23.5,"rh_pct":40},"door":{"open":true,"tamper":false},"printer":{"paper_ok":true}}`,
		`{"ts":"2026-11-30T08:00:00Z","ticket":"K1-1","category":"fire","text":"烟","location":"x","session_id":"s"}`,
		`{"ts":"2026-11-30T08:00:00Z","state":"active","call_id":"c","button":"front"}`,
		`{"ts":"2026-11-30T08:00:00Z","state":"cleared","part":"printer","code":"E1","text":"paper out"}`,
		`{"uptime_s":5,"fw_version":"1.2"}`, `[]`, `null`, `{"a":{"b":{"c":1}}}`, `{"enclosure":null}`,
	} {
		for i := range tmpl.Messages {
			f.Add(tmpl.Messages[i].Name, []byte(s))
		}
	}
	now := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, name string, payload []byte) {
		dec, err := Decode(tmpl, name, payload, now, "here")
		if err != nil {
			if _, ok := err.(*Refusal); !ok {
				t.Fatalf("error %T %v, want a *Refusal", err, err)
			}
			return
		}
		var obj map[string]any
		if json.Unmarshal(payload, &obj) != nil || obj == nil || !utf8.Valid(payload) {
			t.Fatalf("took %q, which is not a JSON object in UTF-8", payload)
		}
		m := tmpl.Message(name)
		for _, r := range dec.Readings {
			found := false
			for _, v := range m.Signals {
				found = found || v.Signal == r.Signal
			}
			if !found {
				t.Fatalf("reading %s is no signal of message %s", r.Signal, name)
			}
		}
		if dec.Event != nil {
			for k, v := range dec.Event.Details {
				if !utf8.ValidString(v) || len(v) > 600 && k != "location" {
					t.Fatalf("detail %s = %q", k, v)
				}
			}
		}
		if d := dec.Time.Sub(now); d > skew || d < -skew {
			t.Fatalf("time %v is further than %v from the arrival", dec.Time, skew)
		}
	})
}
