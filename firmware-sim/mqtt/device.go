package mqtt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/firmware-sim/signal"
	"outpost/firmware-sim/sim"
)

// Timing of a device's connection.
const (
	keepAlive = 15 * time.Second
	// retryEvery is the pause between attempts to connect while the
	// broker is not up; maxRetry the longest between attempts to
	// reconnect after a connection was lost.
	retryEvery     = time.Second
	maxRetry       = 2 * time.Second
	connectTimeout = 5 * time.Second
	// quietPoll is how often a deaf or silent device looks whether it
	// hears again.
	quietPoll = 50 * time.Millisecond
	// remembered is how many answered command ids a device keeps.
	remembered = 10000
)

// Counters are what a simulated MQTT device did.
type Counters struct {
	Published int64 `json:"published"` // messages handed to the client, misbehaviour included
	Acked     int64 `json:"acked"`     // messages whose PUBACK the device waits for, acknowledged
	Connects  int64 `json:"connects"`
	Lost      int64 `json:"connections_lost"`
	Commands  int64 `json:"commands"`   // commands carried out or refused, once each
	Again     int64 `json:"again"`      // commands delivered again, answered again
	Failed    int64 `json:"failed"`     // commands answered "failed"
	NoID      int64 `json:"no_id"`      // commands without an id, not answered
	Misbehave int64 `json:"misbehaved"` // messages sent by flood, oversize, malformed, impersonate
	Readings  int64 `json:"readings_served"`
	Events    int64 `json:"events_served"`
}

// device is one simulated MQTT device.
type device struct {
	id       string
	prefix   string
	broker   string
	password string
	tmpl     *cfg.Template
	actions  []configs.Action
	every    time.Duration  // telemetry
	signals  []*cfg.Message // the messages of signals alone: telemetry
	gens     map[string]*signal.Generator
	rules    map[string]*configs.EventRule // bool signals with an event rule
	byKind   map[string]string             // their names by event kind (door, tamper)
	sink     sim.Sink
	statuses StatusSink
	deaf     *atomic.Bool
	faults   *sim.Faults
	log      *slog.Logger

	client paho.Client
	store  *ackStore

	stop chan struct{} // closed when run ends
	bg   sync.WaitGroup

	mu        sync.Mutex
	stopped   bool
	conn      *cutConn      // the current connection
	away      time.Time     // offline until then
	deafUntil time.Time     // deaf until then
	up        chan struct{} // closed at the next connect
	// The gates of a new connection: listed is closed once the client
	// took the messages in its store to send them again (see listing),
	// born once the device said it is online there. Nil when no
	// connection is being set up.
	listed, born chan struct{}
	forced       map[string]bool
	seq          map[string]int // generated ids, by kind
	writes       map[string]int64

	tel  sync.Mutex      // one telemetry message at a time, so edges go in order
	last map[string]bool // event signals as last published

	connected chan struct{} // a connect, for the run loop

	inMu  sync.Mutex
	inbox []inbound // commands not yet handled
	wake  chan struct{}
	done  map[string]error // answers by command id (the answering goroutine's)
	order []string

	n struct {
		published, acked, connects, lost, commands, again, failed, noID, misbehave, readings, events atomic.Int64
	}
}

// inbound is a command as it arrived.
type inbound struct {
	payload []byte
	at      time.Time
}

func newDevice(st *configs.Station, set *cfg.Link, d *configs.Device, broker string, o sim.Options) (*device, error) {
	ds, ok := d.Settings.(*cfg.Device)
	if !ok {
		return nil, fmt.Errorf("device %s: not an %s device", d.ID, cfg.Protocol)
	}
	t := st.Templates[d.Template]
	if t == nil {
		return nil, fmt.Errorf("device %s: no template %s", d.ID, d.Template)
	}
	body, ok := t.Body.(*cfg.Template)
	if !ok {
		return nil, fmt.Errorf("device %s: template %s is not of family %s", d.ID, d.Template, cfg.Family)
	}
	if ds.Sim == nil || ds.Sim.PasswordFile == "" {
		return nil, fmt.Errorf("device %s: sim.password_file is needed to simulate it (its password in plain text)", d.ID)
	}
	file := st.Path(ds.Sim.PasswordFile)
	pw, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("device %s: sim.password_file: %w", d.ID, err)
	}
	dev := &device{
		id: d.ID, prefix: set.Prefix, broker: broker, password: strings.TrimSpace(string(pw)),
		tmpl: body, actions: t.Actions, every: ds.Sim.Telemetry,
		gens: map[string]*signal.Generator{}, rules: map[string]*configs.EventRule{}, byKind: map[string]string{},
		sink: o.Sink, deaf: o.Deaf, faults: o.Faults, log: o.Log.With("device", d.ID),
		stop: make(chan struct{}), up: make(chan struct{}),
		forced: map[string]bool{}, seq: map[string]int{}, writes: map[string]int64{}, last: map[string]bool{},
		connected: make(chan struct{}, 1), wake: make(chan struct{}, 1), done: map[string]error{},
	}
	dev.store = newAckStore(dev.listing)
	if dev.password == "" {
		return nil, fmt.Errorf("device %s: %s is empty", d.ID, file)
	}
	if dev.every <= 0 {
		dev.every = 10 * time.Second
	}
	if s, ok := o.Sink.(StatusSink); ok {
		dev.statuses = s
	}
	for i := range body.Messages {
		m := &body.Messages[i]
		if len(m.Signals) > 0 && m.Event == nil {
			dev.signals = append(dev.signals, m)
		}
		for j := range m.Signals {
			v := &m.Signals[j]
			sw := configs.Sim{Wave: "constant"}
			if v.Type == configs.Text {
				sw.Wave = "text"
			}
			if v.Sim != nil {
				sw = *v.Sim
			}
			g, err := signal.New(sw, o.Seed, d.ID+"/"+v.Signal, o.Start)
			if err != nil {
				return nil, fmt.Errorf("device %s: %w", d.ID, err)
			}
			dev.gens[v.Signal] = g
			if v.Event != nil && v.Type == configs.Bool {
				dev.rules[v.Signal] = v.Event
				if _, dup := dev.byKind[v.Event.Kind]; !dup {
					dev.byKind[v.Event.Kind] = v.Signal
				}
			}
		}
	}
	dev.client = paho.NewClient(dev.options())
	return dev, nil
}

// options are the device's client's: a persistent session, its will, and
// connections through dial (which the offline action cuts).
func (d *device) options() *paho.ClientOptions {
	o := paho.NewClientOptions().
		AddBroker(d.broker).
		SetClientID(d.id).
		SetUsername(d.id).
		SetPassword(d.password).
		SetCleanSession(false).
		SetKeepAlive(keepAlive).
		SetAutoReconnect(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(retryEvery).
		SetMaxReconnectInterval(maxRetry).
		SetConnectTimeout(connectTimeout).
		SetWill(d.topic(cfg.StateTopic), "offline", 1, true).
		SetStore(d.store).
		SetOrderMatters(true).
		SetDefaultPublishHandler(d.onMessage).
		SetOnConnectHandler(d.onConnect).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			d.n.lost.Add(1)
			d.log.Info("mqtt connection lost", "err", err)
		}).
		SetCustomOpenConnectionFn(d.dial)
	return o
}

// topic is a topic of the device's own.
func (d *device) topic(name string) string { return d.prefix + "/" + d.id + "/" + name }

func (d *device) ID() string { return d.id }

func (d *device) Stats() sim.Stats {
	d.mu.Lock()
	var w map[string]int64
	if len(d.writes) > 0 {
		w = maps.Clone(d.writes)
	}
	d.mu.Unlock()
	return sim.Stats{ReadingsServed: d.n.readings.Load(), EventsServed: d.n.events.Load(), Writes: w}
}

func (d *device) counters() Counters {
	return Counters{
		Published: d.n.published.Load(), Acked: d.n.acked.Load(), Connects: d.n.connects.Load(), Lost: d.n.lost.Load(),
		Commands: d.n.commands.Load(), Again: d.n.again.Load(), Failed: d.n.failed.Load(), NoID: d.n.noID.Load(),
		Misbehave: d.n.misbehave.Load(), Readings: d.n.readings.Load(), Events: d.n.events.Load(),
	}
}

// errStopped ends a connection attempt when the device stops.
var errStopped = errors.New("the device stopped")

// dial opens the device's connection to the broker, once the time the
// offline action set is over.
func (d *device) dial(uri *url.URL, o paho.ClientOptions) (net.Conn, error) {
	d.mu.Lock()
	away := time.Until(d.away)
	d.mu.Unlock()
	if away > 0 {
		t := time.NewTimer(away)
		defer t.Stop()
		select {
		case <-t.C:
		case <-d.stop:
			return nil, errStopped
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.ConnectTimeout)
	defer cancel()
	go func() {
		select {
		case <-d.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	var dl net.Dialer
	c, err := dl.DialContext(ctx, "tcp", uri.Host)
	if err != nil {
		return nil, err
	}
	if c.LocalAddr().String() == c.RemoteAddr().String() {
		// Nothing listens there, and the kernel gave the socket that very
		// port: it would talk to itself.
		c.Close()
		return nil, fmt.Errorf("%s: connected to itself (the broker is not up yet)", uri.Host)
	}
	cc := &cutConn{Conn: c}
	d.mu.Lock()
	d.conn = cc
	// The gates of an attempt that failed after dialling open.
	for _, g := range []*chan struct{}{&d.listed, &d.born} {
		if *g != nil {
			close(*g)
		}
		*g = make(chan struct{})
	}
	d.mu.Unlock()
	return cc, nil
}

// listing is called when the client lists the messages in its store: on
// a new connection, to send them again. Until then, the device publishes
// nothing: paho would send a message published in between twice, the
// second time writing its DUP flag while the first is being written (a
// race of paho 1.5, eclipse-paho/paho.mqtt.golang#703).
func (d *device) listing() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.listed != nil {
		close(d.listed)
		d.listed = nil
	}
}

// pass waits until a gate of a new connection opens; at most
// connectTimeout, for a connection the broker refused after it was
// dialled.
func (d *device) pass(gate chan struct{}) {
	if gate == nil {
		return
	}
	t := time.NewTimer(connectTimeout)
	defer t.Stop()
	select {
	case <-gate:
	case <-t.C:
	case <-d.stop:
	}
}

// cutConn is a connection the device can cut, as a pulled cable or a
// crash would: without a DISCONNECT, and seen by the client as a lost
// connection (paho takes a read on a connection closed on its side for
// its own goodbye).
type cutConn struct {
	net.Conn
	cut atomic.Bool
}

var errCut = errors.New("connection cut by the offline action")

func (c *cutConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if err != nil && c.cut.Load() {
		err = errCut
	}
	return n, err
}

// Cut closes the connection under the client.
func (c *cutConn) Cut() {
	c.cut.Store(true)
	c.Conn.Close()
}

// onConnect says the device is online and subscribes to its commands, at
// every connect: a broker that restarted may have lost the subscription.
func (d *device) onConnect(c paho.Client) {
	d.mu.Lock()
	listed, born := d.listed, d.born
	d.mu.Unlock()
	d.pass(listed)
	d.n.connects.Add(1)
	d.log.Info("mqtt connected", "broker", d.broker)
	// Subscribed before "online", as docs/kiosks.md asks (a command the
	// gateway sends on seeing it online finds the subscription), and
	// "online" before the device's other messages, which wait for it.
	sub := c.Subscribe(d.topic(cfg.CmdTopic), 1, nil)
	if sub.WaitTimeout(connectTimeout) && sub.Error() != nil {
		d.log.Warn("mqtt subscribe failed", "topic", d.topic(cfg.CmdTopic), "err", sub.Error())
	}
	c.Publish(d.topic(cfg.StateTopic), 1, true, "online")
	d.mu.Lock()
	if born != nil && d.born == born {
		close(d.born)
		d.born = nil
	}
	close(d.up)
	d.up = make(chan struct{})
	d.mu.Unlock()
	select {
	case d.connected <- struct{}{}:
	default:
	}
}

// onMessage takes a message from the broker: a command is queued for the
// answering goroutine, so that the client's own goroutine never waits.
func (d *device) onMessage(_ paho.Client, m paho.Message) {
	if m.Topic() != d.topic(cfg.CmdTopic) {
		return
	}
	d.inMu.Lock()
	d.inbox = append(d.inbox, inbound{payload: slices.Clone(m.Payload()), at: time.Now()})
	d.inMu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// quiet says whether the device sends nothing now: deaf (the action, or
// the whole simulator's) or silent.
func (d *device) quiet() bool {
	d.mu.Lock()
	deaf := time.Now().Before(d.deafUntil)
	d.mu.Unlock()
	return deaf || (d.deaf != nil && d.deaf.Load()) || d.faults.Silent(d.id)
}

// whenHeard waits until the device is not quiet; false when ctx ended or
// the device stopped first.
func (d *device) whenHeard(ctx context.Context) bool {
	if !d.quiet() {
		return true
	}
	t := time.NewTicker(quietPoll)
	defer t.Stop()
	for d.quiet() {
		select {
		case <-ctx.Done():
			return false
		case <-d.stop:
			return false
		case <-t.C:
		}
	}
	return true
}

// run connects and sends telemetry and heartbeats until ctx ends.
func (d *device) run(ctx context.Context) {
	uptime := time.Now()
	d.client.AddRoute(d.topic(cfg.CmdTopic), d.onMessage)
	d.client.Connect() // with ConnectRetry, it keeps trying in the background
	var wg sync.WaitGroup
	wg.Go(func() { d.answer(ctx) })
	tel := time.NewTicker(d.every)
	defer tel.Stop()
	var beat <-chan time.Time
	if hb := d.tmpl.Heartbeat; hb != nil {
		t := time.NewTicker(hb.Every)
		defer t.Stop()
		beat = t.C
	}
	heartbeat := func() {
		if d.tmpl.Heartbeat == nil || d.quiet() || !d.client.IsConnectionOpen() {
			return
		}
		m := d.tmpl.Message(d.tmpl.Heartbeat.Message)
		b, err := heartbeatPayload(m, time.Now(), time.Since(uptime))
		if err == nil {
			err = d.publish(d.topic(m.Name), 1, false, b, nil)
		}
		if err != nil {
			d.log.Warn("heartbeat not sent", "err", err)
		}
	}
	telemetry := func() {
		if d.quiet() || !d.client.IsConnectionOpen() {
			return
		}
		if err := d.sendTelemetry(time.Now()); err != nil {
			d.log.Warn("telemetry not sent", "err", err)
		}
	}
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-d.connected:
			telemetry()
			heartbeat()
		case <-tel.C:
			telemetry()
		case <-beat:
			heartbeat()
		}
	}
	d.mu.Lock()
	d.stopped = true
	close(d.stop)
	d.mu.Unlock()
	wg.Wait()
	d.bg.Wait()
	if d.client.IsConnectionOpen() && !d.quiet() {
		// A device shut down in order says so; the will is for the others.
		d.client.Publish(d.topic(cfg.StateTopic), 1, true, "offline").WaitTimeout(time.Second)
	}
	d.client.Disconnect(250)
}

// later runs fn after a pause (and once the device is heard again), in
// the background; with wait, it returns fn's error once it ran.
func (d *device) later(ctx context.Context, after time.Duration, wait bool, fn func() error) error {
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		return errStopped
	}
	d.bg.Add(1)
	d.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		defer d.bg.Done()
		t := time.NewTimer(after)
		defer t.Stop()
		select {
		case <-t.C:
		case <-d.stop:
			done <- errStopped
			return
		}
		if !d.whenHeard(context.Background()) {
			done <- errStopped
			return
		}
		err := fn()
		if err != nil {
			d.log.Warn("not sent", "err", err)
		}
		done <- err
	}()
	if !wait {
		return nil
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// publish hands a message to the client; served, if set, runs once the
// broker acknowledged it. It fails only when the client is not running:
// while it reconnects, QoS 1 messages wait for the connection.
func (d *device) publish(topic string, qos byte, retained bool, payload []byte, served func()) error {
	d.mu.Lock()
	born := d.born
	d.mu.Unlock()
	d.pass(born)
	if served != nil {
		d.store.expect(topic, payload, func() {
			d.n.acked.Add(1)
			served()
		})
	}
	tok := d.client.Publish(topic, qos, retained, payload)
	select {
	case <-tok.Done():
		if err := tok.Error(); errors.Is(err, paho.ErrNotConnected) {
			if served != nil {
				d.store.forget(topic, payload)
			}
			return fmt.Errorf("%s: %w", topic, err)
		}
	default:
	}
	d.n.published.Add(1)
	return nil
}

// values are the values of a message's signals at a time: their waves',
// or what an action forced.
func (d *device) values(m *cfg.Message, now time.Time) map[string]signal.Value {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]signal.Value{}
	for _, v := range m.Signals {
		if f, ok := d.forced[v.Signal]; ok {
			out[v.Signal] = signal.B(f)
			continue
		}
		out[v.Signal] = d.gens[v.Signal].At(now)
	}
	return out
}

// sendTelemetry publishes every message of signals with their values now.
// Its readings, and the edges of signals with an event rule since the
// last message, count once the broker acknowledged it; the edges are
// logged as raised.
func (d *device) sendTelemetry(now time.Time) error {
	d.tel.Lock()
	defer d.tel.Unlock()
	for _, m := range d.signals {
		vals := d.values(m, now)
		b, rs, err := telemetryPayload(m, now, vals)
		if err != nil {
			return err
		}
		var edges []sim.Raised
		for _, v := range m.Signals {
			rule := d.rules[v.Signal]
			if rule == nil {
				continue
			}
			on, was := vals[v.Signal].Truth(), d.last[v.Signal]
			switch {
			case on && !was:
				edges = append(edges, sim.Raised{Device: d.id, Kind: rule.Kind, State: "active", At: now.UTC(), Source: Source})
			case !on && was && rule.Clear:
				edges = append(edges, sim.Raised{Device: d.id, Kind: rule.Kind, State: "cleared", At: now.UTC(), Source: Source})
			}
		}
		err = d.publish(d.topic(m.Name), 1, false, b, func() {
			d.n.readings.Add(int64(len(rs)))
			d.n.events.Add(int64(len(edges)))
			if d.sink != nil {
				d.sink.Served(d.id, rs)
			}
		})
		if err != nil {
			return err
		}
		for _, v := range m.Signals {
			if d.rules[v.Signal] != nil {
				d.last[v.Signal] = vals[v.Signal].Truth()
			}
		}
		if d.sink != nil {
			for _, e := range edges {
				d.sink.Raised(e)
			}
		}
	}
	return nil
}

// answer handles the commands that arrive, in order, until ctx ends; a
// deaf or silent device answers once it hears again.
func (d *device) answer(ctx context.Context) {
	for {
		d.inMu.Lock()
		var in inbound
		have := len(d.inbox) > 0
		if have {
			in = d.inbox[0]
			d.inbox = d.inbox[1:]
		}
		d.inMu.Unlock()
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-d.wake:
			}
			continue
		}
		if !d.whenHeard(ctx) {
			return
		}
		d.handle(in)
	}
}

// handle carries out a command, once per id, and answers it.
func (d *device) handle(in inbound) {
	c, err := parseCommand(in.payload, d.actions)
	if errors.Is(err, errNoID) {
		d.n.noID.Add(1)
		d.log.Warn("command not answered", "err", err)
		return
	}
	if prev, seen := d.done[c.ID]; seen {
		d.n.again.Add(1)
		d.log.Debug("command delivered again: answered again", "id", c.ID)
		d.ack(c.ID, prev)
		return
	}
	d.n.commands.Add(1)
	if err == nil {
		d.carryOut(c, in.at)
	} else {
		d.n.failed.Add(1)
		d.log.Info("command refused", "id", c.ID, "action", c.Action, "reason", err)
	}
	d.done[c.ID] = err
	d.order = append(d.order, c.ID)
	if len(d.order) > remembered {
		delete(d.done, d.order[0])
		d.order = d.order[1:]
	}
	d.ack(c.ID, err)
}

// carryOut does what a command asks: a kiosk shows a request's status
// (logged for the testbench) or that its call was answered.
func (d *device) carryOut(c command, at time.Time) {
	d.mu.Lock()
	d.writes[c.Action]++
	d.mu.Unlock()
	d.log.Info("command", "id", c.ID, "action", c.Action, "args", c.Args)
	if c.Action == "request_status" && d.statuses != nil {
		d.statuses.Status(Status{Device: d.id, Ticket: c.Args["ticket"], Status: c.Args["status"], Note: c.Args["note"],
			ID: c.ID, At: at.UTC(), Sent: c.Sent.UTC()})
	}
}

func (d *device) ack(id string, err error) {
	if perr := d.publish(d.topic(cfg.AckTopic), 1, false, ackPayload(id, err), nil); perr != nil {
		d.log.Warn("command answer not sent", "id", id, "err", perr)
	}
}

// ackStore is the client's store of messages in flight, which tells the
// device when the broker acknowledged one it counts: the client deletes
// a QoS 1 message from its store when its PUBACK arrives (and only then),
// also when it sent the message again after reconnecting.
type ackStore struct {
	paho.Store
	listed  func() // called at every All
	mu      sync.Mutex
	sent    map[string]*packets.PublishPacket // in flight, by the store's key
	pending map[string][]func()               // what to run at its PUBACK, by topic and payload
}

func newAckStore(listed func()) *ackStore {
	return &ackStore{Store: paho.NewOrderedMemoryStore(), listed: listed,
		sent: map[string]*packets.PublishPacket{}, pending: map[string][]func(){}}
}

func (s *ackStore) All() []string {
	keys := s.Store.All()
	s.listed()
	return keys
}

// outbound is the prefix of the store's keys of messages sent.
const outbound = "o."

func pendingKey(topic string, payload []byte) string { return topic + "\x00" + string(payload) }

// expect registers what to run when the broker acknowledges a message of
// that topic and payload; identical messages are served in order.
func (s *ackStore) expect(topic string, payload []byte, fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := pendingKey(topic, payload)
	s.pending[k] = append(s.pending[k], fn)
}

// forget drops the latest registration of a message that was not sent.
func (s *ackStore) forget(topic string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := pendingKey(topic, payload)
	if q := s.pending[k]; len(q) > 0 {
		if len(q) == 1 {
			delete(s.pending, k)
		} else {
			s.pending[k] = q[:len(q)-1]
		}
	}
}

func (s *ackStore) Put(key string, m packets.ControlPacket) {
	s.mu.Lock()
	if p, ok := m.(*packets.PublishPacket); ok && strings.HasPrefix(key, outbound) {
		s.sent[key] = p
	} else {
		delete(s.sent, key)
	}
	s.mu.Unlock()
	s.Store.Put(key, m)
}

func (s *ackStore) Del(key string) {
	var fn func()
	s.mu.Lock()
	if p := s.sent[key]; p != nil {
		delete(s.sent, key)
		k := pendingKey(p.TopicName, p.Payload)
		if q := s.pending[k]; len(q) > 0 {
			fn = q[0]
			if len(q) == 1 {
				delete(s.pending, k)
			} else {
				s.pending[k] = q[1:]
			}
		}
	}
	s.mu.Unlock()
	s.Store.Del(key)
	if fn != nil {
		fn()
	}
}

func (s *ackStore) Reset() {
	s.mu.Lock()
	clear(s.sent)
	s.mu.Unlock()
	s.Store.Reset()
}
