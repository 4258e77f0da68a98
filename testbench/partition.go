package main

import (
	"context"
	"net/url"

	"outpost/testbench/hub"
)

// partitions says whether the scenario cuts the network between the
// station and the hub.
func (sc *Scenario) partitions() bool {
	return sc.plays("partition", "partition-start", "partition-heal")
}

// pathsToHub puts a path that the scenario can cut (hub.Path) between the
// station and each hub server, at the scenario's hub_rate, and returns the
// addresses the station is given instead. The hub's own subscribers (the
// collector, the alarm watcher) reach the servers directly: they stand
// for the city brain, on the hub's side of the partition (or the slow
// link).
func (r *runner) pathsToHub(ctx context.Context, addrs hubAddrs) (hubAddrs, error) {
	for _, u := range []*string{&addrs.MQTT, &addrs.Influx} {
		parsed, err := url.Parse(*u)
		if err != nil {
			return addrs, err
		}
		p, err := hub.NewPath(ctx, parsed.Host)
		if err != nil {
			return addrs, err
		}
		p.SetRate(r.sc.HubRate)
		r.paths = append(r.paths, p)
		parsed.Host = p.Addr()
		*u = parsed.String()
	}
	return addrs, nil
}

// partition cuts (or heals) every path between the station and the hub.
func (r *runner) partition(cut bool) {
	for _, p := range r.paths {
		if cut {
			p.Cut()
		} else {
			p.Heal()
		}
	}
}
