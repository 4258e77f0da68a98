// Package mqtt simulates the devices of a station's mqtt links (self-service
// kiosks first) as their firmware behaves towards the broker the gateway
// embeds: each connects with paho under its device id and the password in
// its sim.password_file, with a persistent session, a retained last will
// "offline" on {prefix}/{device}/state and "online" there after every
// connect, and publishes the JSON objects of its template (telemetry from
// the signals' sim waves every sim.telemetry, the heartbeat, and events
// on request) at QoS 1. It answers the commands it gets on
// {prefix}/{device}/cmd on {prefix}/{device}/cmd/ack, once each: a
// command delivered again is answered again and not carried out twice.
// It connects again, forever, when the broker is not up yet or goes away.
//
// A message counts as served (sim.Stats) once the broker acknowledged it
// (PUBACK), not when it was sent: telemetry's signals as readings, an
// event message or the edge of a bool signal with an event rule as an
// event. Emergency calls, service requests and those edges are logged as
// raised alarms (source "mqtt"); the request statuses a kiosk received go
// to a sink that implements StatusSink (firmware-sim -statuses).
//
// The control API (sim.Actor) makes a device act, and misbehave for tests
// of the gateway's defences: flood, oversize, malformed, impersonate,
// deaf; what it sends then never counts as served (though a flood's
// readings go to the sink's served log: those the gateway lets through
// reach the hub). It registers protocol "mqtt" with the simulator.
//
// The encoding here is the simulator's own: it shares the templates with
// the gateway (configs/mqtt), not the gateway's code.
package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/firmware-sim/sim"
)

func init() { sim.Register(cfg.Protocol, newLink) }

var (
	_ sim.Link   = (*link)(nil)
	_ sim.Actor  = (*device)(nil)
	_ sim.Device = (*device)(nil)
)

// Source is how a simulated MQTT device's alarms travel, in sim.Raised.
const Source = "mqtt"

// Status is a request's status a kiosk received from the hub (a
// request_status command, carried out once): a line of firmware-sim's
// -statuses log.
type Status struct {
	Device string `json:"device"`
	Ticket string `json:"ticket"`
	Status string `json:"status"`
	Note   string `json:"note,omitempty"`
	// ID is the command's id.
	ID string `json:"id"`
	// At is when the kiosk got it; Sent is the command's own time, when
	// it had one.
	At   time.Time `json:"at"`
	Sent time.Time `json:"sent,omitzero"`
}

// StatusSink is a sim.Sink that also takes the request statuses kiosks
// received, in the order each kiosk got them. It must be safe for
// concurrent use.
type StatusSink interface {
	Status(Status)
}

// link is the simulated devices of one mqtt link.
type link struct {
	devices []*device
}

func newLink(st *configs.Station, l *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	set, ok := l.Settings.(*cfg.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not an %s link", l.ID, cfg.Protocol)
	}
	broker, err := brokerURL(set)
	if err != nil {
		return nil, fmt.Errorf("link %s: %w", l.ID, err)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	out := &link{}
	for _, d := range devs {
		dev, err := newDevice(st, set, d, broker, o)
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", l.ID, err)
		}
		out.devices = append(out.devices, dev)
	}
	o.Log.Info("mqtt link up", "link", l.ID, "broker", broker, "devices", len(out.devices))
	return out, nil
}

// brokerURL is where the link's devices connect: the embedded broker's
// listen address (on this machine when it listens on every interface),
// or the external broker.
func brokerURL(set *cfg.Link) (string, error) {
	if !set.Embedded() {
		u, err := url.Parse(set.Broker)
		if err != nil || u.Scheme != "tcp" {
			return "", fmt.Errorf("broker %s: the simulated devices speak tcp:// only", set.Broker)
		}
		return set.Broker, nil
	}
	if set.TLS != nil {
		return "", fmt.Errorf("the simulated devices do not speak TLS: simulate a station without links[].tls")
	}
	host, port, err := net.SplitHostPort(set.Listen)
	if err != nil {
		return "", fmt.Errorf("listen %q: %w", set.Listen, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return "tcp://" + net.JoinHostPort(host, port), nil
}

// Serve runs every device until ctx ends.
func (l *link) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, d := range l.devices {
		wg.Go(func() { d.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Close releases nothing: each device disconnects when Serve ends.
func (l *link) Close() error { return nil }

func (l *link) Devices() []sim.Device {
	out := make([]sim.Device, len(l.devices))
	for i, d := range l.devices {
		out[i] = d
	}
	return out
}

// Stats are the devices' own counters, by device.
func (l *link) Stats() any {
	out := map[string]Counters{}
	for _, d := range l.devices {
		out[d.id] = d.counters()
	}
	return out
}
