package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/gateway/model"
)

// The alarm watcher is the hub's alarm desk: a process of its own that
// subscribes to a station's events, health changes and command results
// and notes when each arrives. A process of its own, because the testbench's collector
// is busy counting a million readings meanwhile: in the same process its
// goroutines would make an alarm wait for a CPU, and the latency measured
// would be the testbench's.
//
//	testbench watch-alarms -url tcp://127.0.0.1:1883 -prefix outpost/v1/sp-0001 -out FILE
//
// Each line of FILE is the arrival time in Unix nanoseconds, a space and
// the payload. It prints "watching" once subscribed.
func cmdWatchAlarms(ctx context.Context, args []string, log *slog.Logger) int {
	fs := flag.NewFlagSet("watch-alarms", flag.ExitOnError)
	url := fs.String("url", "", "the broker")
	prefix := fs.String("prefix", "", "the station's topics, {prefix}/{station}")
	out := fs.String("out", "", "where to write what arrives")
	fs.Parse(args)
	f, err := os.Create(*out)
	if err != nil {
		log.Error("watch-alarms", "err", err)
		return 2
	}
	defer f.Close()
	lines := make(chan string, 1<<16)
	subscribed := make(chan struct{}, 1)
	opts := paho.NewClientOptions().AddBroker(*url).SetClientID(fmt.Sprintf("testbench-alarms-%d", time.Now().UnixNano())).
		SetCleanSession(false).SetAutoReconnect(true).SetConnectRetry(true).
		SetConnectRetryInterval(50 * time.Millisecond).SetMaxReconnectInterval(200 * time.Millisecond).SetOrderMatters(true)
	opts.SetOnConnectHandler(func(cl paho.Client) {
		filters := map[string]byte{*prefix + "/+/event": 1, *prefix + "/+/health": 1, *prefix + "/+/command/result": 1}
		subscribeUntilGranted(cl, filters, func(_ paho.Client, m paho.Message) {
			lines <- strconv.FormatInt(time.Now().UnixNano(), 10) + " " + string(m.Payload())
		}, subscribed)
	})
	cl := paho.NewClient(opts)
	if err := connect(ctx, cl); err != nil {
		log.Error("watch-alarms", "err", err)
		return 2
	}
	defer cl.Disconnect(100)
	select {
	case <-subscribed:
	case <-ctx.Done():
		return 0
	}
	fmt.Println("watching")
	w := bufio.NewWriter(f)
	for {
		select {
		case l := <-lines:
			w.WriteString(l + "\n")
			if len(lines) == 0 {
				w.Flush()
			}
		case <-ctx.Done():
			for len(lines) > 0 {
				w.WriteString(<-lines + "\n")
			}
			w.Flush()
			return 0
		}
	}
}

// arrival is an event as it reached the alarm watcher.
type arrival struct {
	Msg model.Message
	At  time.Time
}

// resultArrival is a command's result as it reached the alarm watcher
// (every copy).
type resultArrival struct {
	Device string
	Result model.Result
	At     time.Time
}

func (r *runner) watchFile() string { return filepath.Join(r.work, "alarms-watched.txt") }

// startWatcher starts the alarm watcher for the run's station.
func (r *runner) startWatcher(ctx context.Context) error {
	r.watcher = &proc{name: "testbench"}
	return r.watcher.start(ctx, r.out, "watching", "watch-alarms", "-url", r.mqtt.URL(),
		"-prefix", r.st.Hub.MQTT.TopicPrefix+"/"+r.st.Station.ID, "-out", r.watchFile())
}

// alarmArrivals stops the watcher (once) and reads what it saw: every
// event, first copies only, and every command result. A run without a
// watcher (a fleet's station) saw none.
func (r *runner) alarmArrivals() ([]arrival, []resultArrival, error) {
	if r.watched == nil && r.watcher == nil {
		r.watched = &watched{}
	}
	if r.watched == nil {
		if err := r.watcher.stop(10 * time.Second); err != nil {
			return nil, nil, err
		}
		b, err := os.ReadFile(r.watchFile())
		if err != nil {
			return nil, nil, err
		}
		w := &watched{}
		seen := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			ns, payload, ok := strings.Cut(line, " ")
			n, err := strconv.ParseInt(ns, 10, 64)
			if !ok || err != nil {
				continue
			}
			m, err := model.ParseJSON([]byte(payload))
			if err != nil {
				continue // the collector counts malformed messages
			}
			at := time.Unix(0, n)
			switch {
			case m.Kind == model.KindResult:
				w.results = append(w.results, resultArrival{m.Device, *m.Result, at})
			case !seen[m.ID()]:
				seen[m.ID()] = true
				w.events = append(w.events, arrival{m, at})
				if !m.Historical && m.Kind == model.KindEvent {
					w.lag = max(w.lag, at.Sub(m.Time))
				}
			}
		}
		r.watched = w
	}
	return r.watched.events, r.watched.results, nil
}

// watched is what the alarm watcher saw.
type watched struct {
	events  []arrival
	results []resultArrival
	lag     time.Duration // the longest from an event's stamp to its arrival
}
