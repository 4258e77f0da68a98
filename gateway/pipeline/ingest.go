// Package pipeline carries messages from the drivers to the hub: Ingest
// leaves out the readings its signals' report by exception suppresses,
// stamps each driver message with the station and a sequence number,
// derives events from signal changes, and appends it durably to one queue
// per uplink; a Forwarder per uplink and lane drains its queue to the hub.
package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/deadband"
	"outpost/gateway/durable"
	"outpost/gateway/model"
	"outpost/gateway/queue"
)

// Appender is a durable queue as Ingest needs it.
type Appender interface {
	Append(lane queue.Lane, recs ...queue.Record) error
}

// Sequencer hands out per-device sequence numbers.
type Sequencer interface {
	Next(device string) (uint64, error)
}

// Ingest is the entry of the pipeline; its Emit method is the drivers' Emit.
//
// Messages of one device are stamped, numbered and appended one at a time,
// in the order of the calls; different devices go through at once, so
// that with an fsync per append (queue.sync: 0s) their appends share one
// fsync instead of each waiting for all the others'.
type Ingest struct {
	station configs.StationID
	seq     Sequencer
	outs    []Appender
	log     *slog.Logger
	now     func() time.Time

	// Limit, when set, is the largest message the hub takes (the broker's
	// packet limit, mqtt.PacketLimit): telemetry over it is split by
	// readings into messages that fit, each with its own sequence number.
	Limit interface{ TooLarge(m *model.Message) bool }
	// Seen, when set, is shown every message a driver emits, stamped, in
	// each device's order (the status board).
	Seen func(model.Message)

	mu   sync.Mutex
	devs map[string]*devIngest

	// The signals with an event rule last published active, per device,
	// kept in statesPath when set (see KeepAlarmStates).
	statesMu   sync.Mutex
	statesPath string
	active     map[string][]string

	failed atomic.Uint64 // messages that could not be queued
	last   atomic.Int64  // when a driver last emitted, Unix ns
}

// LastEmit is when a driver last emitted a message (the start before the
// first).
func (in *Ingest) LastEmit() time.Time { return time.Unix(0, in.last.Load()) }

// devIngest is one device's part of the ingest stage.
type devIngest struct {
	mu    sync.Mutex
	rules map[string]*configs.EventRule // signal -> rule
	state map[string]bool               // signal -> last value of a signal with a rule
	alarm bool                          // an alarm device: losing it is critical
	lost  bool                          // device_lost was raised and not yet restored
	rbe   deadband.Device               // report by exception
	buf   []byte
	// unchanged counts the values report by exception left out (see
	// Ingest.Unchanged).
	unchanged atomic.Uint64
}

// NewIngest builds the ingest stage for a station, appending every message to
// each of outs.
func NewIngest(st *configs.Station, seq Sequencer, outs []Appender, log *slog.Logger) *Ingest {
	in := &Ingest{
		station: st.Station,
		seq:     seq,
		outs:    outs,
		log:     log,
		now:     time.Now,
		devs:    map[string]*devIngest{},
	}
	in.last.Store(time.Now().UnixNano())
	in.SetStation(st)
	return in
}

// SetStation takes the devices of a station file, at the start or
// reloaded: their event rules, whether they raise alarms, and their
// signals' report by exception (none when the station turns it off). A
// device keeps what it knew of its signals' states, so that a reload
// raises no event again.
func (in *Ingest) SetStation(st *configs.Station) {
	for _, d := range st.Devices {
		t := st.Templates[d.Template]
		rules := map[string]*configs.EventRule{}
		for _, sg := range t.Body.Signals() {
			if sg.Event != nil {
				rules[sg.Name] = sg.Event
			}
		}
		dev := in.device(d.ID)
		dev.mu.Lock()
		dev.alarm, dev.rules = t.Alarm, rules
		dev.rbe.SetRules(t.Body.Signals(), st.ReportByException)
		dev.mu.Unlock()
	}
}

// device returns the ingest state of a device, making it on first use.
func (in *Ingest) device(id string) *devIngest {
	in.mu.Lock()
	defer in.mu.Unlock()
	d := in.devs[id]
	if d == nil {
		d = &devIngest{rules: map[string]*configs.EventRule{}, state: map[string]bool{}}
		in.devs[id] = d
	}
	return d
}

// Failed is how many messages could not be queued (disk errors).
func (in *Ingest) Failed() uint64 { return in.failed.Load() }

// Unchanged is how many of the device's readings report by exception left
// out since the gateway started: values within their deadband of the last
// one sent (not the bad readings of an unanswered poll, repeated while the
// device stays silent).
func (in *Ingest) Unchanged(device string) uint64 { return in.device(device).unchanged.Load() }

// withValue counts the readings that carry a value (model.HasValue).
func withValue(rs []model.Reading) int {
	n := 0
	for i := range rs {
		if model.HasValue(&rs[i]) {
			n++
		}
	}
	return n
}

// Emit stamps, sequences and queues one driver message, and the events it
// implies. Telemetry goes without the readings report by exception
// suppresses, and not at all when it suppresses every one; the events are
// derived from all of them. It returns an error when m or one of them is not durable in
// every uplink's queue (see drivers.Emit). It is safe for concurrent use;
// messages of one device keep the order of the calls.
func (in *Ingest) Emit(m model.Message) error {
	in.last.Store(time.Now().UnixNano())
	d := in.device(m.Device)
	d.mu.Lock()
	defer d.mu.Unlock()
	if m.Time.IsZero() {
		m.Time = in.now()
	}
	m.Time = m.Time.UTC()
	if in.Seen != nil {
		in.Seen(m)
	}
	var err error
	if sent := d.report(&m); len(sent.Readings) < len(m.Readings) {
		d.unchanged.Add(uint64(withValue(m.Readings) - withValue(sent.Readings)))
		if len(sent.Readings) > 0 {
			err = in.queue(d, sent)
		}
	} else {
		err = in.queue(d, m)
	}
	evs := d.derive(&m)
	for _, ev := range evs {
		err = errors.Join(err, in.queue(d, ev))
	}
	if len(evs) > 0 && m.Kind == model.KindTelemetry && err == nil {
		in.keepStates(m.Device, d.state)
	}
	return err
}

// KeepAlarmStates makes the ingest stage remember, in the file at path,
// which signals with an event rule it last published active, and start
// from what the file says: a gateway restarted after a panic button it
// had published pressed was let go raises the cleared event it owes (the
// hub would otherwise see the panic active until the next press), and
// one still pressed is not raised again. Signals never published active
// start unknown, as without the file: one found active is raised. A file
// that cannot be read is logged and started without.
func (in *Ingest) KeepAlarmStates(path string) {
	in.statesMu.Lock()
	defer in.statesMu.Unlock()
	in.statesPath, in.active = path, map[string][]string{}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return
	}
	if err == nil {
		err = json.Unmarshal(b, &in.active)
	}
	if err != nil {
		in.log.Warn("alarm states not read: a signal published active before the restart and let go since will not be cleared at the hub", "file", path, "err", err)
		in.active = map[string][]string{}
		return
	}
	for dev, signals := range in.active {
		d := in.device(dev)
		d.mu.Lock()
		for _, sg := range signals {
			d.state[sg] = true
		}
		d.mu.Unlock()
	}
}

// keepStates writes down a device's active signals after an edge was
// queued. The event is durable already: a crash before this write only
// leaves the state as it was without the file (the edge raised again, or
// a clear not raised), never an alarm unsaid.
func (in *Ingest) keepStates(device string, state map[string]bool) {
	in.statesMu.Lock()
	defer in.statesMu.Unlock()
	if in.statesPath == "" {
		return
	}
	var on []string
	for sg, v := range state {
		if v {
			on = append(on, sg)
		}
	}
	slices.Sort(on)
	if len(on) == 0 {
		delete(in.active, device)
	} else {
		in.active[device] = on
	}
	in.writeStates()
}

// RewriteAlarmStates writes the alarm states file again, as when the state
// directory was deleted under the gateway.
func (in *Ingest) RewriteAlarmStates() {
	in.statesMu.Lock()
	defer in.statesMu.Unlock()
	if in.statesPath != "" {
		in.writeStates()
	}
}

// writeStates writes the alarm states file. Called with statesMu held.
func (in *Ingest) writeStates() {
	b, err := json.Marshal(in.active)
	if err == nil {
		err = durable.WriteFile(in.statesPath, b)
	}
	if err != nil {
		in.log.Warn("alarm states not written", "file", in.statesPath, "err", err)
	}
}

// report returns m as it is sent: telemetry without the readings
// report by exception suppresses. A device gone offline sends its next
// readings whatever they are.
func (d *devIngest) report(m *model.Message) model.Message {
	sent := *m
	switch {
	case m.Kind == model.KindTelemetry:
		sent.Readings = d.rbe.Filter(m.Readings, m.Time)
	case m.Kind == model.KindHealth && m.Health != nil && m.Health.State == model.Offline:
		d.rbe.Forget()
	}
	return sent
}

// derive returns the events that m implies: a rule's signal turning true (or
// false again, for rules that clear), a device going offline (device_lost,
// critical for an alarm device) and coming back (device_restored).
func (d *devIngest) derive(m *model.Message) []model.Message {
	var evs []model.Message
	event := func(kind string, sev model.Severity, details map[string]string) {
		evs = append(evs, model.Message{
			Device: m.Device, DeviceKind: m.DeviceKind, Time: m.Time, Kind: model.KindEvent,
			Event: &model.Event{Kind: kind, Severity: sev, Details: details},
		})
	}
	switch m.Kind {
	case model.KindTelemetry:
		for _, r := range m.Readings {
			rule := d.rules[r.Signal]
			if rule == nil || r.Quality == model.Bad {
				continue
			}
			on, ok := r.Value.AsBool()
			if !ok {
				continue
			}
			was, known := d.state[r.Signal]
			d.state[r.Signal] = on
			switch {
			case on && (!known || !was):
				event(rule.Kind, rule.Severity, map[string]string{"signal": r.Signal, "state": "active"})
			case !on && known && was && rule.Clear:
				event(rule.Kind, model.Info, map[string]string{"signal": r.Signal, "state": "cleared"})
			}
		}
	case model.KindHealth:
		switch {
		case m.Health == nil:
		case m.Health.State == model.Offline && !d.lost:
			d.lost = true
			sev := model.Warning
			if d.alarm {
				sev = model.Critical
			}
			event(model.EventDeviceLost, sev, map[string]string{"reason": m.Health.Reason})
		case m.Health.State != model.Offline && d.lost:
			d.lost = false
			event(model.EventDeviceRestored, model.Info, map[string]string{"state": string(m.Health.State)})
		}
	}
	return evs
}

func (in *Ingest) queue(d *devIngest, m model.Message) error {
	m.Station, m.StationType = in.station.ID, in.station.Type
	if m.Kind == model.KindTelemetry && len(m.Readings) > 1 && in.Limit != nil && in.Limit.TooLarge(&m) {
		// Two messages, each with a sequence number of its own.
		half := len(m.Readings) / 2
		a, b := m, m
		a.Readings, b.Readings = m.Readings[:half], m.Readings[half:]
		return errors.Join(in.queue(d, a), in.queue(d, b))
	}
	n, err := in.seq.Next(m.Device)
	if err != nil {
		return in.fail(&m, err)
	}
	m.Seq = n
	d.buf = model.AppendBinary(d.buf[:0], &m)
	lane := LaneOf(m.Kind)
	rec := queue.Record{Data: d.buf, Readings: m.Values()}
	var errs error
	for _, out := range in.outs {
		switch err := out.Append(lane, rec); {
		case errors.Is(err, queue.ErrHeld):
			// The queue said so already; the message will be delivered.
			errs = errors.Join(errs, fmt.Errorf("device %s: %s %d: %w (%v)", m.Device, m.Kind, m.Seq, drivers.ErrHeld, err))
		case err != nil:
			errs = errors.Join(errs, in.fail(&m, err))
		}
	}
	return errs
}

// LaneOf is the queue lane of a kind of message: events and command
// results are alarms, ahead of health changes, ahead of telemetry.
func LaneOf(k model.Kind) queue.Lane {
	switch k {
	case model.KindTelemetry:
		return queue.LaneTelemetry
	case model.KindHealth:
		return queue.LaneHealth
	}
	return queue.LaneAlarm
}

func (in *Ingest) fail(m *model.Message, err error) error {
	in.failed.Add(1)
	err = fmt.Errorf("device %s: %s not queued: %w", m.Device, m.Kind, err)
	in.log.Error("message not queued", "device", m.Device, "kind", m.Kind, "err", err)
	return err
}

// OpenQueue opens the station's durable queue, with one reader per uplink
// (see configs.Station.Uplinks), the station's cap per uplink and its group
// commit. Every message is written once, in StateDir/queue; each uplink
// reads it at its own pace. A queue of the earlier layout, one per uplink
// in UplinkQueueDir(uplink), is drained by that uplink's reader before the new
// records.
func OpenQueue(st *configs.Station, log *slog.Logger) (*queue.Queue, error) {
	uplinks := st.Uplinks()
	opt := queue.Options{MaxBytes: st.Queue.MaxBytes, SyncEvery: st.Queue.Sync, Readers: uplinks}
	q, err := queue.Open(st.QueueDir(), opt, log.With("queue", "shared"))
	if err != nil {
		return nil, err
	}
	for _, u := range uplinks {
		dir := st.UplinkQueueDir(u)
		if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
			continue
		}
		old, err := queue.Open(dir, queue.Options{MaxBytes: st.Queue.MaxBytes, SyncEvery: st.Queue.Sync}, log.With("queue", u))
		if err != nil {
			q.Close()
			return nil, fmt.Errorf("the queue of the earlier layout: %w", err)
		}
		q.Reader(u).Drain(old)
	}
	return q, nil
}
