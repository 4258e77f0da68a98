package mqtt

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	cfg "outpost/configs/mqtt"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// The messages of the kiosk contract that actions send.
const (
	msgEmergency = "emergency_call"
	msgRequest   = "service_request"
	msgSession   = "session"
	msgFault     = "fault"
)

// Limits of the misbehaviour actions.
const (
	maxFloodRate  = 100000
	maxFloodCount = 1000000
	maxOversize   = 16 << 20
)

// Actions lists what the control API may ask of the device: those of the
// kiosk contract its template has messages or signals for, and the
// misbehaviour every device can show.
func (d *device) Actions() []string {
	var out []string
	if d.tmpl.Message(msgEmergency) != nil {
		out = append(out, "emergency [hold=1s] [wait=false] [button=front] [call_id=ID] (an emergency call starts, and ends after hold; with wait, done once ended)")
	}
	if d.tmpl.Message(msgRequest) != nil {
		out = append(out, "request [category=other] [text=T] [ticket={device}-{n}] [location=L] [session_id=S] (a citizen's service request)")
	}
	if d.tmpl.Message(msgSession) != nil {
		out = append(out, "session [service=S] [session_id=ID] [hold=1s] [wait=false] (a citizen's session starts, and ends after hold)")
	}
	if d.tmpl.Message(msgFault) != nil {
		out = append(out, "fault part=P [code=C] [text=T] [hold=D] [wait=false] [clear=true] (a part fails; it is mended after hold, or by clear=true)")
	}
	if _, ok := d.byKind["door"]; ok {
		out = append(out, "door open=true|false (telemetry at once)")
	}
	if _, ok := d.byKind["tamper"]; ok {
		out = append(out, "tamper on=true|false (telemetry at once)")
	}
	return append(out,
		"offline for=D [wait=false] (the connection drops without a goodbye, so the broker sends the will; connects again after D)",
		"deaf for=D [wait=false] (sends nothing, answers no command until D is over; stays connected)",
		"flood rate=N count=M (M heartbeats at N a second, or as fast as it can; telemetry without a heartbeat)",
		"oversize bytes=N (a telemetry message of N bytes)",
		"malformed (four messages: not JSON, a wrong type, an unknown field, a required field missing)",
		"impersonate device=OTHER (telemetry on OTHER's topic)",
	)
}

// Act does one of the actions. It returns once the device handed its
// messages to its client (they wait there while it reconnects); with
// wait, once what the action lasts is over.
func (d *device) Act(ctx context.Context, action string, args map[string]string) error {
	a := args0{args}
	switch action {
	case "emergency":
		if err := a.only("hold", "wait", "button", "call_id"); err != nil {
			return err
		}
		details := map[string]string{"call_id": a.or("call_id", d.next("call"))}
		if d.hasDetail(msgEmergency, "button") {
			details["button"] = a.or("button", "front")
		}
		return d.spell(ctx, a, msgEmergency, details, time.Second, true)
	case "request":
		if err := a.only("category", "text", "ticket", "location", "session_id"); err != nil {
			return err
		}
		details := map[string]string{"ticket": a.or("ticket", d.next(""))}
		if d.hasDetail(msgRequest, "category") {
			details["category"] = a.or("category", "other")
		}
		for _, k := range []string{"text", "location", "session_id"} {
			if v, ok := args[k]; ok {
				details[k] = v
			}
		}
		return d.event(msgRequest, "", details, true)
	case "session":
		if err := a.only("service", "session_id", "hold", "wait"); err != nil {
			return err
		}
		details := map[string]string{"session_id": a.or("session_id", d.next("s"))}
		if v, ok := args["service"]; ok {
			details["service"] = v
		}
		return d.spell(ctx, a, msgSession, details, time.Second, false)
	case "fault":
		if err := a.only("part", "code", "text", "hold", "wait", "clear"); err != nil {
			return err
		}
		details := map[string]string{}
		for _, k := range []string{"part", "code", "text"} {
			if v, ok := args[k]; ok {
				details[k] = v
			}
		}
		clear, err := a.flag("clear")
		if err != nil {
			return err
		}
		if clear {
			if _, ok := args["hold"]; ok {
				return fmt.Errorf("fault: clear=true takes no hold")
			}
			return d.event(msgFault, "cleared", details, false)
		}
		if _, ok := args["hold"]; !ok {
			return d.event(msgFault, "active", details, false)
		}
		return d.spell(ctx, a, msgFault, details, 0, false)
	case "door", "tamper":
		key := map[string]string{"door": "open", "tamper": "on"}[action]
		if err := a.only(key); err != nil {
			return err
		}
		sig, ok := d.byKind[action]
		if !ok {
			return fmt.Errorf("the template has no bool signal with a %s event", action)
		}
		on, err := strconv.ParseBool(args[key])
		if err != nil {
			return fmt.Errorf("%s=%q: want true or false", key, args[key])
		}
		if d.quiet() {
			return errQuiet
		}
		d.mu.Lock()
		d.forced[sig] = on
		d.mu.Unlock()
		return d.sendTelemetry(time.Now())
	case "offline", "deaf":
		if err := a.only("for", "wait"); err != nil {
			return err
		}
		span, err := a.duration("for", -1)
		if err != nil {
			return err
		}
		wait, err := a.flag("wait")
		if err != nil {
			return err
		}
		if action == "deaf" {
			return d.goDeaf(ctx, span, wait)
		}
		return d.goOffline(ctx, span, wait)
	case "flood":
		if err := a.only("rate", "count"); err != nil {
			return err
		}
		rate, err := strconv.ParseFloat(args["rate"], 64)
		if err != nil || rate <= 0 || rate > maxFloodRate {
			return fmt.Errorf("rate=%q: want messages a second, more than 0 and at most %d", args["rate"], maxFloodRate)
		}
		count, err := strconv.Atoi(args["count"])
		if err != nil || count < 1 || count > maxFloodCount {
			return fmt.Errorf("count=%q: want a number of messages from 1 to %d", args["count"], maxFloodCount)
		}
		return d.flood(ctx, rate, count)
	case "oversize":
		if err := a.only("bytes"); err != nil {
			return err
		}
		n, err := strconv.Atoi(args["bytes"])
		if err != nil || n < 1 || n > maxOversize {
			return fmt.Errorf("bytes=%q: want a size from 1 to %d", args["bytes"], maxOversize)
		}
		m, err := d.telemetryMessage()
		if err != nil {
			return err
		}
		return d.misbehave(d.topic(m.Name), 0, oversizePayload(time.Now(), n), nil)
	case "malformed":
		if err := a.only(); err != nil {
			return err
		}
		return d.malformed()
	case "impersonate":
		if err := a.only("device"); err != nil {
			return err
		}
		other := args["device"]
		if !devicePattern.MatchString(other) || other == d.id {
			return fmt.Errorf("device=%q: want another device's id", other)
		}
		m, err := d.telemetryMessage()
		if err != nil {
			return err
		}
		b, _, err := d.misbehavingTelemetry(m, time.Now())
		if err != nil {
			return err
		}
		return d.misbehave(d.prefix+"/"+other+"/"+m.Name, 0, b, nil)
	}
	return fmt.Errorf("unknown action %q (have: %s)", action, strings.Join(d.Actions(), "; "))
}

// devicePattern is what a device id must be to be a topic level.
var devicePattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// errQuiet is an action asked of a device that sends nothing now.
var errQuiet = fmt.Errorf("the device is deaf or silent: it sends nothing")

// args0 reads an action's arguments.
type args0 struct{ m map[string]string }

func (a args0) only(keys ...string) error {
	for k := range a.m {
		if !slices.Contains(keys, k) {
			if len(keys) == 0 {
				return fmt.Errorf("unknown argument %s= (takes none)", k)
			}
			return fmt.Errorf("unknown argument %s= (takes %s)", k, strings.Join(keys, ", "))
		}
	}
	return nil
}

func (a args0) or(key, def string) string {
	if v, ok := a.m[key]; ok {
		return v
	}
	return def
}

func (a args0) flag(key string) (bool, error) {
	v, ok := a.m[key]
	if !ok {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s=%q: want true or false", key, v)
	}
	return b, nil
}

// duration reads a duration argument; def when absent (def < 0: it is
// required).
func (a args0) duration(key string, def time.Duration) (time.Duration, error) {
	v, ok := a.m[key]
	if !ok {
		if def < 0 {
			return 0, fmt.Errorf("%s= is required (a duration such as 5s)", key)
		}
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 || d > 24*time.Hour {
		return 0, fmt.Errorf("%s=%q: want a duration such as 5s (at most 24h)", key, v)
	}
	return d, nil
}

// next is a new id of the device: {device}-{kind}{n}, or {device}-{n}.
func (d *device) next(kind string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.seq[kind]++
	if kind == "" {
		return fmt.Sprintf("%s-%d", d.id, d.seq[kind])
	}
	return fmt.Sprintf("%s-%s%d", d.id, kind, d.seq[kind])
}

func (d *device) hasDetail(msg, name string) bool {
	m := d.tmpl.Message(msg)
	return m != nil && m.Event != nil && slices.ContainsFunc(m.Event.Details, func(x cfg.Detail) bool { return x.Name == name })
}

// event publishes an event message now; an alarm is logged as raised.
// It counts as served once the broker acknowledged it.
func (d *device) event(msg, state string, details map[string]string, alarm bool) error {
	m := d.tmpl.Message(msg)
	if m == nil || m.Event == nil {
		return fmt.Errorf("the template has no event message %s", msg)
	}
	if d.quiet() {
		return errQuiet
	}
	now := time.Now()
	b, err := eventPayload(m, now, state, details)
	if err != nil {
		return err
	}
	if err := d.publish(d.topic(m.Name), 1, false, b, func() { d.n.events.Add(1) }); err != nil {
		return err
	}
	if alarm && d.sink != nil {
		if state == "" {
			state = "active"
		}
		d.sink.Raised(simRaised(d.id, m.Event.Kind, state, now))
	}
	return nil
}

// spell is an event that starts now and ends after hold (the argument,
// def without it): a call, a session, a fault. With wait it returns once
// it ended.
func (d *device) spell(ctx context.Context, a args0, msg string, details map[string]string, def time.Duration, alarm bool) error {
	hold, err := a.duration("hold", def)
	if err != nil {
		return err
	}
	wait, err := a.flag("wait")
	if err != nil {
		return err
	}
	if err := d.event(msg, "active", details, alarm); err != nil {
		return err
	}
	return d.later(ctx, hold, wait, func() error { return d.event(msg, "cleared", details, alarm) })
}

// goDeaf makes the device send nothing and answer no command for a while;
// it stays connected.
func (d *device) goDeaf(ctx context.Context, span time.Duration, wait bool) error {
	d.mu.Lock()
	d.deafUntil = time.Now().Add(span)
	d.mu.Unlock()
	d.log.Info("deaf", "for", span)
	if !wait {
		return nil
	}
	return sleep(ctx, span)
}

// goOffline drops the device's connection without a DISCONNECT, so that
// the broker publishes its will, and keeps it away for a while. With
// wait, it returns once the device connected again.
func (d *device) goOffline(ctx context.Context, span time.Duration, wait bool) error {
	d.mu.Lock()
	d.away = time.Now().Add(span)
	c, up := d.conn, d.up
	d.conn = nil
	d.mu.Unlock()
	d.log.Info("offline", "for", span)
	if c != nil {
		c.Cut()
	}
	if !wait {
		return nil
	}
	select {
	case <-up:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-d.stop:
		return errStopped
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// telemetryMessage is the message misbehaviour abuses: the first of
// signals alone.
func (d *device) telemetryMessage() (*cfg.Message, error) {
	if len(d.signals) == 0 {
		return nil, fmt.Errorf("the template has no telemetry message (signals without an event)")
	}
	return d.signals[0], nil
}

// misbehavingObject is a telemetry object for misbehaviour: the signals
// with an event rule as last published, so that it makes no edge; with
// the readings it carries.
func (d *device) misbehavingObject(m *cfg.Message, now time.Time) (*object, []sim.Reading, error) {
	vals := d.values(m, now)
	d.tel.Lock()
	for sig := range d.rules {
		if _, ok := vals[sig]; ok {
			vals[sig] = signal.B(d.last[sig])
		}
	}
	d.tel.Unlock()
	return telemetryObject(m, now, vals)
}

// misbehavingTelemetry is misbehavingObject's JSON.
func (d *device) misbehavingTelemetry(m *cfg.Message, now time.Time) ([]byte, []sim.Reading, error) {
	o, rs, err := d.misbehavingObject(m, now)
	if err != nil {
		return nil, nil, err
	}
	b, err := o.bytes()
	return b, rs, err
}

// misbehave sends a message that never counts as served; acked, if set,
// runs when the broker acknowledged it.
func (d *device) misbehave(topic string, qos byte, payload []byte, acked func()) error {
	if d.quiet() {
		return errQuiet
	}
	if err := d.publish(topic, qos, false, payload, acked); err != nil {
		return err
	}
	d.n.misbehave.Add(1)
	return nil
}

// flood sends count heartbeats at rate a second, or as fast as the
// client takes them: messages that carry nothing to the hub, so that what
// the gateway refuses is seen in its counters alone. A template without a
// heartbeat is flooded with its telemetry (what gets through then reaches
// the hub: it goes to the served log, not to the counts).
func (d *device) flood(ctx context.Context, rate float64, count int) error {
	hb := d.tmpl.Heartbeat
	var m *cfg.Message
	if hb != nil {
		m = d.tmpl.Message(hb.Message)
	} else {
		var err error
		if m, err = d.telemetryMessage(); err != nil {
			return err
		}
	}
	start := time.Now()
	for i := range count {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if wait := time.Until(at); wait > 0 {
			if err := sleep(ctx, wait); err != nil {
				return err
			}
		}
		var b []byte
		var logged func()
		if hb != nil {
			var err error
			if b, err = heartbeatPayload(m, time.Now(), time.Since(start)); err != nil {
				return err
			}
		} else {
			payload, rs, err := d.misbehavingTelemetry(m, time.Now())
			if err != nil {
				return err
			}
			b = payload
			logged = func() {
				if d.sink != nil {
					d.sink.Served(d.id, rs)
				}
			}
		}
		if err := d.misbehave(d.topic(m.Name), 1, b, logged); err != nil {
			return fmt.Errorf("message %d of %d: %w", i+1, count, err)
		}
	}
	return nil
}

// malformed sends one message of each way to be wrong.
func (d *device) malformed() error {
	if d.quiet() {
		return errQuiet
	}
	m, err := d.telemetryMessage()
	if err != nil {
		return err
	}
	now := time.Now()
	bad, err := malformedPayloads(d.tmpl, m, now, func() (*object, error) {
		o, _, err := d.misbehavingObject(m, now)
		return o, err
	})
	if err != nil {
		return err
	}
	for _, b := range bad {
		if err := d.misbehave(d.topic(b.message), 1, b.payload, nil); err != nil {
			return err
		}
	}
	return nil
}
