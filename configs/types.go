// Package configs holds the station files and device templates, and the code
// that loads them. The gateway and the simulator both read them through this
// package, so one station file drives both ends of the wire.
//
// A station file names the station, its hub, its links (a serial bus, a TCP
// endpoint, a listener, a broker: each speaks one protocol) and its devices,
// each on a link and described by a template. The loader knows what every
// station has; a protocol's package under configs/ (configs/modbus, ...)
// owns the rest: the settings of its links and devices and the format of its
// templates, registered by name (Register, RegisterFamily). Loading is
// strict: unknown keys, wrong types, missing fields and every
// cross-reference error are reported together, each as FILE:LINE:COL.
package configs

import (
	"cmp"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"outpost/gateway/model"
)

// Version is the version of the station file format this loader reads.
const Version = 2

// Station is one station file.
type Station struct {
	// Version of the station file format; this gateway reads 2.
	Version int `yaml:"version" required:"true" example:"2"`
	// Station says which station this is.
	Station StationID `yaml:"station" required:"true"`
	// StateDir is where the gateway keeps its queues and sequence numbers;
	// default /var/lib/outpost/<station id>. See docs/operations.md.
	StateDir string `yaml:"state_dir" example:"/var/lib/outpost/pr-0001"`
	// Hub is the city-brain hub the station reports to.
	Hub Hub `yaml:"hub" required:"true"`
	// Queue sizes the durable store-and-forward queue.
	Queue Queue `yaml:"queue"`
	// Status is the gateway's local status server: a page for the people
	// at the station, a JSON API and Prometheus metrics.
	Status Status `yaml:"status"`
	// Health sets when a polled device counts as degraded or offline.
	Health Health `yaml:"health"`
	// ReportByException sends a signal whose template gives it a report
	// section only when it moved by more than its deadband, or when it
	// has been silent for its max_silence (see docs/operations.md); false
	// sends every reading of every device, whatever the templates say.
	ReportByException bool `yaml:"report_by_exception" default:"true" example:"false"`
	// Links are the station's connections to its devices: serial buses,
	// TCP endpoints, listeners.
	Links []Link `yaml:"links" required:"true"`
	// Devices are the station's devices, each on a link.
	Devices []Device `yaml:"devices" required:"true"`

	// File is the path the station was loaded from.
	File string `yaml:"-"`
	// Templates holds the template of every device, by template name.
	Templates map[string]*Template `yaml:"-"`
	// Warnings say what in the valid file may not work as meant.
	Warnings []Error `yaml:"-"`
}

// Uplinks names the hub stores the station sends to: "mqtt", and
// "influx" when InfluxDB is configured. Each has a queue of its own.
func (st *Station) Uplinks() []string {
	if st.Hub.Influx != nil {
		return []string{"mqtt", "influx"}
	}
	return []string{"mqtt"}
}

// Path resolves a file the station file names: relative to the station
// file unless absolute; "" stays "".
func (st *Station) Path(file string) string {
	if file == "" || filepath.IsAbs(file) {
		return file
	}
	return filepath.Join(filepath.Dir(st.File), file)
}

// CommandsFile is where the gateway remembers the commands it took.
func (st *Station) CommandsFile() string { return filepath.Join(st.StateDir, "commands.jsonl") }

// AlarmStatesFile is where the gateway remembers the signals it last
// published active.
func (st *Station) AlarmStatesFile() string { return filepath.Join(st.StateDir, "alarm-states.json") }

// QueueDir is where the gateway keeps its durable queue, written once and
// read by every uplink.
func (st *Station) QueueDir() string { return filepath.Join(st.StateDir, "queue") }

// UplinkQueueDir is where gateways before the shared queue kept an
// uplink's own queue; a gateway that finds one drains it first.
func (st *Station) UplinkQueueDir(uplink string) string {
	return filepath.Join(st.StateDir, "queue", uplink)
}

// DeadLetterDir is where the gateway keeps the messages the hub refused
// for good.
func (st *Station) DeadLetterDir() string { return filepath.Join(st.StateDir, "deadletter") }

// SeqFile is where the gateway keeps its per-device sequence numbers.
func (st *Station) SeqFile() string { return filepath.Join(st.StateDir, "seq.json") }

// Link returns the link with that id, or nil.
func (st *Station) Link(id string) *Link {
	for i := range st.Links {
		if st.Links[i].ID == id {
			return &st.Links[i]
		}
	}
	return nil
}

// DevicesOn returns the devices on a link, in file order.
func (st *Station) DevicesOn(link string) []*Device {
	var out []*Device
	for i := range st.Devices {
		if st.Devices[i].Link == link {
			out = append(out, &st.Devices[i])
		}
	}
	return out
}

// StationID names the station.
type StationID struct {
	// ID is the station's id at the hub: letters, digits, '_', '-', '.';
	// at most 64.
	ID string `yaml:"id" required:"true" example:"pr-0001"`
	// Type is the kind of station (the five outpost types).
	Type model.StationType `yaml:"type" required:"true" example:"police_room"`
	// Name is a name for people.
	Name string `yaml:"name" example:"Community police room 0001"`
}

// Hub is the city-brain hub: an MQTT broker and, optionally, InfluxDB.
type Hub struct {
	// MQTT is the hub's broker: events, health and telemetry.
	MQTT MQTT `yaml:"mqtt" required:"true"`
	// Influx is the hub's InfluxDB for telemetry; none when absent.
	Influx *Influx `yaml:"influx"`
	// Commands are the duty desk's commands to the station's devices,
	// on the broker (see docs/hub-contract.md).
	Commands Commands `yaml:"commands"`
}

// Commands from the hub's duty desk.
type Commands struct {
	// KeyFile holds the station's HMAC-SHA256 key, as hex on one line:
	// every command must then be signed with it, and unsigned ones are
	// refused. The file must be readable by the gateway's user only
	// (chmod 600).
	KeyFile string `yaml:"key_file" example:"/etc/outpost/command.key"`
	// MaxTTL caps a command's time to live: a command asks for its own
	// (ttl), and one older than it when it arrives is refused as
	// expired. Command ids are remembered this long, so that a command
	// redelivered by the broker never acts twice.
	MaxTTL time.Duration `yaml:"max_ttl" default:"1h" example:"10m"`
}

// MQTT broker settings.
type MQTT struct {
	// URL of the broker: tcp:// (or mqtt://), or ssl:// (tls://, mqtts://)
	// for TLS, with a port. Give url or urls.
	URL string `yaml:"url" example:"ssl://hub.example.org:8883"`
	// URLs of the brokers of a clustered hub, instead of url: each of the
	// same scheme, sharing the tls settings and credentials. The gateway
	// connects to one; when it cannot, or loses it, it tries the next in
	// turn (see docs/operations.md).
	URLs []string `yaml:"urls" example:"[ssl://hub-a.example.org:8883, ssl://hub-b.example.org:8883]"`
	// ClientID is the gateway's MQTT client id; default outpost-<station id>.
	ClientID string `yaml:"client_id" example:"outpost-pr-0001"`
	// Username for the broker, if it asks for one.
	Username string `yaml:"username" example:"pr-0001"`
	// Password for the broker.
	Password string `yaml:"password" example:"s3cret"`
	// TLS names the files of a TLS connection.
	TLS *TLS `yaml:"tls"`
	// TopicPrefix starts every topic; default outpost/v1 (the hub
	// contract's version).
	TopicPrefix string `yaml:"topic_prefix" example:"outpost/v1"`
	// MaxPacketSize is the largest packet the broker takes, in bytes (its
	// max_packet_size), at least 1024; 0 for no limit. Telemetry larger
	// than it is split into several messages; another message the broker
	// refuses is set aside as a dead letter.
	MaxPacketSize int `yaml:"max_packet_size" example:"65536"`
}

// Brokers are the URLs of the hub's brokers: urls, or url alone.
func (m MQTT) Brokers() []string {
	if len(m.URLs) > 0 {
		return m.URLs
	}
	return []string{m.URL}
}

// BrokerNames are the brokers' URLs without their passwords, for logs,
// errors and the status.
func (m MQTT) BrokerNames() []string {
	var names []string
	for _, b := range m.Brokers() {
		names = append(names, Redact(b))
	}
	return names
}

// BrokersKey is the station file's key of the brokers, for messages:
// hub.mqtt.urls or hub.mqtt.url.
func (m MQTT) BrokersKey() string {
	if len(m.URLs) > 0 {
		return "hub.mqtt.urls"
	}
	return "hub.mqtt.url"
}

// TLS files, PEM encoded, relative to the station file unless absolute.
// They are checked when the station file is loaded.
type TLS struct {
	// CA is the certificate of the authority that signed the broker's;
	// default: the system's.
	CA string `yaml:"ca" example:"/etc/outpost/hub-ca.pem"`
	// Cert is the gateway's client certificate, when the broker asks for
	// one; it goes with Key.
	Cert string `yaml:"cert" example:"/etc/outpost/client.pem"`
	// Key is the client certificate's private key.
	Key string `yaml:"key" example:"/etc/outpost/client.key"`
}

// Influx is InfluxDB (2.x API; 1.8 accepts it with bucket "db" or "db/rp").
type Influx struct {
	// URL of InfluxDB's HTTP API.
	URL string `yaml:"url" required:"true" example:"https://hub.example.org:8086"`
	// Token: an API token (2.x), or user:password (1.8).
	Token string `yaml:"token" example:"outpost:s3cret"`
	// Org is the organisation (2.x; ignored by 1.8).
	Org string `yaml:"org" example:"county"`
	// Bucket to write to: a bucket (2.x), or db or db/rp (1.8).
	Bucket string `yaml:"bucket" required:"true" example:"outpost"`
	// BatchSize is the most points one write carries, 1 to 50000.
	// InfluxDB's cost is per request more than per point: fewer, fuller
	// writes cost the hub less.
	BatchSize int `yaml:"batch_size" default:"5000" example:"5000"`
	// BatchWait is how long telemetry waits for a fuller write, 0s to
	// 10s: a write that is not full leaves at least this long after the
	// previous one (one write per BatchWait at a steady load, with
	// everything that came meanwhile). A backlog, or a full batch, never
	// waits; 0s writes at once. MQTT, events and health do not wait for
	// it.
	BatchWait time.Duration `yaml:"batch_wait" default:"1s" example:"2s"`
	// Timeout is how long one write may take, in whole seconds, 1s to
	// 5m. A write that takes longer fails (the uplink is down, and the
	// write is sent again), and halves the writes after it, down to a
	// hundred points: a slow link to the hub (a weak cellular one)
	// drains a backlog that way.
	Timeout time.Duration `yaml:"timeout" default:"10s" example:"30s"`
	// Gzip compresses each write (Content-Encoding: gzip): several times
	// fewer bytes on the link to the hub, for some CPU at each write. For
	// a station on a slow or metered link.
	Gzip bool `yaml:"gzip" example:"true"`
}

// Queue is the durable store-and-forward queue.
type Queue struct {
	// MaxBytes caps the queue on disk per uplink, at least 65536. When it
	// is reached the oldest telemetry is dropped and counted; events never
	// are.
	MaxBytes int64 `yaml:"max_bytes" default:"268435456" example:"1073741824"`
	// Sync is how often appended data is fsynced (group commit); 0s fsyncs
	// before every append returns.
	Sync time.Duration `yaml:"sync" default:"100ms" example:"0s"`
}

// Health sets when a polled device (Modbus, DCON) counts as degraded or
// offline. An alarm panel is supervised by time instead (supervision).
type Health struct {
	// OfflineAfter is how many polls in a row without any answer make a
	// device offline, 1 to 100.
	OfflineAfter int `yaml:"offline_after" default:"3" example:"5"`
	// DegradedAfter is how many polls in a row that were not clean
	// (requests unanswered after their retries, exceptions, damaged
	// frames) make an online device degraded, 1 to 100; fewer are counted
	// and leave it online. Raise it on a line known to be noisy.
	DegradedAfter int `yaml:"degraded_after" default:"1" example:"3"`
	// ReportEvery is how often a device's health goes to the hub while
	// its state stays the same, so that its counters keep moving there,
	// 5s to 1h.
	ReportEvery time.Duration `yaml:"report_every" default:"1m" example:"5m"`
}

// Status is the gateway's local HTTP status server (see
// docs/operations.md).
type Status struct {
	// Listen is the server's address; "off" turns it off. On an address
	// other than loopback a token_file is required.
	Listen string `yaml:"listen" default:"127.0.0.1:9180" example:"0.0.0.0:9180"`
	// TokenFile holds the token every request must carry (Authorization:
	// Bearer TOKEN, or ?token=TOKEN for a browser), on one line; readable
	// by the gateway's user only (chmod 600).
	TokenFile string `yaml:"token_file" example:"/etc/outpost/status.token"`
}

// Link is one connection of the gateway to devices: a serial bus, a TCP
// endpoint, a listener or a broker. Its protocol owns the rest of its keys.
type Link struct {
	// ID names the link in devices[].link.
	ID string `yaml:"id" required:"true" example:"rs485-1"`
	// Protocol is what the link speaks (see Protocols below).
	Protocol string `yaml:"protocol" required:"true" example:"modbus-rtu"`
	// Settings are the protocol's own settings of the link (a pointer to
	// its type, e.g. *modbus.RTU).
	Settings any `yaml:"-"`
	// Rest holds those keys until the loader knows the protocol.
	Rest Rest `yaml:",rest"`
}

// Device is one device at the station. The protocol of its link owns the
// rest of its keys.
type Device struct {
	// ID names the device at the hub: letters, digits, '_', '-', '.'; at
	// most 64.
	ID string `yaml:"id" required:"true" example:"th-hall"`
	// Template is the device's template: devices/<name>.yaml beside the
	// station file, or a built-in one.
	Template string `yaml:"template" required:"true" example:"xy-md02"`
	// Link is the id of the link the device is on.
	Link string `yaml:"link" required:"true" example:"rs485-1"`
	// Settings are the device's settings for its link's protocol (a
	// pointer to its type, e.g. *modbus.Device).
	Settings any `yaml:"-"`
	// Rest holds those keys until the loader knows the protocol.
	Rest Rest `yaml:",rest"`
}

// Serial is a serial line's settings, shared by the protocols that speak
// on one (a link of such a protocol embeds it).
type Serial struct {
	// Port is the serial port; prefer its stable /dev/serial/by-id path.
	// Two links never share a port, under any of its names.
	Port string `yaml:"port" required:"true" example:"/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"`
	// Baud is the line speed, 300 to 4000000 (gateway validate warns of
	// a rate serial devices do not offer).
	Baud int `yaml:"baud" required:"true" example:"9600"`
	// Parity of every character.
	Parity Parity `yaml:"parity" default:"none" example:"even"`
	// DataBits per character, 7 or 8.
	DataBits int `yaml:"data_bits" default:"8" example:"8"`
	// StopBits per character, 1 or 2.
	StopBits int `yaml:"stop_bits" default:"1" example:"1"`
}

// Parity of a serial line.
type Parity string

const (
	ParityNone Parity = "none"
	ParityEven Parity = "even"
	ParityOdd  Parity = "odd"
)

// Values lists the parities a station file may name.
func (Parity) Values() []string { return []string{"none", "even", "odd"} }

// Check checks a serial line's settings.
func (s *Serial) Check(p Problems) {
	if s.Baud < 300 || s.Baud > 4000000 {
		p.Errorf("baud", "%d is not a usable baud rate (300 to 4000000, e.g. 9600)", s.Baud)
	}
	if s.DataBits < 7 || s.DataBits > 8 {
		p.Errorf("data_bits", "%d (expected 7 or 8)", s.DataBits)
	}
	if s.StopBits < 1 || s.StopBits > 2 {
		p.Errorf("stop_bits", "%d (expected 1 or 2)", s.StopBits)
	}
}

// standardBauds are the line speeds serial devices offer.
var standardBauds = []int{300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 76800, 115200, 230400, 460800, 921600}

// Warnings says what in valid line settings is likely a mistake: a baud
// rate no device offers (a typo of 9600, say) makes every answer garbage.
func (s *Serial) Warnings() []string {
	if slices.Contains(standardBauds, s.Baud) {
		return nil
	}
	// A digit too many or too few, or the nearest rate.
	near := slices.MinFunc(standardBauds, func(a, b int) int { return cmp.Compare(abs(a-s.Baud), abs(b-s.Baud)) })
	switch {
	case s.Baud%10 == 0 && slices.Contains(standardBauds, s.Baud/10):
		near = s.Baud / 10
	case slices.Contains(standardBauds, s.Baud*10):
		near = s.Baud * 10
	}
	return []string{fmt.Sprintf("baud %d is not a rate serial devices offer; did you mean %d?", s.Baud, near)}
}

func abs(n int) int { return max(n, -n) }

// CharTime is the time one character takes on the line: a start bit, the
// data bits, a parity bit unless parity is none, and the stop bits.
func (s *Serial) CharTime() time.Duration {
	data, stop := s.DataBits, s.StopBits
	if data == 0 {
		data = 8
	}
	if stop == 0 {
		stop = 1
	}
	bits := 1 + data + stop
	if s.Parity != "" && s.Parity != ParityNone {
		bits++
	}
	if s.Baud <= 0 {
		return 0
	}
	return time.Duration(bits) * time.Second / time.Duration(s.Baud)
}

// Template describes a device model: its kind, and its protocol family's
// description of the device (a register map, ...).
type Template struct {
	// Name is the template's name, the file's name without .yaml.
	Name string `yaml:"template" required:"true" example:"xy-md02"`
	// Kind is the device kind in the hub's model (the InfluxDB
	// measurement): lower-case letters, digits, '_'.
	Kind string `yaml:"kind" required:"true" example:"temp_humidity"`
	// Description is a line for people.
	Description string `yaml:"description" example:"XY-MD02 temperature and humidity sensor"`
	// Protocol is the protocol family the template is for: its devices
	// sit on links of a protocol of that family (see Protocols below).
	Protocol string `yaml:"protocol" required:"true" example:"modbus"`
	// Alarm says the device raises alarms (a panic button, an alarm
	// panel, a smoke detector): the hub gets device_lost as critical when
	// it falls silent.
	Alarm bool `yaml:"alarm" example:"true"`
	// Actions are what the hub may ask of the device by name, beyond
	// setting a writable signal (see Commands below).
	Actions []Action `yaml:"actions"`
	// Body is the family's part of the template (e.g. *modbus.Template).
	Body Body `yaml:"-"`
	// Rest holds the body's keys until the loader knows the family.
	Rest Rest `yaml:",rest"`

	File string `yaml:"-"`
	// Unlike, by signal, is how a built-in template, made from a device's
	// datasheet, reads a signal that this one reads from the same place
	// in another way (a wrong scale gives values that look right): the
	// loader warns of it, and the installer's tools say it beside the
	// value.
	Unlike map[string]Unlike `yaml:"-"`
}

// Unlike is a built-in template's reading of a signal (see
// Template.Unlike).
type Unlike struct {
	Template   string // the built-in template
	Conversion string // its conversion ("int16 × 0.1")
}

// Body is a protocol family's part of a template.
type Body interface {
	// Signals lists the signals the device reports.
	Signals() []Signal
}

// Signal is what the gateway needs to know of a template's signal,
// whatever its protocol.
type Signal struct {
	Name  string
	Path  string // where the template defines it, e.g. "registers[3]"
	Type  ValueType
	Unit  string
	Event *EventRule
	Range *Range
	// Writable signals can be set by a command from the hub (an output, a
	// coil, a holding register); a number only within Limits, when given.
	Writable bool
	Limits   *Range
	// Report, when set, is the signal's report by exception.
	Report *Report
	// Fast signals are read at the device's alarm_poll as well as at its
	// poll: those with an event rule, and those that come in the same
	// answer as one. The gateway publishes what a fast read changed, so
	// their reads are many more than their readings at the hub.
	Fast bool
	// Source, where the family has one, is where on the wire the raw
	// value is read ("input register 1"), and Conversion how it becomes
	// the signal's value ("int16 × 0.1"). A station's template that reads
	// a built-in template's signal from the same source another way is
	// warned about: one of the two misreads that device.
	Source, Conversion string
}

// Report is a signal's report by exception: a reading is sent when its
// value moved by more than the deadband from the last one sent, when its
// quality changed, or when the signal has been silent for max_silence;
// otherwise the hub keeps the last value sent. A bool or a string is sent
// when it changes (deadband 0). A signal with an event rule takes none: it
// is always sent. See docs/operations.md.
type Report struct {
	// Deadband is the change, in the signal's unit, that a number must
	// exceed to be sent; 0 sends every change. Give deadband or
	// deadband_percent.
	Deadband *float64 `yaml:"deadband" example:"0.3"`
	// DeadbandPercent is the deadband as a percentage of the last value
	// sent, above 0 and at most 100: a number is sent when it moved by
	// more than this share of that value (any change, when it was 0).
	DeadbandPercent *float64 `yaml:"deadband_percent" example:"1"`
	// MaxSilence is the longest the signal goes unsent while its device
	// answers, 1s to 24h: its value is then sent unchanged, so that the
	// hub can tell a value that holds from one that is lost.
	MaxSilence time.Duration `yaml:"max_silence" default:"15m" example:"5m"`
}

// AlarmPoller is implemented by the settings of a device whose protocol
// can read its alarm inputs on their own (alarm_poll), to say whether it
// does.
type AlarmPoller interface{ AlarmPolled() bool }

// Poller is the settings of a device the gateway polls: how often.
type Poller interface{ PollEvery() time.Duration }

// Fast says whether the device reads its signal s at its alarm poll: a
// fast signal of its template, unless its alarm polls are off.
func (d *Device) Fast(s Signal) bool {
	if ap, ok := d.Settings.(AlarmPoller); ok && !ap.AlarmPolled() {
		return false
	}
	return s.Fast
}

// Action is a named command a device offers the hub: acknowledge a panic
// (light the button's LED), sound a siren for a while, show a request's
// status on a kiosk's screen.
type Action struct {
	// Name of the action in commands: lower-case letters, digits, '_';
	// not "set", which every writable signal takes.
	Name string `yaml:"name" required:"true" example:"siren_on"`
	// Description is a line for the duty desk.
	Description string `yaml:"description" example:"Sound the siren; it stops by itself"`
	// Set lists the writable signals the action sets, in order; required
	// unless the template's family sends actions to the device as
	// messages (mqtt), where it is not allowed.
	Set []Setting `yaml:"set"`
	// Args are the arguments a command of the action carries to a device
	// that takes actions as messages (mqtt): each checked by the gateway
	// before the command is sent.
	Args []Field `yaml:"args"`
	// For, when set, is how long the action lasts: the gateway then sets
	// the signals back by itself (to Then, or booleans to the opposite),
	// also after a restart. A command may ask for less.
	For time.Duration `yaml:"for" example:"3m"`
	// Then lists what the signals are set to when For has passed; needed
	// for numbers.
	Then []Setting `yaml:"then"`
}

// Field is a named value of a message: a detail of an event a device
// sends, or an argument of a command sent to a device. The gateway checks
// it against its type, and a string against its length and choices.
type Field struct {
	// Name is the field's name at the hub (an event's detail, a
	// command's argument): lower-case letters, digits, '_'.
	Name string `yaml:"name" required:"true" example:"status"`
	// Type is string, number or bool.
	Type ValueType `yaml:"type" default:"string" example:"number"`
	// Required fields must be present; others may be missing.
	Required bool `yaml:"required" example:"true"`
	// Enum, for a string, lists the values it may take.
	Enum []string `yaml:"enum" example:"[received, dispatched, on_scene, closed]"`
	// MaxLen is the longest string, in bytes of UTF-8, 1 to 4096.
	MaxLen int `yaml:"max_len" default:"256" example:"600"`
	// Range, for a number, bounds it.
	Range *Range `yaml:"range"`
}

// Value checks a field's value as JSON decodes it (a string, a float64 or
// a bool) and returns it as the text of an event detail.
func (f *Field) Value(v any) (string, error) {
	switch f.Type {
	case Bool:
		b, ok := v.(bool)
		if !ok {
			return "", fmt.Errorf("%s must be true or false, not %s", f.Name, jsonKind(v))
		}
		return strconv.FormatBool(b), nil
	case Number:
		n, ok := v.(float64)
		if !ok {
			return "", fmt.Errorf("%s must be a number, not %s", f.Name, jsonKind(v))
		}
		if f.Range != nil && !f.Range.Contains(n) {
			return "", fmt.Errorf("%s is %v, out of range (%v to %v)", f.Name, n, f.Range.Min, f.Range.Max)
		}
		return strconv.FormatFloat(n, 'f', -1, 64), nil
	}
	s, ok := v.(string)
	switch {
	case !ok:
		return "", fmt.Errorf("%s must be a string, not %s", f.Name, jsonKind(v))
	case !utf8.ValidString(s):
		return "", fmt.Errorf("%s is not valid UTF-8", f.Name)
	case len(s) > f.MaxLen:
		return "", fmt.Errorf("%s is %d bytes long (at most %d)", f.Name, len(s), f.MaxLen)
	case len(f.Enum) > 0 && !slices.Contains(f.Enum, s):
		return "", fmt.Errorf("%s is %q (expected one of: %s)", f.Name, s, strings.Join(f.Enum, ", "))
	}
	for _, r := range s {
		if unicode.IsControl(r) && r != '\n' {
			return "", fmt.Errorf("%s holds control character %U", f.Name, r)
		}
	}
	return s, nil
}

// jsonKind names what JSON decoded v from, for errors.
func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case float64:
		return "a number"
	case bool:
		return "true/false"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}

// Check checks a field's definition.
func (f *Field) Check(p Problems) {
	if !signalPattern.MatchString(f.Name) {
		p.Errorf("name", "%q is not a field name (lower-case letters, digits, '_')", f.Name)
	}
	if f.MaxLen < 1 || f.MaxLen > 4096 {
		p.Errorf("max_len", "%d is out of range (1 to 4096)", f.MaxLen)
	}
	if len(f.Enum) > 0 && f.Type != Text {
		p.Errorf("enum", "only a string field takes enum")
	}
	if f.Range != nil && f.Type != Number {
		p.Errorf("range", "only a number field takes range")
	}
}

// Setting is a value for a writable signal.
type Setting struct {
	// Signal is a writable signal of the template.
	Signal string `yaml:"signal" required:"true" example:"siren"`
	// Value is true, false or a number, as the signal's type.
	Value Literal `yaml:"value" required:"true" example:"true"`
}

// Literal is a value written in a file: true, false or a number.
type Literal struct{ model.Value }

// Accepts says whether a command may set the signal to v: it must be
// writable, v of its type, and a number within its limits.
func (sg *Signal) Accepts(v model.Value) error {
	if !sg.Writable {
		return fmt.Errorf("%s is not writable", sg.Name)
	}
	switch sg.Type {
	case Bool:
		if _, ok := v.AsBool(); !ok {
			return fmt.Errorf("%s takes true or false, not %v", sg.Name, v)
		}
	case Number:
		f, ok := v.Float()
		if !ok {
			return fmt.Errorf("%s takes a number, not %v", sg.Name, v)
		}
		if l := sg.Limits; l != nil && !l.Contains(f) {
			return fmt.Errorf("%v is out of range for %s (%v to %v)", f, sg.Name, l.Min, l.Max)
		}
	default:
		return fmt.Errorf("%s is a %s and cannot be set", sg.Name, sg.Type)
	}
	return nil
}

// ValueType is the kind of value a signal has.
type ValueType string

const (
	Number ValueType = "number"
	Bool   ValueType = "bool"
	Text   ValueType = "string"
)

// Values lists the value types a template may name.
func (ValueType) Values() []string { return []string{string(Number), string(Bool), string(Text)} }

// Range is a closed interval of plausible values.
type Range struct {
	// Min is the lowest plausible value.
	Min float64 `yaml:"min" required:"true" example:"-40"`
	// Max is the highest plausible value.
	Max float64 `yaml:"max" required:"true" example:"80"`
}

// Contains reports whether v lies in the range.
func (r *Range) Contains(v float64) bool { return v >= r.Min && v <= r.Max }

// EventRule raises an event when a bool signal turns true (and, if Clear is
// set, another when it turns false again).
type EventRule struct {
	// Kind of the event at the hub (panic, smoke, door, tamper, ...).
	Kind string `yaml:"kind" required:"true" example:"smoke"`
	// Severity of the event.
	Severity model.Severity `yaml:"severity" default:"critical" example:"warning"`
	// Clear raises a second event (severity info, state cleared) when the
	// signal turns false again.
	Clear bool `yaml:"clear" example:"true"`
}

// Wave is the shape of a simulated signal.
type Wave string

// Values lists the waves a Sim may name.
func (Wave) Values() []string {
	return []string{"constant", "daily", "random", "counter", "toggle", "text"}
}

// Sim describes a simulated signal.
type Sim struct {
	// Wave is constant, daily (a 24h curve), random (a random walk),
	// counter (increasing), toggle (a bool that flips with probability
	// Rate per second) or text.
	Wave Wave `yaml:"wave" required:"true" example:"daily"`
	// Min is the lowest value of daily and random.
	Min float64 `yaml:"min" example:"16"`
	// Max is the highest value of daily and random.
	Max float64 `yaml:"max" example:"29"`
	// Noise is added at random, up to this much either way.
	Noise float64 `yaml:"noise" example:"0.3"`
	// Rate is the counter's increase per second, or the toggle's
	// probability per second.
	Rate float64 `yaml:"rate" example:"0.01"`
	// Text is the value of text.
	Text string `yaml:"text" example:"UPS-3K"`
	// Value is the value of constant.
	Value float64 `yaml:"value" example:"21.5"`
}

// Redact returns a URL without the password it may carry
// (tcp://user:xxxxx@host:1883), for logs and reports. A string that is not
// a URL comes back as it is.
func Redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, has := u.User.Password(); has {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
