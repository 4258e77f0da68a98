package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	cfg "outpost/configs/mqtt"
	"outpost/gateway/durable"
	"outpost/gateway/model"
)

// How the driver keeps its connection to an external station broker.
const (
	keepAlive      = 15 * time.Second
	pingTimeout    = 5 * time.Second
	connectTimeout = 5 * time.Second
	writeTimeout   = 10 * time.Second
	minReconnect   = 100 * time.Millisecond
	maxReconnect   = 10 * time.Second
	// stableAfter is how long a connection must have lasted for the next
	// reconnect to start from minReconnect again: a broker that takes the
	// gateway and drops it at once is not hammered.
	stableAfter = 10 * time.Second
	// failLogEvery is the least time between two log lines about a broker
	// the gateway cannot reach.
	failLogEvery = time.Minute
	// laneSize is how many messages of one device wait at the gateway
	// before the subscription is read no further (for every device).
	laneSize = 256
)

// session is one connection to the external broker: a paho client of its
// own (paho's own reconnect replays its store and races with new
// publishes; a fresh client per connection does neither).
type session struct {
	c       paho.Client
	up      time.Time
	present bool          // the broker had the gateway's session (CONNACK)
	lost    chan struct{} // closed when the connection is lost or dropped
	once    sync.Once
	err     error // why, once lost is closed
}

// lose marks the connection lost (the first reason stays).
func (s *session) lose(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.lost)
	})
}

func (s *session) gone() bool {
	select {
	case <-s.lost:
		return true
	default:
		return false
	}
}

// inbound is a device's message from the external broker, waiting in the
// device's lane to be taken.
type inbound struct {
	s    *session
	name string
	msg  paho.Message
}

var errStopped = errors.New("the link stopped")

// subscribe keeps a subscription to the external broker until ctx ends:
// it reconnects on its own, with a backoff from minReconnect to
// maxReconnect. It returns an error only when the broker refuses the
// gateway (its user name, password or client id, or its subscription):
// that does not heal without a change of the station file or of the
// broker's configuration.
func (d *Driver) subscribe(ctx context.Context, stop func()) error {
	d.SetAddr(d.set.Broker)
	start := d.now()
	for _, dev := range d.devices {
		dev.mu.Lock()
		dev.lastHeard = start // silence counts from the start
		dev.mu.Unlock()
	}
	var lanes sync.WaitGroup
	drained, endLanes := context.WithCancel(ctx)
	for _, dev := range d.devices {
		lanes.Go(func() { d.drain(drained, dev) })
	}
	var s *session
	defer func() {
		d.sess.Store(nil)
		if s != nil {
			s.lose(errStopped)
			s.c.Disconnect(100)
		}
		endLanes()
		stop() // throttled messages stop waiting
		lanes.Wait()
	}()

	t := time.NewTicker(tick)
	defer t.Stop()
	retry := time.NewTimer(0)
	defer retry.Stop()
	backoff := minReconnect
	var lost <-chan struct{} // s.lost, nil while there is no connection
	var failed time.Time     // the last log line about a failure, zero while connected
	attempts := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.supervise()
		case <-lost:
			d.sess.Store(nil)
			d.down = linkDown{since: d.now(), err: s.err}
			s.c.Disconnect(0) // nothing to do when paho saw the loss itself
			if d.now().Sub(s.up) >= stableAfter {
				backoff = minReconnect
			}
			d.log.Warn("connection to the station broker lost; reconnecting", "broker", d.set.Broker, "err", s.err, "in", backoff)
			s, lost = nil, nil
			retry.Reset(backoff)
			backoff = min(2*backoff, maxReconnect)
		case <-retry.C:
			ns, err := d.connect(ctx)
			if err == nil {
				s, lost = ns, ns.lost
				d.sess.Store(s)
				d.log.Info("subscribed to the station broker", "broker", d.set.Broker, "client_id", d.clientID,
					"devices", len(d.devices), "attempts", attempts+1)
				if !d.once {
					d.checkSession(s.present)
				}
				failed, attempts, d.down = time.Time{}, 0, linkDown{}
				d.Up()
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			if refused(err) {
				return fmt.Errorf("link %s: station broker %s: %w", d.name, d.set.Broker, err)
			}
			attempts++
			if d.down.since.IsZero() {
				d.down.since = d.now()
			}
			d.down.err = err
			if now := d.now(); failed.IsZero() || now.Sub(failed) >= failLogEvery {
				d.log.Warn("station broker unreachable; trying again", "broker", d.set.Broker, "err", err, "attempts", attempts, "next_in", backoff)
				failed = now
			}
			retry.Reset(backoff)
			backoff = min(2*backoff, maxReconnect)
		}
	}
}

// linkDown is why the link has no connection to the external broker, and
// since when.
type linkDown struct {
	since time.Time
	err   error
}

// sessionFile is where the gateway remembers, in its state directory, that
// it has a session at the external broker (its client id and the broker):
// a connection that finds none there, even after a restart of the
// gateway, means the broker lost it.
func (d *Driver) sessionFile() string {
	return filepath.Join(d.stateDir, "mqtt-"+d.name+".session")
}

// checkSession tells the hub when the broker had no session of the
// gateway's although it had one: the broker restarted without its saved
// state (Mosquitto saves it only every autosave_interval), or expired it.
// Whatever the devices published from then until the gateway subscribed
// again went to no one. It remembers the session otherwise.
func (d *Driver) checkSession(present bool) {
	mark := d.clientID + " " + d.set.Broker + "\n"
	had := d.sessioned
	if !had {
		b, err := os.ReadFile(d.sessionFile())
		if had = err == nil && string(b) == mark; !had {
			if err = durable.MkdirAll(d.stateDir); err == nil {
				err = durable.WriteFile(d.sessionFile(), []byte(mark))
			}
			if err != nil {
				d.log.Warn("cannot remember the session at the station broker: its loss after a restart will not be noticed", "file", d.sessionFile(), "err", err)
			}
		}
		d.sessioned = true
	}
	if present || !had {
		return
	}
	devices := slices.Sorted(maps.Keys(d.devices))
	reason := fmt.Sprintf("the station broker %s had lost the gateway's session (client id %s) when it connected again: what %s published while the gateway was away from the broker went to no one and may be lost; make the broker save its state often (Mosquitto: persistence true, autosave_interval 10)",
		d.set.Broker, d.clientID, strings.Join(devices, ", "))
	sev := model.Warning
	if d.alarm {
		sev = model.Critical
	}
	details := map[string]string{"link": d.name, "broker": d.set.Broker, "client_id": d.clientID,
		"devices": strings.Join(devices, ","), "reason": reason}
	if !d.down.since.IsZero() {
		details["away_since"] = d.down.since.UTC().Format(time.RFC3339)
	}
	d.log.Error("station broker lost the gateway's session", "broker", d.set.Broker, "client_id", d.clientID, "devices", devices)
	d.send(model.GatewayEvent(model.EventBrokerSessionLost, sev, details))
}

// errSubscription is the broker's refusal of the gateway's subscription.
var errSubscription = errors.New("subscription refused")

// refused says the broker refused the gateway for good.
func refused(err error) bool {
	for _, e := range []error{packets.ErrorRefusedBadUsernameOrPassword, packets.ErrorRefusedNotAuthorised,
		packets.ErrorRefusedIDRejected, errSubscription} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// connect logs in to the external broker with a persistent session and
// subscribes to every device's topics at QoS 1. Messages are acknowledged
// by the device's lane once taken (see drain), not by paho.
func (d *Driver) connect(ctx context.Context) (*session, error) {
	s := &session{lost: make(chan struct{})}
	o := paho.NewClientOptions().AddBroker(d.set.Broker).SetClientID(d.clientID).
		SetUsername(d.set.Username).SetPassword(d.set.Password()).
		SetProtocolVersion(4).
		SetCleanSession(d.once). // the broker keeps the devices' messages while the gateway is away
		SetStore(paho.NewMemoryStore()).
		SetOrderMatters(true).    // one handler at a time, in the broker's order: it only hands over to lanes
		SetAutoAckDisabled(true). // the lane acknowledges once the message is durable
		SetKeepAlive(keepAlive).SetPingTimeout(pingTimeout).
		SetConnectTimeout(connectTimeout).SetWriteTimeout(writeTimeout).
		SetAutoReconnect(false).SetConnectRetry(false).
		// Messages of the session that arrive before the subscription's
		// answer take the default handler: there is no other.
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { d.arrived(s, m) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) { s.lose(err) })
	if strings.HasPrefix(d.set.Broker, "ssl://") {
		o.SetTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})
	}
	s.c = paho.NewClient(o)
	tok := s.c.Connect()
	if err := wait(ctx, tok); err != nil {
		s.c.Disconnect(0)
		return nil, err
	}
	s.present = tok.(*paho.ConnectToken).SessionPresent()
	s.up = d.now()
	filter := d.set.Prefix + "/+/#"
	sub := s.c.Subscribe(filter, 1, nil)
	err := wait(ctx, sub)
	if err == nil {
		if qos := sub.(*paho.SubscribeToken).Result()[filter]; qos > 1 {
			err = fmt.Errorf("%w: %s (answer %#x): the broker's ACL must let %s read %s/#", errSubscription, filter, qos, d.set.Username, d.set.Prefix)
		}
	}
	if err != nil {
		s.lose(err)
		s.c.Disconnect(0)
		return nil, err
	}
	return s, nil
}

// wait waits for a token or the end of ctx.
func wait(ctx context.Context, tok paho.Token) error {
	select {
	case <-tok.Done():
		return tok.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// arrived is paho's handler of every message: it hands a device's message
// to the device's lane at once, so that a device whose events wait their
// turn holds up no other. It blocks only while that device's lane is
// full, and ends waiting when the connection is lost: the broker then
// sends the message again on the next one.
func (d *Driver) arrived(s *session, m paho.Message) {
	id, name := d.split(m.Topic())
	dev := d.devices[id]
	switch {
	case dev == nil:
		d.stray(m.Topic())
	case name == cfg.CmdTopic:
		// The gateway's own command, back from the broker.
	case m.Retained() && name != cfg.StateTopic:
		// An old message the broker keeps and sends with every
		// subscription: taken when it was published.
	default:
		select {
		case dev.lane <- inbound{s: s, name: name, msg: m}:
		case <-s.lost:
		}
		return
	}
	m.Ack()
}

// split cuts a topic into the device it belongs to and the message's name
// below the device's own.
func (d *Driver) split(topic string) (device, name string) {
	rest, ok := strings.CutPrefix(topic, d.set.Prefix+"/")
	if !ok {
		return "", ""
	}
	device, name, _ = strings.Cut(rest, "/")
	return device, name
}

// drain takes a device's messages from the external broker in order, and
// acknowledges each once taken (durable). A message of a connection that
// is gone is left: the broker sends it again on the next one. An event
// the disk refused drops the connection unacknowledged, for the same
// reason.
func (d *Driver) drain(ctx context.Context, dev *device) {
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-dev.lane:
			if in.s.gone() {
				continue
			}
			if err := d.take(dev, in.name, in.msg.Payload()); err != nil {
				d.log.Warn("event not kept; dropping the connection to the station broker so that it sends it again", "device", dev.id, "err", err)
				in.s.lose(err)
				continue
			}
			in.msg.Ack()
		}
	}
}

// strays counts the messages on topics of devices the link does not have,
// and logs them at most every logEvery.
type strays struct {
	mu     sync.Mutex
	n      uint64 // since the last log line
	last   string
	logged time.Time
}

// stray counts a message of a device the link does not have.
func (d *Driver) stray(topic string) {
	d.counts.add("unknown_device")
	d.strays.mu.Lock()
	d.strays.n++
	d.strays.last = topic
	d.strays.mu.Unlock()
	d.strays.flush(d.log, d.now())
}

// flush logs the strays not yet logged, when logEvery has passed since
// the last line.
func (s *strays) flush(log *slog.Logger, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n == 0 || now.Sub(s.logged) < logEvery {
		return
	}
	log.Warn("messages of devices not on the link ignored", "count", s.n, "last_topic", s.last)
	s.n, s.logged = 0, now
}

// publishExternal sends a command to a device through the external broker (QoS
// 1). Without a connection it does nothing: the command is sent again
// when the device says online, or after resendEvery.
func (d *Driver) publishExternal(ctx context.Context, device, topic string, payload []byte) {
	s := d.sess.Load()
	if s == nil {
		return
	}
	tok := s.c.Publish(topic, 1, false, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			d.log.Warn("command not published; it is sent again", "device", device, "err", err)
		}
	case <-s.lost:
	case <-ctx.Done():
	}
}
