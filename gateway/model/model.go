// Package model is outpost's normalized model: every reading, event and
// health change that leaves a driver is a Message, whatever protocol it came
// from. It is the leaf package every other package imports; it does no I/O.
//
// The JSON form of a Message is the hub contract; see docs/hub-contract.md and
// gateway/model/message.schema.json. Change it only together with
// ContractVersion.
package model

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// ContractVersion is the version of the hub contract (topics, payloads,
// InfluxDB mapping). It appears in every topic and payload.
const ContractVersion = 1

// DefaultTopicPrefix is the MQTT topic prefix of this contract version; a
// new version gets a new prefix, so that gateways of both can share a broker.
const DefaultTopicPrefix = "outpost/v1"

// StationType is one of the five outpost station types.
type StationType string

const (
	Workstation StationType = "workstation"  // 基层联动治理工作站
	PoliceRoom  StationType = "police_room"  // 社区警务室
	SafetyPost  StationType = "safety_post"  // 平安哨
	GridStation StationType = "grid_station" // 网格驿站
	PoliceCube  StationType = "police_cube"  // 网格警立方
)

// StationTypes lists the valid station types in a stable order.
var StationTypes = []StationType{Workstation, PoliceRoom, SafetyPost, GridStation, PoliceCube}

// Values lists the station types as a station file names them.
func (StationType) Values() []string {
	v := make([]string, len(StationTypes))
	for i, t := range StationTypes {
		v[i] = string(t)
	}
	return v
}

// Kind says what a Message carries.
type Kind string

const (
	KindTelemetry Kind = "telemetry" // readings from one poll of one device
	KindEvent     Kind = "event"     // an alarm or state change; never dropped
	KindHealth    Kind = "health"    // a device's health changed
	KindResult    Kind = "result"    // the outcome of a command from the hub
)

// Quality of a reading.
type Quality string

const (
	Good      Quality = "good"
	Uncertain Quality = "uncertain"
	Bad       Quality = "bad"
)

// Value is a reading's value: exactly one of a number, a bool or a string, or
// nothing when the reading is bad.
type Value struct {
	kind valueKind
	num  float64
	str  string
}

type valueKind uint8

const (
	noValue valueKind = iota
	numValue
	boolValue
	strValue
)

// Number, Bool and String build Values.
func Number(f float64) Value { return Value{kind: numValue, num: f} }
func Bool(b bool) Value {
	if b {
		return Value{kind: boolValue, num: 1}
	}
	return Value{kind: boolValue}
}
func String(s string) Value { return Value{kind: strValue, str: s} }

// IsZero reports whether v holds no value.
func (v Value) IsZero() bool { return v.kind == noValue }

// Float returns v as a number and whether it is one.
func (v Value) Float() (float64, bool) { return v.num, v.kind == numValue }

// AsBool returns v as a bool and whether it is one.
func (v Value) AsBool() (bool, bool) { return v.num != 0, v.kind == boolValue }

// Str returns v as a string and whether it is one.
func (v Value) Str() (string, bool) { return v.str, v.kind == strValue }

// Interface returns float64, bool, string or nil.
func (v Value) Interface() any {
	switch v.kind {
	case numValue:
		return v.num
	case boolValue:
		return v.num != 0
	case strValue:
		return v.str
	}
	return nil
}

// Equal reports whether two values are the same.
func (v Value) Equal(w Value) bool { return v == w }

// String is the value as a person reads it: a number in plain decimals
// (12345678.5, not 1.23456785e+07) unless it is very large or small.
func (v Value) String() string {
	switch {
	case v.kind == noValue:
		return "<none>"
	case v.kind == numValue && (v.num == 0 || math.Abs(v.num) >= 1e-6 && math.Abs(v.num) < 1e15):
		return strconv.FormatFloat(v.num, 'f', -1, 64)
	}
	return fmt.Sprint(v.Interface())
}

// Reading is one signal's value from one poll.
type Reading struct {
	Signal  string
	Value   Value
	Unit    string
	Quality Quality
}

// Severity of an event.
type Severity string

const (
	Info     Severity = "info"
	Warning  Severity = "warning"
	Critical Severity = "critical"
)

// Values lists the severities.
func (Severity) Values() []string { return []string{string(Info), string(Warning), string(Critical)} }

// GatewayDevice is the device id under which the gateway reports on
// itself (its queues, its forwarders) and answers commands for devices
// the station does not have.
const GatewayDevice = "gateway"

// GatewayEvent is an event of the gateway itself.
func GatewayEvent(kind string, sev Severity, details map[string]string) Message {
	return Message{Device: GatewayDevice, DeviceKind: GatewayDevice, Kind: KindEvent,
		Event: &Event{Kind: kind, Severity: sev, Details: details}}
}

// Event kinds known to the gateway. Templates may name others.
const (
	EventPanic               = "panic"
	EventDuress              = "duress"
	EventTamper              = "tamper"
	EventDoor                = "door"
	EventSmoke               = "smoke"
	EventDeviceLost          = "device_lost"           // a device fell silent (its supervision time passed)
	EventDeviceRestored      = "device_restored"       // it is heard again
	EventSpoofing            = "spoofing"              // a device tried to publish as another, or where it may not
	EventQueueDrops          = "queue_drops"           // the gateway dropped telemetry at its queue cap
	EventQueueDamage         = "queue_damage"          // the gateway skipped damaged queue data
	EventForwarderFailed     = "forwarder_failed"      // a forwarder failed and was restarted
	EventQueueWriteFailed    = "queue_write_failed"    // the disk refuses the queue's writes or hangs
	EventQueueWriteRecovered = "queue_write_recovered" // it takes them again
	EventRejected            = "messages_rejected"     // the hub refused messages for good; set aside
	EventSeqLost             = "seq_lost"              // both copies of the sequence numbers were damaged
	EventStateDirUnusable    = "state_dir_unusable"    // the gateway could not write its state_dir at start and keeps its state in memory
	EventPowerFail           = "power_fail"
	EventCommsFailed         = "comms_failed"
)

// EventBrokerSessionLost: an external station broker had forgotten the
// gateway's session when it connected again, and with it the messages its
// devices sent meanwhile.
const EventBrokerSessionLost = "station_broker_session_lost"

// Event is an alarm or state change.
type Event struct {
	Kind     string
	Severity Severity
	Details  map[string]string
}

// HealthState of a device.
type HealthState string

const (
	Online   HealthState = "online"
	Degraded HealthState = "degraded"
	Offline  HealthState = "offline"
)

// Health is a device's health with the reason for it and its counters.
type Health struct {
	State    HealthState
	Reason   string
	Counters map[string]uint64
}

// RTTCounter is the health counter that holds a device's last round trip
// (from a request sent to its answer), in microseconds: the one counter
// that is not a running total.
const RTTCounter = "last_rtt_us"

// ResultStatus is how a command from the hub ended.
type ResultStatus string

const (
	ResultOK       ResultStatus = "ok"       // the device carried it out
	ResultRejected ResultStatus = "rejected" // not carried out: malformed, expired, unknown, out of range
	ResultFailed   ResultStatus = "failed"   // tried, and the device (or the gateway) failed
)

// Result is the outcome of a command from the hub, sent back on the
// command's device.
type Result struct {
	// ID is the command's id.
	ID string
	// Action is the command's action, when it could be read.
	Action string
	Status ResultStatus
	// Reason says why, unless the status is ok.
	Reason string
}

// Message is the unit that travels from a driver to the hub. Station,
// StationType, Seq and Time are filled in by the pipeline; a driver sets the
// rest (and Time when the device stamps its own data).
//
// Station/Device/Seq identifies a message: Seq is per device, strictly
// increasing across gateway restarts, so the hub can drop duplicates.
type Message struct {
	Station     string
	StationType StationType
	Device      string
	DeviceKind  string
	Seq         uint64
	Time        time.Time
	Kind        Kind
	// Historical is set on messages that are replayed after an outage, so the
	// hub can tell them from live data. Time keeps the original time.
	Historical bool

	Readings []Reading // KindTelemetry
	Event    *Event    // KindEvent
	Health   *Health   // KindHealth
	Result   *Result   // KindResult
}

// Values is how many of the message's readings carry a value: the readings
// the hub stores, and those the gateway counts when it must drop some.
func (m *Message) Values() int {
	n := 0
	for i := range m.Readings {
		if HasValue(&m.Readings[i]) {
			n++
		}
	}
	return n
}

// ID is station/device/seq, the message's identity at the hub.
func (m *Message) ID() string { return fmt.Sprintf("%s/%s/%d", m.Station, m.Device, m.Seq) }
