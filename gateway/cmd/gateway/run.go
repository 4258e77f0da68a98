package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/seq"
	"outpost/gateway/uplink/influx"
	"outpost/gateway/uplink/mqtt"
)

// run wires a station: drivers -> ingest -> one durable queue per uplink ->
// forwarders -> hub, and runs it until ctx ends.
func run(ctx context.Context, st *configs.Station, log *slog.Logger) error {
	log = log.With("station", st.Station.ID)
	// Build everything that can fail without I/O first.
	type link struct {
		name string
		d    drivers.Driver
	}
	var links []link
	for _, l := range drivers.Links(st) {
		d, err := drivers.New(l, log)
		if err != nil {
			return err
		}
		links = append(links, link{l.Name(), d})
	}

	if err := os.MkdirAll(st.StateDir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	counters, err := seq.Open(st.SeqFile(), log)
	if err != nil {
		return err
	}

	mq := mqtt.New(st.Hub.MQTT, st.Station, log)
	ups := map[string]pipeline.Uplink{"mqtt": mq}
	if st.Hub.Influx != nil {
		ix := influx.New(*st.Hub.Influx, log)
		defer ix.Close()
		ups["influx"] = ix
	}
	queues := map[string]*queue.Queue{}
	var outs []pipeline.Appender
	for _, name := range st.Uplinks() {
		q, err := pipeline.OpenQueue(st, name, log)
		if err != nil {
			return err
		}
		defer q.Close()
		queues[name] = q
		outs = append(outs, q)
	}
	ingest := pipeline.NewIngest(st, counters, outs, log)

	// Wait briefly for the hub so that the first readings go straight out;
	// a hub that is down does not hold the station back: the uplink keeps
	// reconnecting and the queues keep everything meanwhile.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = mq.Connect(cctx)
	cancel()
	switch {
	case err == nil:
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("hub broker not reachable yet; queueing until it is", "broker", st.Hub.MQTT.URL)
	default:
		return err
	}
	defer mq.Close(context.Background())

	var fwd, drv sync.WaitGroup
	fctx, stopForwarders := context.WithCancel(context.Background())
	defer func() { stopForwarders(); fwd.Wait() }()
	for name, q := range queues {
		// One forwarder per lane: alarms go out on their own, never
		// behind a telemetry batch in flight.
		for _, lane := range []struct {
			l     queue.Lane
			batch int
		}{{queue.LaneAlarm, 100}, {queue.LaneTelemetry, 1000}} {
			f := &pipeline.Forwarder{Name: name + "/" + lane.l.String(), Queue: q, Lanes: []queue.Lane{lane.l},
				Uplink: ups[name], Batch: lane.batch, HistoricalAfter: 30 * time.Second, Log: log}
			fwd.Add(1)
			go func() {
				defer fwd.Done()
				if err := f.Run(fctx); err != nil {
					log.Error("forwarder stopped", "forwarder", f.Name, "err", err)
				}
			}()
		}
	}
	fwd.Add(1)
	go func() {
		defer fwd.Done()
		pipeline.WatchQueues(fctx, ingest, queues, time.Second)
	}()
	for _, l := range links {
		drv.Add(1)
		go func() {
			defer drv.Done()
			runDriver(ctx, l.d, l.name, ingest, log)
		}()
	}
	log.Info("gateway running", "type", st.Station.Type, "devices", len(st.Devices), "links", len(links), "uplinks", len(ups))
	<-ctx.Done()
	drv.Wait() // every driver has stopped emitting; the queues hold the rest
	log.Info("gateway stopping")
	return nil
}

// runDriver runs a driver until ctx ends, restarting it after a pause when it
// fails as a whole.
func runDriver(ctx context.Context, d drivers.Driver, name string, in *pipeline.Ingest, log *slog.Logger) {
	pause := time.Second
	for {
		err := d.Run(ctx, in.Emit)
		if ctx.Err() != nil {
			return
		}
		log.Error("link failed; restarting it", "link", name, "err", err, "in", pause)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
		pause = min(pause*2, 30*time.Second)
	}
}
