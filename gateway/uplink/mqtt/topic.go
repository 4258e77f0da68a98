package mqtt

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"outpost/gateway/model"
)

// DefaultPrefix is the topic prefix of the contract version.
const DefaultPrefix = model.DefaultTopicPrefix

// Prefix returns the topic prefix of a configured value: DefaultPrefix when
// empty, without trailing slashes otherwise.
func Prefix(configured string) string {
	p := strings.TrimRight(configured, "/")
	if p == "" {
		return DefaultPrefix
	}
	return p
}

// Topic is the topic of a message: {prefix}/{station}/{device}/{kind}, and
// {prefix}/{station}/{device}/command/result for a command's result.
func Topic(prefix string, m *model.Message) string {
	if m.Kind == model.KindResult {
		return CommandTopic(prefix, m.Station, m.Device) + "/result"
	}
	return prefix + "/" + m.Station + "/" + m.Device + "/" + string(m.Kind)
}

// CommandTopic is where the hub sends a device's commands:
// {prefix}/{station}/{device}/command; "+" as device subscribes to all.
func CommandTopic(prefix, station, device string) string {
	return prefix + "/" + station + "/" + device + "/command"
}

// CheckDevice is the device of the commands topic that gateway
// commission publishes to and reads back (see Check), to learn whether the
// broker lets the station publish and take its commands. No device has
// this id (ids begin with a letter or a digit); the gateway ignores what
// comes on its topic.
const CheckDevice = "_check"

// checkPrefix begins checkPayload, which no command does (a command has an
// id).
const checkPrefix = `{"v":1,"check":`

// checkPayload is the probe gateway commission publishes to the commands
// topics of CheckDevice and of each device (see Check).
func checkPayload(t time.Time) []byte {
	return fmt.Appendf(nil, checkPrefix+"%q}", t.UTC().Format(time.RFC3339Nano))
}

// isCheck says whether a message on a commands topic is gateway
// commission's probe, which the gateway ignores.
func isCheck(payload []byte) bool { return bytes.HasPrefix(payload, []byte(checkPrefix)) }

// PacketSize is the size of the MQTT PUBLISH packet (QoS 1) that carries
// m: fixed header, topic, packet id and the JSON payload.
func PacketSize(prefix string, m *model.Message) int {
	return packetSize(len(Topic(prefix, m)), len(model.AppendJSON(nil, m)))
}

// packetSize is the size of a PUBLISH packet (QoS 1) of a topic and a
// payload of these lengths.
func packetSize(topic, payload int) int {
	rest := 2 + topic + 2 + payload
	header := 2 // the type byte and one byte of remaining length
	for n := rest; n >= 128; n >>= 7 {
		header++
	}
	return header + rest
}

// SnapshotTopic is the topic of a station's retained health snapshot:
// {prefix}/{station}/snapshot.
func SnapshotTopic(prefix, station string) string {
	return prefix + "/" + station + "/snapshot"
}

// StatusTopic is the topic of a gateway's retained status:
// {prefix}/{station}/status.
func StatusTopic(prefix, station string) string {
	return prefix + "/" + station + "/status"
}

// Gateway states published on the status topic.
const (
	StateOnline  = "online"
	StateOffline = "offline"
)

// AppendStatus appends the status payload
// {"v":1,"station":...,"state":"online"|"offline","broker":...,"ts":...}
// to dst; broker is the URL (without password) of the broker the gateway
// is on, left out when "".
func AppendStatus(dst []byte, station, state, broker string, t time.Time) []byte {
	// Marshalling a string cannot fail.
	s, _ := json.Marshal(station)
	dst = append(dst, `{"v":`...)
	dst = strconv.AppendInt(dst, model.ContractVersion, 10)
	dst = append(dst, `,"station":`...)
	dst = append(dst, s...)
	dst = append(dst, `,"state":"`...)
	dst = append(dst, state...)
	dst = append(dst, '"')
	if broker != "" {
		b, _ := json.Marshal(broker)
		dst = append(dst, `,"broker":`...)
		dst = append(dst, b...)
	}
	dst = append(dst, `,"ts":"`...)
	dst = t.UTC().AppendFormat(dst, time.RFC3339Nano)
	return append(dst, `"}`...)
}

// Status is a parsed status payload.
type Status struct {
	V       int       `json:"v"`
	Station string    `json:"station"`
	State   string    `json:"state"`
	Broker  string    `json:"broker,omitempty"`
	Time    time.Time `json:"ts"`
}

// ParseStatus decodes and checks a status payload.
func ParseStatus(b []byte) (Status, error) {
	var s Status
	if err := json.Unmarshal(b, &s); err != nil {
		return Status{}, fmt.Errorf("status payload: %w", err)
	}
	if s.V != model.ContractVersion {
		return Status{}, fmt.Errorf("status payload: version %d, want %d", s.V, model.ContractVersion)
	}
	if s.Station == "" {
		return Status{}, errors.New("status payload: no station")
	}
	if s.State != StateOnline && s.State != StateOffline {
		return Status{}, fmt.Errorf("status payload: unknown state %q", s.State)
	}
	return s, nil
}
