// Package mqtt is the MQTT part of station files and device templates: the
// settings of mqtt links (the broker the station's devices publish to:
// one the gateway embeds, or an external one it subscribes to), of the
// devices on them (credentials, rate and size limits, heartbeats), and
// the template format of their payloads (family mqtt): which message, on
// which topic, carries which signals and events, by the path of each
// field in its JSON. The gateway's driver (drivers/mqtt) and the simulated
// devices (firmware-sim/mqtt) both read them from here.
//
// A device's topics are {prefix}/{device}/{message} for what it
// publishes, {prefix}/{device}/cmd for the commands it is sent and
// {prefix}/{device}/cmd/ack for its answers, {prefix}/{device}/state for
// its birth and last will. docs/kiosks.md is the contract for device
// vendors.
package mqtt

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// Protocol and Family are the names station files and templates use.
const (
	Protocol = "mqtt"
	Family   = "mqtt"
)

func init() {
	configs.RegisterFamily(Family, configs.Family{Template: func() configs.Body { return &Template{} }, Messages: true})
	configs.Register(Protocol, configs.Protocol{Family: Family,
		Link: func() any { return &Link{} }, Device: func() any { return &Device{} }, Check: checkLink})
}

// Topics below a device's own: its commands, its answers to them, its
// birth and last will.
const (
	CmdTopic   = "cmd"
	AckTopic   = "cmd/ack"
	StateTopic = "state"
)

// Link is an mqtt link: the broker of the station's devices.
type Link struct {
	// Listen is the host:port of the broker the gateway embeds for the
	// station's devices: an address on the station's LAN, never the hub
	// side. Either listen or broker.
	Listen string `yaml:"listen" example:"192.168.10.1:1883"`
	// TLS makes the embedded broker speak TLS only.
	TLS *TLS `yaml:"tls"`
	// Credentials is the devices' password file: one line per device,
	// DEVICE:HASH, as mosquitto_passwd writes it (PBKDF2-SHA512, $7$),
	// or gateway passwd; relative to the station file unless absolute,
	// readable by the gateway's user only (chmod 600). Required with
	// listen: every device of the link needs its line.
	Credentials string `yaml:"credentials" example:"/etc/outpost/devices.passwd"`
	// Broker is the URL of an external station broker (tcp:// or ssl://)
	// the gateway subscribes to instead of embedding one; the broker
	// then enforces the devices' credentials and topics (see
	// docs/kiosks.md). The gateway's client id there is
	// outpost-{station}-{link}, with a persistent session.
	Broker string `yaml:"broker" example:"tcp://192.168.10.2:1883"`
	// Username is the gateway's user name at an external broker;
	// required with broker.
	Username string `yaml:"username" example:"outpost-gateway"`
	// PasswordFile holds the gateway's password at an external broker on
	// one line; relative to the station file unless absolute, readable by
	// the gateway's user only (chmod 600). Required with broker.
	PasswordFile string `yaml:"password_file" example:"/etc/outpost/station-broker.pass"`
	// Prefix is the first level of every device topic.
	Prefix string `yaml:"prefix" default:"dev" example:"station"`
	// MaxPayload is the largest message a device may publish, 256 to
	// 1048576 bytes; a larger one is refused and counted.
	MaxPayload int `yaml:"max_payload" default:"65536" example:"16384"`
	// MaxConnections caps the devices connected at once, 1 to 10000.
	MaxConnections int `yaml:"max_connections" default:"256" example:"64"`

	creds    Credentials // read from Credentials when the station is loaded
	password string      // read from PasswordFile when the station is loaded
}

// Devices are the devices' credentials read from the password file when
// the station was loaded (nil for an external broker).
func (l *Link) Devices() Credentials { return l.creds }

// Password is the gateway's password at an external broker, read from
// PasswordFile when the station was loaded.
func (l *Link) Password() string { return l.password }

// TLS is the embedded broker's certificate.
type TLS struct {
	// CertFile is the broker's certificate chain (PEM).
	CertFile string `yaml:"cert_file" required:"true" example:"/etc/outpost/tls/station.crt"`
	// KeyFile is its private key (PEM), readable by the gateway's user
	// only.
	KeyFile string `yaml:"key_file" required:"true" example:"/etc/outpost/tls/station.key"`
}

// Embedded says the gateway runs the broker.
func (l *Link) Embedded() bool { return l.Broker == "" }

// ListenAddr is where the embedded broker listens ("" with an external
// broker).
func (l *Link) ListenAddr() string { return l.Listen }

var prefixPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// Check checks the link's settings.
func (l *Link) Check(p configs.Problems) {
	switch {
	case l.Listen == "" && l.Broker == "":
		p.Errorf("listen", "an mqtt link needs listen (the embedded broker's host:port, e.g. 192.168.10.1:1883) or broker (an external broker's URL)")
	case l.Listen != "" && l.Broker != "":
		p.Errorf("broker", "give listen (the embedded broker) or broker (an external one), not both")
	case l.Listen != "":
		if _, port, err := net.SplitHostPort(l.Listen); err != nil || port == "" {
			p.Errorf("listen", "%q is not host:port (e.g. 192.168.10.1:1883)", l.Listen)
		}
		if l.Credentials == "" {
			p.Errorf("credentials", "the embedded broker needs the devices' password file (see docs/kiosks.md: gateway passwd)")
		}
		for _, k := range []struct{ key, v string }{{"username", l.Username}, {"password_file", l.PasswordFile}} {
			if k.v != "" {
				p.Errorf(k.key, "only a link to an external broker takes %s", k.key)
			}
		}
	default:
		u, err := url.Parse(l.Broker)
		if err != nil || (u.Scheme != "tcp" && u.Scheme != "ssl") || u.Host == "" {
			p.Errorf("broker", "%q is not a broker URL (tcp://host:port or ssl://host:port)", l.Broker)
		}
		if l.TLS != nil {
			p.Errorf("tls", "tls is the embedded broker's; an external broker's URL says ssl://")
		}
		if l.Credentials != "" {
			p.Errorf("credentials", "an external broker checks the devices' credentials itself")
		}
		if l.Username == "" {
			p.Errorf("username", "the gateway needs a user name at the external broker, one that may read %s/# and write %s/+/cmd (see docs/kiosks.md)", l.Prefix, l.Prefix)
		}
		if l.PasswordFile == "" {
			p.Errorf("password_file", "the gateway needs the file of its password at the external broker (chmod 600)")
		}
	}
	if !prefixPattern.MatchString(l.Prefix) {
		p.Errorf("prefix", "%q is not a topic level (1 to 32 letters, digits, '_', '-')", l.Prefix)
	}
	if l.MaxPayload < 256 || l.MaxPayload > 1<<20 {
		p.Errorf("max_payload", "%d is out of range (256 to 1048576)", l.MaxPayload)
	}
	if l.MaxConnections < 1 || l.MaxConnections > 10000 {
		p.Errorf("max_connections", "%d is out of range (1 to 10000)", l.MaxConnections)
	}
}

// Warnings says what in valid settings will not work as meant (gateway
// validate prints it).
func (l *Link) Warnings() []string {
	host, _, err := net.SplitHostPort(l.Listen)
	if l.Listen == "" || err != nil {
		return nil
	}
	if configs.EveryAddress(host) {
		return []string{fmt.Sprintf("the station broker listens on every address of the box (%s), the hub's side too: give its address on the station LAN (e.g. 192.168.10.1:1883)", l.Listen)}
	}
	return nil
}

// Device is an MQTT device's settings. Its client id and user name at
// the broker are its id.
type Device struct {
	// Rate is how many messages a second the device may publish on
	// average, 0.1 to 1000: telemetry faster than that is refused and
	// counted; events wait their turn (see docs/kiosks.md).
	Rate float64 `yaml:"rate" default:"20" example:"5"`
	// Burst is how many messages the device may publish at once, beyond
	// its rate, 1 to 100000.
	Burst int `yaml:"burst" default:"40" example:"10"`
	// Silence is how long the device may send nothing before it is
	// offline, 1s to 24h; default three of its template's heartbeats.
	Silence time.Duration `yaml:"silence" example:"90s"`
	// Location is where the device stands, for the hub (a kiosk's
	// requests carry it unless the kiosk says its own).
	Location string `yaml:"location" example:"Xinhua Rd 12, east gate"`
	// Sim tells the simulated device how to log in; the gateway ignores
	// it.
	Sim *Sim `yaml:"sim"`
}

// Sim is a simulated MQTT device's side.
type Sim struct {
	// PasswordFile holds the device's password in plain text (the
	// station's password file holds its hash); relative to the station
	// file unless absolute.
	PasswordFile string `yaml:"password_file" required:"true" example:"sim/kiosk-1.pass"`
	// Telemetry is how often the simulated device sends its telemetry
	// message, 100ms to 1h.
	Telemetry time.Duration `yaml:"telemetry" default:"10s" example:"1s"`
}

// Check checks the device's settings.
func (d *Device) Check(p configs.Problems) {
	if d.Rate < 0.1 || d.Rate > 1000 {
		p.Errorf("rate", "%v is out of range (0.1 to 1000 messages a second)", d.Rate)
	}
	if d.Burst < 1 || d.Burst > 100000 {
		p.Errorf("burst", "%d is out of range (1 to 100000)", d.Burst)
	}
	if d.Silence != 0 && (d.Silence < time.Second || d.Silence > 24*time.Hour) {
		p.Errorf("silence", "%s is out of range (1s to 24h)", d.Silence)
	}
	if len(d.Location) > 256 {
		p.Errorf("location", "is %d bytes long (at most 256)", len(d.Location))
	}
}

// devicePattern is what the loader takes as a device id.
var devicePattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// checkLink reads the credentials of an embedded broker's devices, or the
// gateway's password at an external broker, and checks that every device
// has its line.
func checkLink(p configs.Problems, st *configs.Station, link *configs.Link) {
	l := link.Settings.(*Link)
	var creds Credentials
	if l.Embedded() && l.Credentials != "" {
		file := st.Path(l.Credentials)
		c, err := ReadCredentials(file)
		if err != nil {
			p.Errorf(fmt.Sprintf("links[%d].credentials", linkIndex(st, link)), "%v", err)
		} else {
			l.Credentials, l.creds, creds = file, c, c
		}
	}
	if !l.Embedded() && l.PasswordFile != "" {
		file := st.Path(l.PasswordFile)
		pw, err := ReadPassword(file)
		if err != nil {
			p.Errorf(fmt.Sprintf("links[%d].password_file", linkIndex(st, link)), "%v", err)
		} else {
			l.PasswordFile, l.password = file, pw
		}
	}
	for i := range st.Devices {
		dev := &st.Devices[i]
		if dev.Link != link.ID {
			continue
		}
		path := fmt.Sprintf("devices[%d]", i)
		// An id the loader takes is a topic level and a client id; one it
		// refuses was reported once already.
		if creds != nil && devicePattern.MatchString(dev.ID) && !creds.Has(dev.ID) {
			p.Errorf(path+".id", "%s has no line in %s: add it with gateway passwd -file %s %s", dev.ID, l.Credentials, l.Credentials, dev.ID)
		}
	}
}

func linkIndex(st *configs.Station, link *configs.Link) int {
	for i := range st.Links {
		if &st.Links[i] == link {
			return i
		}
	}
	return 0
}

// Template is an MQTT device's messages: for each, its topic below the
// device's own and what its JSON payload carries.
type Template struct {
	// Heartbeat is the message the device sends to say it is alive, and
	// how often.
	Heartbeat *Heartbeat `yaml:"heartbeat"`
	// Messages are what the device publishes.
	Messages []Message `yaml:"messages" required:"true"`
}

// Heartbeat is a device's sign of life.
type Heartbeat struct {
	// Message is the name of the message that is the heartbeat; any
	// message the device sends counts as a sign of life too.
	Message string `yaml:"message" required:"true" example:"heartbeat"`
	// Every is how often the device sends it, 1s to 1h.
	Every time.Duration `yaml:"every" required:"true" example:"30s"`
}

// Message is one message of a device: a topic and the JSON object it
// carries.
type Message struct {
	// Name is the message's topic below the device's own
	// ({prefix}/{device}/{name}): lower-case letters, digits, '_'.
	Name string `yaml:"name" required:"true" example:"telemetry"`
	// Time is the path of the device's own time of the message (RFC
	// 3339), if it sends one; the gateway's time of arrival otherwise, or
	// when the device's is more than a day off.
	Time string `yaml:"time" example:"ts"`
	// Signals are the readings the message carries.
	Signals []Value `yaml:"signals"`
	// Event makes the message an event.
	Event *Event `yaml:"event"`
	// Allow lists paths of fields the payload may carry beyond those the
	// template names; any other field is an error.
	Allow []string `yaml:"allow" example:"[fw_version]"`
}

// Value maps a field of a payload to a signal.
type Value struct {
	// Signal is the signal's name at the hub.
	Signal string `yaml:"signal" required:"true" example:"enclosure_temp"`
	// Path is the field's path in the JSON object, with dots between
	// levels ("env.temp_c").
	Path string `yaml:"path" required:"true" example:"env.temp_c"`
	// Type is number, bool or string.
	Type configs.ValueType `yaml:"type" default:"number" example:"bool"`
	// Scale multiplies a number.
	Scale float64 `yaml:"scale" default:"1" example:"0.1"`
	// Offset is added after the scale.
	Offset float64 `yaml:"offset" example:"-40"`
	// Unit of the value after scale and offset.
	Unit string `yaml:"unit" example:"°C"`
	// Range is the device's plausible range after scale and offset: a
	// value outside it has quality uncertain.
	Range *configs.Range `yaml:"range"`
	// Required fields must be in every message; a missing one is an
	// error. Others may be left out (the signal is then not sent).
	Required bool `yaml:"required" example:"true"`
	// Event, on a bool, raises an event when it becomes true (and clears
	// it when it turns false, with clear).
	Event *configs.EventRule `yaml:"event"`
	// Report sends the signal by exception: when it moved by more than
	// its deadband, or after max_silence (unless the station turns
	// report_by_exception off); without it every reading is sent.
	Report *configs.Report `yaml:"report"`
	// Sim tells the simulated device how to make the values.
	Sim *configs.Sim `yaml:"sim"`
}

// Event is what makes a message an event.
type Event struct {
	// Kind of the event at the hub.
	Kind string `yaml:"kind" required:"true" example:"service_request"`
	// Severity of the event.
	Severity model.Severity `yaml:"severity" default:"critical" example:"info"`
	// State is the path of a field that says "active" or "cleared";
	// without it every message is a new event.
	State string `yaml:"state" example:"state"`
	// Details are the fields the event carries to the hub.
	Details []Detail `yaml:"details"`
}

// Detail is a field of a payload carried as an event's detail.
type Detail struct {
	configs.Field `yaml:",inline"`
	// Path is the field's path in the JSON object; its name when empty.
	Path string `yaml:"path" example:"request.ticket"`
}

// Where is the detail's path.
func (d *Detail) Where() string {
	if d.Path == "" {
		return d.Name
	}
	return d.Path
}

// Signals lists the template's signals.
func (t *Template) Signals() []configs.Signal {
	var out []configs.Signal
	for i, m := range t.Messages {
		for j, v := range m.Signals {
			out = append(out, configs.Signal{Name: v.Signal, Path: fmt.Sprintf("messages[%d].signals[%d]", i, j),
				Type: v.Type, Unit: v.Unit, Event: v.Event, Range: v.Range, Report: v.Report})
		}
	}
	return out
}

// Message returns the template's message of a name.
func (t *Template) Message(name string) *Message {
	for i := range t.Messages {
		if t.Messages[i].Name == name {
			return &t.Messages[i]
		}
	}
	return nil
}

var (
	namePattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	pathPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63}){0,7}$`)
	kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

// Check checks the template: message names once each and not the
// gateway's own topics, paths, the heartbeat's message.
func (t *Template) Check(p configs.Problems) {
	seen := map[string]bool{}
	for i := range t.Messages {
		m, mp := &t.Messages[i], fmt.Sprintf("messages[%d]", i)
		switch {
		case !namePattern.MatchString(m.Name):
			p.Errorf(mp+".name", "%q is not a message name (lower-case letters, digits, '_')", m.Name)
		case m.Name == CmdTopic || m.Name == StateTopic:
			p.Errorf(mp+".name", "%q is a topic the gateway uses itself (cmd, state)", m.Name)
		case seen[m.Name]:
			p.Errorf(mp+".name", "message %q is listed twice", m.Name)
		}
		seen[m.Name] = true
		m.check(configs.Under(p, mp))
	}
	if t.Heartbeat != nil {
		if !seen[t.Heartbeat.Message] {
			p.Errorf("heartbeat.message", "the template has no message %q", t.Heartbeat.Message)
		}
		if t.Heartbeat.Every < time.Second || t.Heartbeat.Every > time.Hour {
			p.Errorf("heartbeat.every", "%s is out of range (1s to 1h)", t.Heartbeat.Every)
		}
	}
}

func (m *Message) check(p configs.Problems) {
	paths := map[string]string{}
	use := func(key, path string) {
		if !pathPattern.MatchString(path) {
			p.Errorf(key, "%q is not a field path (names of letters, digits and '_', dots between levels)", path)
			return
		}
		if first, dup := paths[path]; dup {
			p.Errorf(key, "field %s is already mapped by %s", path, first)
		}
		paths[path] = key
	}
	if m.Time != "" {
		use("time", m.Time)
	}
	for j := range m.Signals {
		v, vp := &m.Signals[j], fmt.Sprintf("signals[%d]", j)
		use(vp+".path", v.Path) // an event on a signal that is no bool: the loader says so
	}
	if e := m.Event; e != nil {
		if !kindPattern.MatchString(e.Kind) {
			p.Errorf("event.kind", "%q is not an event kind (lower-case letters, digits, '_')", e.Kind)
		}
		if e.State != "" {
			use("event.state", e.State)
		}
		names := map[string]bool{}
		for j := range e.Details {
			d, dp := &e.Details[j], fmt.Sprintf("event.details[%d]", j)
			d.Check(configs.Under(p, dp))
			use(dp+".path", d.Where())
			if names[d.Name] || d.Name == "state" || d.Name == "signal" {
				p.Errorf(dp+".name", "detail %q is listed twice or is one the gateway sets (state, signal)", d.Name)
			}
			names[d.Name] = true
		}
	}
	for j, a := range m.Allow {
		use(fmt.Sprintf("allow[%d]", j), a)
	}
}

// Path splits a field path into its levels.
func Path(path string) []string { return strings.Split(path, ".") }
