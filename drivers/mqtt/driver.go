// Package mqtt is the driver of mqtt links: the station's devices that
// speak MQTT (self-service kiosks first) publish to a station broker, and
// the gateway maps what they publish to the normalized model by their
// templates (configs/mqtt). The station broker is one the gateway embeds
// on the station's LAN (mochi-mqtt, listen), or an external one the
// gateway subscribes to (paho, broker): what a device publishes takes the
// same path either way (Driver.take).
//
// What the driver guards against:
//
//   - A device that logs in as another, or speaks for another: every
//     device has its own password (the link's password file holds its
//     hash), its client id must be its user name, and it may publish only
//     below its own topic and subscribe only to its own commands. A
//     publish anywhere else is refused (the broker drops the connection),
//     counted (refused_topic) and reported to the hub as an event,
//     spoofing, at most once a minute per device with the count. An
//     external broker enforces all this itself (its password file and
//     ACL, see docs/kiosks.md), and the gateway sees none of it.
//   - Payloads that are not what the template says: not JSON, wrong
//     types, unknown or missing fields, over max_payload, or faster than
//     the device's rate. Each is refused with a counter of that name, the
//     device is degraded with the reason until it has sent nothing wrong
//     for quietAfter, and a log line names it (at most one every
//     logEvery per device, with the counts). A refused message is still
//     acknowledged, so that the device does not send it forever; nothing
//     of it reaches the hub.
//   - A device gone: a will, a dropped connection, or silence beyond its
//     silence setting (three heartbeats by default) makes it offline.
//     Through an external broker the gateway sees no connections: the
//     device's state message (online, or offline as its will) and its
//     silence say it.
//
// An event is acknowledged (PUBACK) only once it is durable in the
// gateway's queue: a device (or an external broker) that got the
// acknowledgement never needs to send it again. When the disk refuses
// it, the connection is dropped unacknowledged: the device sends it
// again when it reconnects, or the external broker when the gateway
// does.
//
// Commands from the hub for a device go to {prefix}/{device}/cmd (QoS 1)
// and are done when the device answers on cmd/ack (see Send); one the
// device has not answered is sent again each time it connects (through
// an external broker: each time it says online), until it answers or the
// command expires.
package mqtt

import (
	"cmp"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/listeners"

	cfg "outpost/configs/mqtt"
	"outpost/drivers"
	"outpost/gateway/model"
)

func init() { drivers.Register(cfg.Protocol, New) }

// How the driver paces what it reports.
const (
	// quietAfter is how long a degraded device must send nothing wrong to
	// be online again: a flood of refused messages mixed with good ones
	// must not make a health message of every one.
	quietAfter = 10 * time.Second
	// logEvery is the least time between two log lines about one
	// device's refused messages.
	logEvery = 5 * time.Second
	// spoofEvery is the least time between two spoofing events of one
	// device at the hub.
	spoofEvery = time.Minute
	// tick is how often silence and quiet are checked.
	tick = time.Second
	// packetSlack is how much larger than max_payload a packet may be
	// (its topic and headers) before the broker drops the connection
	// instead of reading it; between the two, the payload is refused and
	// counted.
	packetSlack = 64 << 10
)

// Driver runs the station broker of one mqtt link, or its subscription
// to an external one.
type Driver struct {
	name     string
	set      *cfg.Link
	creds    cfg.Credentials
	devices  map[string]*device
	log      *slog.Logger
	now      func() time.Time
	clientID string        // at an external broker
	every    time.Duration // health goes to the hub this often while unchanged

	drivers.Listening // the broker it embeds, or the one it connects to

	emitMu sync.Mutex
	emit   drivers.Emit  // Run's
	done   chan struct{} // Run's, closed when it ends: throttled messages stop waiting

	server *mochi.Server           // the embedded broker
	sess   atomic.Pointer[session] // the connection to an external broker, nil while there is none
	counts counters                // what no device of the link can be held to
	strays strays                  // messages of devices not on the link (external broker)

	// Of the external broker, used by subscribe's goroutine only
	// (supervise runs there).
	down      linkDown // why there is no connection to it; zero while there is one
	stateDir  string   // where sessionFile is
	alarm     bool     // a device of the link raises alarms
	sessioned bool     // the gateway has had a session there (sessionFile)
	once      bool     // drivers.Link.Once: a clean session of its own, not the gateway's
}

// device is one MQTT device and its health.
type device struct {
	id, kind string
	set      *cfg.Device
	tmpl     *cfg.Template
	silence  time.Duration // 0: only a disconnect makes it offline

	mu        sync.Mutex
	client    *mochi.Client // the connection that is the device now
	state     model.HealthState
	reason    string
	counters  map[string]uint64
	lastHeard time.Time
	reported  time.Time // when its health last went to the hub
	lastWrong time.Time // the last refused message
	logged    time.Time // the last log line about refused messages
	unlogged  map[string]uint64
	last      string    // the last refusal, for the log
	linkDown  bool      // offline because the link to the external broker is down (its reason)
	spoofed   time.Time // the last spoofing event
	spoofs    uint64    // attempts since then
	// The device's rate, for what must not be lost (its events and
	// state: they wait their turn) and for the rest (refused over it):
	// a kiosk sending the requests it kept while away does not starve
	// its telemetry.
	keep, rest bucket

	// connected is closed and replaced each time the device (re)connects
	// or subscribes to its commands (through an external broker: says
	// online): commands waiting for its answer are then sent again.
	connected chan struct{}
	acks      map[string]chan ack // commands waiting for the device's answer, by id

	// lane holds the device's messages from an external broker, in
	// order, until they are taken: one device's messages waiting their
	// turn hold up no other device's.
	lane chan inbound
}

// New builds the driver of an mqtt link. It does no I/O.
func New(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	set, ok := link.Config.Settings.(*cfg.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not an %s link", link.Name(), cfg.Protocol)
	}
	d := &Driver{name: link.Name(), set: set, creds: set.Devices(), devices: map[string]*device{}, log: log, now: time.Now,
		every:    cmp.Or(link.Station.Health.ReportEvery, time.Minute),
		clientID: "outpost-" + link.Station.Station.ID + "-" + link.Name(), done: make(chan struct{}),
		stateDir: link.Station.StateDir, once: link.Once}
	if d.once {
		// A session of its own, clean: the gateway's, and what waits in
		// it for the gateway, stay as they are.
		d.clientID += fmt.Sprintf("-once-%d", os.Getpid())
	}
	for _, dev := range link.Devices {
		t := link.Template(dev)
		ds, ok := dev.Settings.(*cfg.Device)
		body, isMQTT := t.Body.(*cfg.Template)
		if !ok || !isMQTT {
			return nil, fmt.Errorf("device %s on %s: not an MQTT device", dev.ID, link.Name())
		}
		d.alarm = d.alarm || t.Alarm
		silence := ds.Silence
		if silence == 0 && body.Heartbeat != nil {
			silence = 3 * body.Heartbeat.Every
		}
		d.devices[dev.ID] = &device{id: dev.ID, kind: t.Kind, set: ds, tmpl: body, silence: silence,
			counters: map[string]uint64{}, unlogged: map[string]uint64{},
			keep: bucket{rate: ds.Rate, burst: float64(ds.Burst)}, rest: bucket{rate: ds.Rate, burst: float64(ds.Burst)},
			connected: make(chan struct{}), acks: map[string]chan ack{}}
		if !set.Embedded() {
			d.devices[dev.ID].lane = make(chan inbound, laneSize)
		}
	}
	return d, nil
}

// Run serves the station broker, or subscribes to the external one,
// until ctx ends. It may run again after it returned.
func (d *Driver) Run(ctx context.Context, emit drivers.Emit) error {
	done := make(chan struct{})
	stop := sync.OnceFunc(func() { close(done) })
	defer stop()
	d.emitMu.Lock()
	d.emit, d.done = emit, done
	d.emitMu.Unlock()
	if !d.set.Embedded() {
		return d.subscribe(ctx, stop)
	}
	return d.serve(ctx)
}

// serve runs the embedded broker until ctx ends.
func (d *Driver) serve(ctx context.Context) error {
	caps := mochi.NewDefaultServerCapabilities()
	caps.MaximumClients = int64(d.set.MaxConnections)
	caps.MaximumPacketSize = uint32(d.set.MaxPayload + packetSlack)
	caps.MaximumQos = 1
	caps.MaximumInflight = 1024
	caps.MaximumClientWritesPending = 1024
	caps.MaximumSessionExpiryInterval = 7 * 24 * 3600
	s := mochi.New(&mochi.Options{Capabilities: caps, InlineClient: true, SysTopicResendInterval: 3600,
		Logger: d.log.With("part", "broker")})
	// The broker logs what a device does wrong at its own level; the
	// driver says it once, in its words.
	s.Log = slog.New(slog.DiscardHandler)
	if err := s.AddHook(&hook{d: d}, nil); err != nil {
		return fmt.Errorf("link %s: %w", d.name, err)
	}
	lc := listeners.Config{ID: d.name, Address: d.set.Listen}
	if t := d.set.TLS; t != nil {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return fmt.Errorf("link %s: tls: %w", d.name, err)
		}
		lc.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	l := listeners.NewTCP(lc)
	if err := s.AddListener(l); err != nil {
		return fmt.Errorf("link %s: station broker cannot listen on %s: %w", d.name, d.set.Listen, err)
	}
	d.server = s
	errs := make(chan error, 1)
	go func() { errs <- s.Serve() }()
	d.SetAddr(l.Address())
	d.log.Info("station broker up", "address", d.Addr(), "devices", len(d.devices), "tls", d.set.TLS != nil)
	start := d.now()
	for _, dev := range d.devices {
		dev.mu.Lock()
		dev.lastHeard = start // silence counts from the start
		dev.mu.Unlock()
	}
	d.Up()

	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			s.Close()
			return nil
		case err := <-errs:
			if err != nil {
				return fmt.Errorf("link %s: station broker: %w", d.name, err)
			}
		case <-t.C:
			d.supervise()
		}
	}
}

// supervise makes silent devices offline and quiet degraded ones online.
func (d *Driver) supervise() {
	now := d.now()
	for _, dev := range d.devices {
		dev.mu.Lock()
		never := dev.counters["messages"] == 0 // nor connected, through the station broker
		silent := dev.silence > 0 && now.Sub(dev.lastHeard) > dev.silence
		switch {
		case never && dev.counters[AuthFailed] > 0:
			// Said at once: the device is there, and what to fix is
			// known. (A wrong login does not touch a device that is in.)
			d.setState(dev, model.Offline, fmt.Sprintf("its logins to the station broker are refused (%s): give the device and the gateway the same password again (gateway passwd -file %s %s, then gateway reload if the gateway runs)",
				dev.last, d.set.Credentials, dev.id))
		case silent && never && d.set.Embedded():
			d.setState(dev, model.Offline, fmt.Sprintf("%s has not connected to the station broker at %s since the gateway started: is it powered, on the station LAN, and set to this address?",
				dev.id, d.Addr()))
		case silent && d.down.err != nil:
			// The gateway hears nothing through an external broker it
			// cannot reach: that is what to fix, not the device.
			d.setState(dev, model.Offline, fmt.Sprintf("no connection to the station broker %s since %s (%v): is it running, and reachable from the gateway?",
				d.set.Broker, d.down.since.UTC().Format(time.DateTime+" MST"), d.down.err))
			dev.linkDown = true
		case silent && (dev.state != model.Offline || dev.linkDown):
			d.setState(dev, model.Offline, fmt.Sprintf("nothing from %s for %s (it should send a heartbeat every %s)", dev.id, dev.silence.Round(time.Second), heartbeat(dev.tmpl)))
		case dev.state == model.Degraded && now.Sub(dev.lastWrong) >= quietAfter:
			d.setState(dev, model.Online, "")
		}
		if dev.state != "" && now.Sub(dev.reported) >= d.every {
			// Unchanged, but its counters move: the hub sees them.
			d.report(dev)
		}
		d.flushLog(dev, now, false)
		dev.mu.Unlock()
	}
	d.strays.flush(d.log, now)
}

func heartbeat(t *cfg.Template) string {
	if t.Heartbeat == nil {
		return "-"
	}
	return t.Heartbeat.Every.String()
}

// emitter is Run's Emit.
func (d *Driver) emitter() drivers.Emit {
	d.emitMu.Lock()
	defer d.emitMu.Unlock()
	return d.emit
}

// stopping is closed when Run ends.
func (d *Driver) stopping() <-chan struct{} {
	d.emitMu.Lock()
	defer d.emitMu.Unlock()
	return d.done
}

// setState changes a device's health (dev.mu held) and sends it when the
// state changed.
func (d *Driver) setState(dev *device, state model.HealthState, reason string) {
	dev.linkDown = false
	if dev.state == state && (state == model.Online || dev.reason == reason) {
		return
	}
	dev.state, dev.reason = state, reason
	level := slog.LevelInfo
	if state != model.Online {
		level = slog.LevelWarn
	}
	d.log.Log(context.Background(), level, "device health", "device", dev.id, "state", state, "reason", reason)
	d.report(dev)
}

// report sends the device's health as it is (dev.mu held).
func (d *Driver) report(dev *device) {
	dev.reported = d.now()
	d.send(model.Message{Device: dev.id, DeviceKind: dev.kind, Kind: model.KindHealth, Time: dev.reported.UTC(),
		Health: &model.Health{State: dev.state, Reason: dev.reason, Counters: maps.Clone(dev.counters)}})
}

// send emits a message of the driver's own (health, spoofing).
func (d *Driver) send(m model.Message) {
	if emit := d.emitter(); emit != nil {
		if err := emit(m); err != nil {
			d.log.Warn("not kept", "device", m.Device, "kind", m.Kind, "err", err)
		}
	}
}

// heard marks a message the device sent (dev.mu held).
func (d *Driver) heard(dev *device) {
	now := d.now()
	dev.lastHeard = now
	dev.counters["messages"]++
	switch {
	case dev.state == model.Degraded && now.Sub(dev.lastWrong) < quietAfter:
	default:
		d.setState(dev, model.Online, "")
	}
}

// wrong counts a refused message of a device (dev.mu held): degraded with
// the reason, logged at most every logEvery.
func (d *Driver) wrong(dev *device, r *Refusal) {
	now := d.now()
	dev.lastHeard, dev.lastWrong = now, now
	if dev.state != model.Degraded {
		dev.counters[r.Reason]++ // in the health message
		d.setState(dev, model.Degraded, r.Error())
		dev.counters[r.Reason]--
	}
	d.count(dev, r, now)
}

// count counts and logs a refusal (dev.mu held) without changing the
// device's state: a failed login may be someone else's.
func (d *Driver) count(dev *device, r *Refusal, now time.Time) {
	dev.counters[r.Reason]++
	dev.unlogged[r.Reason]++
	dev.last = r.Error()
	d.flushLog(dev, now, true)
}

// flushLog logs the refused messages not yet logged (dev.mu held), when
// logEvery has passed since the last line.
func (d *Driver) flushLog(dev *device, now time.Time, detail bool) {
	if len(dev.unlogged) == 0 || now.Sub(dev.logged) < logEvery {
		return
	}
	args := []any{"device", dev.id}
	for _, k := range sortedKeys(dev.unlogged) {
		args = append(args, k, dev.unlogged[k])
	}
	if detail {
		args = append(args, "last", dev.last)
	}
	d.log.Warn("messages refused", args...)
	dev.logged = now
	clear(dev.unlogged)
}

// spoof counts a device's attempt to publish under a topic not its own
// (dev.mu held), and reports it to the hub at most every spoofEvery.
func (d *Driver) spoof(dev *device, topic string) {
	d.wrong(dev, refuse(Refused, "publish to %s refused: %s may publish only under %s/%s/", topic, dev.id, d.set.Prefix, dev.id))
	dev.spoofs++
	now := d.now()
	if !dev.spoofed.IsZero() && now.Sub(dev.spoofed) < spoofEvery {
		return
	}
	details := map[string]string{"topic": topic, "attempts": fmt.Sprint(dev.spoofs), "link": d.name}
	if other := d.owner(topic); other != "" {
		details["as_device"] = other
	}
	dev.spoofed, dev.spoofs = now, 0
	d.send(model.Message{Device: dev.id, DeviceKind: dev.kind, Kind: model.KindEvent, Time: now.UTC(),
		Event: &model.Event{Kind: model.EventSpoofing, Severity: model.Warning, Details: details}})
}

// owner is the device whose topic a topic is, if any.
func (d *Driver) owner(topic string) string {
	rest, ok := strings.CutPrefix(topic, d.set.Prefix+"/")
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, "/")
	return id
}

// counters counts what happens on the link outside any device.
type counters struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counters) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[name]++
}

// bucket is a device's token bucket: rate tokens a second, up to burst.
type bucket struct {
	rate, burst float64
	tokens      float64 // below 0 while messages wait their turn
	at          time.Time
}

func (b *bucket) refill(now time.Time) {
	if b.at.IsZero() {
		b.tokens = b.burst
	} else {
		b.tokens = min(b.burst, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	}
	b.at = now
}

// take says whether a message may pass at now.
func (b *bucket) take(now time.Time) bool {
	b.refill(now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// wait takes a token for a message that must not be dropped, and says
// how long it must wait for its turn: 0 within the rate.
func (b *bucket) wait(now time.Time) time.Duration {
	b.refill(now)
	b.tokens--
	if b.tokens >= 0 {
		return 0
	}
	return time.Duration(-b.tokens / b.rate * float64(time.Second))
}

func sortedKeys(m map[string]uint64) []string { return slices.Sorted(maps.Keys(m)) }
