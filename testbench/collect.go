package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
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
	// alarms is a second connection that takes only events, so that their
	// latency is measured without waiting behind the telemetry the main
	// connection is still reading.
	alarms paho.Client

	mu            sync.Mutex
	seen          map[string]struct{} // station/device/seq of every message
	readings      int                 // readings with a value, first copies only
	byDevice      map[string]int      // the same, per device
	duplicates    int                 // readings in messages that arrived again
	events        map[string]int      // event kind -> count, first copies only
	gatewayEvents int                 // events of the gateway itself, among them
	eventLag      time.Duration       // longest time from an event's stamp to its arrival
	drops         map[string]int      // uplink -> readings the gateway reported not delivering (dropped or set aside)
	damage        map[string]int      // uplink -> damaged queue regions the gateway reported
	health        int
	historical    int
	malformed     int
	onMessage     func(m *model.Message, payload []byte, dup bool)
	tally         tally

	// On the alarm connection, first copies only: every event with when
	// it arrived, and every command result.
	alarmSeen map[string]struct{}
	arrivals  []arrival
	results   []resultArrival

	// Good values (device/signal/value) that arrived, when asked for;
	// and the counters of each device's latest health message.
	goodValues map[string]struct{}
	counters   map[string]map[string]uint64
}

// arrival is an event as it reached the hub's subscriber.
type arrival struct {
	Msg model.Message
	At  time.Time
}

// resultArrival is a command's result as it reached the hub's subscriber
// (every copy).
type resultArrival struct {
	Device string
	Result model.Result
	At     time.Time
}

// collect subscribes to everything the station publishes, with a persistent
// session so that nothing is missed while the broker restarts.
func collect(ctx context.Context, url string, st *configs.Station, onMessage func(m *model.Message, payload []byte, dup bool)) (*collector, error) {
	topic := stationTopics(st)
	c := &collector{tally: newTally(st), seen: map[string]struct{}{}, byDevice: map[string]int{}, events: map[string]int{}, drops: map[string]int{}, damage: map[string]int{},
		onMessage: onMessage, alarmSeen: map[string]struct{}{}, counters: map[string]map[string]uint64{}}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("testbench-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(true)
	opts.SetOnConnectHandler(func(cl paho.Client) {
		cl.Subscribe(topic, 1, c.handle)
	})
	c.client = paho.NewClient(opts)
	if err := connect(ctx, c.client); err != nil {
		return nil, err
	}
	aopts := *opts
	aopts.SetClientID(opts.ClientID + "-alarms").SetCleanSession(true)
	aopts.SetOnConnectHandler(func(cl paho.Client) {
		base := strings.TrimSuffix(topic, "#")
		cl.SubscribeMultiple(map[string]byte{base + "+/event": 1, base + "+/command/result": 1}, c.handleAlarm)
	})
	c.alarms = paho.NewClient(&aopts)
	if err := connect(ctx, c.alarms); err != nil {
		return nil, err
	}
	return c, nil
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

// handleAlarm notes when events and command results arrive, and measures
// how long events take from their stamp at the gateway to the hub.
func (c *collector) handleAlarm(_ paho.Client, msg paho.Message) {
	now := time.Now()
	m, err := model.ParseJSON(msg.Payload())
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Kind == model.KindResult {
		c.results = append(c.results, resultArrival{m.Device, *m.Result, now})
		return
	}
	if _, dup := c.alarmSeen[m.ID()]; dup {
		return
	}
	c.alarmSeen[m.ID()] = struct{}{}
	c.arrivals = append(c.arrivals, arrival{m, now})
	if !m.Historical {
		c.eventLag = max(c.eventLag, now.Sub(m.Time))
	}
}

// alarmArrivals returns the events and results the alarm connection got.
func (c *collector) alarmArrivals() ([]arrival, []resultArrival) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.arrivals), slices.Clone(c.results)
}

func (c *collector) handle(_ paho.Client, msg paho.Message) {
	if strings.HasSuffix(msg.Topic(), "/status") || strings.HasSuffix(msg.Topic(), "/command") {
		return // the gateway's retained online/offline status, the duty desk's commands
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
	EventLag                                                           time.Duration
}

func (c *collector) counts() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return counts{c.readings, c.duplicates, c.health, c.historical, c.malformed, c.gatewayEvents,
		maps.Clone(c.events), maps.Clone(c.drops), maps.Clone(c.damage), maps.Clone(c.byDevice), c.eventLag}
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
	c.alarms.Disconnect(100)
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
