package main

// The fleet: many stations of the five types on one machine, each with its
// own gateway process and its own simulated devices (a firmware-sim
// process), against one hub. Every station is run by the scenario runner
// (load, collectUntilDrained) as a steady scenario of its profile would be;
// the fleet adds what only a fleet shows: the hub's ingest rate, and what
// the gateways, the hub's servers and the simulators cost together.
//
//	testbench run fleet -stations N -duration 5m -report fleet.json

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"outpost/configs"
	"outpost/testbench/hub"
)

// fleetProfiles are the station files a fleet cycles through: the five
// station types.
var fleetProfiles = []string{"workstation.yaml", "police-room.yaml", "safety-post.yaml", "grid-station.yaml", "police-cube.yaml"}

// fleetHub is the hub a fleet runs against. The caller starts it, so that a
// clustered hub can stand in for the one Mosquitto of `run fleet`.
type fleetHub struct {
	// Brokers are the MQTT URLs: station i's gateway is given
	// Brokers[i mod len(Brokers)].
	Brokers []string
	// Cluster has every gateway given all of Brokers (hub.mqtt.urls),
	// station i's list starting at Brokers[i mod len(Brokers)]: the nodes
	// of a clustered hub.
	Cluster bool
	// Subscriber is where the testbench's own subscribers count what
	// arrives; Brokers[0] when empty.
	Subscriber string
	Influx     *hub.Influx
	// Servers are the hub's processes whose CPU the report gives.
	Servers []hubServer
}

// hubServer is a process of the hub.
type hubServer struct {
	Name string
	Pid  func() int // its current process id; 0 while it is down
}

// fleetPlan says what to run.
type fleetPlan struct {
	Stations int
	Duration time.Duration // of load
	Drain    time.Duration // longest wait, per station, for the hub to have everything
	// MinPollPercent is the least share of its configured poll rate each
	// polled device must get: a fleet that saves its readings by polling
	// less does not hold.
	MinPollPercent float64
	// During, when set, runs beside the load from the moment every gateway
	// runs; its ctx ends with the load. An error fails the run. A run
	// against a clustered hub kills a node in it.
	During func(ctx context.Context) error
}

// fleetReport is what a fleet run writes.
type fleetReport struct {
	Pass     bool     `json:"pass"`
	Failures []string `json:"failures,omitempty"`
	// NothingLost: every reading sent is at both hub stores, every event
	// arrived once, whatever the poll rates were.
	NothingLost bool `json:"nothing_lost"`
	// PollsHeld: every polled device got MinPollWanted percent of its
	// configured rate or more.
	PollsHeld     bool           `json:"polls_held"`
	MinPollWanted float64        `json:"min_poll_wanted"`
	Stations      int            `json:"stations"`
	ByType        map[string]int `json:"stations_by_type"`
	Devices       int            `json:"devices"`
	// PollsPerS is the configured polls a second of every polled device.
	PollsPerS float64 `json:"configured_polls_per_s"`
	DurationS float64 `json:"load_s"`
	// The load average before the run and at the end of the load: other
	// work on the machine shows here.
	LoadAvgBefore [3]float64 `json:"loadavg_before"`
	LoadAvgAfter  [3]float64 `json:"loadavg_at_load_end"`
	Readings      struct {
		Sent       int `json:"sent"`
		AtHubMQTT  int `json:"at_hub_mqtt"`
		InInflux   int `json:"in_influx"`
		LostMQTT   int `json:"lost_mqtt"`
		LostInflux int `json:"lost_influx"`
		Duplicates int `json:"duplicates"`
	} `json:"readings"`
	Events struct {
		Served int `json:"served"`
		AtHub  int `json:"at_hub"`
	} `json:"events"`
	// Rates are in readings/s. Sent is the sum of the stations' (what the
	// simulators served over each station's load); the hub's are counted
	// at each store over a window in which every station runs.
	Rates struct {
		WindowS float64 `json:"window_s"`
		// InfluxStations is how many stations' InfluxDB counts made
		// HubInflux (a count that failed three times leaves its station
		// out).
		InfluxStations int     `json:"hub_influx_stations"`
		Sent           float64 `json:"sent"`
		HubMQTT        float64 `json:"hub_mqtt"`
		HubInflux      float64 `json:"hub_influx"`
	} `json:"readings_per_s"`
	// MinPollPercent is the lowest share of its configured poll rate a
	// polled device got, of any station; Slowest names it.
	MinPollPercent float64 `json:"min_poll_percent"`
	Slowest        string  `json:"slowest_device"`
	// MaxDrainS is the longest from a station's load end until both hub
	// stores had all of it.
	MaxDrainS float64 `json:"max_drain_s"`
	Gateways  struct {
		CPUS float64 `json:"cpu_s"`
		// CPUMSPer1000 is the gateways' CPU over their whole run, start and
		// drain included, per 1,000 readings sent.
		CPUMSPer1000 float64 `json:"cpu_ms_per_1000_readings"`
		// SteadyCores is the sum of the gateways' steady CPU (a third of
		// the load to its end) in cores; SteadyMSPer1000 the same per
		// 1,000 readings.
		SteadyCores     float64 `json:"steady_cores"`
		SteadyMSPer1000 float64 `json:"steady_cpu_ms_per_1000_readings"`
		MaxRSSMB        float64 `json:"max_rss_mb"`
		MedianRSSMB     float64 `json:"median_rss_mb"`
	} `json:"gateways"`
	// Hub gives each server's CPU over the window.
	Hub []serverUsage `json:"hub"`
	// The simulators, the testbench and the machine: they share its cores
	// with the gateways and the hub.
	Simulators struct {
		CPUS  float64 `json:"cpu_s"`
		Cores float64 `json:"cores"`
	} `json:"simulators"`
	TestbenchCores float64 `json:"testbench_cores"`
	// MachineBusyCores is what every process of the machine used over the
	// window, other people's work included.
	MachineBusyCores float64        `json:"machine_busy_cores"`
	Cores            int            `json:"machine_cores"`
	Note             string         `json:"note"`
	PerStation       []fleetStation `json:"per_station"`
}

// serverUsage is a hub server's CPU over the window.
type serverUsage struct {
	Name string `json:"name"`
	// Cores is -1 for a server restarted within the window.
	Cores        float64 `json:"cores"`
	CPUMSPer1000 float64 `json:"cpu_ms_per_1000_readings"`
}

// fleetStation is one station's part of the report.
type fleetStation struct {
	ID             string   `json:"id"`
	Type           string   `json:"type"`
	Broker         string   `json:"broker"`
	Devices        int      `json:"devices"`
	Sent           int      `json:"sent"`
	AtHubMQTT      int      `json:"at_hub_mqtt"`
	InInflux       int      `json:"in_influx"`
	Duplicates     int      `json:"duplicates"`
	EventsServed   int      `json:"events_served"`
	EventsAtHub    int      `json:"events_at_hub"`
	MinPollPercent float64  `json:"min_poll_percent"`
	DrainS         float64  `json:"drain_s"`
	GatewayCPUS    float64  `json:"gateway_cpu_s"`
	GatewayRSSMB   float64  `json:"gateway_max_rss_mb"`
	SimCPUS        float64  `json:"simulator_cpu_s"`
	Pass           bool     `json:"pass"`
	Failures       []string `json:"failures,omitempty"`
}

// cmdFleet is `testbench run fleet`: a real Mosquitto and InfluxDB on this
// machine, and the fleet against them.
func cmdFleet(ctx context.Context, args []string, log *slog.Logger) int {
	fs := flag.NewFlagSet("run fleet", flag.ExitOnError)
	planned, reportPath := fleetFlags(fs, 5, 5*time.Minute)
	fs.Parse(args)
	plan := planned()
	if plan.Stations < 1 || plan.Duration <= 0 {
		fmt.Fprintln(os.Stderr, "run fleet: -stations must be at least 1 and -duration positive")
		return 2
	}
	work, err := os.MkdirTemp("", "outpost-fleet-")
	if err != nil {
		log.Error("fleet", "err", err)
		return 2
	}
	rep, err := runFleetHub(ctx, plan, work, log)
	if !rep.settle(err, work, *reportPath, &rep, log) {
		return 2
	}
	printFleet(os.Stdout, rep)
	if !rep.Pass {
		return 1
	}
	return 0
}

// fleetFlags defines the flags of a fleet command on fs, with its
// defaults of stations and duration: the plan they give once parsed, and
// where the report goes.
func fleetFlags(fs *flag.FlagSet, stations int, duration time.Duration) (plan func() fleetPlan, report *string) {
	n := fs.Int("stations", stations, "how many stations, cycling through the five station types")
	d := fs.Duration("duration", duration, "how long the load lasts")
	drain := fs.Duration("drain", time.Minute, "longest wait, per station, for the hub to have everything after the load")
	minPoll := fs.Float64("min-poll", 90, "least share (percent) of its configured poll rate every polled device must get")
	report = fs.String("report", "", "write the JSON report to this file")
	return func() fleetPlan {
		return fleetPlan{Stations: *n, Duration: *d, Drain: *drain, MinPollPercent: *minPoll}
	}, report
}

// settle ends a fleet command's run (see settleRun); report is the whole
// report, of which rep is the fleet's part.
func (rep *fleetReport) settle(err error, work, path string, report any, log *slog.Logger) bool {
	return settleRun(err, &rep.Pass, &rep.Failures, work, path, report, log)
}

// settleRun ends a run of a fleet command or of the bench: an error fails
// it, its files are kept when it failed and removed when it passed, and
// report is written to path when there is one. False when it could not be
// written.
func settleRun(err error, pass *bool, failures *[]string, work, path string, report any, log *slog.Logger) bool {
	if err != nil {
		*failures = append(*failures, err.Error())
		*pass = false
	}
	if *pass {
		os.RemoveAll(work)
	} else {
		log.Info("run files kept", "dir", work)
	}
	if path == "" {
		return true
	}
	b, _ := json.MarshalIndent(report, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		log.Error("report", "err", err)
		return false
	}
	return true
}

// runFleetHub starts one Mosquitto and one InfluxDB in work and runs the
// fleet against them.
func runFleetHub(ctx context.Context, plan fleetPlan, work string, log *slog.Logger) (fleetReport, error) {
	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		return fleetReport{}, err
	}
	defer mq.Stop()
	in, err := hub.StartInflux(ctx, filepath.Join(work, "influx"), log)
	if err != nil {
		return fleetReport{}, err
	}
	defer in.Stop()
	h := fleetHub{Brokers: []string{mq.URL()}, Influx: in,
		Servers: []hubServer{{"mosquitto", mq.Pid}, {"influxd", in.Pid}}}
	return runFleet(ctx, plan, h, work, log)
}

// fleetMember is one station of the fleet and the runner that runs it.
type fleetMember struct {
	r      *runner
	typ    string
	broker string
	out    io.Closer
	err    error         // of its run
	drain  time.Duration // from its load end to everything at the hub
	rss    float64
	gwCPU  time.Duration
	simCPU time.Duration
}

// runFleet runs plan's stations against h, their files in work, and
// reports.
func runFleet(ctx context.Context, plan fleetPlan, h fleetHub, work string, log *slog.Logger) (rep fleetReport, err error) {
	rep.Stations, rep.ByType, rep.Cores = plan.Stations, map[string]int{}, runtime.NumCPU()
	rep.Note = "the simulators and the testbench share the machine with the gateways and the hub: their CPU is reported, and every figure is of this machine as a whole"
	rep.LoadAvgBefore = loadAvg()
	if len(h.Brokers) == 0 {
		return rep, errors.New("fleet: no broker")
	}
	sub := h.Subscriber
	if sub == "" {
		sub = h.Brokers[0]
	}
	members := make([]*fleetMember, plan.Stations)
	defer func() {
		for _, m := range members {
			if m == nil {
				continue
			}
			m.r.sim.kill()
			m.r.gw.kill()
			if m.r.col != nil {
				m.r.col.close()
			}
			m.out.Close()
		}
	}()
	for i := range members {
		m, err := newFleetMember(ctx, i, plan, h, sub, work, log)
		if err != nil {
			return rep, err
		}
		members[i] = m
		rep.ByType[m.typ]++
		rep.Devices += len(m.r.st.Devices)
		for _, d := range m.r.st.Devices {
			if p, ok := d.Settings.(configs.Poller); ok && p.PollEvery() > 0 {
				rep.PollsPerS += 1 / p.PollEvery().Seconds()
			}
		}
	}
	log.Info("fleet starts", "stations", plan.Stations, "devices", rep.Devices, "duration", plan.Duration)

	// Every station runs as a steady scenario would: its load, then its
	// drain, then its gateway stops.
	launch := time.Now()
	var wg sync.WaitGroup
	for _, m := range members {
		wg.Go(func() { m.run(ctx) })
	}
	window, werr := fleetWindow(ctx, plan, h, members, launch, log)
	wg.Wait()
	if werr != nil {
		rep.Failures = append(rep.Failures, werr.Error())
	}
	rep.LoadAvgAfter = window.loadAfter
	rep.sum(members, plan, window)
	rep.Pass = len(rep.Failures) == 0
	return rep, nil
}

// newFleetMember prepares station i: profile i mod 5, its own id, work
// directory, ports, serial ports, broker and subscriber.
func newFleetMember(ctx context.Context, i int, plan fleetPlan, h fleetHub, sub, work string, log *slog.Logger) (*fleetMember, error) {
	profile := fleetProfiles[i%len(fleetProfiles)]
	sc := &Scenario{Name: profile, Station: profile, Duration: plan.Duration, Drain: plan.Drain, Seed: uint64(i + 1),
		Expect: Expect{Lost: "none", Events: "exact", MinPollPercent: plan.MinPollPercent}}
	spec, err := sc.stationSpec()
	if err != nil {
		return nil, err
	}
	doc, err := outlineOf(spec.Src)
	if err != nil {
		return nil, fmt.Errorf("fleet: %s: %w", profile, err)
	}
	prefix, _, _ := strings.Cut(doc.Station.ID, "-")
	spec.ID = fmt.Sprintf("%s-f%04d", prefix, i+1)
	sc.Name = spec.ID
	r := newRunner(sc, log.With("station", spec.ID))
	r.influx = h.Influx
	r.work = filepath.Join(work, spec.ID)
	if err := os.MkdirAll(r.work, 0o755); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	out, err := logWriter(log, filepath.Join(r.work, "processes.log"))
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	m := &fleetMember{r: r, typ: doc.Station.Type, broker: h.Brokers[i%len(h.Brokers)], out: out}
	r.out = out
	addrs := hubAddrs{MQTT: m.broker, Influx: h.Influx.URL(), DB: h.Influx.Database()}
	if h.Cluster {
		n := len(h.Brokers)
		addrs.MQTTURLs = append(slices.Clone(h.Brokers[i%n:]), h.Brokers[:i%n]...)
	}
	r.station, r.st, err = prepareStation(spec, r.work, addrs)
	if err != nil {
		out.Close()
		return nil, fmt.Errorf("fleet: %s: %w", spec.ID, err)
	}
	if r.col, err = collect(ctx, sub, r.st, nil); err != nil {
		out.Close()
		return nil, fmt.Errorf("fleet: %s: %w", spec.ID, err)
	}
	return m, nil
}

// run runs the station: its load, its drain, its gateway's stop.
func (m *fleetMember) run(ctx context.Context) {
	r := m.r
	m.err = r.load(ctx)
	if m.err == nil {
		m.err = r.collectUntilDrained(ctx)
		m.drain = time.Since(r.loadEnd)
	}
	if err := r.gw.stop(15 * time.Second); err != nil {
		r.fail("%v", err)
	}
	m.gwCPU, m.rss = r.gw.usage()
	m.simCPU, _ = r.sim.usage()
}

// fleetWindowed is what the fleet measured while every station ran.
type fleetWindowed struct {
	seconds      float64
	mqtt, influx float64 // readings/s at each hub store
	influxN      int     // stations counted in influx
	servers      []serverUsage
	serverCPU    []time.Duration
	testbench    float64 // cores
	busy         float64 // cores, the whole machine
	loadAfter    [3]float64
}

// fleetWindow waits until every gateway runs, then counts what reaches the
// hub, and what the hub's servers, the testbench and the machine use, from
// a warm-up later until just before the first station's load can end. It
// runs plan.During meanwhile.
func fleetWindow(ctx context.Context, plan fleetPlan, h fleetHub, members []*fleetMember, launch time.Time, log *slog.Logger) (w fleetWindowed, err error) {
	end := launch.Add(plan.Duration) // no station's load ends before
	defer func() {
		sleepCtx(ctx, time.Until(end))
		w.loadAfter = loadAvg()
	}()
	upCtx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	for _, m := range members {
		if _, err := statusAddr(upCtx, m.r.st, time.Time{}); err != nil {
			return w, fmt.Errorf("fleet: %s: %w", m.r.st.Station.ID, err)
		}
	}
	up := time.Now()
	log.Info("every gateway runs", "after", up.Sub(launch).Round(time.Millisecond))
	during := make(chan error, 1)
	if plan.During != nil {
		go func() { during <- plan.During(upCtx) }()
	} else {
		during <- nil
	}
	from := up.Add(min(plan.Duration/10, 30*time.Second))
	to := end.Add(-2 * time.Second)
	if !to.After(from) {
		return w, errors.Join(<-during, fmt.Errorf("fleet: the gateways took %s to start, too long for a %s load to be measured", up.Sub(launch), plan.Duration))
	}
	if err := sleepCtx(ctx, time.Until(from)); err != nil {
		return w, err
	}
	a := sampleFleet(ctx, h, members, true)
	if err := sleepCtx(ctx, time.Until(to)); err != nil {
		return w, err
	}
	b := sampleFleet(ctx, h, members, false)
	w.seconds = b.at.Sub(a.at).Seconds()
	w.mqtt = float64(b.mqtt-a.mqtt) / w.seconds
	for i := range members {
		if dt := b.influxAt[i].Sub(a.influxAt[i]).Seconds(); dt > 0 && a.influxAt[i] != (time.Time{}) {
			w.influx += float64(b.influx[i]-a.influx[i]) / dt
			w.influxN++
		}
	}
	for i, s := range h.Servers {
		u := serverUsage{Name: s.Name, Cores: -1}
		if pct := percentOf(a.servers[i], b.servers[i]); pct >= 0 {
			u.Cores = pct / 100
		}
		w.servers = append(w.servers, u)
	}
	if pct := percentOf(a.self, b.self); pct >= 0 {
		w.testbench = pct / 100
	}
	w.busy = b.busy.since(a.busy)
	return w, <-during
}

// fleetSample is the counters of a moment.
type fleetSample struct {
	at       time.Time
	mqtt     int         // readings at the hub's broker, every station's
	influx   []int       // each station's readings in InfluxDB
	influxAt []time.Time // when each was counted
	servers  []cpuSample
	self     cpuSample
	busy     machineCPU
}

// sampleFleet counts what each station has in InfluxDB, and takes the
// other counters in one moment: after the counts at the window's start
// (first), before them at its end, so that the CPU the counting costs
// InfluxDB and the testbench stays out of the window.
func sampleFleet(ctx context.Context, h fleetHub, members []*fleetMember, first bool) fleetSample {
	s := fleetSample{influx: make([]int, len(members)), influxAt: make([]time.Time, len(members))}
	counters := func() {
		s.at, s.self, s.busy = time.Now(), cpuOf(os.Getpid()), readMachineCPU()
		for _, srv := range h.Servers {
			s.servers = append(s.servers, cpuOf(srv.Pid()))
		}
		for _, m := range members {
			s.mqtt += m.r.col.counts().Readings
		}
	}
	if !first {
		counters()
	}
	for i, m := range members {
		for range 3 { // a busy InfluxDB may time out a count
			t := time.Now()
			if n, _, err := m.r.influxReadings(ctx, false); err == nil {
				s.influx[i], s.influxAt[i] = n, t.Add(time.Since(t)/2)
				break
			}
		}
	}
	if first {
		counters()
	}
	return s
}

// sum fills in the report from the stations' runs and the window.
func (rep *fleetReport) sum(members []*fleetMember, plan fleetPlan, w fleetWindowed) {
	var rss []float64
	minPoll := -1.0
	for _, m := range members {
		r := m.r
		if m.err != nil {
			r.fail("%v", m.err)
		}
		rd := r.report.Readings
		s := fleetStation{ID: r.st.Station.ID, Type: m.typ, Broker: m.broker, Devices: len(r.st.Devices),
			Sent: rd.Sent, AtHubMQTT: rd.AtHubMQTT, InInflux: rd.InInflux, Duplicates: rd.Duplicates,
			EventsServed: r.report.Events.Served, EventsAtHub: r.report.Events.AtHub, DrainS: m.drain.Seconds(),
			GatewayCPUS: m.gwCPU.Seconds(), GatewayRSSMB: m.rss, SimCPUS: m.simCPU.Seconds(),
			Failures: r.report.Failures, Pass: len(r.report.Failures) == 0}
		if p := r.report.Polls; p != nil {
			s.MinPollPercent = p.MinPercent
			if minPoll < 0 || p.MinPercent < minPoll {
				minPoll, rep.Slowest = p.MinPercent, s.ID+"/"+p.Slowest
			}
		}
		rep.PerStation = append(rep.PerStation, s)
		for _, f := range s.Failures {
			rep.Failures = append(rep.Failures, s.ID+": "+f)
		}
		rep.Readings.Sent += rd.Sent
		rep.Readings.AtHubMQTT += rd.AtHubMQTT
		rep.Readings.InInflux += rd.InInflux
		rep.Readings.LostMQTT += rd.LostMQTT
		rep.Readings.LostInflux += rd.LostInflux
		rep.Readings.Duplicates += rd.Duplicates
		rep.Events.Served += s.EventsServed
		rep.Events.AtHub += s.EventsAtHub
		// The load: from the gateway's start until the devices went deaf.
		if d := r.deafAt.Sub(r.gwStart).Seconds(); d > 0 {
			rep.Rates.Sent += float64(rd.Sent) / d
			rep.DurationS = max(rep.DurationS, d)
		}
		rep.MaxDrainS = max(rep.MaxDrainS, s.DrainS)
		rep.Gateways.CPUS += s.GatewayCPUS
		if p := r.report.Gateway.SteadyCPUPercent; p != nil {
			rep.Gateways.SteadyCores += *p / 100
		}
		rss = append(rss, m.rss)
		rep.Simulators.CPUS += s.SimCPUS
	}
	rep.MinPollPercent = max(minPoll, 0)
	if rep.Readings.Sent > 0 {
		rep.Gateways.CPUMSPer1000 = 1e6 * rep.Gateways.CPUS / float64(rep.Readings.Sent)
	}
	if rep.Rates.Sent > 0 {
		rep.Gateways.SteadyMSPer1000 = 1e6 * rep.Gateways.SteadyCores / rep.Rates.Sent
	}
	if len(rss) > 0 {
		slices.Sort(rss)
		rep.Gateways.MaxRSSMB, rep.Gateways.MedianRSSMB = rss[len(rss)-1], rss[len(rss)/2]
	}
	if rep.DurationS > 0 {
		rep.Simulators.Cores = rep.Simulators.CPUS / rep.DurationS
	}
	rep.Rates.WindowS, rep.Rates.HubMQTT, rep.Rates.HubInflux, rep.Rates.InfluxStations = w.seconds, w.mqtt, w.influx, w.influxN
	rep.MinPollWanted = plan.MinPollPercent
	rep.PollsHeld = plan.MinPollPercent <= 0 || minPoll >= plan.MinPollPercent
	rep.NothingLost = rep.Readings.Sent > 0 && rep.Readings.LostMQTT+rep.Readings.LostInflux == 0 && rep.Events.AtHub == rep.Events.Served
	for _, m := range members {
		if m.err != nil {
			rep.NothingLost = false
		}
	}
	for _, u := range w.servers {
		if u.Cores >= 0 && w.mqtt > 0 {
			u.CPUMSPer1000 = 1e6 * u.Cores / w.mqtt
		}
		rep.Hub = append(rep.Hub, u)
	}
	rep.TestbenchCores, rep.MachineBusyCores = w.testbench, w.busy
}

// printFleet prints the report as tables.
func printFleet(out io.Writer, rep fleetReport) {
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "station\ttype\tdevices\tsent\tat mqtt\tin influx\tdup\tevents\tmin poll %\tdrain s\tgw cpu s\tgw rss MB\tsim cpu s\t")
	for _, s := range rep.PerStation {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d/%d\t%.1f\t%.1f\t%.2f\t%.1f\t%.2f\t\n", s.ID, s.Type, s.Devices, s.Sent, s.AtHubMQTT,
			s.InInflux, s.Duplicates, s.EventsAtHub, s.EventsServed, s.MinPollPercent, s.DrainS, s.GatewayCPUS, s.GatewayRSSMB, s.SimCPUS)
	}
	tw.Flush()
	fmt.Fprintln(out)
	verdict := "PASS"
	if !rep.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "%s fleet: %d stations × %d devices, %.1f configured polls/s, %.0f s of load (load average before %.2f %.2f %.2f, at its end %.2f %.2f %.2f)\n",
		verdict, rep.Stations, rep.Devices, rep.PollsPerS, rep.DurationS,
		rep.LoadAvgBefore[0], rep.LoadAvgBefore[1], rep.LoadAvgBefore[2], rep.LoadAvgAfter[0], rep.LoadAvgAfter[1], rep.LoadAvgAfter[2])
	rd := rep.Readings
	yes := map[bool]string{true: "yes", false: "NO"}
	fmt.Fprintf(out, "  nothing lost: %s; every device at %.0f%% of its poll rate or more: %s\n", yes[rep.NothingLost], rep.MinPollWanted, yes[rep.PollsHeld])
	fmt.Fprintf(out, "  readings: sent %d, at hub mqtt %d, in influx %d, lost %d + %d, duplicates %d; events %d of %d; lowest poll rate %.1f%% (%s); longest drain %.1f s\n",
		rd.Sent, rd.AtHubMQTT, rd.InInflux, rd.LostMQTT, rd.LostInflux, rd.Duplicates, rep.Events.AtHub, rep.Events.Served, rep.MinPollPercent, rep.Slowest, rep.MaxDrainS)
	tw = tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  stations × devices\tpolls/s\tlowest poll %\treadings/s sent\thub ingest mqtt/s\thub ingest influx/s\tgw cpu ms/1000 readings (steady)\tgw rss MB max/median\t")
	fmt.Fprintf(tw, "  %d × %d\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f (%.1f)\t%.1f / %.1f\t\n", rep.Stations, rep.Devices, rep.PollsPerS, rep.MinPollPercent, rep.Rates.Sent,
		rep.Rates.HubMQTT, rep.Rates.HubInflux, rep.Gateways.CPUMSPer1000, rep.Gateways.SteadyMSPer1000, rep.Gateways.MaxRSSMB, rep.Gateways.MedianRSSMB)
	tw.Flush()
	fmt.Fprintf(out, "  cores used over the %.0f s window (of %d): gateways %.2f (steady; %.3f each)", rep.Rates.WindowS, rep.Cores,
		rep.Gateways.SteadyCores, rep.Gateways.SteadyCores/float64(max(rep.Stations, 1)))
	for _, u := range rep.Hub {
		if u.Cores < 0 { // restarted meanwhile: not one process over the window
			fmt.Fprintf(out, ", %s restarted", u.Name)
			continue
		}
		fmt.Fprintf(out, ", %s %.2f", u.Name, u.Cores)
	}
	fmt.Fprintf(out, ", simulators %.2f, testbench %.2f; the machine %.2f (everyone's)\n", rep.Simulators.Cores, rep.TestbenchCores, rep.MachineBusyCores)
	fmt.Fprintf(out, "  note: %s\n", rep.Note)
	for _, f := range rep.Failures {
		fmt.Fprintf(out, "  failure: %s\n", f)
	}
}

// loadAvg is the machine's load average over 1, 5 and 15 minutes.
func loadAvg() [3]float64 {
	var l [3]float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscan(string(b), &l[0], &l[1], &l[2])
	}
	return l
}

// machineCPU is the machine's CPU time from /proc/stat, in clock ticks.
type machineCPU struct{ busy, total int64 }

func readMachineCPU() machineCPU {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machineCPU{}
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var c machineCPU
	for i, v := range f[1:] {
		var n int64
		fmt.Sscan(v, &n)
		if i >= 8 { // guest times are counted in user and nice already
			break
		}
		c.total += n
		if i != 3 && i != 4 { // idle, iowait
			c.busy += n
		}
	}
	return c
}

// since is the cores busy from a to c.
func (c machineCPU) since(a machineCPU) float64 {
	if c.total <= a.total {
		return 0
	}
	return float64(runtime.NumCPU()) * float64(c.busy-a.busy) / float64(c.total-a.total)
}
