package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.yaml.in/yaml/v3"

	"outpost/configs"
	"outpost/configs/dcon"
	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/drivers/modbus"
	"outpost/gateway/model"
	"outpost/gateway/status"
	"outpost/testbench/hub"
)

// Scenario is one testbench/scenarios/*.yaml file.
type Scenario struct {
	Name        string `yaml:"scenario"`
	Description string `yaml:"description"`
	// Solo scenarios run alone in "run all": their figures (CPU, drain
	// rates, latencies, poll rates) or timing bounds need the machine to
	// themselves. The others run two at a time.
	Solo bool `yaml:"solo"`
	// Soak scenarios are too long for "run all" (make test's 15 minutes):
	// make soak runs them by name.
	Soak bool `yaml:"soak"`
	// Station is an embedded station file, e.g. police-room.yaml, or
	// StationFile one of the testbench's own, relative to the scenario's
	// folder, e.g. stations/dead-unit.yaml.
	Station     string         `yaml:"station"`
	StationFile string         `yaml:"station_file"`
	Duration    time.Duration  `yaml:"duration"` // of load
	Drain       time.Duration  `yaml:"drain"`    // longest wait for the hub to have everything
	Queue       map[string]any `yaml:"queue"`    // overrides the station's queue section
	Poll        time.Duration  `yaml:"poll"`     // overrides every device's poll interval
	// AlarmPoll overrides every Modbus device's alarm_poll; 0s turns the
	// alarm polls off, so that every reading is counted: a scenario that
	// holds the readings lost to what the gateway reports needs that (what
	// an alarm poll reads is published only when it changed).
	AlarmPoll *time.Duration `yaml:"alarm_poll"`
	Links     map[string]any `yaml:"links"`  // settings given to every Modbus link, e.g. timeout
	MQTT      map[string]any `yaml:"mqtt"`   // settings given to the station's hub.mqtt, e.g. max_packet_size
	Health    map[string]any `yaml:"health"` // replaces the station's health section, e.g. report_every
	Faults    []Fault        `yaml:"faults"`
	Seed      uint64         `yaml:"seed"`
	// Silent devices never answer (firmware-sim -silent): the gateway
	// polls them, the simulator serves nothing for them.
	Silent []string `yaml:"silent"`
	// Broker is added to the hub broker's Mosquitto configuration, e.g.
	// "max_packet_size 700".
	Broker string `yaml:"broker"`
	// StateVolume, when set, mounts a tmpfs of that size ("1m") as the
	// gateway's state directory, so that the disk fills; or, when a fault
	// freezes the disk, an ext4 file system of that size on a loop device
	// (see disk.go). Needs root.
	StateVolume string `yaml:"state_volume"`
	// InfluxWrite is line protocol written to the hub's InfluxDB before
	// the station starts, as if another station had written it: a point
	// that gives a field another type makes InfluxDB refuse the station's.
	InfluxWrite string `yaml:"influx_write"`
	// Backlog is how many readings an outage left queued before the
	// gateway starts; the report then gives the drain rate.
	Backlog int `yaml:"backlog"`
	// HubRate, when set, is how many bytes a second each of the
	// station's paths to the hub (to its broker, to its InfluxDB)
	// carries, each way: a slow link.
	HubRate int64 `yaml:"hub_rate"`
	// Alarms are raised through the simulator during the load.
	Alarms *AlarmPlan `yaml:"alarms"`
	// Desk sends the duty desk's commands during the load.
	Desk *DeskPlan `yaml:"desk"`
	// Loop answers the kiosks' service requests as the city brain does.
	Loop *LoopPlan `yaml:"loop"`
	// Noise is the share of bytes corrupted on the serial lines, both
	// directions (firmware-sim -noise).
	Noise float64 `yaml:"noise"`
	// OtherMaster puts another master on every Modbus RTU bus, reading a
	// register of its lowest unit this often (firmware-sim -other-master).
	OtherMaster time.Duration `yaml:"other_master"`
	Expect      Expect        `yaml:"expect"`
}

// Expect says what the scenario must show.
type Expect struct {
	// Lost is "none" (the default): every reading sent arrives at both hub
	// stores; "reported": the readings missing at each store are exactly
	// those the gateway reported not delivering: dropped (queue_drops, at
	// its queue cap or on a full disk) or refused by the hub and set aside
	// (messages_rejected);
	// "within-reported": at most those, once the gateway's queues are
	// empty, for a station whose alarm inputs' readings, which the
	// testbench does not count (see tally), are dropped with the rest;
	// "destroyed": exactly those in queue data the scenario destroyed;
	// "damaged": any number, as readings a damaged line ate (the
	// simulator counts answers it sent whole, not what reached the
	// gateway whole), but never more than were sent.
	Lost string `yaml:"lost"`
	// Events is "exact" (the default): every event edge the simulator
	// served arrives once; "at-least": a restarted gateway raises the
	// state it finds again; "any": events may be among destroyed data.
	Events string `yaml:"events"`
	// Drained: by the end of the drain, the gateway's queues must also
	// hold nothing queued before the load's end. The hub can hold every
	// reading while the gateway still queues them: InfluxDB writes a
	// request whose answer the gateway gave up waiting for, and the
	// gateway sends it again, and again.
	Drained bool `yaml:"drained"`
	// MaxRSSMB bounds the gateway's peak resident memory, when set.
	MaxRSSMB float64 `yaml:"max_rss_mb"`
	// MaxSteadyCPUPercent bounds the gateway's steady CPU use, in percent
	// of one core, when set (see Report.Gateway.SteadyCPUPercent).
	MaxSteadyCPUPercent float64 `yaml:"max_steady_cpu_percent"`
	// MinDrainRate is the least readings/s at which the backlog must reach
	// each hub store, when set: the scenario fails below it.
	MinDrainRate float64 `yaml:"min_drain_rate"`
	// TargetDrainRate is the rate the drain is meant to reach; the report
	// says whether both stores did (drain.target_met).
	TargetDrainRate float64 `yaml:"target_drain_rate"`
	// MinPollPercent, when set, is the least share of its configured poll
	// rate that every device not silent must get, counted by the simulator
	// from the gateway's start to the end of the load; the report then
	// gives each device's rate (polls).
	MinPollPercent float64 `yaml:"min_poll_percent"`
	// AlarmP99MS bounds, per source (dc09, dcon), the 99th percentile of
	// the raised alarms' latency to the hub's subscriber.
	AlarmP99MS map[string]float64 `yaml:"alarm_p99_ms"`
	// EventsAfter are events (or health changes) the hub must get soon
	// after a fault.
	EventsAfter []ExpectEvent `yaml:"events_after"`
	// Refused bounds, per device, the counters of what the gateway
	// refused of it (rate_limited, bad_json, refused_topic, ...) in the
	// last health of it at the hub: [least, most] each. Such a device
	// misbehaves on purpose: its readings are left out of the readings
	// held to Lost (see runner.misbehaves).
	Refused map[string]map[string][2]uint64 `yaml:"refused"`
	// Counted bounds, per device, counters in its last health at the
	// hub (other_master, ...): [least, most] each. Unlike Refused, the
	// device's readings are held to Lost.
	Counted map[string]map[string][2]uint64 `yaml:"counted"`
	// ServedValues: every good value at the hub is one the simulator
	// served for that device and signal (none damaged on the way).
	ServedValues bool `yaml:"served_values"`
	// BadFramesCounted lists devices whose health counters at the hub
	// must show damaged frames.
	BadFramesCounted []string `yaml:"bad_frames_counted"`
}

// Fault is an action at a moment of the run. Every: repeat that often until
// the end of the load, Times times at most.
type Fault struct {
	At     time.Duration `yaml:"at"`
	Every  time.Duration `yaml:"every"`
	Times  int           `yaml:"times"`
	Action string        `yaml:"action"` // see runner.inject
	Jitter time.Duration `yaml:"jitter"`
	Down   time.Duration `yaml:"down"` // how long a killed server stays down
	// Device is what action "device" makes a simulated device do.
	Device *DeviceAct `yaml:"device"`
}

// Report is what a run writes, for people and for CI.
type Report struct {
	Scenario string `json:"scenario"`
	// Seed is the scenario's: a run with the same seed makes the same
	// random choices (fault times, alarm moments, simulated signals).
	Seed      uint64   `json:"seed"`
	Pass      bool     `json:"pass"`
	Failures  []string `json:"failures,omitempty"`
	DurationS float64  `json:"duration_s"`
	Readings  struct {
		Sent       int `json:"sent"`
		AtHubMQTT  int `json:"at_hub_mqtt"`
		InInflux   int `json:"in_influx"`
		Lost       int `json:"lost"`
		LostMQTT   int `json:"lost_mqtt"`
		LostInflux int `json:"lost_influx"`
		Duplicates int `json:"duplicates"`
		Historical int `json:"historical"`
		// ByDevice is sent, at_hub_mqtt and in_influx per device.
		ByDevice map[string][3]int `json:"by_device"`
	} `json:"readings"`
	Events struct {
		Served    int            `json:"served"`
		AtHub     int            `json:"at_hub"`
		ByKind    map[string]int `json:"by_kind"`
		MaxLagMS  float64        `json:"max_latency_ms"`
		Gateway   int            `json:"gateway_events"`
		Evaluated string         `json:"expected"`
	} `json:"events"`
	Queue struct {
		DroppedReported   map[string]int `json:"dropped_reported"`
		DamageReported    map[string]int `json:"damage_reported"`
		DestroyedReadings map[string]int `json:"destroyed_readings,omitempty"`
	} `json:"queue"`
	Alarms      *alarmReport `json:"alarms,omitempty"`
	Desk        *deskReport  `json:"duty_desk,omitempty"`
	Loop        *loopReport  `json:"loop,omitempty"`
	EventsAfter []seenAfter  `json:"events_after,omitempty"`
	// WrongGoodValues counts good values at the hub the simulator never
	// served; BadFrames the damaged frames devices counted.
	WrongGoodValues int      `json:"wrong_good_values"`
	BadFrames       []string `json:"bad_frames,omitempty"`
	// Refused and Counted are the counters the scenario bounds (see
	// Expect).
	Refused []string     `json:"refused,omitempty"`
	Counted []string     `json:"counted,omitempty"`
	Drain   *drainReport `json:"drain,omitempty"`
	Polls   *pollReport  `json:"polls,omitempty"`
	Health  int          `json:"health_messages"`
	Faults  []string     `json:"faults,omitempty"`
	Gateway struct {
		CPUS     float64 `json:"cpu_s"`
		MaxRSSMB float64 `json:"max_rss_mb"`
		// SteadyCPUPercent is the share of one core the gateway used from
		// a third of the load to its end, past its start; absent when the
		// gateway was restarted meanwhile.
		SteadyCPUPercent *float64 `json:"steady_cpu_percent,omitempty"`
		Restarts         int      `json:"restarts"`
	} `json:"gateway"`
	// Timeline is the run over time, for the HTML report (timeline.go).
	Timeline *Timeline `json:"timeline,omitempty"`
}

func loadScenario(name string) (*Scenario, error) {
	path := name
	if !strings.ContainsAny(name, "/.") {
		path = filepath.Join(scenarioDir(), name+".yaml")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var sc Scenario
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&sc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if (sc.Station == "") == (sc.StationFile == "") || sc.Duration <= 0 {
		return nil, fmt.Errorf("%s: a scenario needs a station (or a station_file) and a duration", path)
	}
	if sc.StationFile != "" && !filepath.IsAbs(sc.StationFile) {
		sc.StationFile = filepath.Join(filepath.Dir(path), sc.StationFile)
	}
	if sc.Drain == 0 {
		sc.Drain = 60 * time.Second
	}
	if sc.Expect.Lost == "" {
		sc.Expect.Lost = "none"
	}
	if sc.Expect.Events == "" {
		sc.Expect.Events = "exact"
	}
	if !slices.Contains([]string{"none", "reported", "within-reported", "destroyed", "damaged"}, sc.Expect.Lost) ||
		!slices.Contains([]string{"exact", "at-least", "any"}, sc.Expect.Events) {
		return nil, fmt.Errorf("%s: expect.lost is none, reported, within-reported, destroyed or damaged; expect.events is exact, at-least or any", path)
	}
	spec, err := sc.stationSpec()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	outline, err := outlineOf(spec.Src)
	if err == nil {
		err = sc.validate(outline.deviceIDs())
	}
	if err != nil {
		return nil, fmt.Errorf("%s:\n%w", path, err)
	}
	return &sc, nil
}

// scenarioDir is testbench/scenarios of the source tree the binary was built
// in (bin/ sits at the top of it), or of the working directory.
func scenarioDir() string {
	for _, d := range []string{filepath.Join(binDir(), "..", "testbench", "scenarios"), filepath.Join("testbench", "scenarios")} {
		if _, err := os.Stat(d); err == nil {
			return d
		}
	}
	return filepath.Join("testbench", "scenarios")
}

// runner holds the parts of one run.
type runner struct {
	sc      *Scenario
	log     *slog.Logger
	out     io.Writer
	work    string
	station string
	st      *configs.Station
	mqtt    *hub.Mosquitto
	influx  *hub.Influx
	sim     *proc
	gw      *proc
	col     *collector
	report  Report
	rng     *rand.Rand

	gwStart     time.Time
	control     string                    // the simulator's control API, host:port
	watcher     *proc                     // the alarm watcher (see watch.go)
	watched     *watched                  // what it saw, once read
	paths       []*hub.Path               // the network between station and hub, when the scenario cuts it
	hearing     sync.RWMutex              // held by a gateway's kill while the devices are deaf
	deafAt      time.Time                 // when the devices went deaf at the end of the load
	desk        []deskCommand             // the duty desk's commands sent, in order
	brain       *cityBrain                // answers the kiosks' requests, when the scenario has a loop
	deskAgain   int                       // and how many were sent again
	deskResent  map[string]int            // id -> times sent again
	simStats    simStats                  // the simulator's counters at its end
	loadEnd     time.Time                 // when the simulator stopped
	faultAt     []time.Time               // when each fault of the scenario first ran, by index
	destroyed   map[string]map[string]int // uplink -> message id -> readings, destroyed by a power cut
	unmount     string                    // the state volume mounted for the run, if any
	loop        string                    // its loop device, when it can be frozen
	frozen      bool                      // the state volume is frozen (freeze-disk)
	sentBy      map[string]int            // device -> readings the simulator served
	drainDone   chan struct{}             // closed when watchDrain ends
	backlogLast model.Message             // the last message of the backlog, when there is one
	tl          recorder                  // the run's timeline
}

func runScenario(ctx context.Context, sc *Scenario, log *slog.Logger) (rep Report, err error) {
	start := time.Now()
	r := newRunner(sc, log)
	r.work, err = os.MkdirTemp("", "outpost-"+sc.Name+"-")
	if err != nil {
		return r.report, err
	}
	defer func() {
		if err == nil && r.report.Pass {
			os.RemoveAll(r.work)
		} else {
			log.Info("run files kept", "dir", r.work)
			for _, l := range warnings(filepath.Join(r.work, "processes.log"), 20) {
				log.Info("the run's processes warned", "line", l)
			}
		}
	}()
	out, err := logWriter(log, filepath.Join(r.work, "processes.log"))
	if err != nil {
		return r.report, err
	}
	defer out.Close()
	r.out = out
	defer r.shutdown()
	defer func() { rep.Timeline = r.tl.finish(r.loadEnd) }()

	if err := r.startHub(ctx); err != nil {
		return r.report, err
	}
	if err := r.load(ctx); err != nil {
		return r.report, err
	}
	if err := r.collectUntilDrained(ctx); err != nil {
		return r.report, err
	}
	r.tl.stop() // the timeline ends with the drain
	if err := r.gw.stop(15 * time.Second); err != nil {
		r.fail("%v", err)
	}
	cpu, rss := r.gw.usage()
	r.report.Gateway.CPUS, r.report.Gateway.MaxRSSMB = cpu.Seconds(), rss
	if m := r.sc.Expect.MaxRSSMB; m > 0 && rss > m {
		r.fail("the gateway's peak RSS was %.1f MB, above %.0f MB", rss, m)
	}
	r.report.DurationS = time.Since(start).Seconds()
	r.report.Pass = len(r.report.Failures) == 0
	return r.report, nil
}

// newRunner is the runner of a scenario, before anything starts.
func newRunner(sc *Scenario, log *slog.Logger) *runner {
	r := &runner{sc: sc, log: log, sim: &proc{name: "firmware-sim"}, gw: &proc{name: "gateway"},
		rng: rand.New(rand.NewPCG(sc.Seed, 42)), destroyed: map[string]map[string]int{}}
	r.report.Scenario, r.report.Seed = sc.Name, sc.Seed
	return r
}

func (r *runner) fail(format string, args ...any) {
	r.report.Failures = append(r.report.Failures, fmt.Sprintf(format, args...))
}

func (r *runner) startHub(ctx context.Context) error {
	var err error
	if r.mqtt, err = hub.StartMosquittoWith(ctx, filepath.Join(r.work, "mosquitto"), r.log, hub.MosquittoOptions{Config: r.sc.Broker + "\n", NoAutosave: !r.sc.killsBroker()}); err != nil {
		return err
	}
	if r.sc.StateVolume != "" {
		if err := r.mountState(filepath.Join(r.work, "state")); err != nil {
			return err
		}
	}
	if r.influx, err = hub.StartInflux(ctx, filepath.Join(r.work, "influx"), r.log); err != nil {
		return err
	}
	if r.sc.InfluxWrite != "" {
		if err := r.influx.Write(ctx, r.sc.InfluxWrite); err != nil {
			return err
		}
	}
	spec, err := r.sc.stationSpec()
	if err != nil {
		return err
	}
	addrs := hubAddrs{MQTT: r.mqtt.URL(), Influx: r.influx.URL(), DB: r.influx.Database()}
	if r.sc.partitions() || r.sc.HubRate > 0 {
		if addrs, err = r.pathsToHub(ctx, addrs); err != nil {
			return err
		}
	}
	r.station, r.st, err = prepareStation(spec, r.work, addrs)
	if err != nil {
		return err
	}
	if r.col, err = collect(ctx, r.mqtt.URL(), r.st, r.tl.observe); err != nil {
		return err
	}
	return r.startWatcher(ctx)
}

// load runs the simulator and the gateway for the scenario's duration,
// injecting its faults, then stops the simulator.
func (r *runner) load(ctx context.Context) error {
	args := []string{"-config", r.station, "-stats", r.statsFile(), "-seed", fmt.Sprint(r.sc.Seed),
		"-control", "127.0.0.1:0", "-raised", r.raisedFile(), "-noise", fmt.Sprint(r.sc.Noise),
		"-other-master", r.sc.OtherMaster.String()}
	if len(r.sc.Silent) > 0 {
		args = append(args, "-silent", strings.Join(r.sc.Silent, ","))
	}
	if r.sc.Expect.ServedValues {
		args = append(args, "-served", r.servedFile())
		r.col.keepGoodValues()
	}
	if r.sc.Loop != nil {
		args = append(args, "-statuses", r.statusesFile())
	}
	if err := r.sim.start(ctx, r.out, "firmware-sim ready", args...); err != nil {
		return err
	}
	r.control = r.sim.control()
	if r.sc.Backlog > 0 {
		n, last, err := prefill(r.st, r.sc.Backlog, r.log)
		if err != nil {
			return err
		}
		r.report.Drain = &drainReport{Backlog: n}
		r.backlogLast = last
		r.log.Info("backlog queued", "readings", n)
	}
	r.gwStart = time.Now()
	r.tl.begin(ctx, r.gwStart, r.probe(), r.log)
	if err := r.startGateway(ctx); err != nil {
		return err
	}
	if err := r.startLoop(ctx); err != nil {
		return err
	}
	if r.report.Drain != nil {
		r.drainDone = make(chan struct{})
		go func() {
			defer close(r.drainDone)
			r.watchDrain(ctx)
		}()
	}
	alarmsDone, deskDone := make(chan error, 1), make(chan error, 1)
	go func() { alarmsDone <- r.raiseAlarms(ctx) }()
	go func() { deskDone <- r.runDesk(ctx) }()
	begin := time.Now()
	steady := make(chan cpuSample, 1)
	go func() {
		if sleepCtx(ctx, time.Until(begin.Add(r.sc.Duration/3))) == nil {
			steady <- r.gw.cpuNow()
		}
	}()
	type due struct {
		at    time.Duration
		f     Fault
		index int
	}
	var plan []due
	r.faultAt = make([]time.Time, len(r.sc.Faults))
	for fi, f := range r.sc.Faults {
		for i := 0; i < max(f.Times, 1); i++ {
			at := f.At + time.Duration(i)*f.Every
			if f.Jitter > 0 {
				at += time.Duration(r.rng.Int64N(int64(f.Jitter)))
			}
			if at < r.sc.Duration {
				plan = append(plan, due{at, f, fi})
			}
		}
	}
	sort.SliceStable(plan, func(i, j int) bool { return plan[i].at < plan[j].at })
	for _, d := range plan {
		if err := sleepCtx(ctx, time.Until(begin.Add(d.at))); err != nil {
			return err
		}
		r.report.Faults = append(r.report.Faults, fmt.Sprintf("%.1fs %s", time.Since(begin).Seconds(), d.f.Action))
		if r.faultAt[d.index].IsZero() {
			r.faultAt[d.index] = time.Now()
		}
		mark := r.tl.faultStarts(d.f)
		if err := r.inject(ctx, d.f); err != nil {
			return fmt.Errorf("fault %s: %w", d.f.Action, err)
		}
		r.tl.faultDone(mark)
	}
	if err := sleepCtx(ctx, time.Until(begin.Add(r.sc.Duration))); err != nil {
		return err
	}
	if pct := percentOf(<-steady, r.gw.cpuNow()); pct >= 0 {
		r.report.Gateway.SteadyCPUPercent = &pct
		if m := r.sc.Expect.MaxSteadyCPUPercent; m > 0 && pct > m {
			r.fail("the gateway used %.2f%% of a core in the steady part of the load, above %.1f%%", pct, m)
		}
	}
	if err := errors.Join(<-alarmsDone, <-deskDone); err != nil {
		return err
	}
	// The devices go deaf before the simulator stops: an answer still on
	// its way when the simulator exits is lost with the port, yet counted
	// as served (seen at the end of a fleet run on a starved machine: 2
	// readings of 2,968). One request's time lets it arrive.
	r.deafAt = time.Now()
	if err := deafen(ctx, r.control, true); err != nil {
		return err
	}
	if err := sleepCtx(ctx, r.requestSpan()); err != nil {
		return err
	}
	if err := r.sim.stop(10 * time.Second); err != nil {
		r.fail("%v", err)
	}
	r.loadEnd = time.Now()
	stats, err := readSimStats(r.statsFile())
	if err != nil {
		return err
	}
	r.simStats = stats
	r.report.Readings.Sent = stats.ReadingsServed
	r.report.Events.Served = stats.EventsServed
	r.sentBy = map[string]int{}
	for id, d := range stats.Devices {
		r.sentBy[id] = d.ReadingsServed
		if r.misbehaves(id) {
			r.report.Readings.Sent -= d.ReadingsServed
		}
	}
	if r.sc.Expect.MinPollPercent > 0 {
		// Nothing was read before the gateway started, nor once the
		// devices were deaf.
		to := stats
		to.Time = r.deafAt
		r.pollRates(simStats{Time: r.gwStart}, to)
	}
	if r.report.Drain != nil {
		r.report.Readings.Sent += r.report.Drain.Backlog
	}
	return nil
}

// drainReport is the drain part of a Report.
type drainReport struct {
	Backlog       int     `json:"backlog_readings"`
	SecondsMQTT   float64 `json:"seconds_mqtt"`
	SecondsInflux float64 `json:"seconds_influx"`
	RateMQTT      float64 `json:"readings_per_s_mqtt"`
	RateInflux    float64 `json:"readings_per_s_influx"`
	Target        float64 `json:"target_readings_per_s,omitempty"`
	TargetMet     bool    `json:"target_met"`
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

func (r *runner) startGateway(ctx context.Context) error {
	return r.gw.start(ctx, r.out, "", "run", "-config", r.station)
}

func (r *runner) statsFile() string { return filepath.Join(r.work, "sim-stats.json") }

type simStats struct {
	Time           time.Time `json:"time"`
	ReadingsServed int       `json:"readings_served"`
	EventsServed   int       `json:"events_served"`
	Devices        map[string]struct {
		ReadingsServed int            `json:"readings_served"`
		Writes         map[string]int `json:"writes"`
	} `json:"devices"`
}

func readSimStats(path string) (simStats, error) {
	var s simStats
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("simulator stats: %w", err)
	}
	return s, json.Unmarshal(b, &s)
}

// pollReport is the polls part of a Report: how often the gateway read
// each device, by the simulator's counters, against its configuration.
type pollReport struct {
	WindowS    float64             `json:"window_s"`
	Silent     []string            `json:"silent,omitempty"`
	MinPercent float64             `json:"min_percent"`
	Slowest    string              `json:"slowest"`
	ByDevice   map[string]pollRate `json:"by_device"`
}

type pollRate struct {
	Link       string  `json:"link"`
	Configured float64 `json:"configured_per_s"`
	Achieved   float64 `json:"achieved_per_s"`
	Percent    float64 `json:"percent"`
}

// pollRates compares how often each device that is not silent was read
// between two stats of the simulator with its configured poll interval. A
// poll reads every signal of the device's template whole once, so the
// readings served over the signals are the polls. The window includes the
// gateway's start and the polls of the silent devices before they are
// found offline: the figure is what a silent unit costs, all told.
func (r *runner) pollRates(from, to simStats) {
	window := to.Time.Sub(from.Time).Seconds()
	rep := &pollReport{WindowS: window, Silent: r.sc.Silent, ByDevice: map[string]pollRate{}}
	r.report.Polls = rep
	if window <= 0 {
		r.fail("polls: no time between the simulator's stats at %v and %v", from.Time, to.Time)
		return
	}
	for _, d := range r.st.Devices {
		if slices.Contains(r.sc.Silent, d.ID) {
			continue
		}
		set, ok := d.Settings.(*mb.Device)
		if !ok {
			continue // not polled
		}
		signals := 0 // those read once a poll (a fast one more often, and not counted)
		for _, sg := range r.st.Templates[d.Template].Body.Signals() {
			if !d.Fast(sg) {
				signals++
			}
		}
		if signals == 0 {
			continue
		}
		polls := float64(to.Devices[d.ID].ReadingsServed-from.Devices[d.ID].ReadingsServed) / float64(signals)
		rate := pollRate{Link: d.Link, Configured: 1 / set.Poll.Seconds(), Achieved: polls / window}
		rate.Percent = 100 * rate.Achieved / rate.Configured
		rep.ByDevice[d.ID] = rate
		if rep.Slowest == "" || rate.Percent < rep.MinPercent {
			rep.MinPercent, rep.Slowest = rate.Percent, d.ID
		}
		if rate.Percent < r.sc.Expect.MinPollPercent {
			r.fail("polls: %s on %s was read %.2f times/s, %.1f%% of its configured %.2f/s; at least %.0f%% expected",
				d.ID, d.Link, rate.Achieved, rate.Percent, rate.Configured, r.sc.Expect.MinPollPercent)
		}
	}
}

// plays says whether the scenario has a fault of one of the actions.
func (sc *Scenario) plays(actions ...string) bool {
	return slices.ContainsFunc(sc.Faults, func(f Fault) bool { return slices.Contains(actions, f.Action) })
}

// killsBroker says whether the scenario kills the hub's broker: only then
// must the broker save its sessions as it goes (see hub.MosquittoOptions).
func (sc *Scenario) killsBroker() bool { return sc.plays("kill-broker", "stop-broker") }

// inject plays one fault:
//
//	kill-broker    kill -9 the hub's Mosquitto, keep it down for Down, restart it
//	stop-broker, start-broker
//	kill-influx    kill -9 InfluxDB, keep it down for Down, restart it
//	stop-influx, start-influx
//	freeze-broker, thaw-broker, freeze-influx, thaw-influx
//	               SIGSTOP and SIGCONT: the server hangs, connections open
//	freeze-disk, thaw-disk
//	               fsfreeze the gateway's state volume: its writes hang
//	fill-disk, free-disk
//	               fill the gateway's state volume with a file of another
//	               program's, and remove it
//	partition      cut the network between the station and the hub (both
//	               servers) for Down: nothing passes, nothing is refused
//	partition-start, partition-heal
//	kill-gateway   kill -9 the gateway and restart it
//	stop-gateway, start-gateway
//	               the same in two steps: the devices act meanwhile
//	power-cut      kill -9 the gateway, truncate its queue files at a random
//	               byte and append garbage, restart it
//	delete-state   remove the running gateway's state directory (rm -rf)
//
// Before the gateway is killed the simulated devices go deaf for longer
// than a request's timeout, so that every value they served has been read
// and recorded: a value on the wire when the power goes is recorded
// nowhere, and would count as lost without the gateway being at fault.
// They hear again once the new gateway runs.
func (r *runner) inject(ctx context.Context, f Fault) error {
	switch f.Action {
	case "kill-broker":
		r.mqtt.Kill()
		if err := sleepCtx(ctx, f.Down); err != nil {
			return err
		}
		return r.mqtt.Restart(ctx)
	case "stop-broker":
		r.mqtt.Kill()
	case "start-broker":
		return r.mqtt.Restart(ctx)
	case "kill-influx":
		r.influx.Kill()
		if err := sleepCtx(ctx, f.Down); err != nil {
			return err
		}
		return r.influx.Restart(ctx)
	case "stop-influx":
		r.influx.Kill()

	case "start-influx":
		return r.influx.Restart(ctx)
	case "freeze-broker":
		r.mqtt.Freeze()
	case "thaw-broker":
		r.mqtt.Thaw()
	case "freeze-disk":
		return r.freezeDisk(true)
	case "thaw-disk":
		return r.freezeDisk(false)
	case "fill-disk":
		return r.fillDisk(true)
	case "free-disk":
		return r.fillDisk(false)
	case "freeze-influx":
		r.influx.Freeze()
	case "thaw-influx":
		r.influx.Thaw()
	case "partition":
		r.partition(true)
		if err := sleepCtx(ctx, f.Down); err != nil {
			return err
		}
		r.partition(false)
	case "partition-start":
		r.partition(true)
	case "partition-heal":
		r.partition(false)
	case "device":
		if f.Device == nil {
			return fmt.Errorf("fault device needs device: {device, do, args}")
		}
		return r.act(ctx, *f.Device, 0)
	case "kill-gateway", "power-cut":
		return r.killGateway(ctx, f.Action == "power-cut", true)
	case "stop-gateway":
		return r.killGateway(ctx, false, false)
	case "start-gateway":
		return r.startGateway(ctx)
	case "delete-state":
		return os.RemoveAll(r.st.StateDir)
	default:
		return fmt.Errorf("unknown fault action %q", f.Action)
	}
	return nil
}

// killGateway kills the gateway (cutting the power under its queues when
// asked) and, with restart, starts it again. When the scenario raises alarms beside its
// faults, no device acts from just before the devices go deaf until the
// new gateway reads every device (see act): an alarm raised meanwhile
// would be one no gateway could see (a press let go while the gateway is
// down), or one the old gateway saw raised and not let go.
func (r *runner) killGateway(ctx context.Context, powerCut, restart bool) error {
	r.hearing.Lock()
	defer r.hearing.Unlock()
	alarms := r.sc.Alarms != nil
	if alarms {
		// The devices' last act is read first: an alarm poll and the
		// reads that confirm a change take well under a second.
		if err := sleepCtx(ctx, time.Second); err != nil {
			return err
		}
	}
	if err := deafen(ctx, r.control, true); err != nil {
		return err
	}
	since := time.Now()
	err := r.killDeaf(ctx, powerCut, restart)
	if herr := deafen(ctx, r.control, false); err == nil {
		err = herr
	}
	if err != nil || !alarms || !restart {
		return err
	}
	return r.awaitReading(ctx, since, 30*time.Second)
}

func (r *runner) killDeaf(ctx context.Context, powerCut, restart bool) error {
	if err := sleepCtx(ctx, r.quiet()); err != nil {
		return err
	}
	r.gw.kill()
	r.report.Gateway.Restarts++
	if powerCut {
		if err := r.cutPower(); err != nil {
			return err
		}
	}
	if !restart {
		return nil
	}
	return r.startGateway(ctx)
}

// awaitReading waits until a gateway started after since has heard from
// every device (none unknown on its status server), at most for limit: a
// gateway that cannot read a device is the scenario's to find, not a
// reason to stop it.
func (r *runner) awaitReading(ctx context.Context, since time.Time, limit time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	listen, err := statusAddr(wctx, r.st, since)
	for err == nil {
		devs, derr := statusDevices(wctx, listen)
		if derr == nil && !slices.ContainsFunc(devs, func(d status.Device) bool { return d.State == status.Unknown }) {
			return nil
		}
		err = sleepCtx(wctx, 100*time.Millisecond)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.log.Warn("the restarted gateway has not heard from every device yet", "waited", limit)
	return nil
}

// statusDevices asks a gateway's status server for its devices.
func statusDevices(ctx context.Context, listen string) ([]status.Device, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+listen+"/api/devices", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var devs []status.Device
	return devs, json.NewDecoder(resp.Body).Decode(&devs)
}

// requestSpan is the longest one request of a polled link may take, all
// its tries, and some: the time an answer the simulator counted served
// may still be on its way to the gateway.
func (r *runner) requestSpan() time.Duration {
	var longest time.Duration
	for _, l := range drivers.Links(r.st) {
		longest = max(longest, requestTime(l.Config))
	}
	return longest + deafSlack
}

// deafSlack is how long, beyond the requests' own time, the gateway gets
// to read the answers served before the devices fell deaf. With 300 ms,
// three scenarios in two make test runs lost 2 to 8 readings so served,
// at moments the gateway's polls ran a second late (the machine stalled).
const deafSlack = time.Second

// requestTime is how long one request of a polled link may take, all its
// tries; 0 for a link that is not polled.
func requestTime(l *configs.Link) time.Duration {
	switch s := l.Settings.(type) {
	case *mb.RTU:
		return s.Timeout * time.Duration(s.Retries+1)
	case *mb.TCP:
		return s.Timeout * time.Duration(s.Retries+1)
	case *dcon.Link:
		return s.Timeout * time.Duration(s.Retries+1)
	}
	return 0
}

// quiet is how long the devices stay deaf before the gateway is killed:
// long enough for every poll under way to give up. On a bus, a device's
// last request may wait for every other request of the bus to time out,
// so it is the longest sum over a link of its devices' requests times
// their timeout and tries, and some.
func (r *runner) quiet() time.Duration {
	var longest time.Duration
	for _, l := range drivers.Links(r.st) {
		var cost modbus.Cost
		per := requestTime(l.Config)
		switch s := l.Config.Settings.(type) {
		case *mb.RTU:
			cost = modbus.BusCost(s)
		case *mb.TCP:
			cost = modbus.EndpointCost(s)
		case *dcon.Link:
			// Three reads a poll (a change without checksum is confirmed by three alike).
			longest = max(longest, time.Duration(3*len(l.Devices))*per)
			continue
		default:
			continue
		}
		var sum time.Duration
		for _, d := range l.Devices {
			reqs, _ := modbus.Plan(r.st.Templates[d.Template].Body.(*mb.Template), cost)
			sum += time.Duration(len(reqs)) * per
		}
		longest = max(longest, sum)
	}
	return longest + deafSlack
}

// cutPower damages the queue of the stopped gateway as a power cut may
// leave it: the newest segment of each lane is truncated at a random byte
// and garbage is appended. It first lists, on copies, which messages
// queued for each uplink the damage destroys.
func (r *runner) cutPower() error {
	dir := r.st.QueueDir()
	uplinks := r.st.Uplinks()
	before, err := queuedMessages(dir, uplinks, r.work, r.col.tally)
	if err != nil {
		return err
	}
	lanes, _ := filepath.Glob(filepath.Join(dir, "*"))
	for _, lane := range lanes {
		segs, _ := filepath.Glob(filepath.Join(lane, "*.seg"))
		if len(segs) == 0 {
			continue
		}
		sort.Strings(segs)
		if err := damage(segs[len(segs)-1], r.rng); err != nil {
			return err
		}
	}
	after, err := queuedMessages(dir, uplinks, r.work, r.col.tally)
	if err != nil {
		return err
	}
	for _, uplink := range uplinks {
		if r.destroyed[uplink] == nil {
			r.destroyed[uplink] = map[string]int{}
		}
		for id, n := range before[uplink] {
			if _, ok := after[uplink][id]; !ok {
				r.destroyed[uplink][id] = n
			}
		}
		r.log.Info("power cut", "queue", uplink, "queued_messages_before", len(before[uplink]), "after", len(after[uplink]))
	}
	return nil
}

// destroyedUndelivered is how many readings of the messages a power cut
// destroyed in an uplink's queue had not reached that hub store before:
// those a delivered but not yet acknowledged message carried are not lost.
func (r *runner) destroyedUndelivered(ctx context.Context, uplink string) (int, error) {
	n := 0
	for id, readings := range r.destroyed[uplink] {
		var there bool
		switch uplink {
		case "mqtt":
			there = r.col.has(id)
		case "influx":
			var err error
			if there, err = r.inInflux(ctx, id); err != nil {
				return 0, err
			}
		}
		if !there {
			n += readings
		}
	}
	return n, nil
}

// inInflux says whether the message station/device/seq is in InfluxDB.
func (r *runner) inInflux(ctx context.Context, id string) (bool, error) {
	parts := strings.Split(id, "/")
	if len(parts) != 3 {
		return false, fmt.Errorf("bad message id %q", id)
	}
	kind := ""
	for _, d := range r.st.Devices {
		if d.ID == parts[1] {
			kind = r.st.Templates[d.Template].Kind
		}
	}
	series, err := r.influx.Query(ctx, fmt.Sprintf(`SELECT count(seq) FROM %q WHERE station = '%s' AND device = '%s' AND seq = %s`, kind, parts[0], parts[1], parts[2]))
	return len(series) > 0, err
}

// collectUntilDrained waits until both hub stores hold every reading sent, or
// the drain time is over, and fills in the report's counts.
func (r *runner) collectUntilDrained(ctx context.Context) error {
	deadline := time.Now().Add(r.sc.Drain)
	sent := r.report.Readings.Sent
	lostInCut := map[string]int{}
	expectMissing := func(c counts, uplink string) int {
		switch r.sc.Expect.Lost {
		case "reported", "within-reported":
			return c.Drops[uplink]
		case "destroyed":
			return lostInCut[uplink]
		}
		return 0
	}
	for uplink := range r.destroyed {
		// The hub has what it had before the cut by now; a message
		// destroyed in the queue cannot come later.
		n, err := r.destroyedUndelivered(ctx, uplink)
		if err != nil {
			return err
		}
		lostInCut[uplink] = n
	}
	var c counts
	var influx influxCount
	for {
		c = r.col.counts()
		for dev := range c.ByDevice {
			if r.misbehaves(dev) {
				c.Readings -= c.ByDevice[dev]
			}
		}
		influx.update(r.influxReadings(ctx, false))
		inInflux := influx.total
		done := c.Readings >= sent-expectMissing(c, "mqtt") && inInflux >= sent-expectMissing(c, "influx")
		if r.sc.Expect.Lost == "damaged" || r.sc.Expect.Lost == "within-reported" {
			// What a damaged line ate never comes, and what the testbench
			// does not count is not told apart: the gateway's queues
			// holding nothing of the load says all else is there.
			done = r.queuesDrained()
		}
		if r.sc.Expect.Drained {
			done = done && r.queuesDrained()
		}
		if done || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			return err
		}
	}
	if influx.err != nil {
		// The last count failed: the one before is older than the drain's end.
		before := "no count worked"
		if !influx.at.IsZero() {
			before = fmt.Sprintf("the last that worked, %s before, said %d", time.Since(influx.at).Round(time.Second), influx.total)
		}
		r.fail("influx: the readings there could not be counted at the end (%s): %v", before, influx.err)
	}
	inInflux := influx.total
	rd := &r.report.Readings
	rd.AtHubMQTT, rd.InInflux, rd.Duplicates, rd.Historical = c.Readings, inInflux, c.Duplicates, c.Historical
	rd.LostMQTT, rd.LostInflux = max(sent-c.Readings, 0), max(sent-inInflux, 0)
	rd.Lost = rd.LostMQTT + rd.LostInflux
	rd.ByDevice = map[string][3]int{}
	for id, n := range r.sentBy {
		rd.ByDevice[id] = [3]int{n, c.ByDevice[id], influx.byDevice[id]}
	}
	r.report.Health = c.Health
	r.report.Queue.DroppedReported, r.report.Queue.DamageReported = c.Drops, c.Damage
	if r.sc.Expect.Lost == "destroyed" {
		r.report.Queue.DestroyedReadings = lostInCut
	}
	if sent == 0 {
		r.fail("the simulator served no readings")
	}
	if r.sc.Expect.Drained && !r.queuesDrained() {
		r.fail("the gateway's queues still hold messages for the hub from before the load's end after %s of drain (its status: %s)", r.sc.Drain, status.File(r.st.StateDir))
	}
	for i, s := range []struct {
		uplink     string
		lost, have int
	}{{"mqtt", rd.LostMQTT, c.Readings}, {"influx", rd.LostInflux, inInflux}} {
		want := expectMissing(c, s.uplink)
		switch r.sc.Expect.Lost {
		case "damaged":
		case "within-reported":
			if s.lost > want {
				r.fail("%s: %d of %d readings sent are missing, more than the %d reported dropped%s", s.uplink, s.lost, sent, want, r.missingWhere(rd.ByDevice, i+1, c, s.uplink))
			}
		default:
			if s.lost != want {
				r.fail("%s: %d of %d readings sent are missing, expected %d (%s)%s", s.uplink, s.lost, sent, want, r.sc.Expect.Lost, r.missingWhere(rd.ByDevice, i+1, c, s.uplink))
			}
		}
		if s.have > sent {
			r.fail("%s: %d readings arrived, more than the %d sent", s.uplink, s.have, sent)
		}
	}
	if c.Malformed > 0 {
		r.fail("%d malformed messages at the hub", c.Malformed)
	}
	if err := r.checkEvents(c); err != nil {
		return err
	}
	if err := r.checkAlarms(); err != nil {
		return err
	}
	r.checkExpectedEvents()
	r.checkDesk(r.simStats)
	if err := r.checkLoop(); err != nil {
		return err
	}
	if err := r.checkValues(); err != nil {
		return err
	}
	if d := r.report.Drain; d != nil {
		<-r.drainDone
		d.Target = r.sc.Expect.TargetDrainRate
		d.TargetMet = d.RateMQTT >= d.Target && d.RateInflux >= d.Target
		if min := r.sc.Expect.MinDrainRate; min > 0 && (d.RateMQTT < min || d.RateInflux < min) {
			r.fail("drain: the backlog of %d readings reached the hub at %.0f readings/s (MQTT) and %.0f readings/s (InfluxDB); at least %.0f expected",
				d.Backlog, d.RateMQTT, d.RateInflux, min)
		}
	}
	return nil
}

// queuesDrained says whether the gateway's status file, written after the
// load ended, shows nothing queued for any uplink from before then. What
// the gateway queued since is live traffic, not the load's: the devices
// the stopped simulator left offline are read bad at every poll, and on a
// slow link some of that always waits.
func (r *runner) queuesDrained() bool {
	s, err := status.Read(status.File(r.st.StateDir))
	if err != nil || s.Time.Before(r.loadEnd) {
		return false
	}
	for _, u := range s.Uplinks {
		q := u.Queue
		if q.Alarms+q.Telemetry == 0 {
			continue
		}
		// OldestAgeS is 0 before the forwarder took a batch.
		if q.OldestAgeS == 0 || s.Time.Add(-time.Duration(q.OldestAgeS*float64(time.Second))).Before(r.loadEnd) {
			return false
		}
	}
	return len(s.Uplinks) > 0
}

// watchDrain notes when the whole backlog (the historical readings) has
// reached each hub store, counting from the gateway's start, and returns
// when both have it or after the scenario's load and drain time.
func (r *runner) watchDrain(ctx context.Context) {
	d := r.report.Drain
	deadline := r.gwStart.Add(r.sc.Duration + r.sc.Drain)
	// The subscriber's count is cheap to look at. Counting in InfluxDB
	// scans all it stored: a count a second took a third of the CPU from
	// the very drain it measures, and from the alarms raised meanwhile.
	// So InfluxDB is asked for the backlog's last point only (a lookup by
	// time), and counted once that is there; the backlog drains in order,
	// and the count then says whether all of it is in.
	last := r.backlogLast
	lastThere := false
	for (d.SecondsMQTT == 0 || d.SecondsInflux == 0) && time.Now().Before(deadline) {
		took := time.Since(r.gwStart).Seconds()
		if d.SecondsMQTT == 0 && r.col.counts().Historical >= d.Backlog {
			d.SecondsMQTT, d.RateMQTT = took, float64(d.Backlog)/took
		}
		if d.SecondsInflux == 0 && !lastThere {
			q := fmt.Sprintf(`SELECT count(seq) FROM %q WHERE device = '%s' AND time = %d`, last.DeviceKind, last.Device, last.Time.UnixNano())
			series, err := r.influx.Query(ctx, q)
			lastThere = err == nil && len(series) > 0
		}
		if d.SecondsInflux == 0 && lastThere {
			if n, _, err := r.influxReadings(ctx, true); err == nil && n >= d.Backlog {
				d.SecondsInflux, d.RateInflux = took, float64(d.Backlog)/took
			} else {
				lastThere = false // not all of it yet: look again
				sleepCtx(ctx, time.Second)
			}
		}
		if sleepCtx(ctx, 50*time.Millisecond) != nil {
			return
		}
	}
}

// checkEvents compares the events of the templates' rules that reached the
// hub with the edges the simulator served.
func (r *runner) checkEvents(c counts) error {
	if _, _, err := r.alarmArrivals(); err != nil {
		return err
	}
	ev := &r.report.Events
	ev.ByKind, ev.MaxLagMS, ev.Evaluated = c.Events, ms(r.watched.lag), r.sc.Expect.Events
	// The gateway's own events, device_lost and device_restored (raised
	// from health, not from a signal the simulator serves) and spoofing
	// (a device's refused publish) are not the simulator's edges.
	ev.Gateway = c.GatewayEvents + c.Events[model.EventDeviceLost] + c.Events[model.EventDeviceRestored] + c.Events[model.EventSpoofing]
	for _, n := range c.Events {
		ev.AtHub += n
	}
	ev.AtHub -= ev.Gateway
	switch {
	case r.sc.Expect.Events == "exact" && ev.AtHub != ev.Served:
		r.fail("events: the simulator served %d event edges, %d events arrived", ev.Served, ev.AtHub)
	case r.sc.Expect.Events == "at-least" && ev.AtHub < ev.Served:
		r.fail("events: the simulator served %d event edges, only %d events arrived", ev.Served, ev.AtHub)
	}
	return nil
}

// influxReadings counts the readings of the station in InfluxDB, in all
// and by device: the values of signal fields, not seq, historical or
// quality fields. With historical, only those of points marked historical.
func (r *runner) influxReadings(ctx context.Context, historical bool) (int, map[string]int, error) {
	total, byDevice := 0, map[string]int{}
	kinds := map[string]bool{}
	for _, t := range r.st.Templates {
		kinds[t.Kind] = true
	}
	where := fmt.Sprintf("station = '%s'", r.st.Station.ID)
	for _, dev := range slices.Sorted(maps.Keys(r.sc.Expect.Refused)) {
		where += fmt.Sprintf(" AND device != '%s'", dev)
	}
	if historical {
		where += " AND historical = true"
	}
	for kind := range kinds {
		series, err := r.influx.Query(ctx, fmt.Sprintf(`SELECT count(*) FROM %q WHERE %s GROUP BY device`, kind, where))
		if err != nil {
			return 0, nil, err
		}
		for _, s := range series {
			n := r.col.tally.counted(kind, []hub.Series{s})
			total += n
			byDevice[s.Tags["device"]] += n
		}
	}
	return total, byDevice, nil
}

// influxCount is the last count of the station's readings in InfluxDB
// (runner.influxReadings) and how the last try to count went: a count
// that failed leaves the one before, which is older.
type influxCount struct {
	total    int
	byDevice map[string]int
	at       time.Time // of the last count made
	err      error     // of the last try; nil when it counted
}

func (c *influxCount) update(total int, byDevice map[string]int, err error) {
	c.err = err
	if err == nil {
		c.total, c.byDevice, c.at = total, byDevice, time.Now()
	}
}

// missingWhere says, for a failure of readings missing at a store (column
// col of by_device: 1 MQTT, 2 InfluxDB), which devices' readings are
// missing there and what the gateway told the hub it dropped or found
// damaged on the way to that store.
func (r *runner) missingWhere(byDevice map[string][3]int, col int, c counts, uplink string) string {
	var short []string
	for _, id := range slices.Sorted(maps.Keys(byDevice)) {
		if n := byDevice[id]; n[col] < n[0] && !r.misbehaves(id) {
			short = append(short, fmt.Sprintf("%s %d of %d", id, n[col], n[0]))
		}
	}
	out := ""
	if len(short) > 0 {
		out = "; there: " + strings.Join(short, ", ")
	}
	return out + fmt.Sprintf("; the gateway reported %d readings dropped or refused on the way there and %d damaged regions of its queue", c.Drops[uplink], c.Damage[uplink])
}

// misbehaves says whether a device misbehaves on purpose: the scenario
// bounds what the gateway refused of it (expect.refused). What of its
// readings the gateway refused is counted there, so the readings the run
// holds to "nothing lost" leave it out (by_device still shows it).
func (r *runner) misbehaves(device string) bool {
	_, ok := r.sc.Expect.Refused[device]
	return ok
}

func (r *runner) shutdown() {
	if r.frozen {
		if err := r.freezeDisk(false); err != nil { // a gateway waiting on the disk cannot die
			r.log.Warn("state volume not thawed", "err", err)
		}
	}
	r.sim.kill()
	r.gw.kill()
	if r.watcher != nil {
		r.watcher.kill()
	}
	r.unmountState()
	for _, p := range r.paths {
		p.Close()
	}
	if r.col != nil {
		r.col.close()
	}
	if r.mqtt != nil {
		r.mqtt.Stop()
	}
	if r.influx != nil {
		r.influx.Stop()
	}
}

// stationSpec is the scenario's station file and what the scenario changes
// in it.
func (sc *Scenario) stationSpec() (stationSpec, error) {
	spec := stationSpec{Queue: sc.Queue, Poll: sc.Poll, AlarmPoll: sc.AlarmPoll, Links: sc.Links, MQTT: sc.MQTT, Health: sc.Health}
	var err error
	if sc.StationFile != "" {
		if spec.Src, err = os.ReadFile(sc.StationFile); err != nil {
			return spec, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
	} else if spec.Src, err = configs.Embedded.ReadFile(sc.Station); err != nil {
		return spec, fmt.Errorf("scenario %s: station %q is not an embedded station file: %w", sc.Name, sc.Station, err)
	}
	return spec, nil
}
