package main

// The fleet against a clustered hub: the hub's broker is three NATS nodes
// that speak MQTT (JetStream, sessions and messages replicated on every
// node), every gateway is given all three (hub.mqtt.urls, station i's
// list starting at node i mod 3), and a node is killed in the middle of
// the load and restarted later. Nothing may be lost; every gateway that
// was on the killed node must move to another and say so; the report
// gives how long each took.
//
//	testbench run fleet-cluster -stations N -duration 2m -report fleet-cluster.json

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"outpost/gateway/status"
	"outpost/testbench/hub"
)

// clusterPlan says what happens to the clustered hub during the load.
type clusterPlan struct {
	Nodes int
	Kill  int // the node killed
	// KillAfter and RestartAfter count from the moment every gateway
	// runs.
	KillAfter, RestartAfter time.Duration
	// MoveWithin bounds how long a gateway on the killed node may take to
	// be on another, both its connections.
	MoveWithin time.Duration
}

// fleetClusterReport is the fleet's report and what the cluster did.
type fleetClusterReport struct {
	fleetReport
	Cluster clusterReport `json:"cluster"`
}

// clusterReport is what the clustered hub went through, and how the
// gateways moved.
type clusterReport struct {
	Nodes  []string `json:"nodes"` // their MQTT URLs
	Killed string   `json:"killed"`
	// KilledAtS and RestartedAtS count from the moment every gateway ran.
	KilledAtS    float64 `json:"killed_at_s"`
	RestartedAtS float64 `json:"restarted_at_s,omitempty"`
	// RejoinS is how long the restarted node took to be back: current
	// with the JetStream meta leader, its routes up, taking MQTT
	// connections; CaughtUpS until its copies of every stream and
	// consumer were current too (-1: not before the load ended).
	RejoinS   float64 `json:"rejoin_s,omitempty"`
	Rejoined  bool    `json:"rejoined"`
	CaughtUpS float64 `json:"caught_up_s,omitempty"`
	// Moves are the gateways that were on the killed node.
	Moves       []gatewayMove `json:"moves"`
	MaxMoveS    float64       `json:"max_move_s"`
	MedianMoveS float64       `json:"median_move_s"`
	// Elsewhere is how many gateways were on other nodes at the kill;
	// Reconnected those of them that lost a connection all the same (a
	// node that cannot store a message while the streams elect leaders
	// closes the client's connection), with when they were back.
	Elsewhere   int           `json:"gateways_elsewhere"`
	Reconnected []gatewayMove `json:"elsewhere_reconnected,omitempty"`
}

// gatewayMove is one gateway's move off the killed node.
type gatewayMove struct {
	Station string `json:"station"`
	From    string `json:"from"`
	To      string `json:"to"`
	// MoveS is from the kill until both its connections were on another
	// node (its status: the mqtt uplink connected since); -1 if it never
	// was within the bound.
	MoveS float64 `json:"move_s"`
	// Logged counts its log's "mqtt uplink: moved to broker" lines (one
	// per connection, more if a node took it and then failed it).
	Logged int `json:"moves_logged"`
}

// cmdFleetCluster is `testbench run fleet-cluster`.
func cmdFleetCluster(ctx context.Context, args []string, log *slog.Logger) int {
	fs := flag.NewFlagSet("run fleet-cluster", flag.ExitOnError)
	planned, reportPath := fleetFlags(fs, 6, 2*time.Minute)
	moveWithin := fs.Duration("move-within", 30*time.Second, "longest a gateway on the killed node may take to be on another")
	fs.Parse(args)
	plan := planned()
	if plan.Stations < 1 || plan.Duration < 30*time.Second {
		fmt.Fprintln(os.Stderr, "run fleet-cluster: -stations must be at least 1 and -duration at least 30s")
		return 2
	}
	work, err := os.MkdirTemp("", "outpost-fleet-cluster-")
	if err != nil {
		log.Error("fleet-cluster", "err", err)
		return 2
	}
	cp := clusterPlan{Nodes: 3, Kill: 0, KillAfter: plan.Duration / 3, RestartAfter: plan.Duration * 2 / 3, MoveWithin: *moveWithin}
	rep, err := runFleetCluster(ctx, plan, cp, work, log)
	if !rep.settle(err, work, *reportPath, &rep, log) {
		return 2
	}
	printFleet(os.Stdout, rep.fleetReport)
	printCluster(os.Stdout, rep.Cluster)
	if !rep.Pass {
		return 1
	}
	return 0
}

// runFleetCluster starts the NATS cluster and one InfluxDB in work, and
// runs the fleet against them, killing and restarting a node meanwhile.
func runFleetCluster(ctx context.Context, plan fleetPlan, cp clusterPlan, work string, log *slog.Logger) (fleetClusterReport, error) {
	var rep fleetClusterReport
	c, err := hub.StartNATSCluster(ctx, filepath.Join(work, "nats"), log, cp.Nodes)
	if err != nil {
		return rep, err
	}
	defer c.Stop()
	in, err := hub.StartInflux(ctx, filepath.Join(work, "influx"), log)
	if err != nil {
		return rep, err
	}
	defer in.Stop()
	urls := c.MQTTURLs()
	rep.Cluster.Nodes, rep.Cluster.Killed = urls, urls[cp.Kill]
	h := fleetHub{Brokers: urls, Cluster: true, Influx: in,
		// The testbench's subscribers on a node that stays up: they
		// count what the hub has, not how they fare.
		Subscriber: urls[(cp.Kill+cp.Nodes-1)%cp.Nodes]}
	for i := range cp.Nodes {
		h.Servers = append(h.Servers, hubServer{fmt.Sprintf("nats-server n%d", i+1), func() int { return c.Pid(i) }})
	}
	h.Servers = append(h.Servers, hubServer{"influxd", in.Pid})
	plan.During = func(ctx context.Context) error {
		return killAndRestart(ctx, c, cp, work, &rep.Cluster, log)
	}
	rep.fleetReport, err = runFleet(ctx, plan, h, work, log)
	// The gateways' logs are whole now.
	logged := func(m *gatewayMove) {
		b, _ := os.ReadFile(filepath.Join(work, m.Station, "processes.log"))
		m.Logged = strings.Count(string(b), "mqtt uplink: moved to broker")
	}
	for i := range rep.Cluster.Moves {
		m := &rep.Cluster.Moves[i]
		logged(m)
		if m.MoveS >= 0 && m.Logged == 0 {
			rep.Failures = append(rep.Failures, fmt.Sprintf("%s moved off %s but its log does not say so", m.Station, rep.Cluster.Killed))
		}
	}
	for i := range rep.Cluster.Reconnected {
		logged(&rep.Cluster.Reconnected[i])
	}
	if !rep.Cluster.Rejoined {
		rep.Failures = append(rep.Failures, fmt.Sprintf("the killed node %s did not rejoin the cluster", rep.Cluster.Killed))
	}
	rep.Pass = err == nil && len(rep.Failures) == 0
	return rep, err
}

// killAndRestart kills node cp.Kill after cp.KillAfter, waits until every
// gateway that was on it is on another (its status file says so), and
// restarts the node at cp.RestartAfter. It fills r.
func killAndRestart(ctx context.Context, c *hub.NATSCluster, cp clusterPlan, work string, r *clusterReport, log *slog.Logger) error {
	start := time.Now()
	if err := sleepCtx(ctx, cp.KillAfter); err != nil {
		return err
	}
	dead := c.MQTTURL(cp.Kill)
	statuses, err := gatewayStatuses(work)
	if err != nil {
		return err
	}
	on := map[string]string{}        // station -> the killed node it is on
	elsewhere := map[string]string{} // station -> the node it is on
	for id, s := range statuses {
		if u := mqttUplink(s); u != nil && (u.Broker == dead || u.AlarmBroker == dead) {
			on[id] = dead
		} else if u != nil {
			elsewhere[id] = u.Broker
		}
	}
	r.Elsewhere = len(elsewhere)
	killed := time.Now()
	c.Kill(cp.Kill)
	r.KilledAtS = killed.Sub(start).Seconds()
	log.Info("fleet-cluster: node killed", "node", dead, "gateways_on_it", len(on))

	moved := map[string]gatewayMove{}
	for len(moved) < len(on) && time.Since(killed) < cp.MoveWithin && ctx.Err() == nil {
		statuses, err := gatewayStatuses(work)
		if err != nil {
			return err
		}
		for id := range on {
			u := mqttUplink(statuses[id])
			if _, done := moved[id]; done || u == nil || !u.Connected || u.Broker == dead || u.AlarmBroker == dead || !u.Since.After(killed) {
				continue
			}
			moved[id] = gatewayMove{Station: id, From: dead, To: u.Broker, MoveS: u.Since.Sub(killed).Seconds()}
			log.Info("fleet-cluster: gateway moved", "station", id, "to", u.Broker, "after", u.Since.Sub(killed).Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	var failed []string
	var times []float64
	for _, id := range slices.Sorted(maps.Keys(on)) {
		m, ok := moved[id]
		if !ok {
			m = gatewayMove{Station: id, From: dead, MoveS: -1}
			failed = append(failed, id)
		} else {
			times = append(times, m.MoveS)
		}
		r.Moves = append(r.Moves, m)
	}
	if len(times) > 0 {
		slices.Sort(times)
		r.MaxMoveS, r.MedianMoveS = times[len(times)-1], times[len(times)/2]
	}
	if err := sleepCtx(ctx, time.Until(start.Add(cp.RestartAfter))); err != nil {
		return err
	}
	// The others, just before the restart: connected again since the
	// kill?
	if statuses, err = gatewayStatuses(work); err != nil {
		return err
	}
	for _, id := range slices.Sorted(maps.Keys(elsewhere)) {
		if u := mqttUplink(statuses[id]); u != nil && u.Connected && u.Since.After(killed) {
			r.Reconnected = append(r.Reconnected, gatewayMove{Station: id, From: elsewhere[id], To: u.Broker, MoveS: u.Since.Sub(killed).Seconds()})
		}
	}

	restarted := time.Now()
	r.RestartedAtS = restarted.Sub(start).Seconds()
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := c.Restart(rctx, cp.Kill); err != nil {
		return fmt.Errorf("fleet-cluster: restart %s: %w", dead, err)
	}
	r.RejoinS = time.Since(restarted).Seconds()
	routes, err := c.Routes(rctx, cp.Kill)
	r.Rejoined = err == nil && routes == cp.Nodes-1
	log.Info("fleet-cluster: node back", "node", dead, "after", time.Since(restarted).Round(time.Millisecond), "routes", routes)
	r.CaughtUpS = -1
	for err := c.CaughtUp(ctx, cp.Kill); ; err = c.CaughtUp(ctx, cp.Kill) {
		if err == nil {
			r.CaughtUpS = time.Since(restarted).Seconds()
			log.Info("fleet-cluster: node caught up", "node", dead, "after", time.Since(restarted).Round(time.Millisecond))
			break
		}
		if sleepCtx(ctx, 200*time.Millisecond) != nil {
			log.Info("fleet-cluster: node not caught up when the load ended", "node", dead, "last", err)
			break
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("fleet-cluster: %d gateways were not on another node within %s of the kill: %s", len(failed), cp.MoveWithin, strings.Join(failed, ", "))
	}
	return nil
}

// gatewayStatuses reads the status file of every station of a fleet in
// work (WORK/ID/state/status.json), by station id; a file being replaced
// is left out.
func gatewayStatuses(work string) (map[string]status.Snapshot, error) {
	files, err := filepath.Glob(filepath.Join(work, "*", "state", "status.json"))
	if err != nil {
		return nil, err
	}
	out := map[string]status.Snapshot{}
	for _, f := range files {
		if s, err := status.Read(f); err == nil {
			out[s.Station] = s
		}
	}
	return out, nil
}

// mqttUplink is the broker's uplink of a status, or nil.
func mqttUplink(s status.Snapshot) *status.Uplink {
	for i := range s.Uplinks {
		if s.Uplinks[i].Name == "mqtt" {
			return &s.Uplinks[i]
		}
	}
	return nil
}

// printCluster prints what the cluster went through and how each gateway
// on the killed node moved.
func printCluster(out io.Writer, r clusterReport) {
	rejoined := "rejoined"
	if !r.Rejoined {
		rejoined = "DID NOT REJOIN"
	}
	caught := "not caught up when the load ended"
	if r.CaughtUpS >= 0 {
		caught = fmt.Sprintf("its streams caught up in %.1f s", r.CaughtUpS)
	}
	fmt.Fprintf(out, "  hub: %d NATS nodes; %s killed at %.0f s, restarted at %.0f s, %s in %.1f s (%s); %d gateways were on it, %d elsewhere\n",
		len(r.Nodes), r.Killed, r.KilledAtS, r.RestartedAtS, rejoined, r.RejoinS, caught, len(r.Moves), r.Elsewhere)
	if len(r.Moves) == 0 {
		return
	}
	fmt.Fprintf(out, "  moves off the killed node: median %.2f s, longest %.2f s\n", r.MedianMoveS, r.MaxMoveS)
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  station\tfrom\tto\tback after\tlogged moves\t")
	for _, m := range r.Moves {
		after := "NOT MOVED"
		if m.MoveS >= 0 {
			after = fmt.Sprintf("%.2f s", m.MoveS)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t\n", m.Station, m.From, m.To, after, m.Logged)
	}
	for _, m := range r.Reconnected {
		fmt.Fprintf(tw, "  %s (elsewhere)\t%s\t%s\t%.2f s\t%d\t\n", m.Station, m.From, m.To, m.MoveS, m.Logged)
	}
	tw.Flush()
}
