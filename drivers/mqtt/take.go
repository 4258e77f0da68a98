package mqtt

import (
	"bytes"
	"fmt"
	"time"

	cfg "outpost/configs/mqtt"
	"outpost/gateway/model"
)

// take takes a message a device published, whichever broker it came
// through (the embedded one's hook, or the subscription to an external
// one); name is its topic below the device's own. It holds the device to
// its rate (see throttle), decodes the payload as the template says and
// emits what it carries. A refused message is counted and makes the
// device degraded; it is done with, and take returns nil.
//
// take returns once what the message carries is durable, so that the
// caller acknowledges it only then. The error says an event was not kept
// (the disk refused it): the caller must leave it unacknowledged, so
// that it is sent again.
func (d *Driver) take(dev *device, name string, payload []byte) error {
	if d.throttle(dev, name, payload) {
		return nil
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	now := d.now()
	switch {
	case len(payload) > d.set.MaxPayload:
		d.wrong(dev, refuse(Oversize, "%s: %d bytes (at most %d)", name, len(payload), d.set.MaxPayload))
		return nil
	case name == cfg.StateTopic:
		d.stated(dev, payload)
		return nil
	case name == cfg.AckTopic:
		if err := dev.answered(payload); err != nil {
			d.wrong(dev, err)
		} else {
			d.heard(dev)
		}
		return nil
	}
	dec, err := Decode(dev.tmpl, name, payload, now, dev.set.Location)
	if err != nil {
		d.wrong(dev, err.(*Refusal))
		return nil
	}
	d.heard(dev)
	m := model.Message{Device: dev.id, DeviceKind: dev.kind, Time: dec.Time.UTC()}
	if dec.Event != nil {
		m.Kind, m.Event = model.KindEvent, dec.Event
	} else if len(dec.Readings) > 0 {
		m.Kind, m.Readings = model.KindTelemetry, dec.Readings
	} else {
		return nil // a heartbeat
	}
	if err := d.emitter()(m); err != nil && m.Kind == model.KindEvent {
		return fmt.Errorf("event of %s not kept: %w", dev.id, err)
	}
	return nil
}

// stated takes a device's state message, its birth (online) or its will
// (offline) (dev.mu held). The embedded broker sees the device's
// connection itself: the message is a sign of life. Through an external
// broker it is all the gateway knows of the connection: online makes the
// device online and sends its unanswered commands again, offline makes
// it offline.
func (d *Driver) stated(dev *device, payload []byte) {
	if d.set.Embedded() {
		d.heard(dev)
		return
	}
	switch string(bytes.TrimSpace(payload)) {
	case "online":
		d.heard(dev)
		dev.reconnected()
	case "offline":
		dev.lastHeard = d.now()
		d.setState(dev, model.Offline, fmt.Sprintf("%s/%s/%s says offline: its will (its connection dropped) or its goodbye", d.set.Prefix, dev.id, cfg.StateTopic))
	default:
		d.wrong(dev, refuse(BadField, "%s: %.40q is neither online nor offline", cfg.StateTopic, payload))
	}
}

// throttle holds a device to its rate. What must not be lost (its events
// and its state) waits its turn: the device's messages are taken no
// further meanwhile (through the embedded broker its connection is read
// no further), so a kiosk that sends what it kept while away is slowed,
// not cut. Anything else over the rate is refused and counted; throttle
// then says so. Answers to the gateway's own commands pass: the gateway
// sets their pace.
func (d *Driver) throttle(dev *device, name string, payload []byte) (refused bool) {
	m := dev.tmpl.Message(name)
	dev.mu.Lock()
	now := d.now()
	switch {
	case name == cfg.AckTopic && dev.awaited(payload):
		dev.mu.Unlock()
		return false
	case name != cfg.StateTopic && (m == nil || m.Event == nil):
		defer dev.mu.Unlock()
		if dev.rest.take(now) {
			return false
		}
		d.wrong(dev, refuse(RateLimited, "%s: more than %v messages a second (burst %v)", name, dev.set.Rate, dev.set.Burst))
		return true
	}
	wait := dev.keep.wait(now)
	if wait > 0 {
		dev.counters["throttled"]++
	}
	dev.mu.Unlock()
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-d.stopping():
		}
	}
	return false
}
