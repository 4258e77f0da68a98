package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"outpost/configs"
	"outpost/drivers"
	desk "outpost/gateway/command"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/seq"
	"outpost/gateway/status"
	"outpost/gateway/uplink/influx"
	"outpost/gateway/uplink/mqtt"
)

// Shutdown bounds: after SIGTERM the gateway ends within stopLimit +
// statusTimeout (7 s) and a last fsync. The drivers finish the request on
// the wire; while the disk refuses the queue's writes, the hub gets until
// a second before stopLimit to take what the queues hold in memory (see
// deliverHeld); the forwarders abandon the batches in flight (they are
// sent again at the next start), and then the hub gets statusTimeout to
// take the offline status; the queues are closed last. A part still
// running at stopLimit (a serial read with a long timeout, a hub that
// stopped answering) is left behind: the process ends anyway.
const (
	statusTimeout = 2 * time.Second
	stopLimit     = 5 * time.Second
)

// linger: telemetry and health leave for the hub at most this long after
// they were queued, in batches; with a shallow queue, one send per linger
// instead of one per message (a 200-device station: 2 telemetry sends a
// second instead of 40, and its devices' health reports, one a minute
// each, in one send a second). A health change after a quiet second goes
// at once; alarms never wait.
const linger = time.Second

// run wires a station: drivers -> ingest -> one durable queue per uplink ->
// forwarders -> hub, and runs it until ctx ends. Each signal on hup reloads
// the station file (see reload.go).
func run(ctx context.Context, st *configs.Station, log *slog.Logger, hup <-chan os.Signal) error {
	log = log.With("station", st.Station.ID)
	// Read the files that can be wrong first.
	var key []byte
	if f := st.Hub.Commands.KeyFile; f != "" {
		k, err := configs.ReadKey(f)
		if err != nil {
			return fmt.Errorf("hub.commands.key_file: %w", err)
		}
		key = k
	}
	var token string
	if f := st.Status.TokenFile; f != "" {
		t, err := configs.ReadToken(f)
		if err != nil {
			return fmt.Errorf("status.token_file: %w", err)
		}
		token = t
	}
	started := time.Now().UTC()
	// One queue: every message is written once, and each uplink reads it
	// at its own pace. A state_dir that cannot be written gives way to a
	// fallback in memory (see fallback.go).
	stateDir := st.StateDir
	st, q, unusable, err := openState(st, log)
	if errors.Is(err, queue.ErrInUse) {
		// Two gateways started on one station file (the service, and
		// an installer's gateway run): name the other one.
		who := "another gateway"
		if pid, perr := readPid(st.StateDir); perr == nil {
			who += fmt.Sprintf(" (pid %d)", pid)
		}
		return fmt.Errorf("%s runs with state_dir %s: stop it first (sudo systemctl stop outpost), or give this station file a state_dir of its own (%w)", who, st.StateDir, err)
	}
	if err != nil {
		return err
	}
	defer q.Close()
	// Built once the state directory is known: the drivers keep their own
	// state in it (a DC-09 receiver's memory, a station broker's session),
	// in the fallback too.
	roundTrips := status.NewRoundTripHistogram()
	built, err := build(drivers.Links(st), roundTrips, log)
	if err != nil {
		return err
	}
	links := &linkSet{ctx: ctx, wg: &sync.WaitGroup{}, rtt: roundTrips, log: log, run: map[string]*linkRun{}}
	queues := map[string]*queue.Reader{}
	for _, name := range st.Uplinks() {
		queues[name] = q.Reader(name)
	}
	outs := []pipeline.Appender{q}
	counters, lostSeq, err := openSeq(st, queues, log)
	if err != nil {
		return err
	}
	if unusable == nil {
		// What cannot be taken back stays where it is, said in the log:
		// it must not keep the station from starting.
		err := takeBack(st, q, counters, log)
		if errors.Is(err, queue.ErrInUse) {
			// A gateway of the station runs on its fallback (started
			// while state_dir could not be written): stop, as for one on
			// state_dir.
			return fmt.Errorf("another gateway runs with the state of station %s in memory: stop it first (sudo systemctl stop outpost) (%w)", st.Station.ID, err)
		}
		if err != nil {
			log.Error("state kept in memory by an earlier run not taken back; its sequence numbers may come again", "err", err)
		}
	}
	ingest := pipeline.NewIngest(st, counters, outs, log)
	ingest.KeepAlarmStates(st.AlarmStatesFile())
	board := status.NewBoard(st, started)
	ingest.Seen = board.Saw
	for _, ev := range []*model.Message{lostSeq, unusable} {
		if ev != nil {
			ingest.Emit(*ev)
		}
	}

	store, damaged, err := desk.OpenStore(st.CommandsFile(), st.Hub.Commands.MaxTTL+desk.Skew, time.Now())
	if err != nil {
		return err
	}
	defer store.Close()
	if damaged > 0 {
		log.Warn("damaged lines of the commands file skipped", "file", st.CommandsFile(), "lines", damaged)
	}
	commands := &desk.Desk{Station: st.Station.ID, Targets: targetsOf(built), Key: key, MaxTTL: st.Hub.Commands.MaxTTL,
		Store: store, Emit: ingest.Emit, Log: log.With("part", "commands")}

	// Two connections to the broker: alarms (events, health, command
	// results, and the commands) never wait behind telemetry bytes.
	mq := mqtt.New(st.Hub.MQTT, st.Station, log)
	ma := mqtt.NewAlarms(st.Hub.MQTT, st.Station, commands.Handle, log)
	ma.Limit = mq.Limit // one broker, one limit, learned or stated
	ingest.Limit = mq.Limit
	ups := map[string]pipeline.Uplink{"mqtt": mq}
	if st.Hub.Influx != nil {
		ix := influx.New(*st.Hub.Influx, log)
		defer ix.Close()
		ups["influx"] = ix
	}
	// Close stops the uplink's reconnecting even when the start below is
	// cancelled; it waits statusTimeout at most for a hub that hangs.
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
		defer cancel()
		ma.Close(cctx)
		if err := mq.Close(cctx); err != nil {
			log.Warn("offline status not delivered", "err", err)
		}
	}()
	var fwd sync.WaitGroup
	drv := links.wg
	// The desk runs with the drivers: commands act through them.
	drv.Go(func() { commands.Run(ctx) })
	// Wait briefly for the hub so that the first readings go straight out;
	// a hub that is down does not hold the station back: the uplink keeps
	// reconnecting and the queues keep everything meanwhile.
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = errors.Join(mq.Connect(cctx), ma.Connect(cctx))
	cancel()
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil
	case errors.Is(err, context.DeadlineExceeded):
		log.Warn("hub broker not reachable yet; queueing until it is", "broker", strings.Join(st.Hub.MQTT.BrokerNames(), ", "))
	default:
		return err
	}

	fctx, stopForwarders := context.WithCancel(context.Background())
	defer stopForwarders()
	dead := &pipeline.DeadLetters{Dir: st.DeadLetterDir()}
	defer dead.Close()
	states := map[string]uplinkState{"mqtt": func() linkState {
		c, a := mq.Connection(), ma.Connection()
		s := linkState{broker: c.Broker, alarmBroker: a.Broker}
		switch {
		case !c.Connected:
			s.cause, s.since = c.Cause, c.Since
		case !a.Connected:
			s.cause, s.since = "alarm connection: "+a.Cause, a.Since
		default:
			s.connected, s.since = true, c.Since
			if a.Since.After(c.Since) {
				s.since = a.Since
			}
		}
		return s
	}}
	delivery := status.NewDeliveryHistogram()
	fwds := map[string][]*pipeline.Forwarder{}
	for name, q := range queues {
		outage := &pipeline.Outage{Uplink: name, Log: log}
		if name != "mqtt" {
			states[name] = func() linkState {
				down, since, why := outage.Down()
				return linkState{connected: !down, cause: why, since: since}
			}
		}
		// One forwarder per lane: alarms go out on their own (on the
		// broker, on a connection of their own), never behind a batch
		// of health changes or telemetry in flight.
		telemetry, wait := 1000, linger
		if name == "influx" {
			// Fewer, fuller writes: InfluxDB's cost is per request.
			telemetry, wait = st.Hub.Influx.BatchSize, st.Hub.Influx.BatchWait
		}
		for _, lane := range []struct {
			l      queue.Lane
			batch  int
			linger time.Duration
		}{{queue.LaneAlarm, 100, 0}, {queue.LaneHealth, 100, linger}, {queue.LaneTelemetry, telemetry, wait}} {
			up := ups[name]
			if name == "mqtt" && lane.l == queue.LaneAlarm {
				up = ma
			}
			waited := delivery.WithLabelValues(name, lane.l.String())
			f := &pipeline.Forwarder{Name: name + "/" + lane.l.String(), Queue: q, Lanes: []queue.Lane{lane.l},
				Uplink: up, UplinkName: name, Batch: lane.batch, Linger: lane.linger, HistoricalAfter: 30 * time.Second,
				Waited: func(d time.Duration) { waited.Observe(d.Seconds()) },
				Outage: outage, DeadLetters: dead, Report: ingest.Emit, Log: log}
			if name == "mqtt" {
				f.Limit = mq.Limit
			}
			fwds[name] = append(fwds[name], f)
			fwd.Go(func() { f.Supervise(fctx, pipeline.DefaultSupervisor) })
		}
	}
	fwd.Go(func() { pipeline.WatchQueues(fctx, ingest, queues, q.Changed(), time.Second, 10*time.Second) })
	fwd.Go(func() { spareProcs(fctx, queues, log) })
	g := &snapshots{st: st, started: started, unusable: unusable, queues: queues, states: states, dead: dead, fwds: fwds, board: board, unchanged: ingest.Unchanged, writeNow: make(chan struct{}, 1)}
	if st.Status.Listen != "off" {
		// The station works without its status server: a port taken is
		// logged, not fatal.
		if l, err := status.Listen(st.Status.Listen); err != nil {
			log.Error("status server not started", "err", err)
		} else {
			g.listen = l.Addr().String()
			srv := &status.Server{Snapshot: g.snapshot, Ready: g.notReady, Token: token, Log: log, Metrics: []prometheus.Collector{delivery, roundTrips}}
			fwd.Go(func() {
				if err := srv.Serve(fctx, l); err != nil {
					log.Error("status server stopped", "err", err)
				}
			})
			log.Info("status page", "url", "http://"+g.listen+"/")
		}
	}
	pid := pidFile(st.StateDir)
	writePid := func() {
		if err := os.WriteFile(pid, []byte(fmt.Sprintln(os.Getpid())), 0o644); err != nil {
			log.Warn("no pid file: gateway reload cannot find this gateway (send it SIGHUP)", "err", err)
		}
	}
	// The state directory deleted under the gateway (by hand, or by a
	// cleaner of /tmp): the queue makes its own files again at its next
	// write; the status file finds the directory gone within statusEvery,
	// and the rest is written again, so that the next start goes on with
	// the sequence numbers, and gateway status and reload find this one.
	stateDeleted := func() {
		log.Error("the state directory was deleted while the gateway ran: made it again; what was queued in it and not yet sent is lost (the hub gets a queue_damage event)", "dir", st.StateDir)
		if err := counters.Rewrite(); err != nil {
			log.Error("sequence numbers not written again: a restart may repeat them", "err", err)
		}
		if err := store.Rewrite(time.Now()); err != nil {
			log.Error("commands file not written again", "err", err)
		}
		ingest.RewriteAlarmStates()
		writePid()
	}
	fwd.Go(func() {
		writeStatus(fctx, status.File(st.StateDir), fallbackDirs(st.Station.ID), g.snapshot, g.writeNow, board.Changed, stateDeleted, log)
	})
	fwd.Go(func() {
		publishSnapshots(fctx, mq, mqtt.SnapshotTopic(mqtt.Prefix(st.Hub.MQTT.TopicPrefix), st.Station.ID), g.snapshot, board.Changed, log.With("part", "snapshot"))
	})
	links.emit = ingest.Emit
	for _, r := range built {
		links.start(r)
	}
	writePid()
	defer os.Remove(pid)
	// Ready: queues open, forwarders and drivers running.
	stall := stallAfter(st)
	fwd.Go(func() {
		serveSystemd(ctx, func() error { return pipelineAlive(ingest.LastEmit, stall, queues) }, log)
	})
	log.Info("gateway running", "type", st.Station.Type, "devices", len(st.Devices), "links", len(built), "uplinks", len(ups))
	ds := map[string]drivers.Driver{}
	for name, r := range built {
		ds[name] = r.d
	}
	for _, w := range warnings(st, ds) {
		log.Warn("the station file may not work as meant", "warning", w)
	}
	for cur := st; ctx.Err() == nil; {
		select {
		case <-ctx.Done():
		case <-hup:
			var r status.Reload
			cur, r = reloadStation(cur, stateDir, links, ingest, board, commands, log)
			g.reloaded(r)
		}
	}

	start := time.Now()
	deadline := start.Add(stopLimit)
	log.Info("gateway stopping")
	// Drivers first: every reading they took is queued before anything
	// else stops. Then the forwarders.
	if !waitFor(drv, time.Until(deadline)) {
		log.Warn("links did not stop in time; leaving them", "after", stopLimit)
	}
	deliverHeld(queues, time.Until(deadline)-time.Second, log)
	stopForwarders()
	if !waitFor(&fwd, time.Until(deadline)) {
		log.Warn("forwarders did not stop in time; leaving them", "after", stopLimit)
	}
	log.Info("gateway stopped", "took", time.Since(start).Round(time.Millisecond), "queued", queued(queues))
	return nil
}

// deliverHeld waits up to d, while the forwarders run, until the hub took
// what the queues hold in memory because the disk refuses it: the process
// would lose it. It says whether the hub did.
func deliverHeld(queues map[string]*queue.Reader, d time.Duration, log *slog.Logger) bool {
	held := func() (n int64) {
		for _, q := range queues {
			for _, ls := range q.Stats().Lanes {
				n += ls.Memory
			}
		}
		return n
	}
	n := held()
	if n == 0 {
		return true
	}
	log.Warn("the disk refuses the queue's writes: waiting for the hub to take what memory holds before stopping", "records", n, "for_at_most", d.Round(time.Millisecond))
	deadline := time.Now().Add(d)
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for ; n > 0; n = held() {
		if !time.Now().Before(deadline) {
			log.Error("stopping with records the disk refused and the hub did not take: they are lost", "records", n)
			return false
		}
		<-t.C
	}
	return true
}

// waitFor waits for wg up to d, and says whether it ended.
func waitFor(wg *sync.WaitGroup, d time.Duration) bool { return within(d, wg.Wait) }

// within runs f and says whether it returned within d; one that does not
// is left to finish on its own.
func within(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() {
		f()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// queued sums up what waits in the queues, e.g.
// "influx: 0 alarms, 1200 telemetry (9600 readings); mqtt: ...".
func queued(queues map[string]*queue.Reader) string {
	var parts []string
	for name, q := range queues {
		s := q.Stats()
		a, t := s.Kept(), s.Lanes[queue.LaneTelemetry]
		parts = append(parts, fmt.Sprintf("%s: %d alarms, %d telemetry (%d readings)", name, a.Records, t.Records, t.Readings))
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

// openSeq opens the sequence numbers. If both copies were damaged, every
// device is raised above the highest number still in the queues, and the
// event to tell the hub is returned: for the devices the queues did not
// hold, numbers may repeat ones the hub already has.
func openSeq(st *configs.Station, queues map[string]*queue.Reader, log *slog.Logger) (*seq.Counters, *model.Message, error) {
	counters, err := seq.Open(st.SeqFile(), log)
	if err != nil || !counters.Lost() {
		return counters, nil, err
	}
	floors := map[string]uint64{}
	for _, q := range queues {
		err := q.Scan(func(data []byte) {
			if m, err := model.DecodeBinary(data); err == nil {
				floors[m.Device] = max(floors[m.Device], m.Seq)
			}
		})
		if err != nil {
			return nil, nil, err
		}
	}
	if err := counters.Raise(floors); err != nil {
		return nil, nil, err
	}
	var unknown []string
	for _, d := range st.Devices {
		if _, ok := floors[d.ID]; !ok {
			unknown = append(unknown, d.ID)
		}
	}
	log.Error("sequence numbers were lost (both copies damaged); raised above the queues", "file", st.SeqFile(),
		"devices_from_queues", len(floors), "devices_guessed", strings.Join(unknown, ","))
	ev := model.GatewayEvent(model.EventSeqLost, model.Warning, map[string]string{
		"reason":              "both copies of the sequence numbers were damaged",
		"devices_from_queues": fmt.Sprint(len(floors)),
		"devices_guessed":     strings.Join(unknown, ","),
	})
	return counters, &ev, nil
}
