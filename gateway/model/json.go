package model

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
)

// The JSON form of a Message is the payload the hub receives (contract
// version ContractVersion, described in docs/hub-contract.md and checked by
// message.schema.json). Decisions worth knowing:
//
//   - "historical" appears only when true; absent means false.
//   - "unit" appears only when not empty; "details", "reason" and "counters"
//     only when not empty.
//   - A reading whose quality is bad has no "value", and a reading without a
//     value is bad: AppendJSON writes quality "bad" for a reading that has no
//     value, or whose number is NaN or ±Inf (JSON has no such numbers).
//   - Numbers are written in the shortest form that parses back to the same
//     float64 (strconv 'g', -1).
//   - Strings are valid UTF-8: invalid bytes become U+FFFD.
//   - "ts" is RFC 3339 in UTC with up to nanosecond digits (trailing zeros
//     of the fraction dropped).

// AppendJSON appends the JSON payload of m to dst and returns the extended
// slice. It does not allocate beyond growing dst and sorting map keys of
// events and health.
func AppendJSON(dst []byte, m *Message) []byte {
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, ContractVersion, 10)
	dst = append(dst, `,"station":`...)
	dst = appendString(dst, m.Station)
	dst = append(dst, `,"station_type":`...)
	dst = appendString(dst, string(m.StationType))
	dst = append(dst, `,"device":`...)
	dst = appendString(dst, m.Device)
	dst = append(dst, `,"device_kind":`...)
	dst = appendString(dst, m.DeviceKind)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, m.Seq, 10)
	dst = append(dst, `,"ts":"`...)
	dst = m.Time.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","kind":`...)
	dst = appendString(dst, string(m.Kind))
	if m.Historical {
		dst = append(dst, `,"historical":true`...)
	}
	switch m.Kind {
	case KindEvent:
		if m.Event != nil {
			dst = appendEvent(dst, m.Event)
		}
	case KindHealth:
		if m.Health != nil {
			dst = appendHealth(dst, m.Health)
		}
	case KindResult:
		if m.Result != nil {
			dst = appendResult(dst, m.Result)
		}
	default:
		dst = append(dst, `,"readings":[`...)
		for i := range m.Readings {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendReading(dst, &m.Readings[i])
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

func appendReading(dst []byte, r *Reading) []byte {
	dst = append(dst, `{"signal":`...)
	dst = appendString(dst, r.Signal)
	q := r.Quality
	if !HasValue(r) {
		q = Bad
	} else {
		switch r.Value.kind {
		case numValue:
			dst = append(dst, `,"value":`...)
			dst = strconv.AppendFloat(dst, r.Value.num, 'g', -1, 64)
		case boolValue:
			if r.Value.num != 0 {
				dst = append(dst, `,"value":true`...)
			} else {
				dst = append(dst, `,"value":false`...)
			}
		case strValue:
			dst = append(dst, `,"value":`...)
			dst = appendString(dst, r.Value.str)
		}
	}
	if r.Unit != "" {
		dst = append(dst, `,"unit":`...)
		dst = appendString(dst, r.Unit)
	}
	dst = append(dst, `,"quality":`...)
	dst = appendString(dst, string(q))
	return append(dst, '}')
}

// HasValue reports whether the reading carries a value on the wire: it has
// one, it is a finite number if a number, and its quality is not bad. A
// reading without a value is sent (and stored) as bad.
func HasValue(r *Reading) bool {
	if r.Quality == Bad || r.Value.kind == noValue {
		return false
	}
	if r.Value.kind == numValue && (math.IsNaN(r.Value.num) || math.IsInf(r.Value.num, 0)) {
		return false
	}
	return true
}

// WireQuality is the quality a reading has on the wire: Bad when it has no
// value (see HasValue), its own quality otherwise.
func WireQuality(r *Reading) Quality {
	if !HasValue(r) {
		return Bad
	}
	return r.Quality
}

func appendEvent(dst []byte, e *Event) []byte {
	dst = append(dst, `,"event":{"kind":`...)
	dst = appendString(dst, e.Kind)
	dst = append(dst, `,"severity":`...)
	dst = appendString(dst, string(e.Severity))
	if len(e.Details) > 0 {
		dst = append(dst, `,"details":`...)
		dst = AppendStringMap(dst, e.Details)
	}
	return append(dst, '}')
}

// AppendStringMap appends m as a JSON object with sorted keys. The InfluxDB
// mapping stores event details in this form.
func AppendStringMap(dst []byte, m map[string]string) []byte {
	dst = append(dst, '{')
	for i, k := range sortedKeys(m) {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, k)
		dst = append(dst, ':')
		dst = appendString(dst, m[k])
	}
	return append(dst, '}')
}

func appendHealth(dst []byte, h *Health) []byte {
	dst = append(dst, `,"health":{"state":`...)
	dst = appendString(dst, string(h.State))
	if h.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, h.Reason)
	}
	if len(h.Counters) > 0 {
		dst = append(dst, `,"counters":{`...)
		for i, k := range sortedKeys(h.Counters) {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, k)
			dst = append(dst, ':')
			dst = strconv.AppendUint(dst, h.Counters[k], 10)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func appendResult(dst []byte, r *Result) []byte {
	dst = append(dst, `,"result":{"id":`...)
	dst = appendString(dst, r.ID)
	if r.Action != "" {
		dst = append(dst, `,"action":`...)
		dst = appendString(dst, r.Action)
	}
	dst = append(dst, `,"status":`...)
	dst = appendString(dst, string(r.Status))
	if r.Reason != "" {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, r.Reason)
	}
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Control characters are escaped,
// invalid UTF-8 becomes U+FFFD, everything else is written as is.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// wire types for ParseJSON. Pointers tell absent from zero.
type wireMessage struct {
	V           *int           `json:"v"`
	Station     *string        `json:"station"`
	StationType *string        `json:"station_type"`
	Device      *string        `json:"device"`
	DeviceKind  *string        `json:"device_kind"`
	Seq         *uint64        `json:"seq"`
	TS          *string        `json:"ts"`
	Kind        *string        `json:"kind"`
	Historical  *bool          `json:"historical"`
	Readings    *[]wireReading `json:"readings"`
	Event       *wireEvent     `json:"event"`
	Health      *wireHealth    `json:"health"`
	Result      *wireResult    `json:"result"`
}

type wireResult struct {
	ID     *string `json:"id"`
	Action string  `json:"action"`
	Status *string `json:"status"`
	Reason string  `json:"reason"`
}

type wireReading struct {
	Signal  *string        `json:"signal"`
	Value   jsontext.Value `json:"value"`
	Unit    *string        `json:"unit"`
	Quality *string        `json:"quality"`
}

type wireEvent struct {
	Kind     *string           `json:"kind"`
	Severity *string           `json:"severity"`
	Details  map[string]string `json:"details"`
}

type wireHealth struct {
	State    *string           `json:"state"`
	Reason   *string           `json:"reason"`
	Counters map[string]uint64 `json:"counters"`
}

// ParseJSON decodes one JSON payload of the hub contract and checks it: the
// version, every required field, the kind and its body, qualities, states
// and severities. Unknown fields are ignored (a later minor revision may add
// optional ones); names match exactly, once each, and text is valid UTF-8,
// as AppendJSON writes it. Malformed input gives an error, never a panic.
//
// It decodes with github.com/go-json-experiment/json (the JSON v2 that Go
// 1.25 put behind an experiment), which takes 1.6 times less time than
// encoding/json on a telemetry payload (BenchmarkParseJSON): the testbench
// parses every message the hub gets with it, on the gateway's machine.
func ParseJSON(b []byte) (Message, error) {
	var w wireMessage
	if err := jsonv2.Unmarshal(b, &w); err != nil {
		return Message{}, fmt.Errorf("hub payload: %w", err)
	}
	if w.V == nil {
		return Message{}, errors.New(`hub payload: missing "v"`)
	}
	if *w.V != ContractVersion {
		return Message{}, fmt.Errorf("hub payload: version %d, want %d", *w.V, ContractVersion)
	}
	var m Message
	for _, f := range []struct {
		name string
		src  *string
		dst  *string
	}{
		{"station", w.Station, &m.Station},
		{"device", w.Device, &m.Device},
		{"device_kind", w.DeviceKind, &m.DeviceKind},
	} {
		if f.src == nil || *f.src == "" {
			return Message{}, fmt.Errorf("hub payload: missing %q", f.name)
		}
		if f.name != "device_kind" && strings.ContainsAny(*f.src, "/+#") {
			return Message{}, fmt.Errorf("hub payload: %s %q contains a topic character (/ + #)", f.name, *f.src)
		}
		*f.dst = *f.src
	}
	if w.StationType == nil {
		return Message{}, errors.New(`hub payload: missing "station_type"`)
	}
	m.StationType = StationType(*w.StationType)
	if !slices.Contains(StationTypes, m.StationType) {
		return Message{}, fmt.Errorf("hub payload: unknown station_type %q", *w.StationType)
	}
	if w.Seq == nil {
		return Message{}, errors.New(`hub payload: missing "seq"`)
	}
	m.Seq = *w.Seq
	if w.TS == nil {
		return Message{}, errors.New(`hub payload: missing "ts"`)
	}
	t, err := time.Parse(time.RFC3339Nano, *w.TS)
	if err != nil {
		return Message{}, fmt.Errorf("hub payload: ts: %w", err)
	}
	if !strings.HasSuffix(*w.TS, "Z") {
		return Message{}, fmt.Errorf("hub payload: ts %q is not UTC", *w.TS)
	}
	m.Time = t.UTC()
	if w.Historical != nil {
		m.Historical = *w.Historical
	}
	if w.Kind == nil {
		return Message{}, errors.New(`hub payload: missing "kind"`)
	}
	m.Kind = Kind(*w.Kind)
	// Exactly the kind's body: "readings", "event", "health" or "result".
	bodies := map[Kind]bool{KindTelemetry: w.Readings != nil, KindEvent: w.Event != nil,
		KindHealth: w.Health != nil, KindResult: w.Result != nil}
	body := map[Kind]string{KindTelemetry: "readings", KindEvent: "event", KindHealth: "health", KindResult: "result"}
	has, known := bodies[m.Kind]
	if !known {
		return Message{}, fmt.Errorf("hub payload: unknown kind %q", *w.Kind)
	}
	if !has {
		return Message{}, fmt.Errorf("hub payload: %s without %q", m.Kind, body[m.Kind])
	}
	for k, present := range bodies {
		if present && k != m.Kind {
			return Message{}, fmt.Errorf("hub payload: %s with %q", m.Kind, body[k])
		}
	}
	switch m.Kind {
	case KindTelemetry:
		m.Readings = make([]Reading, len(*w.Readings))
		for i := range *w.Readings {
			r, err := parseReading(&(*w.Readings)[i])
			if err != nil {
				return Message{}, fmt.Errorf("hub payload: reading %d: %w", i, err)
			}
			m.Readings[i] = r
		}
	case KindEvent:
		e, err := parseEvent(w.Event)
		if err != nil {
			return Message{}, fmt.Errorf("hub payload: event: %w", err)
		}
		m.Event = e
	case KindHealth:
		h, err := parseHealth(w.Health)
		if err != nil {
			return Message{}, fmt.Errorf("hub payload: health: %w", err)
		}
		m.Health = h
	case KindResult:
		r, err := parseResult(w.Result)
		if err != nil {
			return Message{}, fmt.Errorf("hub payload: result: %w", err)
		}
		m.Result = r
	}
	return m, nil
}

func parseReading(w *wireReading) (Reading, error) {
	var r Reading
	if w.Signal == nil || *w.Signal == "" {
		return r, errors.New(`missing "signal"`)
	}
	r.Signal = *w.Signal
	if w.Unit != nil {
		r.Unit = *w.Unit
	}
	if w.Quality == nil {
		return r, errors.New(`missing "quality"`)
	}
	r.Quality = Quality(*w.Quality)
	switch r.Quality {
	case Good, Uncertain, Bad:
	default:
		return r, fmt.Errorf("unknown quality %q", *w.Quality)
	}
	if w.Value == nil {
		if r.Quality != Bad {
			return r, fmt.Errorf("%s: no value but quality %s", r.Signal, r.Quality)
		}
		return r, nil
	}
	if r.Quality == Bad {
		return r, fmt.Errorf("%s: bad reading with a value", r.Signal)
	}
	v := w.Value
	switch {
	case v[0] == '"':
		var s string
		if err := jsonv2.Unmarshal(v, &s); err != nil {
			return r, fmt.Errorf("%s: value: %w", r.Signal, err)
		}
		r.Value = String(s)
	case string(v) == "true":
		r.Value = Bool(true)
	case string(v) == "false":
		r.Value = Bool(false)
	case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil {
			return r, fmt.Errorf("%s: value: %w", r.Signal, err)
		}
		r.Value = Number(f)
	default:
		return r, fmt.Errorf("%s: value %s is not a number, bool or string", r.Signal, v)
	}
	return r, nil
}

func parseEvent(w *wireEvent) (*Event, error) {
	if w.Kind == nil || *w.Kind == "" {
		return nil, errors.New(`missing "kind"`)
	}
	if w.Severity == nil {
		return nil, errors.New(`missing "severity"`)
	}
	e := &Event{Kind: *w.Kind, Severity: Severity(*w.Severity), Details: w.Details}
	switch e.Severity {
	case Info, Warning, Critical:
	default:
		return nil, fmt.Errorf("unknown severity %q", *w.Severity)
	}
	if len(e.Details) == 0 {
		e.Details = nil
	}
	return e, nil
}

func parseHealth(w *wireHealth) (*Health, error) {
	if w.State == nil {
		return nil, errors.New(`missing "state"`)
	}
	h := &Health{State: HealthState(*w.State), Counters: w.Counters}
	switch h.State {
	case Online, Degraded, Offline:
	default:
		return nil, fmt.Errorf("unknown state %q", *w.State)
	}
	if w.Reason != nil {
		h.Reason = *w.Reason
	}
	if len(h.Counters) == 0 {
		h.Counters = nil
	}
	return h, nil
}

func parseResult(w *wireResult) (*Result, error) {
	if w.ID == nil || *w.ID == "" {
		return nil, errors.New(`missing "id"`)
	}
	if w.Status == nil {
		return nil, errors.New(`missing "status"`)
	}
	r := &Result{ID: *w.ID, Action: w.Action, Status: ResultStatus(*w.Status), Reason: w.Reason}
	switch r.Status {
	case ResultOK, ResultRejected, ResultFailed:
	default:
		return nil, fmt.Errorf("unknown status %q", *w.Status)
	}
	return r, nil
}
