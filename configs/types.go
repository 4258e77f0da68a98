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
	Version   int        `yaml:"version" required:"true"`
	Station   StationID  `yaml:"station" required:"true"`
	StateDir  string     `yaml:"state_dir"`
	Hub       Hub        `yaml:"hub" required:"true"`
	Queue     Queue      `yaml:"queue"`
	Buses     []Bus      `yaml:"buses"`
	Endpoints []Endpoint `yaml:"endpoints"`
	Devices   []Device   `yaml:"devices" required:"true"`

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

// SeqFile is where the gateway keeps its per-device sequence numbers.
func (st *Station) SeqFile() string { return filepath.Join(st.StateDir, "seq.json") }

// StationID names the station.
type StationID struct {
	ID   string            `yaml:"id" required:"true"`
	Type model.StationType `yaml:"type" required:"true"`
	Name string            `yaml:"name"`
}

// Hub is the city-brain hub: an MQTT broker and, optionally, InfluxDB.
type Hub struct {
	MQTT   MQTT    `yaml:"mqtt" required:"true"`
	Influx *Influx `yaml:"influx"`
}

// MQTT broker settings.
type MQTT struct {
	URL      string `yaml:"url" required:"true"` // tcp://host:port, ssl://host:port
	ClientID string `yaml:"client_id"`           // default outpost-<station id>
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	TLS      *TLS   `yaml:"tls"`
	// Topic prefix; default "outpost/v1".
	TopicPrefix string `yaml:"topic_prefix"`
}

// TLS files.
type TLS struct {
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Influx is InfluxDB (2.x API; 1.8 accepts it with bucket "db" or "db/rp").
type Influx struct {
	URL    string `yaml:"url" required:"true"`
	Token  string `yaml:"token"`
	Org    string `yaml:"org"`
	Bucket string `yaml:"bucket" required:"true"`
	// BatchSize is the number of points per write; default 500.
	BatchSize int `yaml:"batch_size" default:"500"`
}

// Queue is the durable store-and-forward queue.
type Queue struct {
	// MaxBytes caps the queue on disk per uplink; default 256 MiB. When it is
	// reached the oldest telemetry is dropped and counted; events never are.
	MaxBytes int64 `yaml:"max_bytes" default:"268435456"`
	// Sync is how often appended data is flushed to disk (group commit);
	// default 100ms. "always" is 0.
	Sync time.Duration `yaml:"sync" default:"100ms"`
}

// Parity of a serial line.
type Parity string

const (
	ParityNone Parity = "none"
	ParityEven Parity = "even"
	ParityOdd  Parity = "odd"
)

// Bus is a serial line (RS-485) carrying Modbus RTU.
type Bus struct {
	ID string `yaml:"id" required:"true"`
	// Protocol is the driver that speaks on this bus; default modbus-rtu.
	Protocol string        `yaml:"protocol" default:"modbus-rtu"`
	Port     string        `yaml:"port" required:"true"`
	Baud     int           `yaml:"baud" required:"true"`
	Parity   Parity        `yaml:"parity" default:"none"`
	DataBits int           `yaml:"data_bits" default:"8"`
	StopBits int           `yaml:"stop_bits" default:"1"`   // default 1
	Timeout  time.Duration `yaml:"timeout" default:"500ms"` // per request
	Retries  int           `yaml:"retries" default:"1"`     // extra tries per request
	// Turnaround is how long devices on this bus take to answer; the planner
	// weighs it against the bytes of skipped registers. Default 5ms.
	Turnaround time.Duration `yaml:"turnaround" default:"5ms"`
}

// Endpoint is a Modbus TCP endpoint (a device or a gateway with unit ids).
type Endpoint struct {
	ID string `yaml:"id" required:"true"`
	// Protocol is the driver that speaks to this endpoint; default modbus-tcp.
	Protocol string        `yaml:"protocol" default:"modbus-tcp"`
	Address  string        `yaml:"address" required:"true"` // host:port
	Timeout  time.Duration `yaml:"timeout" default:"1s"`
	Retries  int           `yaml:"retries" default:"1"`
}

// Device is one device at the station.
type Device struct {
	ID       string        `yaml:"id" required:"true"`
	Template string        `yaml:"template" required:"true"`
	Bus      string        `yaml:"bus"`      // a bus id, or
	Endpoint string        `yaml:"endpoint"` // an endpoint id
	UnitID   int           `yaml:"unit_id" required:"true"`
	Poll     time.Duration `yaml:"poll" default:"1s"`
}

// Table is a Modbus table.
type Table string

const (
	Coil     Table = "coil"
	Discrete Table = "discrete"
	Input    Table = "input"
	Holding  Table = "holding"
)

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

// SwapWords reports whether the order reverses the order of 16-bit words.
func (o ByteOrder) SwapWords() bool { return o == CDAB || o == DCBA }

// SwapBytes reports whether the order swaps the two bytes of each word.
func (o ByteOrder) SwapBytes() bool { return o == BADC || o == DCBA }

// Template describes a device model: its kind and register map.
type Template struct {
	Name        string `yaml:"template" required:"true"`
	Kind        string `yaml:"kind" required:"true"` // device kind in the model
	Description string `yaml:"description"`
	// ReadGaps says the device answers reads of unmapped addresses between
	// its mapped ones, so the planner may read across gaps. Default true.
	ReadGaps  *bool      `yaml:"read_gaps"`
	Registers []Register `yaml:"registers" required:"true"`

	File string `yaml:"-"`
}

// GapsReadable is ReadGaps with its default.
func (t *Template) GapsReadable() bool { return t.ReadGaps == nil || *t.ReadGaps }

// Register maps one signal onto the device's tables.
type Register struct {
	Signal  string    `yaml:"signal" required:"true"`
	Table   Table     `yaml:"table" required:"true"`
	Address int       `yaml:"address" required:"true"`
	Type    DataType  `yaml:"type" required:"true"`
	Order   ByteOrder `yaml:"order" default:"ABCD"`
	Length  int       `yaml:"length"` // registers, for strings
	// Bit selects one bit (0..15) of a register for a bool on a register table.
	Bit    *int    `yaml:"bit"`
	Scale  float64 `yaml:"scale" default:"1"`
	Offset float64 `yaml:"offset"`
	Unit   string  `yaml:"unit"`
	// Range is the device's measuring range from its datasheet, after
	// scale and offset: a value outside it is published with quality
	// uncertain, as a sign of a wrong template or a failing sensor.
	Range *Range `yaml:"range"`
	// Event, when set, raises an event when the signal becomes true.
	Event *EventRule `yaml:"event"`
	// Sim tells the simulator how to make this signal's values. The gateway
	// ignores it.
	Sim *Sim `yaml:"sim"`
}

// Range is a closed interval of plausible values.
type Range struct {
	Min float64 `yaml:"min" required:"true"`
	Max float64 `yaml:"max" required:"true"`
}

// Contains reports whether v lies in the range.
func (r *Range) Contains(v float64) bool { return v >= r.Min && v <= r.Max }

// EventRule raises an event when a bool signal turns true (and, if Clear is
// set, another when it turns false again).
type EventRule struct {
	Kind     string         `yaml:"kind" required:"true"`
	Severity model.Severity `yaml:"severity" default:"critical"`
	Clear    bool           `yaml:"clear"`
}

// SimWaves are the waves a Sim may name.
var SimWaves = []string{"constant", "daily", "random", "counter", "toggle", "text"}

// Sim describes a simulated signal.
type Sim struct {
	// Wave is constant, daily (a 24h curve), random (a random walk),
	// counter (increasing), toggle (a bool that flips with probability P per
	// second) or text.
	Wave  string  `yaml:"wave" required:"true"`
	Min   float64 `yaml:"min"`
	Max   float64 `yaml:"max"`
	Noise float64 `yaml:"noise"`
	Rate  float64 `yaml:"rate"` // counter increase per second; toggle probability per second
	Text  string  `yaml:"text"`
	Value float64 `yaml:"value"` // constant
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
