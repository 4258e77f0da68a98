// Package mqtt is the uplink to the hub's MQTT broker. It publishes every
// message of a batch with QoS 1 and reports success only when the broker
// acknowledged all of them on one unbroken connection, and it keeps the
// gateway's retained status topic (online, or offline by last will).
//
// The hub may be a cluster of brokers (hub.mqtt.urls): the uplink is on
// one at a time, stays on it while it works, and after losing it or
// failing to reach it tries the next of the list first.
//
// Every connection gets a fresh paho client. paho's own reconnect replays
// the unacknowledged publishes of the old connection from its store, which
// completes their old tokens with a nil error, resends whole failed batches
// ahead of new alarms, and races (under the race detector) with publishes
// made while it replays. The gateway's durable queue resends what was not
// acknowledged, so the uplink drops a broken connection with everything in
// flight and starts clean.
package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"github.com/eclipse/paho.mqtt.golang/packets"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/uplink"
)

// ErrNotConnected is returned by Send while there is no connection to the
// broker; the caller keeps the batch and tries again later.
var ErrNotConnected = errors.New("mqtt uplink: not connected")

// ErrOverLimit is returned by Retain for a message over the broker's
// packet limit: it is not published, so that the broker does not drop the
// connection on it.
var ErrOverLimit = errors.New("not published")

// errLinkChanged is returned when a batch spans a connection change: its
// acknowledgements cannot be trusted.
var errLinkChanged = errors.New("mqtt uplink: connection lost during the batch")

// lost is the error of a batch whose connection was lost. The loss counts
// as the broker dropping the connection during this batch (uplink.ErrDropped,
// which can lead to a message being set aside) only when the batch had the
// connection to itself: with another batch in flight (an alarm, say) there
// is no telling which one the broker refused.
func lost(l *link, what string, i, n int) error {
	if l.shared.Load() {
		return fmt.Errorf("%w (%d of %d %s, with another batch in flight)", errLinkChanged, i, n, what)
	}
	return fmt.Errorf("%w: %w (%d of %d %s)", errLinkChanged, uplink.ErrDropped, i, n, what)
}

const (
	keepAlive       = 15 * time.Second
	pingTimeout     = 5 * time.Second
	connectTimeout  = 5 * time.Second
	writeTimeout    = 10 * time.Second
	minReconnect    = 100 * time.Millisecond
	maxReconnect    = 10 * time.Second
	stableAfter     = 500 * time.Millisecond // a connection this old was not refused
	statusTimeout   = 10 * time.Second
	disconnectQuiet = 250 // ms paho waits for in-flight work on Disconnect
)

// A retained message that met a dropped connection dropsToLearn times in a
// row is taken to be over the broker's packet limit.
const dropsToLearn = 3

// Uplink publishes messages to the hub's broker. Create it with New (or
// NewAlarms), start it with Connect, send with the batches of NewBatch
// (uplink.SendAll sends a slice), and end it with Close.
type Uplink struct {
	cfg     configs.MQTT
	station configs.StationID
	log     *slog.Logger
	prefix  string
	brokers []string // the URLs, in the order they are tried
	names   []string // the same without passwords, for logs, errors and the status
	// Limit is the broker's packet limit, which New takes from the
	// configuration: batches do not publish a message over it. The
	// uplinks to one broker share one (set it before Connect).
	Limit *PacketLimit
	// retainDrops is how many retained messages in a row met a dropped
	// connection (see Retain).
	retainDrops atomic.Int32

	// alarms marks the alarm lane's connection; commands, when set,
	// receives the duty desk's commands on it.
	alarms   bool
	commands func(device string, payload []byte)

	statusMu sync.Mutex
	status   Connection
	closes   []time.Time // when the broker closed the connection, the last minute

	mu      sync.Mutex
	client  paho.Client // connected client, nil between connections
	started bool
	stop    chan struct{} // closed by Close: the supervisor ends
	// dialCtx ends with stop, so that Close also ends a dial under way.
	dialCtx    context.Context
	cancelDial context.CancelFunc
	done       chan struct{} // closed when the supervisor has ended
	up         chan struct{} // closed at the first connection
	upParts    int           // of it, under mu: upClient, and upSubscribed for the alarm connection
	stopped    sync.Once

	// cur is the network connection paho uses now. A new link is made for
	// every dial; its lost channel closes as soon as the connection fails or
	// is closed, before paho can complete any token because of it.
	cur    atomic.Pointer[link]
	nlinks atomic.Uint64
}

// link is one network connection to the broker.
type link struct {
	id   uint64
	lost chan struct{}
	once sync.Once
	conn net.Conn // the raw connection, for tests that break it
	// sends is how many publishes (batches, retained messages) are under
	// way on the link; shared is set once two were at the same time.
	sends  atomic.Int32
	shared atomic.Bool
}

func (l *link) drop() { l.once.Do(func() { close(l.lost) }) }

// publishing counts a publish under way on the link until the returned
// function is called.
func (l *link) publishing() (done func()) {
	if l.sends.Add(1) > 1 {
		l.shared.Store(true)
	}
	return func() { l.sends.Add(-1) }
}

func (l *link) alive() bool {
	select {
	case <-l.lost:
		return false
	default:
		return true
	}
}

// linkConn marks its link lost on the first read or write error or on
// Close. Its reads are buffered: paho reads a packet's header byte by
// byte, which unbuffered costs three system calls per acknowledgement.
// The main connection's writes are gathered (see gather); the alarm
// connection's each go at once.
type linkConn struct {
	net.Conn
	l *link
	r *bufio.Reader
	w *gather // nil: writes go at once
}

func (c *linkConn) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	if err != nil {
		c.l.drop()
	}
	return n, err
}

func (c *linkConn) Write(b []byte) (int, error) {
	if c.w != nil {
		return c.w.Write(b)
	}
	n, err := c.Conn.Write(b)
	if err != nil {
		c.l.drop()
	}
	return n, err
}

// SetWriteDeadline is left to gather, which sets one for each write it
// makes, when it gathers the writes: paho's, set before and cleared after
// each packet it hands over, would govern nothing or the wrong write.
func (c *linkConn) SetWriteDeadline(t time.Time) error {
	if c.w != nil {
		return nil
	}
	return c.Conn.SetWriteDeadline(t)
}

func (c *linkConn) Close() error {
	if c.w != nil {
		c.w.Flush()
	}
	c.l.drop()
	return c.Conn.Close()
}

// New returns an uplink for the broker of cfg, publishing for station. It
// keeps the station's retained status, with its last will. It does no
// I/O.
func New(cfg configs.MQTT, station configs.StationID, log *slog.Logger) *Uplink {
	prefix := Prefix(cfg.TopicPrefix)
	u := &Uplink{cfg: cfg, station: station, log: log, prefix: prefix, brokers: slices.Clone(cfg.Brokers()),
		names: cfg.BrokerNames(), Limit: NewPacketLimit(prefix, cfg.MaxPacketSize),
		stop: make(chan struct{}), done: make(chan struct{}), up: make(chan struct{})}
	u.dialCtx, u.cancelDial = context.WithCancel(context.Background())
	return u
}

// AlarmsSuffix ends the client id of the alarm lane's connection.
const AlarmsSuffix = "-alarms"

// NewAlarms returns the uplink of the alarm lane: a second connection,
// client id ending in AlarmsSuffix, so that an alarm never waits behind
// telemetry bytes in the other's socket. It keeps no status.
//
// With commands set it also takes the duty desk's commands: it subscribes
// to {prefix}/{station}/+/command (QoS 1) at every connect, and keeps a
// persistent session (no clean session) so that the broker holds the
// commands that come while it is away. commands gets the device (from the
// topic) and the payload; the broker's acknowledgement goes out when it
// returns, so it must return only once the command is recorded.
func NewAlarms(cfg configs.MQTT, station configs.StationID, commands func(device string, payload []byte), log *slog.Logger) *Uplink {
	u := New(cfg, station, log.With("connection", "alarms"))
	u.alarms, u.commands = true, commands
	return u
}

// Connect starts connecting to the broker in the background and waits
// until the first connection is up (for the alarm connection: subscribed
// to the commands) or ctx ends. Either way the uplink keeps
// (re)connecting, with a backoff from 100 ms up to 10 s, until Close; an
// error from Connect only says that the broker was not reached yet, unless
// the configuration itself is wrong.
//
// With several brokers, a failed attempt is followed at once by one on
// the next broker of the list; the backoff applies to each round through
// the list that reached none. A lost connection is followed by an
// attempt on the next broker: the one just lost is likely down.
func (u *Uplink) Connect(ctx context.Context) error {
	tlsCfg, err := u.tlsConfig()
	if err != nil {
		return err
	}
	u.mu.Lock()
	if u.started {
		u.mu.Unlock()
		return errors.New("mqtt uplink: Connect called twice")
	}
	u.started = true
	u.mu.Unlock()
	go u.run(tlsCfg)
	select {
	case <-u.up:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("mqtt uplink: connect %s: %w (still trying)", strings.Join(u.names, ", "), ctx.Err())
	}
}

// run is the supervisor: it connects a fresh client, waits until its
// connection is lost, and starts over, until Close. It ends when u.stop is
// closed, and closes u.done.
func (u *Uplink) run(tlsCfg *tls.Config) {
	defer close(u.done)
	delay := minReconnect
	next := 0                   // the broker to try next, an index in u.brokers
	fails := 0                  // attempts failed since the last connection
	last := ""                  // the broker of the last connection
	down := time.Now()          // since when the uplink has no connection
	warned := map[string]bool{} // causes logged since the last connection
	took := map[int]bool{}      // brokers (by index) that took a connection in this run
	for {
		broker := next
		name := u.names[broker]
		lost := make(chan struct{})
		var once sync.Once
		c := paho.NewClient(u.options(tlsCfg, broker, func() { once.Do(func() { close(lost) }) }))
		tok := c.Connect()
		select {
		case <-tok.Done():
		case <-u.stop:
			// Close has cancelled any dial; a connection that is up and
			// waits for the broker's answer is closed, so that paho's
			// connect ends now rather than after its timeout.
			if l := u.cur.Load(); l != nil {
				l.conn.Close()
			}
			<-tok.Done()
			c.Disconnect(0)
			return
		}
		if err := tok.Error(); err != nil {
			u.brokerAway()
			cause := connectCause(err, name, u.cfg.BrokersKey(), tlsCfg != nil, took[broker])
			// One broker: a change of cause is logged. Several: each
			// broker's cause once until the next connection, not at
			// every round.
			if u.setStatus(false, cause, last) && (len(u.brokers) == 1 || !warned[cause]) {
				u.log.Warn("mqtt uplink: cannot connect to the hub broker; retrying", "broker", name, "cause", cause)
				warned[cause] = true
			}
			fails++
			next = (broker + 1) % len(u.brokers)
			if fails%len(u.brokers) != 0 {
				// The next broker of the list, at once.
				u.log.Debug("mqtt uplink: connect failed; trying the next broker", "broker", name, "err", err, "next", u.names[next])
				continue
			}
			u.log.Debug("mqtt uplink: connect failed", "broker", name, "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-u.stop:
				return
			}
			delay = min(delay*2, maxReconnect)
			continue
		}
		since := time.Now()
		if last != "" && last != name {
			u.log.Info("mqtt uplink: moved to broker", "from", last, "to", name, "after", since.Sub(down).Round(time.Millisecond))
		}
		last, fails = name, 0
		took[broker] = true
		clear(warned)
		u.setStatus(true, "", name)
		u.mu.Lock()
		u.client = c
		u.mu.Unlock()
		u.upPart(upClient)
		select {
		case <-lost:
			down = time.Now()
			u.mu.Lock()
			u.client = nil
			u.mu.Unlock()
			u.setStatus(false, u.lostCause(), name)
		case <-u.stop:
			c.Disconnect(disconnectQuiet)
			return
		}
		// The next broker of the list first: the one just lost is likely
		// down (with one broker, the same again).
		next = (broker + 1) % len(u.brokers)
		// A connection that keeps dying at once (say, a second gateway
		// with our client id) must not make us hammer the broker; one
		// that lived a while was a working connection, so start over fast.
		if time.Since(since) > stableAfter {
			delay = minReconnect
		}
		select {
		case <-time.After(delay):
		case <-u.stop:
			return
		}
		delay = min(delay*2, maxReconnect)
	}
}

// tlsConfig is the TLS configuration of the brokers, nil for plain TCP.
// The brokers of a list share one: all speak TLS or none does.
func (u *Uplink) tlsConfig() (*tls.Config, error) {
	var overTLS []bool
	for i, b := range u.brokers {
		broker, err := url.Parse(b)
		if err != nil {
			return nil, fmt.Errorf("mqtt uplink: broker url %s: %w", u.names[i], err)
		}
		switch broker.Scheme {
		case "tcp", "mqtt":
			overTLS = append(overTLS, false)
		case "ssl", "tls", "mqtts", "tcps":
			overTLS = append(overTLS, true)
		default:
			return nil, fmt.Errorf("mqtt uplink: broker url %q: scheme must be tcp or ssl", u.names[i])
		}
		if overTLS[i] != overTLS[0] {
			return nil, fmt.Errorf("mqtt uplink: brokers %s and %s: all or none must speak TLS", u.names[0], u.names[i])
		}
	}
	if len(overTLS) == 0 {
		return nil, errors.New("mqtt uplink: no broker url")
	}
	if !overTLS[0] {
		return nil, nil
	}
	return loadTLS(u.cfg.TLS)
}

// clientID is the connection's MQTT client id.
func (u *Uplink) clientID() string {
	id := u.cfg.ClientID
	if id == "" {
		id = "outpost-" + u.station.ID
	}
	if u.alarms {
		id += AlarmsSuffix
	}
	return id
}

// options are those of one client, which makes one connection to the
// broker of that index: no paho reconnect, clean session, in-memory store.
func (u *Uplink) options(tlsCfg *tls.Config, broker int, lost func()) *paho.ClientOptions {
	id, name := u.clientID(), u.names[broker]
	o := paho.NewClientOptions()
	if !u.alarms {
		will := AppendStatus(nil, u.station.ID, StateOffline, name, time.Now())
		o.SetBinaryWill(StatusTopic(u.prefix, u.station.ID), will, 1, true)
	}
	if u.commands != nil {
		o.SetDefaultPublishHandler(u.onCommand)
	}
	return o.
		AddBroker(u.brokers[broker]).
		SetClientID(id).
		SetUsername(u.cfg.Username).
		SetPassword(u.cfg.Password).
		SetCleanSession(u.commands == nil).
		SetStore(paho.NewMemoryStore()).
		SetOrderMatters(false).
		SetKeepAlive(keepAlive).
		SetPingTimeout(pingTimeout).
		SetConnectTimeout(connectTimeout).
		SetWriteTimeout(writeTimeout).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOnConnectHandler(func(c paho.Client) { u.onConnect(c, name) }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			u.log.Info("mqtt uplink: connection lost", "broker", name, "err", err)
			if errors.Is(err, io.EOF) && u.closedByBroker(time.Now()) {
				u.log.Warn("mqtt uplink: the broker keeps closing the gateway's connection; another client may use its client id",
					"broker", name, "client_id", id, "closes_in_a_minute", duplicateCloses)
			}
			lost()
		}).
		SetCustomOpenConnectionFn(func(b *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			return u.dial(b, tlsCfg)
		})
}

// dial opens a network connection and makes it the current link. paho
// closes a broken connection (marking its link lost) before it dials again,
// and reads nothing from the new one before dial returns.
func (u *Uplink) dial(broker *url.URL, tlsCfg *tls.Config) (net.Conn, error) {
	d := &net.Dialer{Timeout: connectTimeout}
	var c net.Conn
	var err error
	if tlsCfg != nil {
		cfg := tlsCfg.Clone()
		if cfg.ServerName == "" {
			cfg.ServerName = broker.Hostname()
		}
		c, err = (&tls.Dialer{NetDialer: d, Config: cfg}).DialContext(u.dialCtx, "tcp", broker.Host)
	} else {
		c, err = d.DialContext(u.dialCtx, "tcp", broker.Host)
	}
	if err != nil {
		return nil, err
	}
	l := &link{id: u.nlinks.Add(1), lost: make(chan struct{}), conn: c}
	if old := u.cur.Swap(l); old != nil {
		old.drop()
	}
	lc := &linkConn{Conn: c, l: l, r: bufio.NewReaderSize(c, 16<<10)}
	if !u.alarms {
		lc.w = newGather(c, l.drop)
	}
	return lc, nil
}

func loadTLS(t *configs.TLS) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t == nil {
		return cfg, nil
	}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("mqtt uplink: tls ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("mqtt uplink: tls ca %s: no certificate found", t.CA)
		}
		cfg.RootCAs = pool
	}
	if t.Cert != "" || t.Key != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("mqtt uplink: tls client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// onConnect publishes the online status (retained), naming the broker,
// on the main connection, and subscribes to the commands on the alarm
// lane's. A connection whose subscription fails is dropped, to try again.
func (u *Uplink) onConnect(c paho.Client, broker string) {
	l := u.cur.Load()
	u.log.Info("mqtt uplink: connected", "broker", broker, "link", l.id)
	if !u.alarms {
		tok := c.Publish(StatusTopic(u.prefix, u.station.ID), 1, true, AppendStatus(nil, u.station.ID, StateOnline, broker, time.Now()))
		if !tok.WaitTimeout(statusTimeout) || tok.Error() != nil {
			u.log.Warn("mqtt uplink: online status not acknowledged", "err", tok.Error())
		}
	}
	if u.commands == nil {
		return
	}
	topic := CommandTopic(u.prefix, u.station.ID, "+")
	tok := c.Subscribe(topic, 1, nil)
	ok := tok.WaitTimeout(statusTimeout)
	refused := ok && subRefused(tok, topic)
	if !ok || tok.Error() != nil || refused {
		u.log.Error("mqtt uplink: cannot subscribe to the duty desk's commands; reconnecting", "topic", topic, "err", tok.Error(), "refused", refused)
		l.conn.Close()
		return
	}
	u.log.Info("mqtt uplink: taking commands", "topic", topic)
	u.upPart(upSubscribed)
}

// What the first connection needs before Connect returns: the client in
// place, and for the alarm connection the subscription to the commands
// (paho runs onConnect beside the code that sets the client).
const (
	upClient = 1 << iota
	upSubscribed
)

// upPart notes one part of the first connection, and closes up once it
// has all.
func (u *Uplink) upPart(part int) {
	want := upClient
	if u.commands != nil {
		want |= upSubscribed
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.upParts == want {
		return
	}
	if u.upParts |= part; u.upParts == want {
		close(u.up)
	}
}

// onCommand hands a command to the gateway. A retained command is not
// taken: it would come again at every subscription.
func (u *Uplink) onCommand(_ paho.Client, m paho.Message) {
	device, ok := u.commandDevice(m.Topic())
	switch {
	case !ok || device == "" || strings.Contains(device, "/"):
		u.log.Warn("mqtt uplink: message on an unexpected topic ignored", "topic", m.Topic())
	case m.Retained():
		u.log.Warn("mqtt uplink: retained command ignored: the duty desk must publish commands without retain", "topic", m.Topic())
	case device == CheckDevice || isCheck(m.Payload()): // gateway commission's probe, kept for this session while the gateway was stopped
	default:
		u.commands(device, m.Payload())
	}
}

// commandDevice is the device of a station's commands topic (see
// CommandTopic).
func (u *Uplink) commandDevice(topic string) (string, bool) {
	device, ok := strings.CutPrefix(topic, u.prefix+"/"+u.station.ID+"/")
	if ok {
		device, ok = strings.CutSuffix(device, "/command")
	}
	return device, ok
}

// Connection is the uplink's connection as an operator needs to see it.
type Connection struct {
	Connected bool
	// Cause says why not, in an installer's words: the broker refused the
	// credentials or the certificate, nothing listens, ...
	Cause string
	// Since is when the uplink got into this state.
	Since time.Time
	// Broker is the broker it is connected to (its URL without password)
	// or, while not connected, the one it was connected to last; "" before
	// the first connection.
	Broker string
}

// Connection returns the uplink's connection state.
func (u *Uplink) Connection() Connection {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	return u.status
}

// duplicateCloses: this many connections the broker closed within a
// minute, each taken again at the first try, look like another client
// with the gateway's client id (the broker closes the older of two), or an
// ACL refusing what it publishes. A broker that went away (restarted,
// killed) refuses a connection meanwhile, and the count starts over.
const duplicateCloses = 3

// brokerAway notes a failed connection attempt: the closes before it were
// the broker's going away.
func (u *Uplink) brokerAway() {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	u.closes = u.closes[:0]
}

// closedByBroker notes that the broker closed the connection, at now, and
// says whether that makes duplicateCloses within a minute (said once per
// such run; the uplink's cause then says it).
func (u *Uplink) closedByBroker(now time.Time) bool {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	u.closes = append(slices.DeleteFunc(u.closes, func(t time.Time) bool { return now.Sub(t) > time.Minute }), now)
	return len(u.closes) == duplicateCloses
}

// lostCause is why the connection is down after it was lost.
func (u *Uplink) lostCause() string {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	if len(u.closes) >= duplicateCloses && time.Since(u.closes[len(u.closes)-1]) < time.Minute {
		return fmt.Sprintf("the broker closed the connection %d times in a minute: another client may use the client id %s (a second gateway with station id %s?), or the broker's ACL refuses what the gateway publishes", len(u.closes), u.clientID(), u.station.ID)
	}
	return "connection lost"
}

// setStatus records the connection state, on or last on broker, and
// reports whether it changed (another cause counts as a change).
func (u *Uplink) setStatus(connected bool, cause, broker string) bool {
	u.statusMu.Lock()
	defer u.statusMu.Unlock()
	if u.status.Connected == connected && u.status.Cause == cause && u.status.Broker == broker && !u.status.Since.IsZero() {
		return false
	}
	u.status = Connection{Connected: connected, Cause: cause, Since: time.Now(), Broker: broker}
	return true
}

// connectCause words why a connection to the broker failed, for an
// installer to act on; key is the station file's key of the broker's URL,
// and took says whether this broker took a connection of the gateway's
// before (its settings are then not the cause).
func connectCause(err error, broker, key string, overTLS, took bool) string {
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ce x509.CertificateInvalidError
	var ne *net.OpError
	var dns *net.DNSError
	msg := err.Error()
	switch {
	case errors.Is(err, packets.ErrorRefusedBadUsernameOrPassword):
		return "the broker refused the username or password (hub.mqtt.username, hub.mqtt.password)"
	case errors.Is(err, packets.ErrorRefusedNotAuthorised):
		return "the broker refused the gateway: not authorised (check hub.mqtt.username and password, and that the broker allows its client id)"
	case errors.Is(err, packets.ErrorRefusedIDRejected):
		return "the broker rejected the client id (hub.mqtt.client_id)"
	case errors.Is(err, packets.ErrorRefusedBadProtocolVersion):
		return "the broker does not speak MQTT 3.1.1"
	case errors.As(err, &ua):
		return "the broker's certificate is not signed by a trusted CA (hub.mqtt.tls.ca): " + ua.Error()
	case errors.As(err, &he):
		return "the broker's certificate is not for this host name: " + he.Error()
	case errors.As(err, &ce):
		return "the broker's certificate is not valid: " + ce.Error()
	case strings.Contains(msg, "tls: bad certificate"), strings.Contains(msg, "tls: unknown certificate authority"),
		strings.Contains(msg, "certificate required"), strings.Contains(msg, "tls: expired certificate"):
		return "the broker refused the gateway's client certificate (hub.mqtt.tls.cert, hub.mqtt.tls.key): " + msg
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE), errors.Is(err, io.EOF):
		// With TLS 1.3 a broker refuses a client certificate after the
		// client thinks the handshake is done: the alert may lose the race
		// with the closed connection.
		switch {
		case took:
			// Mosquitto out of its memory_limit closes every new
			// connection as it comes.
			return "the broker closed the connection as it was set up, though it took the gateway's before: it is overloaded, out of memory or shutting down (its log says which)"
		case overTLS:
			return "the broker closed the connection as it was set up: it most likely refused the gateway's client certificate (hub.mqtt.tls.cert, hub.mqtt.tls.key)"
		}
		return "the broker closed the connection as it was set up (a TLS listener? then use ssl:// in " + key +
			"; or a clustered broker that cannot take sessions yet, electing a leader)"
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("nothing listens at %s (%s): the broker is down, or the address or port is wrong", broker, key)
	case errors.As(err, &dns) && dns.IsNotFound:
		return fmt.Sprintf("the host name %s (%s) is not known to the station's DNS: check its spelling, or give its address", dns.Name, key)
	case errors.As(err, &dns):
		return fmt.Sprintf("the host name %s (%s) could not be looked up (%v): the station's DNS server does not answer", dns.Name, key, dns.Err)
	case errors.As(err, &ne) && ne.Timeout(), errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Sprintf("the broker at %s does not answer (network down, firewall, or wrong address in %s)", broker, key)
	}
	return msg
}

// Connected reports whether the uplink has a connection now.
func (u *Uplink) Connected() bool {
	c, _ := u.conn()
	return c != nil
}

// conn returns the client and its network link when there is a live
// connection, or nil.
func (u *Uplink) conn() (paho.Client, *link) {
	u.mu.Lock()
	c := u.client
	u.mu.Unlock()
	l := u.cur.Load()
	if c == nil || l == nil || !l.alive() || !c.IsConnectionOpen() {
		return nil, nil
	}
	return c, l
}

// NewBatch returns an empty batch of messages to publish with QoS 1 (not
// retained), each on its Topic.
func (u *Uplink) NewBatch() uplink.Batch { return &batch{u: u} }

// batch holds its messages as the payloads and topics of their PUBLISH
// packets.
type batch struct {
	u    *Uplink
	buf  []byte // the JSON payloads, one after another
	pubs []outgoing
	// over are the messages over the broker's packet limit, by their
	// order of Add: not published, and refused once the rest is through
	// (a batch that fails comes again, with them).
	over []uplink.Rejection
	// failed: the last Send failed, and paho may still hold its payloads
	// to send them again after a reconnect, so buf is not reused.
	failed bool
}

type outgoing struct {
	topic string
	seq   uint64
	end   int // of the payload in buf
}

func (b *batch) Add(m *model.Message) {
	if b.failed {
		b.buf, b.failed = nil, false
	}
	start := len(b.buf)
	topic := Topic(b.u.prefix, m)
	b.buf = model.AppendJSON(b.buf, m)
	if why := b.u.Limit.refuses(packetSize(len(topic), len(b.buf)-start)); why != "" {
		b.over = append(b.over, uplink.Rejection{Index: b.Len(), Reason: why})
		b.buf = b.buf[:start]
		return
	}
	b.pubs = append(b.pubs, outgoing{topic, m.Seq, len(b.buf)})
}

func (b *batch) Len() int { return len(b.pubs) + len(b.over) }

func (b *batch) Reset() {
	clear(b.pubs) // the topics
	b.buf, b.pubs, b.over = uplink.Emptied(b.buf), uplink.Emptied(b.pubs), b.over[:0]
}

// refused is what Send returns once the rest of the batch is through.
func (b *batch) refused() error {
	if len(b.over) == 0 {
		return nil
	}
	return &uplink.Rejected{Items: slices.Clone(b.over)}
}

// Send publishes the messages all at once, then waits for every
// acknowledgement. It returns nil only if the broker acknowledged every
// message on one unbroken connection; a batch that spans a connection loss
// fails as a whole (some messages may have arrived: the hub drops
// duplicates by station/device/seq). Without a connection it fails at once
// with ErrNotConnected. Messages over the packet limit are not published:
// once the rest is through, Send refuses them with a *uplink.Rejected.
func (b *batch) Send(ctx context.Context) error {
	if len(b.pubs) == 0 {
		return b.refused()
	}
	u := b.u
	c, l := u.conn()
	if c == nil {
		return ErrNotConnected
	}
	defer l.publishing()()
	b.failed = true // until every message is acknowledged
	tokens := make([]paho.Token, len(b.pubs))
	start := 0
	for i, p := range b.pubs {
		if !l.alive() {
			return lost(l, "published", i, len(b.pubs))
		}
		uplink.Yield(i)
		// The payload is a slice of buf, which the next batch writes over
		// only once this one was acknowledged in full (see failed); capped,
		// so that nothing appended to it reaches the next payload.
		tokens[i] = c.Publish(p.topic, 1, false, b.buf[start:p.end:p.end])
		start = p.end
	}
	for i, tok := range tokens {
		select {
		case <-tok.Done():
		case <-l.lost:
			return lost(l, "acknowledged", i, len(b.pubs))
		case <-ctx.Done():
			return fmt.Errorf("mqtt uplink: %w (%d of %d acknowledged)", ctx.Err(), i, len(b.pubs))
		}
		if err := tok.Error(); err != nil {
			if !l.alive() {
				// paho fails the tokens of a connection it lost (after
				// the link knew): the same loss as above.
				return lost(l, "acknowledged", i, len(b.pubs))
			}
			return fmt.Errorf("mqtt uplink: publish %s (seq %d): %w", b.pubs[i].topic, b.pubs[i].seq, err)
		}
	}
	// paho may complete a token with a nil error after a reconnect although
	// the message's fate is unknown: trust the batch only if the connection
	// it was published on is still the one in use and was never broken.
	if u.cur.Load() != l || !l.alive() {
		return errLinkChanged
	}
	b.failed = false
	return b.refused()
}

// Retain publishes payload on topic with QoS 1, retained, and waits for
// the broker's acknowledgement until ctx ends. Without a connection it
// fails at once with ErrNotConnected, and a payload over the packet limit
// with ErrOverLimit. When the broker dropped the connection on retained
// messages dropsToLearn times in a row, it takes the last one's size to be
// over the limit, learns the limit (see PacketLimit) and returns
// ErrOverLimit.
func (u *Uplink) Retain(ctx context.Context, topic string, payload []byte) error {
	size := packetSize(len(topic), len(payload))
	if why := u.Limit.refuses(size); why != "" {
		return fmt.Errorf("mqtt uplink: %s %w: %s", topic, ErrOverLimit, why)
	}
	c, l := u.conn()
	if c == nil {
		return ErrNotConnected
	}
	// A broker that drops the connection on it must not make a batch in
	// flight look at fault.
	defer l.publishing()()
	tok := c.Publish(topic, 1, true, payload)
	select {
	case <-tok.Done():
		err := tok.Error()
		if err == nil {
			u.retainDrops.Store(0)
			return nil
		}
		if l.alive() {
			return err
		}
		// paho fails the tokens of a connection it lost (after the link
		// knew, but both may be ready at once): the loss, as below.
	case <-l.lost:
	case <-ctx.Done():
		return fmt.Errorf("mqtt uplink: %s: %w", topic, ctx.Err())
	}
	if u.retainDrops.Add(1) < dropsToLearn {
		return fmt.Errorf("mqtt uplink: %s: connection lost before the broker acknowledged it", topic)
	}
	// A broker without a packet limit the gateway knows of drops the
	// connection on the station's snapshot: it would drop it at each
	// snapshot, and every batch in flight with it.
	u.retainDrops.Store(0)
	return fmt.Errorf("mqtt uplink: %s %w: the broker dropped the connection each of the %d times it was published: %d bytes may exceed its packet size limit; %s",
		topic, ErrOverLimit, dropsToLearn, size, u.Limit.learn(size))
}

// Close publishes the offline status (retained; on the main connection),
// waiting for it until ctx ends, disconnects and stops reconnecting. The uplink cannot be used
// afterwards; Close may be called more than once.
func (u *Uplink) Close(ctx context.Context) error {
	u.mu.Lock()
	c, started := u.client, u.started
	u.started = true // no Connect after Close
	u.mu.Unlock()
	var err error
	if c != nil && c.IsConnectionOpen() && !u.alarms {
		tok := c.Publish(StatusTopic(u.prefix, u.station.ID), 1, true, AppendStatus(nil, u.station.ID, StateOffline, u.Connection().Broker, time.Now()))
		select {
		case <-tok.Done():
			if e := tok.Error(); e != nil {
				err = fmt.Errorf("mqtt uplink: offline status: %w", e)
			}
		case <-ctx.Done():
			err = fmt.Errorf("mqtt uplink: offline status: %w", ctx.Err())
		}
	}
	u.stopped.Do(func() {
		u.cancelDial()
		close(u.stop)
	})
	if started {
		<-u.done
	}
	u.mu.Lock()
	u.client = nil
	u.mu.Unlock()
	return err
}

// Check connects to each of the hub's brokers once, as the gateway would
// (URL, TLS, credentials), with a client id of its own and no session,
// will or status, subscribes to the station's commands as the gateway
// does, publishes a probe (checkPayload) to the commands topic of
// CheckDevice and of each of devices and reads them back, and disconnects:
// an installer's test that the hub takes the station, what it publishes
// for each device, and its commands (an MQTT 3.1.1 broker drops what its
// ACL forbids without a word, and an ACL may list devices). The error says
// why not, in the words of the uplink's status; with several brokers, for
// each one that does not take it.
func Check(ctx context.Context, cfg configs.MQTT, station configs.StationID, devices ...string) error {
	u := New(cfg, station, slog.New(slog.DiscardHandler))
	tlsCfg, err := u.tlsConfig()
	if err != nil {
		return err
	}
	u.cancelDial()
	u.dialCtx, u.cancelDial = context.WithCancel(ctx)
	defer u.cancelDial()
	var errs []error
	for i := range u.brokers {
		err := u.check(ctx, i, tlsCfg, devices)
		switch {
		case err == nil:
		case len(u.brokers) == 1:
			return err
		default:
			errs = append(errs, fmt.Errorf("%s: %w", u.names[i], err))
		}
	}
	return errors.Join(errs...)
}

// check connects to the broker of that index once, and disconnects.
func (u *Uplink) check(ctx context.Context, broker int, tlsCfg *tls.Config, devices []string) error {
	id := u.cfg.ClientID
	if id == "" {
		id = "outpost-" + u.station.ID
	}
	o := paho.NewClientOptions().AddBroker(u.brokers[broker]).SetClientID(id + "-check").
		SetUsername(u.cfg.Username).SetPassword(u.cfg.Password).SetCleanSession(true).
		SetConnectTimeout(connectTimeout).SetAutoReconnect(false).SetConnectRetry(false).
		SetCustomOpenConnectionFn(func(b *url.URL, _ paho.ClientOptions) (net.Conn, error) { return u.dial(b, tlsCfg) })
	c := paho.NewClient(o)
	tok := c.Connect()
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fmt.Errorf("the broker %s did not answer in time", u.names[broker])
	}
	if err := tok.Error(); err != nil {
		return errors.New(connectCause(err, u.names[broker], u.cfg.BrokersKey(), tlsCfg != nil, false))
	}
	defer c.Disconnect(0)
	return u.echo(ctx, c, broker, devices)
}

// subRefused says whether the broker's SUBACK refused the subscription to
// topic (0x80); tok is done.
func subRefused(tok paho.Token, topic string) bool {
	st, ok := tok.(*paho.SubscribeToken)
	return ok && st.Result()[topic] == 0x80
}

// echoWait is how long Check waits for its message to come back.
const echoWait = 3 * time.Second

// echo publishes a probe to the commands topic of CheckDevice, then of
// each device, and waits for them to come back on the station's
// subscription to its commands.
func (u *Uplink) echo(ctx context.Context, c paho.Client, broker int, devices []string) error {
	own := u.prefix + "/" + u.station.ID
	topic := func(dev string) string { return CommandTopic(u.prefix, u.station.ID, dev) }
	all := topic("+")
	acl := fmt.Sprintf("its ACL must let the station's user publish to %s/# and subscribe to %s", own, all)
	payload := checkPayload(time.Now())
	var mu sync.Mutex
	back := map[string]bool{} // by device
	arrived := make(chan struct{}, 1)
	sub := c.Subscribe(all, 1, func(_ paho.Client, m paho.Message) {
		if !bytes.Equal(m.Payload(), payload) {
			return // a command of the hub's, for the gateway
		}
		dev, _ := u.commandDevice(m.Topic())
		mu.Lock()
		back[dev] = true
		mu.Unlock()
		select {
		case arrived <- struct{}{}:
		default:
		}
	})
	if !sub.WaitTimeout(echoWait) || sub.Error() != nil {
		return fmt.Errorf("the broker %s did not confirm the station's subscription to its commands (%v)", u.names[broker], sub.Error())
	}
	if subRefused(sub, all) {
		return fmt.Errorf("the broker %s refuses the station's subscription to its commands: %s", u.names[broker], acl)
	}
	// The station's own probe first: without it, nothing about the
	// devices can be told (a broker may close a connection that publishes
	// where its ACL forbids).
	missing := func(devs []string) []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.DeleteFunc(slices.Clone(devs), func(dev string) bool { return back[dev] })
	}
	for _, devs := range [][]string{{CheckDevice}, devices} {
		var untried []string                  // a broker may close the connection at a probe its ACL forbids
		pubs := make([]paho.Token, len(devs)) // all at once: a hub far away answers them in one round trip
		for i, dev := range devs {
			pubs[i] = c.Publish(topic(dev), 1, false, payload)
		}
		for i, dev := range devs {
			if pub := pubs[i]; !pub.WaitTimeout(echoWait) || pub.Error() != nil {
				if dev == CheckDevice {
					return fmt.Errorf("the broker %s did not acknowledge a message the station published to %s (%v): %s", u.names[broker], topic(dev), pub.Error(), acl)
				}
				devs, untried = devs[:i], devs[i:] // Mosquitto may acknowledge the probe it denies, then close
				break
			}
		}
		deadline := time.NewTimer(echoWait)
	wait:
		for len(missing(devs)) > 0 {
			select {
			case <-arrived:
			case <-ctx.Done():
				break wait
			case <-deadline.C:
				break wait
			}
		}
		deadline.Stop()
		switch gone := missing(devs); {
		case len(gone) == 0 && len(untried) > 0:
			return fmt.Errorf("the broker %s closed the station's connection during the check: %s not tried", u.names[broker], strings.Join(untried, ", "))
		case len(gone) == 0:
		case gone[0] == CheckDevice:
			return fmt.Errorf("the broker %s takes the station's connection, but what it published to %s did not reach its subscription to its commands in %s: %s (an MQTT 3.1.1 broker drops what its ACL forbids without a word)",
				u.names[broker], topic(CheckDevice), echoWait, acl)
		default:
			err := fmt.Errorf("the broker %s drops what the station publishes for %s: a probe to %s did not come back in %s, where one to %s did; its ACL must let the station's user publish to %s/# (an ACL that lists devices must list these)",
				u.names[broker], strings.Join(gone, ", "), topic(gone[0]), echoWait, topic(CheckDevice), own)
			if len(untried) > 0 {
				err = fmt.Errorf("%w; it then closed the connection: %s not tried", err, strings.Join(untried, ", "))
			}
			return err
		}
	}
	return nil
}
