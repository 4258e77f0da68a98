package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/gateway/model"
)

// collector is the testbench's own subscriber at the hub's broker. It counts
// what arrived, never trusting the gateway's counters.
type collector struct {
	client paho.Client

	mu         sync.Mutex
	seen       map[string]struct{} // station/device/seq of every message
	readings   int                 // readings with a value, first copies only
	duplicates int                 // readings in messages that arrived again
	events     map[string]int      // event kind -> count, first copies only
	health     int
	historical int
	malformed  int
	onMessage  func(m *model.Message, dup bool)
}

// collect subscribes to everything the station publishes, with a persistent
// session so that nothing is missed while the broker restarts.
func collect(ctx context.Context, url, topic string, onMessage func(*model.Message, bool)) (*collector, error) {
	c := &collector{seen: map[string]struct{}{}, events: map[string]int{}, onMessage: onMessage}
	opts := paho.NewClientOptions().AddBroker(url).SetClientID(fmt.Sprintf("testbench-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).
		SetOrderMatters(false)
	opts.SetOnConnectHandler(func(cl paho.Client) {
		cl.Subscribe(topic, 1, c.handle)
	})
	c.client = paho.NewClient(opts)
	tok := c.client.Connect()
	select {
	case <-tok.Done():
		if tok.Error() != nil {
			return nil, fmt.Errorf("hub subscriber: %w", tok.Error())
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return c, nil
}

func (c *collector) handle(_ paho.Client, msg paho.Message) {
	if strings.HasSuffix(msg.Topic(), "/status") {
		return // the gateway's retained online/offline status
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
	n := 0
	for _, r := range m.Readings {
		if !r.Value.IsZero() {
			n++
		}
	}
	switch {
	case dup:
		c.duplicates += n
	case m.Kind == model.KindTelemetry:
		c.readings += n
		if m.Historical {
			c.historical += n
		}
	case m.Kind == model.KindEvent:
		c.events[m.Event.Kind]++
	case m.Kind == model.KindHealth:
		c.health++
	}
	if c.onMessage != nil {
		c.onMessage(&m, dup)
	}
}

type counts struct {
	Readings, Duplicates, Health, Historical, Malformed int
	Events                                              map[string]int
}

func (c *collector) counts() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	ev := map[string]int{}
	for k, v := range c.events {
		ev[k] = v
	}
	return counts{c.readings, c.duplicates, c.health, c.historical, c.malformed, ev}
}

func (c *collector) close() { c.client.Disconnect(100) }
