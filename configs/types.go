// Package configs holds the station files and device templates, and the code
// that loads them. The gateway and the simulator both read them through this
// package, so one station file drives both ends of the wire.
//
// Loading is strict: unknown keys, wrong types, missing fields and every
// cross-reference error are reported together, each as FILE:LINE:COL.
package configs

import (
	"net/url"
	"path/filepath"
	"time"

	"outpost/gateway/model"
)

// Station is one station file.
type Station struct {
	// Version of the station file format; this gateway reads 1.
	Version int `yaml:"version" required:"true" example:"1"`
	// Station says which station this is.
	Station StationID `yaml:"station" required:"true"`
	// StateDir is where the gateway keeps its queues and sequence numbers;
	// default /var/lib/outpost/<station id>. See docs/operations.md.
	StateDir string `yaml:"state_dir" example:"/var/lib/outpost/pr-0001"`
	// Hub is the city-brain hub the station reports to.
	Hub Hub `yaml:"hub" required:"true"`
	// Queue sizes the durable store-and-forward queue.
	Queue Queue `yaml:"queue"`
	// Buses are the station's serial lines (RS-485).
	Buses []Bus `yaml:"buses"`
	// Endpoints are the station's Modbus TCP endpoints.
	Endpoints []Endpoint `yaml:"endpoints"`
	// Devices are the station's devices, each on a bus or an endpoint.
	Devices []Device `yaml:"devices" required:"true"`

	// File is the path the station was loaded from.
	File string `yaml:"-"`
	// Templates holds the template of every device, by template name.
	Templates map[string]*Template `yaml:"-"`
}

// Uplinks names the hub stores the station sends to: "mqtt", and
// "influx" when InfluxDB is configured. Each has a queue of its own.
func (st *Station) Uplinks() []string {
	if st.Hub.Influx != nil {
		return []string{"mqtt", "influx"}
	}
	return []string{"mqtt"}
}

// QueueDir is where the gateway keeps the durable queue of an uplink.
func (st *Station) QueueDir(uplink string) string {
	return filepath.Join(st.StateDir, "queue", uplink)
}

// DeadLetterDir is where the gateway keeps the messages the hub refused
// for good.
func (st *Station) DeadLetterDir() string { return filepath.Join(st.StateDir, "deadletter") }

// SeqFile is where the gateway keeps its per-device sequence numbers.
func (st *Station) SeqFile() string { return filepath.Join(st.StateDir, "seq.json") }

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
}

// MQTT broker settings.
type MQTT struct {
	// URL of the broker: tcp:// (or mqtt://), or ssl:// (tls://, mqtts://)
	// for TLS, with a port.
	URL string `yaml:"url" required:"true" example:"ssl://hub.example.org:8883"`
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
	// BatchSize is the number of points per write, 1 to 10000.
	BatchSize int `yaml:"batch_size" default:"500" example:"500"`
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

// Parity of a serial line.
type Parity string

const (
	ParityNone Parity = "none"
	ParityEven Parity = "even"
	ParityOdd  Parity = "odd"
)

// Values lists the parities a station file may name.
func (Parity) Values() []string { return []string{"none", "even", "odd"} }

// Bus is a serial line (RS-485) carrying Modbus RTU.
type Bus struct {
	// ID names the bus in devices[].bus.
	ID string `yaml:"id" required:"true" example:"rs485-1"`
	// Protocol is the driver that speaks on this bus.
	Protocol string `yaml:"protocol" default:"modbus-rtu" example:"modbus-rtu"`
	// Port is the serial port; prefer its stable /dev/serial/by-id path.
	Port string `yaml:"port" required:"true" example:"/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0"`
	// Baud is the line speed, 300 to 4000000.
	Baud int `yaml:"baud" required:"true" example:"9600"`
	// Parity of every character.
	Parity Parity `yaml:"parity" default:"none" example:"even"`
	// DataBits per character, 7 or 8.
	DataBits int `yaml:"data_bits" default:"8" example:"8"`
	// StopBits per character, 1 or 2.
	StopBits int `yaml:"stop_bits" default:"1" example:"1"`
	// Timeout is how long a device has to answer a request, 1ms to 1m,
	// beyond the frames' own time on the wire.
	Timeout time.Duration `yaml:"timeout" default:"500ms" example:"300ms"`
	// Retries are extra tries of a request that failed, 0 to 10.
	Retries int `yaml:"retries" default:"1" example:"0"`
	// Turnaround is how long devices on this bus take to answer; the
	// planner weighs it against the bytes of skipped registers.
	Turnaround time.Duration `yaml:"turnaround" default:"5ms" example:"20ms"`
}

// Endpoint is a Modbus TCP endpoint (a device or a gateway with unit ids).
type Endpoint struct {
	// ID names the endpoint in devices[].endpoint.
	ID string `yaml:"id" required:"true" example:"meter-lan"`
	// Protocol is the driver that speaks to this endpoint.
	Protocol string `yaml:"protocol" default:"modbus-tcp" example:"modbus-tcp"`
	// Address is host:port.
	Address string `yaml:"address" required:"true" example:"192.168.10.20:502"`
	// Timeout is how long the endpoint has to answer a request, 1ms to 1m.
	Timeout time.Duration `yaml:"timeout" default:"1s" example:"500ms"`
	// Retries are extra tries of a request that failed, 0 to 10.
	Retries int `yaml:"retries" default:"1" example:"0"`
}

// Device is one device at the station.
type Device struct {
	// ID names the device at the hub: letters, digits, '_', '-', '.'; at
	// most 64.
	ID string `yaml:"id" required:"true" example:"th-hall"`
	// Template is the device's template: devices/<name>.yaml beside the
	// station file, or a built-in one.
	Template string `yaml:"template" required:"true" example:"xy-md02"`
	// Bus is the id of the bus the device is on (give bus or endpoint).
	Bus string `yaml:"bus" example:"rs485-1"`
	// Endpoint is the id of the endpoint the device is behind.
	Endpoint string `yaml:"endpoint" example:"meter-lan"`
	// UnitID is the device's Modbus address: 1 to 247 on a bus, 0 to 255
	// behind an endpoint.
	UnitID int `yaml:"unit_id" required:"true" example:"1"`
	// Poll is how often the device is read, 10ms to 24h.
	Poll time.Duration `yaml:"poll" default:"1s" example:"2s"`
}

// Table is a Modbus table.
type Table string

const (
	Coil     Table = "coil"
	Discrete Table = "discrete"
	Input    Table = "input"
	Holding  Table = "holding"
)

// Values lists the tables a template may name.
func (Table) Values() []string { return []string{"coil", "discrete", "input", "holding"} }

// IsBits reports whether the table holds bits (coils, discrete inputs).
func (t Table) IsBits() bool { return t == Coil || t == Discrete }

// DataType of a register value.
type DataType string

const (
	TypeBool    DataType = "bool"
	TypeInt16   DataType = "int16"
	TypeUint16  DataType = "uint16"
	TypeInt32   DataType = "int32"
	TypeUint32  DataType = "uint32"
	TypeFloat32 DataType = "float32"
	TypeFloat64 DataType = "float64"
	TypeString  DataType = "string"
)

// Values lists the data types a template may name.
func (DataType) Values() []string {
	return []string{"bool", "int16", "uint16", "int32", "uint32", "float32", "float64", "string"}
}

// ByteOrder of a multi-byte value, as letters of its big-endian bytes: ABCD is
// big-endian, CDAB swaps 16-bit words, BADC swaps bytes within words, DCBA is
// little-endian. For 16- and 64-bit values the same two swaps apply.
type ByteOrder string

const (
	ABCD ByteOrder = "ABCD"
	CDAB ByteOrder = "CDAB"
	BADC ByteOrder = "BADC"
	DCBA ByteOrder = "DCBA"
)

// Values lists the byte orders a template may name.
func (ByteOrder) Values() []string { return []string{"ABCD", "CDAB", "BADC", "DCBA"} }

// SwapWords reports whether the order reverses the order of 16-bit words.
func (o ByteOrder) SwapWords() bool { return o == CDAB || o == DCBA }

// SwapBytes reports whether the order swaps the two bytes of each word.
func (o ByteOrder) SwapBytes() bool { return o == BADC || o == DCBA }

// Template describes a device model: its kind and register map.
type Template struct {
	// Name is the template's name, the file's name without .yaml.
	Name string `yaml:"template" required:"true" example:"xy-md02"`
	// Kind is the device kind in the hub's model (the InfluxDB
	// measurement): lower-case letters, digits, '_'.
	Kind string `yaml:"kind" required:"true" example:"temp_humidity"`
	// Description is a line for people.
	Description string `yaml:"description" example:"XY-MD02 temperature and humidity sensor"`
	// ReadGaps says the device answers reads of unmapped addresses between
	// its mapped ones, so the planner may merge reads across gaps. Many
	// real devices answer such a read with an exception: leave it false
	// unless the device's documentation says so.
	ReadGaps bool `yaml:"read_gaps" example:"true"`
	// Registers map the device's signals.
	Registers []Register `yaml:"registers" required:"true"`

	File string `yaml:"-"`
}

// Register maps one signal onto the device's tables.
type Register struct {
	// Signal is the signal's name at the hub: lower-case letters, digits,
	// '_'; not seq, historical or ending in _quality.
	Signal string `yaml:"signal" required:"true" example:"temperature"`
	// Table is the Modbus table: coils and discrete inputs hold bits,
	// input and holding registers 16-bit words.
	Table Table `yaml:"table" required:"true" example:"input"`
	// Address is the 0-based protocol address of the first register or
	// bit (see Addresses below).
	Address int `yaml:"address" required:"true" example:"0x2000"`
	// Type of the value; a bit table holds bool only.
	Type DataType `yaml:"type" required:"true" example:"float32"`
	// Order of the value's bytes (see Byte orders below).
	Order ByteOrder `yaml:"order" default:"ABCD" example:"CDAB"`
	// Length of a string in registers, 1 to 125 (two characters each).
	Length int `yaml:"length" example:"8"`
	// Bit selects one bit (0 to 15) of a register for a bool on an input
	// or holding register; without it a bool is the register != 0.
	Bit *int `yaml:"bit" example:"3"`
	// Scale multiplies the raw value (in decimal: 234 at 0.1 is 23.4).
	Scale float64 `yaml:"scale" default:"1" example:"0.1"`
	// Offset is added after the scale.
	Offset float64 `yaml:"offset" example:"-40"`
	// Unit of the value after scale and offset, as the hub shows it.
	Unit string `yaml:"unit" example:"°C"`
	// Range is the device's measuring range from its datasheet, after
	// scale and offset: a value outside it is published with quality
	// uncertain, as a sign of a wrong template or a failing sensor.
	Range *Range `yaml:"range"`
	// Event, on a bool signal, raises an event when it becomes true.
	Event *EventRule `yaml:"event"`
	// Sim tells the simulator how to make this signal's values; the
	// gateway ignores it.
	Sim *Sim `yaml:"sim"`
}

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

// Words is how many 16-bit registers a value of this type takes, or 0 for a
// bit.
func (r *Register) Words() int {
	switch r.Type {
	case TypeBool:
		if r.Table.IsBits() {
			return 0
		}
		return 1
	case TypeInt16, TypeUint16:
		return 1
	case TypeInt32, TypeUint32, TypeFloat32:
		return 2
	case TypeFloat64:
		return 4
	case TypeString:
		return r.Length
	}
	return 0
}

// Span is how many table entries (bits or registers) the register covers.
func (r *Register) Span() int {
	if r.Table.IsBits() {
		return 1
	}
	return r.Words()
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
