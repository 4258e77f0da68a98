package mqtt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// This file is the device's encoding, pure: the JSON objects it publishes,
// built from its template, and the commands it reads. It shares the
// templates with the gateway, not the gateway's code.

// stamp is a device's own time of a message: RFC 3339 in UTC, with
// milliseconds.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z07:00") }

// object is a JSON object that keeps its fields in the order they were
// set; a dotted path sets a field of a nested object.
type object struct {
	keys []string
	vals map[string]any // a leaf json encodes, or an *object
}

// set puts v at a dotted path, making the objects on the way.
func (o *object) set(path string, v any) {
	levels := cfg.Path(path)
	for _, k := range levels[:len(levels)-1] {
		next, ok := o.vals[k].(*object)
		if !ok {
			next = &object{}
			o.put(k, next)
		}
		o = next
	}
	o.put(levels[len(levels)-1], v)
}

func (o *object) put(k string, v any) {
	if o.vals == nil {
		o.vals = map[string]any{}
	}
	if _, ok := o.vals[k]; !ok {
		o.keys = append(o.keys, k)
	}
	o.vals[k] = v
}

// MarshalJSON writes the fields in order, without HTML escapes.
func (o *object) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, k := range o.keys {
		if i > 0 {
			b.WriteByte(',')
		}
		if err := encode(&b, k); err != nil {
			return nil, err
		}
		b.WriteByte(':')
		if err := encode(&b, o.vals[k]); err != nil {
			return nil, fmt.Errorf("%s: %w", k, err)
		}
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func encode(b *bytes.Buffer, v any) error {
	enc := json.NewEncoder(b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	b.Truncate(b.Len() - 1) // Encode's newline
	return nil
}

// bytes is the object's JSON.
func (o *object) bytes() ([]byte, error) { return o.MarshalJSON() }

// newObject starts a message's object with the device's time at the
// message's time path, if it has one.
func newObject(m *cfg.Message, at time.Time) *object {
	o := &object{}
	if m.Time != "" {
		o.set(m.Time, stamp(at))
	}
	return o
}

// raw is the number a device sends for a signal's value: what the gateway
// turns back into the value with the signal's scale and offset, to two
// decimals; served is the value the gateway then decodes.
func raw(v *cfg.Value, value float64) (sent, served float64) {
	scale := v.Scale
	if scale == 0 {
		scale = 1
	}
	sent = math.Round((value-v.Offset)/scale*100) / 100
	return sent, sent*scale + v.Offset
}

// telemetryPayload builds a message of signals with their values at a
// time (values by signal name; a signal without one is left out). It
// returns the readings the gateway decodes from it.
func telemetryPayload(m *cfg.Message, at time.Time, values map[string]signal.Value) ([]byte, []sim.Reading, error) {
	o, rs, err := telemetryObject(m, at, values)
	if err != nil {
		return nil, nil, err
	}
	b, err := o.bytes()
	return b, rs, err
}

// telemetryObject is telemetryPayload's object, before it is written.
func telemetryObject(m *cfg.Message, at time.Time, values map[string]signal.Value) (*object, []sim.Reading, error) {
	o := newObject(m, at)
	var rs []sim.Reading
	for i := range m.Signals {
		v := &m.Signals[i]
		val, ok := values[v.Signal]
		if !ok {
			continue
		}
		var served signal.Value
		switch v.Type {
		case configs.Bool:
			o.set(v.Path, val.Truth())
			served = signal.B(val.Truth())
		case configs.Text:
			s := val.Text
			if val.Kind != signal.Text {
				s = val.String()
			}
			o.set(v.Path, s)
			served = signal.Str(s)
		default:
			f := val.Float()
			if math.IsNaN(f) || math.IsInf(f, 0) {
				return nil, nil, fmt.Errorf("signal %s: value %v has no JSON form", v.Signal, f)
			}
			sent, back := raw(v, f)
			o.set(v.Path, sent)
			served = signal.Num(back)
		}
		rs = append(rs, sim.Reading{Signal: v.Signal, Value: served})
	}
	return o, rs, nil
}

// eventPayload builds an event message: its state, when the event has a
// state path and state is not empty, and its details by name, each
// checked against the template (type, length, choices). A detail the
// template does not name, or a required one missing, is an error.
func eventPayload(m *cfg.Message, at time.Time, state string, details map[string]string) ([]byte, error) {
	e := m.Event
	if e == nil {
		return nil, fmt.Errorf("message %s is not an event", m.Name)
	}
	o := newObject(m, at)
	if e.State != "" && state != "" {
		o.set(e.State, state)
	}
	for k := range details {
		if !slices.ContainsFunc(e.Details, func(d cfg.Detail) bool { return d.Name == k }) {
			return nil, fmt.Errorf("%s has no detail %s (it has %s)", m.Name, k, detailNames(e))
		}
	}
	for i := range e.Details {
		d := &e.Details[i]
		s, ok := details[d.Name]
		if !ok {
			if d.Required {
				return nil, fmt.Errorf("%s needs %s", m.Name, d.Name)
			}
			continue
		}
		v, err := typed(&d.Field, s)
		if err != nil {
			return nil, err
		}
		if _, err := d.Value(v); err != nil {
			return nil, err
		}
		o.set(d.Where(), v)
	}
	return o.bytes()
}

func detailNames(e *cfg.Event) string {
	names := make([]string, len(e.Details))
	for i, d := range e.Details {
		names[i] = d.Name
	}
	return strings.Join(names, ", ")
}

// typed is a text as the JSON value of a field of its type.
func typed(f *configs.Field, s string) (any, error) {
	switch f.Type {
	case configs.Number:
		n, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: want a number", f.Name, s)
		}
		return n, nil
	case configs.Bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return nil, fmt.Errorf("%s=%q: want true or false", f.Name, s)
		}
		return b, nil
	}
	return s, nil
}

// Firmware is what a simulated device says its firmware is.
const Firmware = "outpost-firmware-sim 1"

// heartbeatPayload builds the heartbeat: the time, and the uptime in
// whole seconds and the firmware version where the message allows them.
func heartbeatPayload(m *cfg.Message, at time.Time, uptime time.Duration) ([]byte, error) {
	o := newObject(m, at)
	if slices.Contains(m.Allow, "uptime_s") {
		o.set("uptime_s", int64(uptime/time.Second))
	}
	if slices.Contains(m.Allow, "fw_version") {
		o.set("fw_version", Firmware)
	}
	return o.bytes()
}

// command is a command from the gateway, as a device reads it.
type command struct {
	ID     string
	Action string
	// Args are the arguments, each checked against the action's, as
	// text.
	Args map[string]string
	// Sent is the command's own time, when it has one.
	Sent time.Time
}

// errNoID is a command a device cannot answer: it has no id.
var errNoID = errors.New("not a command: no id")

// parseCommand reads a command and checks it against the actions the
// template offers. A payload without an id returns errNoID (wrapped): it
// cannot be answered. Any other error is the reason of a failed answer,
// with the command as far as it was read.
func parseCommand(payload []byte, actions []configs.Action) (command, error) {
	var in struct {
		ID     any            `json:"id"`
		Action any            `json:"action"`
		Args   map[string]any `json:"args"`
		TS     any            `json:"ts"`
	}
	if err := json.Unmarshal(payload, &in); err != nil {
		return command{}, fmt.Errorf("%w (%v)", errNoID, err)
	}
	id, _ := in.ID.(string)
	if id == "" {
		return command{}, errNoID
	}
	c := command{ID: id, Args: map[string]string{}}
	if s, ok := in.TS.(string); ok {
		c.Sent, _ = time.Parse(time.RFC3339Nano, s)
	}
	c.Action, _ = in.Action.(string)
	i := slices.IndexFunc(actions, func(a configs.Action) bool { return a.Name == c.Action })
	if i < 0 {
		names := make([]string, len(actions))
		for j, a := range actions {
			names[j] = a.Name
		}
		return c, fmt.Errorf("unknown action %q (the device takes: %s)", c.Action, strings.Join(names, ", "))
	}
	a := &actions[i]
	for k := range in.Args {
		if !slices.ContainsFunc(a.Args, func(f configs.Field) bool { return f.Name == k }) {
			return c, fmt.Errorf("%s takes no argument %s", a.Name, k)
		}
	}
	for j := range a.Args {
		f := &a.Args[j]
		v, ok := in.Args[f.Name]
		if !ok || v == nil {
			if f.Required {
				return c, fmt.Errorf("%s needs argument %s", a.Name, f.Name)
			}
			continue
		}
		s, err := f.Value(v)
		if err != nil {
			return c, err
		}
		c.Args[f.Name] = s
	}
	return c, nil
}

// ackPayload is a device's answer to a command: ok, or failed with the
// reason when err is set.
func ackPayload(id string, err error) []byte {
	o := &object{}
	o.set("id", id)
	if err == nil {
		o.set("status", "ok")
	} else {
		o.set("status", "failed")
		o.set("reason", err.Error())
	}
	b, _ := o.bytes() // strings only: it cannot fail
	return b
}

// simRaised is an alarm a device raised at a time.
func simRaised(device, kind, state string, at time.Time) sim.Raised {
	return sim.Raised{Device: device, Kind: kind, State: state, At: at.UTC(), Source: Source}
}

// oversizePayload is a telemetry-like object of exactly n bytes, padded;
// or n bytes of 'x' when n is too small for the object.
func oversizePayload(at time.Time, n int) []byte {
	head := `{"ts":"` + stamp(at) + `","pad":"`
	if n < len(head)+2 {
		return bytes.Repeat([]byte("x"), n)
	}
	b := make([]byte, 0, n)
	b = append(b, head...)
	b = append(b, bytes.Repeat([]byte("x"), n-len(head)-2)...)
	return append(b, '"', '}')
}

// badMessage is a message that breaks the template on purpose.
type badMessage struct {
	message string // below the device's topic
	what    string // how it is wrong
	payload []byte
}

// malformedPayloads are one message of each way to break the template:
// not JSON, a field of the wrong type, a field the template does not
// name, a required field missing (when the template has one). fresh
// makes a valid object of the telemetry message tele.
func malformedPayloads(t *cfg.Template, tele *cfg.Message, at time.Time, fresh func() (*object, error)) ([]badMessage, error) {
	var out []badMessage
	add := func(message, what string, o *object) error {
		b, err := o.bytes()
		if err != nil {
			return err
		}
		out = append(out, badMessage{message, what, b})
		return nil
	}
	o, err := fresh()
	if err != nil {
		return nil, err
	}
	b, err := o.bytes()
	if err != nil {
		return nil, err
	}
	out = append(out, badMessage{tele.Name, "not JSON", b[:len(b)-1]})
	if len(tele.Signals) > 0 {
		if o, err = fresh(); err != nil {
			return nil, err
		}
		v := &tele.Signals[0]
		for i := range tele.Signals {
			if tele.Signals[i].Type == configs.Number {
				v = &tele.Signals[i]
				break
			}
		}
		wrong := map[configs.ValueType]any{configs.Number: "warm", configs.Bool: "yes", configs.Text: 12}[v.Type]
		if wrong == nil {
			wrong = "warm"
		}
		o.set(v.Path, wrong)
		if err := add(tele.Name, "wrong type", o); err != nil {
			return nil, err
		}
	}
	if o, err = fresh(); err != nil {
		return nil, err
	}
	o.set("unknown_field", true)
	if err := add(tele.Name, "unknown field", o); err != nil {
		return nil, err
	}
	for i := range t.Messages {
		m := &t.Messages[i]
		required := slices.ContainsFunc(m.Signals, func(v cfg.Value) bool { return v.Required })
		if m.Event != nil {
			required = required || slices.ContainsFunc(m.Event.Details, func(d cfg.Detail) bool { return d.Required })
		}
		if !required {
			continue
		}
		o := newObject(m, at)
		if m.Event != nil && m.Event.State != "" {
			o.set(m.Event.State, "active")
		}
		if err := add(m.Name, "required field missing", o); err != nil {
			return nil, err
		}
		break
	}
	return out, nil
}
