// Package drivers is the registry of device protocol drivers. Each protocol
// package registers itself by name in init(); the gateway imports the
// protocol packages it ships (see gateway/cmd/gateway/drivers.go) and asks the
// registry for a driver per serial bus or network endpoint.
package drivers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// Emit hands a message to the gateway. The driver sets Device, DeviceKind,
// Kind, Time and the payload; the gateway stamps station and sequence number.
// Emit blocks while the gateway persists the message. For an event or a
// health change, nil means it is durable (fsynced), so a driver may then
// acknowledge it to the device that sent it: an alarm panel stops
// retransmitting once it has the acknowledgement. An error says it is not
// (the disk refuses writes or hangs), ErrHeld in it that it will be
// delivered all the same, from memory: either way the device should be
// left to send it again. Telemetry is durable within the
// queue's group commit. Emit must not be called after Run returns.
type Emit func(model.Message) error

// ErrHeld is in the error of an Emit whose message is not durable but will
// be delivered, from the gateway's memory (the disk refuses writes or
// hangs): the device is not acknowledged, but its next copy of the
// message is a repeat, not a new one.
var ErrHeld = errors.New("held in the gateway's memory: not durable, delivered all the same")

// Commander is a driver that can act on its devices: set a writable
// signal (an output, a coil, a holding register) of one of them, for a
// command from the hub. Set returns once the device confirmed the write,
// or with the device's error.
type Commander interface {
	Set(ctx context.Context, device, signal string, v model.Value) error
}

// Messenger is a driver whose devices take actions as messages (MQTT
// devices): Send delivers a command to a device and returns once the
// device answered it: nil when it carried it out, an error with the
// device's reason when it did not. A device that is away gets it when it
// returns; Send gives up when ctx ends (the command expired).
type Messenger interface {
	Send(ctx context.Context, device string, c Outgoing) error
}

// Outgoing is a command for a device that takes actions as messages.
type Outgoing struct {
	ID      string         `json:"id"`
	Action  string         `json:"action"`
	Args    map[string]any `json:"args,omitempty"`
	Sent    time.Time      `json:"ts"`
	Expires time.Time      `json:"expires"`
}

// Driver runs one link (a serial bus or a network endpoint) and every device
// on it until ctx ends. It returns nil when ctx ended, or an error that makes
// the whole link unusable (it is then restarted by the gateway after a pause).
// A failing device is never an error of Run: it becomes bad-quality readings
// and a health message.
type Driver interface {
	Run(ctx context.Context, emit Emit) error
}

// Link is what a driver is built from: a link of the station file (its
// Settings are those of its protocol) and the station's devices on it, in
// file order.
type Link struct {
	Station *configs.Station
	Config  *configs.Link
	Devices []*configs.Device
	// RoundTrip, when set, is told the round trip of each poll's last
	// answered request, by device (the gateway's latency histogram).
	RoundTrip func(device string, rtt time.Duration)
	// Once marks a run for an installer's tool (gateway read, commission)
	// while the gateway is stopped: the driver leaves the gateway's own
	// state alone (its session at an external broker, and what waits in
	// it for the gateway).
	Once bool
}

// Observed tells the link's RoundTrip, if it has one, of a device's round
// trip (none when rtt is 0).
func (l Link) Observed(device string, rtt time.Duration) {
	if l.RoundTrip != nil && rtt > 0 {
		l.RoundTrip(device, rtt)
	}
}

// Links returns a station's links, in file order, each with the devices on
// it.
func Links(st *configs.Station) []Link {
	links := make([]Link, len(st.Links))
	for i := range st.Links {
		l := &st.Links[i]
		links[i] = Link{Station: st, Config: l, Devices: st.DevicesOn(l.ID)}
	}
	return links
}

// Name is the link's id.
func (l Link) Name() string { return l.Config.ID }

// Protocol is the link's protocol.
func (l Link) Protocol() string { return l.Config.Protocol }

// Template is the template of a device on the link.
func (l Link) Template(d *configs.Device) *configs.Template { return l.Station.Templates[d.Template] }

// Factory builds a driver for a link. It must not do I/O: ports are opened
// and connections made in Run.
type Factory func(link Link, log *slog.Logger) (Driver, error)

var (
	mu       sync.RWMutex
	registry = map[string]Factory{}
)

// Register makes a protocol available by name. It panics on a duplicate name,
// which is a programming error.
func Register(protocol string, f Factory) {
	mu.Lock()
	defer mu.Unlock()
	if _, dup := registry[protocol]; dup {
		panic("drivers: protocol registered twice: " + protocol)
	}
	registry[protocol] = f
}

// Protocols lists the registered protocol names, sorted.
func Protocols() []string {
	mu.RLock()
	defer mu.RUnlock()
	return slices.Sorted(maps.Keys(registry))
}

// New builds the driver for a link.
func New(link Link, log *slog.Logger) (Driver, error) {
	mu.RLock()
	f, ok := registry[link.Protocol()]
	mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("%s: unknown protocol %q (known: %v)", link.Name(), link.Protocol(), Protocols())
	}
	return f(link, log.With("link", link.Name(), "protocol", link.Protocol()))
}
