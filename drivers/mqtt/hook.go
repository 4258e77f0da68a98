package mqtt

import (
	"bytes"
	"net"
	"strings"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	cfg "outpost/configs/mqtt"
	"outpost/drivers"
	"outpost/gateway/model"
)

// hook is the driver inside the broker: it logs devices in, holds each to
// its own topics, and takes what they publish.
type hook struct {
	mochi.HookBase
	d *Driver
}

func (h *hook) ID() string { return "outpost" }

func (h *hook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnSessionEstablished,
		mochi.OnDisconnect, mochi.OnSubscribed, mochi.OnPublish}, []byte{b})
}

// device is the device a client is, if it logged in as one.
func (h *hook) device(cl *mochi.Client) *device {
	if cl == nil || cl.Net.Inline {
		return nil
	}
	return h.d.devices[cl.ID]
}

// OnConnectAuthenticate lets a device in with its own id, as client id
// and user name, and its password.
func (h *hook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	user, pass := string(pk.Connect.Username), string(pk.Connect.Password)
	dev := h.d.devices[user]
	switch {
	case dev == nil:
		h.d.counts.add("unknown_logins")
		h.d.log.Warn("login refused: no such device on the link", "user", user, "client_id", cl.ID, "remote", cl.Net.Remote)
		return false
	case cl.ID != user:
		dev.mu.Lock()
		h.d.count(dev, refuse(AuthFailed, "client id %q is not the device's id %s", cl.ID, user), h.d.now())
		dev.mu.Unlock()
		return false
	case !h.d.creds.Verify(user, pass):
		from := cl.Net.Remote // the host: the same at each try, where the port is not
		if host, _, err := net.SplitHostPort(from); err == nil {
			from = host
		}
		dev.mu.Lock()
		h.d.count(dev, refuse(AuthFailed, "wrong password for %s from %s", user, from), h.d.now())
		dev.mu.Unlock()
		return false
	}
	return true
}

// OnACLCheck holds a device to its own topics: it publishes below
// {prefix}/{device}/ (not to its own commands) and subscribes to its
// commands only.
func (h *hook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	dev := h.device(cl)
	if dev == nil {
		return false
	}
	own := h.d.set.Prefix + "/" + dev.id + "/"
	if !write {
		return topic == own+cfg.CmdTopic
	}
	rest, ok := strings.CutPrefix(topic, own)
	if ok && rest != "" && rest != cfg.CmdTopic {
		return true
	}
	dev.mu.Lock()
	h.d.spoof(dev, topic)
	dev.mu.Unlock()
	return false
}

// OnSessionEstablished marks the device connected: online, and its
// unanswered commands sent again.
func (h *hook) OnSessionEstablished(cl *mochi.Client, _ packets.Packet) {
	dev := h.device(cl)
	if dev == nil {
		return
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	dev.client = cl
	h.d.heard(dev)
	if p := cl.Properties; p.Clean || p.ProtocolVersion >= 5 && p.Props.SessionExpiryInterval == 0 {
		h.d.wrong(dev, refuse(CleanSession, "%s connects with a clean session: its MQTT client drops what the broker has not acknowledged when the connection breaks (an emergency call, say); set clean session off, as docs/kiosks.md asks", dev.id))
	}
	dev.reconnected()
}

// OnSubscribed sends the device's unanswered commands again once it
// subscribed to them.
func (h *hook) OnSubscribed(cl *mochi.Client, _ packets.Packet, _ []byte) {
	if dev := h.device(cl); dev != nil {
		dev.mu.Lock()
		dev.reconnected()
		dev.mu.Unlock()
	}
}

// OnDisconnect makes the device offline, unless a newer connection took
// its place.
func (h *hook) OnDisconnect(cl *mochi.Client, err error, _ bool) {
	dev := h.device(cl)
	if dev == nil {
		return
	}
	dev.mu.Lock()
	defer dev.mu.Unlock()
	if dev.client != cl {
		return
	}
	dev.client = nil
	reason := "disconnected"
	if err != nil {
		reason += ": " + err.Error()
	}
	h.d.setState(dev, model.Offline, reason)
}

// OnPublish takes a device's message (see Driver.take). It runs before
// the broker acknowledges it: an event is durable when it returns. The
// broker routes nothing a device publishes: the gateway is the only
// reader.
func (h *hook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	dev := h.device(cl)
	if dev == nil {
		return pk, nil // the gateway's own (commands)
	}
	pk.Ignore = true
	name := strings.TrimPrefix(pk.TopicName, h.d.set.Prefix+"/"+dev.id+"/")
	if err := h.d.take(dev, name, pk.Payload); err != nil {
		// Not durable: the device must send it again. Without an
		// acknowledgement it does so when it reconnects.
		h.d.log.Warn("event not kept; dropping the device's connection so that it sends it again", "device", dev.id, "err", err)
		cl.Stop(err)
		return pk, packets.ErrRejectPacket
	}
	return pk, packets.CodeSuccessIgnore
}

var _ drivers.Driver = (*Driver)(nil)
