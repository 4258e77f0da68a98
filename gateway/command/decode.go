// Package command carries out the duty desk's commands: a command arrives
// from the hub's broker on {prefix}/{station}/{device}/command, is decoded
// and checked (Decode), remembered durably by its id (Store) so that it
// acts at most once whatever the broker redelivers, carried out through the
// device's driver (Desk), and answered with a result message on
// .../command/result. The wire format is the hub contract's
// (docs/hub-contract.md, gateway/model/schema/command.schema.json).
package command

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"outpost/gateway/model"
)

// Limits of a command.
const (
	// MaxBytes is the largest command payload taken.
	MaxBytes = 4096
	// MaxIDLen is the longest command id.
	MaxIDLen = 128
	// DefaultTTL is a command's time to live when it names none.
	DefaultTTL = time.Minute
	// Skew is how far in the future a command's ts may be: the clocks of
	// the duty desk and the station differ a little.
	Skew = 2 * time.Minute
	// ActionSet is the action every writable signal takes.
	ActionSet = "set"
)

// Command is one decoded command.
type Command struct {
	// ID identifies the command; its result carries it.
	ID string
	// Device is the device the command is for (from its topic).
	Device string
	// Action is "set" or one of the device template's actions.
	Action string
	// Signal and Value are the arguments of "set".
	Signal string
	Value  model.Value
	// For is how long a lasting action should last, when the command
	// asks for less than its template's.
	For time.Duration
	// Args are the arguments of an action a device takes as a message
	// (an MQTT device's), as JSON decoded them; the Desk checks them
	// against the template's action.
	Args map[string]any
	// Sent is when the duty desk sent it (its ts), TTL how long it is
	// good for from then.
	Sent time.Time
	TTL  time.Duration
}

// Expires is when the command stops being good.
func (c *Command) Expires() time.Time { return c.Sent.Add(c.TTL) }

// Rejection is why a command is refused, in words for the duty desk; it
// becomes the reason of a rejected result.
type Rejection struct{ Reason string }

func (r *Rejection) Error() string { return r.Reason }

func reject(format string, args ...any) error { return &Rejection{fmt.Sprintf(format, args...)} }

type wire struct {
	V      *int            `json:"v"`
	ID     *string         `json:"id"`
	Action *string         `json:"action"`
	Args   json.RawMessage `json:"args"`
	TS     *string         `json:"ts"`
	TTL    json.RawMessage `json:"ttl"`
	HMAC   *string         `json:"hmac"`
}

type wireArgs struct {
	Signal *string         `json:"signal"`
	Value  json.RawMessage `json:"value"`
	For    json.RawMessage `json:"for"`
}

// Decode decodes and checks the command payload b for a device of a
// station. With a key, the command must carry its HMAC (see Sign). maxTTL
// caps the command's own ttl. It checks the command's shape only: whether
// the device has the action, and whether it expired, is the Desk's to
// say. The error is a *Rejection; the returned Command then holds what
// could be read of it (its id and action), for the result.
func Decode(station, device string, b []byte, key []byte, maxTTL time.Duration) (Command, error) {
	c := Command{Device: device}
	if len(b) > MaxBytes {
		return c, reject("malformed: the command is %d bytes (at most %d)", len(b), MaxBytes)
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil {
		return c, reject("malformed: not a JSON object: %v", err)
	}
	if w.ID != nil && validID(*w.ID) {
		c.ID = *w.ID
	}
	if w.Action != nil {
		c.Action = *w.Action
	}
	if len(bytes.TrimSpace(b[dec.InputOffset():])) > 0 {
		return c, reject("malformed: data after the JSON object")
	}
	switch {
	case w.V == nil:
		return c, reject(`malformed: missing "v" (the contract version, 1)`)
	case *w.V != model.ContractVersion:
		return c, reject("malformed: version %d, this gateway speaks %d", *w.V, model.ContractVersion)
	case w.ID == nil:
		return c, reject(`malformed: missing "id"`)
	case !validID(*w.ID):
		return c, reject("malformed: id must be 1 to %d printable characters", MaxIDLen)
	case w.Action == nil || *w.Action == "":
		return c, reject(`malformed: missing "action"`)
	case w.TS == nil:
		return c, reject(`malformed: missing "ts" (when the command was sent, RFC 3339)`)
	}
	sent, err := time.Parse(time.RFC3339Nano, *w.TS)
	if err != nil {
		return c, reject("malformed: ts %q is not an RFC 3339 time", *w.TS)
	}
	c.Sent = sent.UTC()
	c.TTL = DefaultTTL
	if w.TTL != nil {
		secs, err := seconds(w.TTL)
		if err != nil || secs <= 0 {
			return c, reject("malformed: ttl %s is not a positive number of seconds", w.TTL)
		}
		c.TTL = secs
	}
	c.TTL = min(c.TTL, maxTTL)
	if err := verify(station, device, &w, key); err != nil {
		return c, err
	}
	if err := c.args(w.Args); err != nil {
		return c, err
	}
	return c, nil
}

// args decodes the action's arguments: "set" takes signal and value; an
// action that lasts may take for, in seconds; any other action may take
// the arguments its template names (checked by the Desk).
func (c *Command) args(raw json.RawMessage) error {
	var a wireArgs
	if len(raw) > 0 && string(raw) != "null" {
		if c.Action != ActionSet {
			var m map[string]any
			if err := json.Unmarshal(raw, &m); err != nil || m == nil {
				return reject("malformed: args must be a JSON object")
			}
			delete(m, "for")
			delete(m, "signal")
			delete(m, "value")
			if len(m) > 0 {
				c.Args = m
			}
		}
		dec := json.NewDecoder(bytes.NewReader(raw))
		if c.Action == ActionSet {
			dec.DisallowUnknownFields()
		}
		dec.UseNumber()
		if err := dec.Decode(&a); err != nil {
			return reject("malformed: args: %v (expected signal, value, for)", strings.TrimPrefix(err.Error(), "json: "))
		}
	}
	if c.Action == ActionSet {
		if a.Signal == nil || *a.Signal == "" || a.Value == nil {
			return reject(`malformed: set needs args {"signal": ..., "value": ...}`)
		}
		c.Signal = *a.Signal
		v, err := value(a.Value)
		if err != nil {
			return err
		}
		c.Value = v
	} else if a.Signal != nil || a.Value != nil {
		return reject("malformed: %s takes no signal or value (only set does)", c.Action)
	}
	if a.For != nil {
		d, err := seconds(a.For)
		if err != nil || d <= 0 {
			return reject("malformed: for %s is not a positive number of seconds", a.For)
		}
		c.For = d
	}
	return nil
}

// value reads a set's value: true, false or a number.
func value(raw json.RawMessage) (model.Value, error) {
	switch s := string(raw); s {
	case "true":
		return model.Bool(true), nil
	case "false":
		return model.Bool(false), nil
	default:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return model.Value{}, reject("malformed: value %s is not true, false or a number", s)
		}
		return model.Number(f), nil
	}
}

// seconds reads a JSON number of seconds.
func seconds(raw json.RawMessage) (time.Duration, error) {
	f, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || math.IsNaN(f) || f > 365*24*3600 {
		return 0, errors.New("not a number of seconds")
	}
	return time.Duration(f * float64(time.Second)), nil
}

func validID(id string) bool {
	if id == "" || len(id) > MaxIDLen || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// verify checks the command's HMAC when the station has a key.
func verify(station, device string, w *wire, key []byte) error {
	if len(key) == 0 {
		return nil
	}
	if w.HMAC == nil {
		return reject("unsigned: this station takes signed commands only (hmac)")
	}
	got, err := hex.DecodeString(*w.HMAC)
	if err != nil || !hmac.Equal(got, mac(key, station, device, w)) {
		return reject("bad signature: the hmac does not match the command and the station's key")
	}
	return nil
}

// mac is the HMAC-SHA256 of a command: of its station, device, id,
// action, ts, ttl and args, each as written in the payload (ttl and args
// empty when absent), joined by newlines after the line
// "outpost-command-v1".
func mac(key []byte, station, device string, w *wire) []byte {
	h := hmac.New(sha256.New, key)
	var action, ts string
	if w.Action != nil {
		action = *w.Action
	}
	if w.TS != nil {
		ts = *w.TS
	}
	for i, part := range []string{"outpost-command-v1", station, device, *w.ID, action, ts, string(w.TTL), string(w.Args)} {
		if i > 0 {
			h.Write([]byte{'\n'})
		}
		h.Write([]byte(part))
	}
	return h.Sum(nil)
}

// Sign returns the command payload b (a JSON object without "hmac") with
// the HMAC of the station's key added, for a command to a device of the
// station. The hub's duty desk signs the same way.
func Sign(key []byte, station, device string, b []byte) ([]byte, error) {
	var w wire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	if w.ID == nil || w.HMAC != nil {
		return nil, errors.New(`sign: the command needs an "id" and no "hmac" yet`)
	}
	b = bytes.TrimRight(b, " \t\r\n")
	if len(b) == 0 || b[len(b)-1] != '}' {
		return nil, errors.New("sign: not a JSON object")
	}
	out := append([]byte(nil), b[:len(b)-1]...)
	out = append(out, `,"hmac":"`...)
	out = hex.AppendEncode(out, mac(key, station, device, &w))
	return append(out, `"}`...), nil
}
