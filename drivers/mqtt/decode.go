package mqtt

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/gateway/model"
)

// Reasons a device's message is refused: each is a health counter of the
// device, and the start of the error that says what was wrong.
const (
	BadJSON      = "bad_json"      // not a JSON object
	BadField     = "bad_field"     // a field of the wrong type, out of range, too long, not one of its values
	UnknownField = "unknown_field" // a field the template does not name
	MissingField = "missing_field" // a required field is not there
	UnknownTopic = "unknown_topic" // a message the template does not have
	Oversize     = "oversize"      // over the link's max_payload
	RateLimited  = "rate_limited"  // faster than the device's rate
	Refused      = "refused_topic" // a topic that is not the device's own: it spoke for another
	AuthFailed   = "auth_failed"   // a wrong password
)

// CleanSession counts a device's connections with a clean session (or,
// in MQTT 5, a clean start or no session kept): its MQTT client then drops
// a message the broker had not acknowledged when the connection broke.
// The device is degraded with the reason, as for a message refused.
const CleanSession = "clean_session"

// Refusal is why a message was refused: a Reason (the counter) and the
// detail in words.
type Refusal struct {
	Reason string
	Detail string
}

func (r *Refusal) Error() string { return r.Reason + ": " + r.Detail }

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{reason, fmt.Sprintf(format, args...)}
}

// skew is how far a device's own time may be from the gateway's before
// the gateway's time of arrival stands in for it.
const skew = 24 * time.Hour

// Decoded is what one message of a device carries.
type Decoded struct {
	// Time is the device's time of the message, or the time of arrival.
	Time time.Time
	// Readings are the message's signals (those it carried).
	Readings []model.Reading
	// Event is set for a message that is an event.
	Event *model.Event
}

// Decode maps the JSON payload of a device's message (its name is the
// topic below the device's own) to the normalized model, as the template
// says. It is pure: now is the time of arrival, location the device's own
// for an event's location detail it leaves out. Every way a payload can
// be wrong is a *Refusal.
func Decode(t *cfg.Template, name string, payload []byte, now time.Time, location string) (Decoded, error) {
	m := t.Message(name)
	if m == nil {
		names := make([]string, len(t.Messages))
		for i := range t.Messages {
			names[i] = t.Messages[i].Name
		}
		return Decoded{}, refuse(UnknownTopic, "no message %q in the template (its messages: %s)", name, strings.Join(names, ", "))
	}
	if !utf8.Valid(payload) {
		// encoding/json would read it, with U+FFFD for what is not UTF-8.
		return Decoded{}, refuse(BadJSON, "%s: not UTF-8", name)
	}
	var obj map[string]any
	if err := json.Unmarshal(payload, &obj); err != nil || obj == nil {
		if err == nil {
			err = errors.New("null")
		}
		return Decoded{}, refuse(BadJSON, "%s: not a JSON object: %v", name, strings.TrimPrefix(err.Error(), "json: "))
	}
	f := fields{obj: obj, used: map[string]bool{}}
	out := Decoded{Time: now}
	if m.Time != "" {
		if v, ok := f.get(m.Time); ok {
			s, isStr := v.(string)
			ts, err := time.Parse(time.RFC3339Nano, s)
			if !isStr || err != nil {
				return Decoded{}, refuse(BadField, "%s: %s must be a time in RFC 3339 (2026-11-30T08:00:00.000Z)", name, m.Time)
			}
			if d := ts.Sub(now); d < skew && d > -skew {
				out.Time = ts.UTC()
			}
		}
	}
	for i := range m.Signals {
		r, err := f.reading(&m.Signals[i])
		if err != nil {
			return Decoded{}, refuse(err.Reason, "%s: %s", name, err.Detail)
		}
		if r != nil {
			out.Readings = append(out.Readings, *r)
		}
	}
	if e := m.Event; e != nil {
		ev, err := f.event(e, location)
		if err != nil {
			return Decoded{}, refuse(err.Reason, "%s: %s", name, err.Detail)
		}
		out.Event = ev
	}
	for _, a := range m.Allow {
		f.allow(a)
	}
	if extra := f.unused(); len(extra) > 0 {
		return Decoded{}, refuse(UnknownField, "%s: field %s is not in the template", name, strings.Join(extra, ", "))
	}
	return out, nil
}

// fields is a payload's object and the paths the template took from it.
type fields struct {
	obj  map[string]any
	used map[string]bool
}

// get returns the value at a dotted path; ok is false when it is not
// there (or null).
func (f *fields) get(path string) (any, bool) {
	f.used[path] = true
	var cur any = f.obj
	for _, k := range cfg.Path(path) {
		o, isObj := cur.(map[string]any)
		if !isObj {
			return nil, false
		}
		if cur, isObj = o[k]; !isObj {
			return nil, false
		}
	}
	return cur, cur != nil
}

// allow marks a path, and all below it, as expected.
func (f *fields) allow(path string) { f.used[path] = true }

// unused lists the payload's leaves no path took, sorted.
func (f *fields) unused() []string {
	var out []string
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		if f.used[prefix] {
			return
		}
		o, isObj := v.(map[string]any)
		if !isObj || len(o) == 0 {
			if prefix != "" {
				out = append(out, prefix)
			}
			return
		}
		for _, k := range slices.Sorted(maps.Keys(o)) {
			p := k
			if prefix != "" {
				p = prefix + "." + k
			}
			walk(p, o[k])
		}
	}
	walk("", f.obj)
	return out
}

// reading maps one field to a signal; nil when an optional field is not
// there.
func (f *fields) reading(v *cfg.Value) (*model.Reading, *Refusal) {
	raw, ok := f.get(v.Path)
	if !ok {
		if v.Required {
			return nil, refuse(MissingField, "%s (signal %s) is missing", v.Path, v.Signal)
		}
		return nil, nil
	}
	r := model.Reading{Signal: v.Signal, Unit: v.Unit, Quality: model.Good}
	switch v.Type {
	case configs.Bool:
		b, isBool := raw.(bool)
		if !isBool {
			return nil, refuse(BadField, "%s (signal %s) must be true or false, not %v", v.Path, v.Signal, raw)
		}
		r.Value = model.Bool(b)
	case configs.Text:
		s, isStr := raw.(string)
		if !isStr || len(s) > 256 {
			return nil, refuse(BadField, "%s (signal %s) must be a string of at most 256 bytes", v.Path, v.Signal)
		}
		r.Value = model.String(s)
	default:
		n, isNum := raw.(float64)
		if !isNum {
			return nil, refuse(BadField, "%s (signal %s) must be a number, not %v", v.Path, v.Signal, raw)
		}
		n = n*v.Scale + v.Offset
		r.Value = model.Number(n)
		if v.Range != nil && !v.Range.Contains(n) {
			r.Quality = model.Uncertain // a failing sensor, or a wrong template
		}
	}
	return &r, nil
}

// event reads a message's event: its state (active unless the template
// says where the payload says it) and details.
func (f *fields) event(e *cfg.Event, location string) (*model.Event, *Refusal) {
	ev := &model.Event{Kind: e.Kind, Severity: e.Severity, Details: map[string]string{"state": "active"}}
	if e.State != "" {
		raw, ok := f.get(e.State)
		s, _ := raw.(string)
		switch {
		case !ok:
			return nil, refuse(MissingField, "%s (the event's state: active or cleared) is missing", e.State)
		case s == "cleared":
			ev.Severity, ev.Details["state"] = model.Info, "cleared"
		case s != "active":
			return nil, refuse(BadField, "%s must be \"active\" or \"cleared\", not %v", e.State, raw)
		}
	}
	for i := range e.Details {
		d := &e.Details[i]
		raw, ok := f.get(d.Where())
		if !ok {
			switch {
			case d.Name == "location" && location != "":
				ev.Details["location"] = location
			case d.Required:
				return nil, refuse(MissingField, "%s is missing", d.Where())
			}
			continue
		}
		s, err := d.Value(raw)
		if err != nil {
			return nil, refuse(BadField, "%v", err)
		}
		ev.Details[d.Name] = s
	}
	return ev, nil
}
