package main

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/gateway/model"
)

// collector is the testbench's own subscriber at the hub's broker. It counts
// what arrived, never trusting the gateway's counters.
type collector struct {
	client paho.Client

	mu            sync.Mutex
	seen          map[string]struct{} // station/device/seq of every message
	readings      int                 // readings with a value, first copies only
	byDevice      map[string]int      // the same, per device
	duplicates    int                 // readings in messages that arrived again
	events        map[string]int      // event kind -> count, first copies only
	gatewayEvents int                 // events of the gateway itself, among them
	drops         map[string]int      // uplink -> readings the gateway reported not delivering (dropped or set aside)
	damage        map[string]int      // uplink -> damaged queue regions the gateway reported
	health        int
	historical    int
	malformed     int
	onMessage     func(m *model.Message, payload []byte, dup bool)
	tally         tally

	// Good values (device/signal/value) that arrived, when asked for;
	// and the counters of each device's latest health message.
	goodValues map[string]struct{}
	counters   map[string]map[string]uint64
}

// collect subscribes to everything the station publishes, with a persistent
// session so that nothing is missed while the broker restarts.
func collect(ctx context.Context, url string, st *configs.Station, onMessage func(m *model.Message, payload []byte, dup bool)) (*collector, error) {
	topic := stationTopics(st)
	c := &collector{tally: newTally(st), seen: map[string]struct{}{}, byDevice: map[string]int{}, events: map[string]int{}, drops: map[string]int{}, damage: map[string]int{},
		onMessage: onMessage, counters: map[string]map[string]uint64{}}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("testbench-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(true)
	subscribed := make(chan struct{}, 1)
	opts.SetOnConnectHandler(func(cl paho.Client) {
		subscribeUntilGranted(cl, map[string]byte{topic: 1}, c.handle, subscribed)
	})
	opts.SetCustomOpenConnectionFn(bufferedConn)
	c.client = paho.NewClient(opts)
	if err := connect(ctx, c.client); err != nil {
		return nil, err
	}
	select {
	case <-subscribed:
		return c, nil
	case <-ctx.Done():
		c.client.Disconnect(0)
		return nil, ctx.Err()
	}
}

// subscribeUntilGranted subscribes to filters on a connection just made,
// again and again while it stays open, until the broker grants every
// filter, and then says so on done (without blocking). A broker may refuse
// a subscription in its SUBACK (0x80) rather than drop the connection: a
// NATS node does, when it cannot set up the subscription's stream in time
// under load. Not checked, that would be a subscriber silently missing a
// station, and readings counted lost that were there.
func subscribeUntilGranted(cl paho.Client, filters map[string]byte, h paho.MessageHandler, done chan<- struct{}) {
	for cl.IsConnectionOpen() {
		tok := cl.SubscribeMultiple(filters, h)
		if tok.WaitTimeout(10*time.Second) && tok.Error() == nil && granted(tok.(*paho.SubscribeToken).Result()) {
			select {
			case done <- struct{}{}:
			default:
			}
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// granted says whether a SUBACK granted every filter.
func granted(result map[string]byte) bool {
	for _, qos := range result {
		if qos == 0x80 {
			return false
		}
	}
	return len(result) > 0
}

func connect(ctx context.Context, cl paho.Client) error {
	tok := cl.Connect()
	select {
	case <-tok.Done():
		if tok.Error() != nil {
			return fmt.Errorf("hub subscriber: %w", tok.Error())
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *collector) handle(_ paho.Client, msg paho.Message) {
	if strings.HasSuffix(msg.Topic(), "/status") || strings.HasSuffix(msg.Topic(), "/snapshot") || strings.HasSuffix(msg.Topic(), "/command") {
		return // the gateway's retained status and health snapshot, the duty desk's commands
	}
	m, err := model.ParseJSON(msg.Payload())
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		c.malformed++
		return
	}
	id := m.ID()
	_, dup := c.seen[id]
	c.seen[id] = struct{}{}
	n := c.tally.values(&m)
	switch {
	case dup:
		c.duplicates += n
	case m.Kind == model.KindTelemetry:
		c.readings += n
		c.byDevice[m.Device] += n
		if m.Historical {
			c.historical += n
		}
		if c.goodValues != nil {
			for _, r := range m.Readings {
				if model.WireQuality(&r) == model.Good {
					c.goodValues[m.Device+"/"+r.Signal+"/"+r.Value.String()] = struct{}{}
				}
			}
		}
	case m.Kind == model.KindEvent:
		if m.Device == model.GatewayDevice {
			c.gatewayEvents++
		}
		c.events[m.Event.Kind]++
		switch m.Event.Kind {
		case model.EventQueueDrops:
			n, _ := strconv.Atoi(m.Event.Details["dropped_readings"])
			c.drops[m.Event.Details["uplink"]] += n
		case model.EventRejected:
			// Readings the hub refused and the gateway set aside: not
			// delivered, and said so.
			n, _ := strconv.Atoi(m.Event.Details["readings"])
			c.drops[m.Event.Details["uplink"]] += n
		case model.EventQueueDamage:
			n, _ := strconv.Atoi(m.Event.Details["corrupt"])
			c.damage[m.Event.Details["uplink"]] += n + 1
		}
	case m.Kind == model.KindHealth:
		c.health++
		c.counters[m.Device] = m.Health.Counters
	}
	if c.onMessage != nil {
		c.onMessage(&m, msg.Payload(), dup)
	}
}

type counts struct {
	Readings, Duplicates, Health, Historical, Malformed, GatewayEvents int
	Events, Drops, Damage, ByDevice                                    map[string]int
}

func (c *collector) counts() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return counts{c.readings, c.duplicates, c.health, c.historical, c.malformed, c.gatewayEvents,
		maps.Clone(c.events), maps.Clone(c.drops), maps.Clone(c.damage), maps.Clone(c.byDevice)}
}

// readingsSoFar is how many readings arrived, first copies only: the
// timeline's sampler reads it once a second.
func (c *collector) readingsSoFar() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.readings
}

// has says whether the message station/device/seq arrived.
func (c *collector) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.seen[id]
	return ok
}

func (c *collector) close() {
	c.client.Disconnect(100)
}

// keepGoodValues makes the collector keep every good value that arrives.
func (c *collector) keepGoodValues() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goodValues = map[string]struct{}{}
}

// goodValuesAndCounters returns the good values kept, and each device's
// latest health counters.
func (c *collector) goodValuesAndCounters() (map[string]struct{}, map[string]map[string]uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.goodValues), maps.Clone(c.counters)
}

// bufferedConn dials the broker for paho with reads buffered: paho reads a
// packet's header byte by byte, three system calls a message unbuffered,
// which at a backlog's drain would make the testbench the busiest process
// on the machine.
func bufferedConn(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &readBuffered{c, bufio.NewReaderSize(c, 64<<10)}, nil
}

type readBuffered struct {
	net.Conn
	r *bufio.Reader
}

func (c *readBuffered) Read(b []byte) (int, error) { return c.r.Read(b) }
