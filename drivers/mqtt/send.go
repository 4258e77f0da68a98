package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	cfg "outpost/configs/mqtt"
	"outpost/drivers"
	"outpost/gateway/model"
)

// resendEvery is how often a command the device has not answered is sent
// again while it stays connected: its acknowledgement may have been lost
// with a connection the broker has not noticed yet.
const resendEvery = 30 * time.Second

// ack is a device's answer to a command.
type ack struct {
	ID     string `json:"id"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

// DeviceError is a device's refusal of a command, in its words.
type DeviceError struct {
	Device, Reason string
}

func (e *DeviceError) Error() string {
	return fmt.Sprintf("%s did not carry it out: %s", e.Device, e.Reason)
}

// Send delivers a command to a device's command topic (QoS 1) and waits
// for the device's answer on cmd/ack; it sends it again each time the
// device connects or subscribes (through an external broker: each time
// it says online on its state topic), and every resendEvery, until the
// device answers or ctx ends. The device must take a command it has
// already answered as done (see docs/kiosks.md).
func (d *Driver) Send(ctx context.Context, device string, c drivers.Outgoing) error {
	dev := d.devices[device]
	if dev == nil {
		return fmt.Errorf("no device %s on link %s", device, d.name)
	}
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	topic := d.set.Prefix + "/" + device + "/" + cfg.CmdTopic
	answer := make(chan ack, 1)
	dev.mu.Lock()
	dev.acks[c.ID] = answer
	dev.mu.Unlock()
	defer func() {
		dev.mu.Lock()
		delete(dev.acks, c.ID)
		dev.mu.Unlock()
	}()
	select {
	case <-d.Ready():
	case <-ctx.Done():
		return fmt.Errorf("%s: the station broker is not up", device)
	}
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		dev.mu.Lock()
		again := dev.connected
		online := d.present(dev)
		dev.mu.Unlock()
		switch {
		case !online:
		case d.set.Embedded():
			if err := d.server.Publish(topic, payload, false, 1); err != nil {
				return fmt.Errorf("%s: %w", device, err)
			}
		default:
			d.publishExternal(ctx, device, topic, payload)
		}
		t.Reset(resendEvery)
		select {
		case a := <-answer:
			if a.Status == "ok" {
				return nil
			}
			return &DeviceError{device, a.Reason}
		case <-again:
		case <-t.C:
		case <-ctx.Done():
			if online {
				return fmt.Errorf("%s did not answer before the command expired", device)
			}
			return fmt.Errorf("%s was not connected before the command expired", device)
		}
	}
}

// present says whether the device is connected (dev.mu held): through
// an external broker, whether it said online last (or was heard since).
func (d *Driver) present(dev *device) bool {
	if d.set.Embedded() {
		return dev.client != nil
	}
	return dev.state == model.Online || dev.state == model.Degraded
}

// reconnected wakes the commands waiting for the device (dev.mu held).
func (dev *device) reconnected() {
	close(dev.connected)
	dev.connected = make(chan struct{})
}

// awaited says whether an answer is to a command waiting for it
// (dev.mu held).
func (dev *device) awaited(payload []byte) bool {
	var a ack
	if json.Unmarshal(payload, &a) != nil {
		return false
	}
	_, ok := dev.acks[a.ID]
	return ok
}

// answered takes the device's answer to a command (dev.mu held). An
// answer to a command nobody waits for (it expired, or was answered
// before) is dropped.
func (dev *device) answered(payload []byte) *Refusal {
	var a ack
	if err := json.Unmarshal(payload, &a); err != nil || a.ID == "" {
		return refuse(BadJSON, "%s: expected {\"id\": ..., \"status\": \"ok\" or \"failed\", \"reason\": ...}", cfg.AckTopic)
	}
	if a.Status != "ok" && a.Status != "failed" {
		return refuse(BadField, "%s: status must be \"ok\" or \"failed\", not %q", cfg.AckTopic, a.Status)
	}
	if a.Status == "failed" && a.Reason == "" {
		a.Reason = "no reason given"
	}
	if ch, ok := dev.acks[a.ID]; ok {
		select {
		case ch <- a:
		default:
		}
	}
	return nil
}

var _ drivers.Messenger = (*Driver)(nil)
