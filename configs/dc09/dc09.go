// Package dc09 is the SIA DC-09 part of station files and device templates:
// the settings of sia-dc09 links (a receiver that alarm panels report to
// over TCP and UDP), of the panels on them (account, AES key, supervision,
// zone and user names), and the code tables of templates (family dc09)
// that say which event each Contact ID or SIA code raises at the hub. The
// gateway's receiver (drivers/dc09) and the simulated panel
// (firmware-sim/dc09) both read them from here; each puts frames on the
// wire and takes them off in its own code.
package dc09

import (
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// Protocol and Family are the names station files and templates use.
const (
	Protocol = "sia-dc09"
	Family   = "dc09"
)

func init() {
	configs.RegisterFamily(Family, configs.Family{Template: func() configs.Body { return &Template{} }})
	configs.Register(Protocol, configs.Protocol{Family: Family,
		Link: func() any { return &Link{} }, Device: func() any { return &Device{} }, Check: checkLink})
}

// Link is a sia-dc09 link: the receiver alarm panels (报警主机) report to.
type Link struct {
	// Listen is the host:port the receiver listens on, for TCP and UDP
	// alike unless Transport says one of them. Panels are given this
	// host's address and the port.
	Listen string `yaml:"listen" required:"true" example:"0.0.0.0:7000"`
	// Transport is tcp, udp or both.
	Transport Transport `yaml:"transport" default:"both" example:"tcp"`
	// Receiver is the receiver number panels are told (R field), 1 to 6
	// hexadecimal digits. When set, a frame that names another receiver
	// is answered DUH (it was meant for another receiving centre); a
	// frame without one is taken.
	Receiver string `yaml:"receiver" example:"1"`
	// Line is the line prefix panels are told (L field), 1 to 6
	// hexadecimal digits. When set, a frame that names another line is
	// answered DUH.
	Line string `yaml:"line" example:"1"`
	// Window is how far a panel's timestamp may be from the gateway's
	// clock; a frame outside it is answered NAK with the gateway's time,
	// which the panel adopts before it sends again.
	Window Window `yaml:"window"`
	// Duplicates is how long the receiver remembers a frame it
	// acknowledged (account, sequence number and data), across restarts:
	// a panel that sends it again within this time, because the
	// acknowledgement was lost, gets ACK again and the hub gets no second
	// event. 1m to 24h.
	Duplicates time.Duration `yaml:"duplicates" default:"10m" example:"30m"`
	// IdleTimeout closes a TCP connection that carried no frame for this
	// long, 1s to 1h.
	IdleTimeout time.Duration `yaml:"idle_timeout" default:"2m" example:"5m"`
	// MaxConnections caps the TCP connections open at once (and the UDP
	// frames handled at once), 1 to 10000; more are refused.
	MaxConnections int `yaml:"max_connections" default:"64" example:"256"`
}

// Transport is what a sia-dc09 link listens on.
type Transport string

const (
	Both Transport = "both"
	TCP  Transport = "tcp"
	UDP  Transport = "udp"
)

// Values lists the transports a station file may name.
func (Transport) Values() []string { return []string{"both", "tcp", "udp"} }

// Window is the range of panel timestamps the receiver takes, around its
// own clock. ANSI/SIA DC-09 sets it at 40 seconds behind to 20 seconds
// ahead.
type Window struct {
	// Past is how far behind the gateway's clock a timestamp may be, 1s
	// to 1h.
	Past time.Duration `yaml:"past" default:"40s" example:"1m"`
	// Future is how far ahead of it a timestamp may be, 1s to 1h.
	Future time.Duration `yaml:"future" default:"20s" example:"30s"`
}

// Contains reports whether a panel's timestamp t is in the window around
// now.
func (w Window) Contains(t, now time.Time) bool {
	return !t.Before(now.Add(-w.Past)) && !t.After(now.Add(w.Future))
}

// ListenAddr is where the receiver listens.
func (l *Link) ListenAddr() string { return l.Listen }

// Check checks the link's settings.
func (l *Link) Check(p configs.Problems) {
	if _, port, err := net.SplitHostPort(l.Listen); err != nil || port == "" {
		p.Errorf("listen", "%q is not host:port (e.g. 0.0.0.0:7000)", l.Listen)
	}
	for _, f := range []struct{ key, v string }{{"receiver", l.Receiver}, {"line", l.Line}} {
		if f.v != "" && !hexDigits(f.v, 1, 6) {
			p.Errorf(f.key, "%q is not 1 to 6 hexadecimal digits (e.g. \"1\" or \"A3\")", f.v)
		}
	}
	for _, w := range []struct {
		key string
		d   time.Duration
	}{{"window.past", l.Window.Past}, {"window.future", l.Window.Future}} {
		if w.d < time.Second || w.d > time.Hour {
			p.Errorf(w.key, "%s is out of range (1s to 1h)", w.d)
		}
	}
	if l.Duplicates < time.Minute || l.Duplicates > 24*time.Hour {
		p.Errorf("duplicates", "%s is out of range (1m to 24h)", l.Duplicates)
	}
	if l.IdleTimeout < time.Second || l.IdleTimeout > time.Hour {
		p.Errorf("idle_timeout", "%s is out of range (1s to 1h)", l.IdleTimeout)
	}
	if l.MaxConnections < 1 || l.MaxConnections > 10000 {
		p.Errorf("max_connections", "%d is out of range (1 to 10000)", l.MaxConnections)
	}
}

// Device is an alarm panel's settings.
type Device struct {
	// Account is the panel's account number, 3 to 16 hexadecimal digits,
	// as programmed in the panel; unique on the link.
	Account string `yaml:"account" required:"true" example:"1234"`
	// KeyFile holds the panel's AES key (128, 192 or 256 bits) as 32, 48
	// or 64 hexadecimal digits; relative to the station file unless
	// absolute. It must be readable by its owner only (chmod 600). With
	// a key, the panel's frames must be encrypted; without one, they must
	// not be.
	KeyFile string `yaml:"key_file" example:"/etc/outpost/keys/panel-1.key"`
	// Supervision is how long the panel may stay silent (no frame of any
	// kind: events, link tests, periodic tests) before it is reported
	// offline, 10s to 24h; 0s for never.
	Supervision time.Duration `yaml:"supervision" example:"90s"`
	// Zones name the panel's zones, for the hub's events.
	Zones []Zone `yaml:"zones"`
	// Users name the panel's users, for the hub's events.
	Users []User `yaml:"users"`
	// Sim tells the simulated panel how to report; the gateway ignores
	// it.
	Sim *Sim `yaml:"sim"`

	// key is read from KeyFile when the station is loaded; behind a
	// pointer, so that printing the settings (%v, %+v) shows an address,
	// never the key.
	key *keyBox
}

type keyBox struct{ k Key }

// Zone names a zone of a panel.
type Zone struct {
	// Zone is the zone's number, 0 to 999.
	Zone int `yaml:"zone" required:"true" example:"5"`
	// Name is the zone's name.
	Name string `yaml:"name" required:"true" example:"panic button desk"`
}

// User names a user of a panel.
type User struct {
	// User is the user's number, 0 to 999.
	User int `yaml:"user" required:"true" example:"3"`
	// Name is the user's name.
	Name string `yaml:"name" required:"true" example:"night guard"`
}

// Sim is how a simulated panel reports.
type Sim struct {
	// Transport is tcp or udp; default: tcp, or udp on a link that
	// listens on udp only.
	Transport Transport `yaml:"transport" example:"udp"`
	// Tests is the interval of periodic tests, 1s to 24h; default a third
	// of the supervision, or none without one.
	Tests time.Duration `yaml:"tests" example:"30s"`
	// Test is what a periodic test sends: null (a link test) or 602 (a
	// Contact ID periodic test report).
	Test TestKind `yaml:"test" default:"null" example:"602"`
	// Timeout is how long the panel waits for an acknowledgement before
	// it sends a frame again, 10ms to 1m.
	Timeout time.Duration `yaml:"timeout" default:"2s" example:"500ms"`
}

// TestKind is what a simulated panel's periodic test sends.
type TestKind string

// Values lists the kinds of test a Sim may name.
func (TestKind) Values() []string { return []string{"null", "602"} }

// Key is an AES key. It never shows in logs or dumps.
type Key []byte

func (Key) String() string                 { return "[key]" }
func (k Key) GoString() string             { return k.String() }
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// Key is the panel's AES key, read from KeyFile when the station was
// loaded, or nil.
func (d *Device) Key() Key {
	if d.key == nil {
		return nil
	}
	return d.key.k
}

// ZoneName and UserName name a zone or a user of the panel, or "".
func (d *Device) ZoneName(n int) string {
	for _, z := range d.Zones {
		if z.Zone == n {
			return z.Name
		}
	}
	return ""
}

func (d *Device) UserName(n int) string {
	for _, u := range d.Users {
		if u.User == n {
			return u.Name
		}
	}
	return ""
}

// TestEvery is the interval of a simulated panel's periodic tests, or 0.
func (d *Device) TestEvery() time.Duration {
	if d.Sim != nil && d.Sim.Tests > 0 {
		return d.Sim.Tests
	}
	return d.Supervision / 3
}

// Check checks the panel's settings (its key file is checked with the
// link, which knows where the station file is).
func (d *Device) Check(p configs.Problems) {
	if !hexDigits(d.Account, 3, 16) {
		p.Errorf("account", "%q is not 3 to 16 hexadecimal digits (e.g. \"1234\")", d.Account)
	}
	if d.Supervision != 0 && (d.Supervision < 10*time.Second || d.Supervision > 24*time.Hour) {
		p.Errorf("supervision", "%s is out of range (10s to 24h, or 0s for none)", d.Supervision)
	}
	seen := map[int]bool{}
	for i, z := range d.Zones {
		if z.Zone < 0 || z.Zone > 999 {
			p.Errorf(fmt.Sprintf("zones[%d].zone", i), "%d is out of range (0 to 999)", z.Zone)
		} else if seen[z.Zone] {
			p.Errorf(fmt.Sprintf("zones[%d].zone", i), "zone %d is named twice", z.Zone)
		}
		seen[z.Zone] = true
	}
	seen = map[int]bool{}
	for i, u := range d.Users {
		if u.User < 0 || u.User > 999 {
			p.Errorf(fmt.Sprintf("users[%d].user", i), "%d is out of range (0 to 999)", u.User)
		} else if seen[u.User] {
			p.Errorf(fmt.Sprintf("users[%d].user", i), "user %d is named twice", u.User)
		}
		seen[u.User] = true
	}
	if s := d.Sim; s != nil {
		if s.Transport == Both {
			p.Errorf("sim.transport", "a panel reports over tcp or udp, not both")
		}
		if s.Tests != 0 && (s.Tests < time.Second || s.Tests > 24*time.Hour) {
			p.Errorf("sim.tests", "%s is out of range (1s to 24h)", s.Tests)
		}
		if s.Timeout < 10*time.Millisecond || s.Timeout > time.Minute {
			p.Errorf("sim.timeout", "%s is out of range (10ms to 1m)", s.Timeout)
		}
	}
}

// checkLink holds a link's accounts unique and reads its panels' keys.
func checkLink(p configs.Problems, st *configs.Station, link *configs.Link) {
	used := map[string]string{}
	for i := range st.Devices {
		dev, path := &st.Devices[i], fmt.Sprintf("devices[%d]", i)
		d, ok := dev.Settings.(*Device)
		if dev.Link != link.ID || !ok {
			continue
		}
		if acct := strings.ToUpper(d.Account); hexDigits(acct, 3, 16) {
			if first, dup := used[acct]; dup {
				p.Errorf(path+".account", "account %s is already used on %s by %s", d.Account, link.ID, first)
			}
			used[acct] = fmt.Sprintf("%s (%s)", path, dev.ID)
		}
		if d.KeyFile == "" {
			continue
		}
		file := st.Path(d.KeyFile)
		key, err := configs.ReadKey(file, 16, 24, 32)
		if err != nil {
			p.Errorf(path+".key_file", "%v", err)
			continue
		}
		d.KeyFile, d.key = file, &keyBox{key}
	}
}

var hexPattern = regexp.MustCompile(`^[0-9A-Fa-f]+$`)

// hexDigits says whether s is lo to hi hexadecimal digits.
func hexDigits(s string, lo, hi int) bool {
	return len(s) >= lo && len(s) <= hi && hexPattern.MatchString(s)
}

// kindPattern is what an event kind may be, as for template event rules.
var kindPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)

// Template is an alarm panel template's code table: additions to the
// built-in tables of Contact ID and SIA codes (see Codes below), or
// replacements of their entries.
type Template struct {
	// Codes add Contact ID event codes or change the built-in ones.
	Codes []Code `yaml:"codes"`
	// SIACodes add SIA event codes or change the built-in ones.
	SIACodes []SIACode `yaml:"sia_codes"`
}

// Signals lists the template's signals: an alarm panel reports events,
// no readings.
func (t *Template) Signals() []configs.Signal { return nil }

// Code is the meaning of a Contact ID event code.
type Code struct {
	// Code is the Contact ID event code, 1 to 999.
	Code int `yaml:"code" required:"true" example:"150"`
	// Kind is the kind of the event at the hub for a new event
	// (qualifier 1); a restore (qualifier 3) ends it.
	Kind string `yaml:"kind" required:"true" example:"gas"`
	// Severity of a new event; a restore is info.
	Severity model.Severity `yaml:"severity" default:"critical" example:"warning"`
	// Name says what the code means, for people.
	Name string `yaml:"name" example:"gas detected"`
	// Restore is, when set, the kind a qualifier 3 raises instead of
	// ending kind: open/close codes open (disarm) with 1 and close (arm)
	// with 3.
	Restore string `yaml:"restore" example:"armed"`
	// User says the code's last field is a user number, not a zone.
	User bool `yaml:"user" example:"true"`
	// Test marks a periodic test: it keeps the panel's supervision and
	// is not sent to the hub.
	Test bool `yaml:"test" example:"true"`
}

// SIACode is the meaning of a two-letter SIA event code.
type SIACode struct {
	// Code is the SIA event code, two capital letters.
	Code string `yaml:"code" required:"true" example:"GA"`
	// Kind is the kind of the event at the hub.
	Kind string `yaml:"kind" required:"true" example:"gas"`
	// Severity of the event.
	Severity model.Severity `yaml:"severity" default:"critical" example:"warning"`
	// State the event reports.
	State State `yaml:"state" default:"active" example:"cleared"`
	// Name says what the code means, for people.
	Name string `yaml:"name" example:"gas alarm"`
	// User says the code's number is a user number, not a zone.
	User bool `yaml:"user" example:"true"`
	// Test marks a periodic test: it keeps the panel's supervision and
	// is not sent to the hub.
	Test bool `yaml:"test" example:"true"`
}

// State of an event from a panel.
type State string

const (
	Active  State = "active"
	Cleared State = "cleared"
	Status  State = "status"
)

// Values lists the states a template may name.
func (State) Values() []string { return []string{"active", "cleared", "status"} }

var siaPattern = regexp.MustCompile(`^[A-Z]{2}$`)

// Check checks the code tables: codes in range, each once, kinds the hub
// can store.
func (t *Template) Check(p configs.Problems) {
	seen := map[int]bool{}
	for i, c := range t.Codes {
		path := fmt.Sprintf("codes[%d]", i)
		if c.Code < 1 || c.Code > 999 {
			p.Errorf(path+".code", "%d is not a Contact ID event code (1 to 999)", c.Code)
		} else if seen[c.Code] {
			p.Errorf(path+".code", "code %d is listed twice", c.Code)
		}
		seen[c.Code] = true
		checkKind(p, path+".kind", c.Kind)
		if c.Restore != "" {
			checkKind(p, path+".restore", c.Restore)
		}
	}
	seenSIA := map[string]bool{}
	for i, c := range t.SIACodes {
		path := fmt.Sprintf("sia_codes[%d]", i)
		if !siaPattern.MatchString(c.Code) {
			p.Errorf(path+".code", "%q is not a SIA event code (two capital letters, e.g. PA)", c.Code)
		} else if seenSIA[c.Code] {
			p.Errorf(path+".code", "code %s is listed twice", c.Code)
		}
		seenSIA[c.Code] = true
		checkKind(p, path+".kind", c.Kind)
	}
}

func checkKind(p configs.Problems, path, kind string) {
	if !kindPattern.MatchString(kind) {
		p.Errorf(path, "%q is not an event kind (lower-case letters, digits, '_')", kind)
	}
}
