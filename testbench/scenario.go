package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"outpost/configs"
	"outpost/testbench/hub"
)

// Scenario is one testbench/scenarios/*.yaml file.
type Scenario struct {
	Name        string         `yaml:"scenario"`
	Description string         `yaml:"description"`
	Station     string         `yaml:"station"`  // an embedded station file, e.g. police-room.yaml
	Duration    time.Duration  `yaml:"duration"` // of load
	Drain       time.Duration  `yaml:"drain"`    // longest wait for the hub to have everything
	Queue       map[string]any `yaml:"queue"`    // overrides the station's queue section
	Poll        time.Duration  `yaml:"poll"`     // overrides every device's poll interval
	Faults      []Fault        `yaml:"faults"`
	Seed        uint64         `yaml:"seed"`
}

// Fault is an action at a moment of the run. Every: repeat that often until
// the end of the load, Times times at most.
type Fault struct {
	At     time.Duration `yaml:"at"`
	Every  time.Duration `yaml:"every"`
	Times  int           `yaml:"times"`
	Action string        `yaml:"action"` // kill-broker, kill-gateway, stop-influx, start-influx, ...
	Jitter time.Duration `yaml:"jitter"`
}

// Report is what a run writes, for people and for CI.
type Report struct {
	Scenario  string   `json:"scenario"`
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
	} `json:"readings"`
	Events  map[string]int `json:"events"`
	Health  int            `json:"health_messages"`
	Faults  []string       `json:"faults,omitempty"`
	Gateway struct {
		CPUS     float64 `json:"cpu_s"`
		MaxRSSMB float64 `json:"max_rss_mb"`
		Restarts int     `json:"restarts"`
	} `json:"gateway"`
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
	if sc.Station == "" || sc.Duration <= 0 {
		return nil, fmt.Errorf("%s: a scenario needs a station and a duration", path)
	}
	if sc.Drain == 0 {
		sc.Drain = 60 * time.Second
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
}

func runScenario(ctx context.Context, sc *Scenario, log *slog.Logger) (rep Report, err error) {
	start := time.Now()
	r := &runner{sc: sc, log: log, sim: &proc{name: "firmware-sim"}, gw: &proc{name: "gateway"},
		rng: rand.New(rand.NewPCG(sc.Seed, 42))}
	r.report.Scenario = sc.Name
	r.work, err = os.MkdirTemp("", "outpost-"+sc.Name+"-")
	if err != nil {
		return r.report, err
	}
	defer func() {
		if err == nil && r.report.Pass {
			os.RemoveAll(r.work)
		} else {
			log.Info("run files kept", "dir", r.work)
		}
	}()
	out, err := logWriter(log, filepath.Join(r.work, "processes.log"))
	if err != nil {
		return r.report, err
	}
	defer out.Close()
	r.out = out
	defer r.shutdown()

	if err := r.startHub(ctx); err != nil {
		return r.report, err
	}
	if err := r.load(ctx); err != nil {
		return r.report, err
	}
	if err := r.collectUntilDrained(ctx); err != nil {
		return r.report, err
	}
	if err := r.gw.stop(15 * time.Second); err != nil {
		r.fail("%v", err)
	}
	cpu, rss := r.gw.usage()
	r.report.Gateway.CPUS, r.report.Gateway.MaxRSSMB = cpu.Seconds(), rss
	r.report.DurationS = time.Since(start).Seconds()
	r.report.Pass = len(r.report.Failures) == 0
	return r.report, nil
}

func (r *runner) fail(format string, args ...any) {
	r.report.Failures = append(r.report.Failures, fmt.Sprintf(format, args...))
}

func (r *runner) startHub(ctx context.Context) error {
	var err error
	if r.mqtt, err = hub.StartMosquitto(ctx, filepath.Join(r.work, "mosquitto"), r.log); err != nil {
		return err
	}
	if r.influx, err = hub.StartInflux(ctx, filepath.Join(r.work, "influx"), r.log); err != nil {
		return err
	}
	src, err := configs.Embedded.ReadFile(r.sc.Station)
	if err != nil {
		return fmt.Errorf("scenario %s: station %q is not an embedded station file: %w", r.sc.Name, r.sc.Station, err)
	}
	r.station, r.st, err = prepareStation(stationSpec{Src: src, Queue: r.sc.Queue, Poll: r.sc.Poll}, r.work,
		hubAddrs{MQTT: r.mqtt.URL(), Influx: r.influx.URL(), DB: r.influx.Database()})
	if err != nil {
		return err
	}
	topic := fmt.Sprintf("%s/%s/#", r.st.Hub.MQTT.TopicPrefix, r.st.Station.ID)
	r.col, err = collect(ctx, r.mqtt.URL(), topic, nil)
	return err
}

// load runs the simulator and the gateway for the scenario's duration,
// injecting its faults, then stops the simulator.
func (r *runner) load(ctx context.Context) error {
	if err := r.sim.start(ctx, r.out, "firmware-sim ready", "-config", r.station, "-stats", r.statsFile(), "-seed", fmt.Sprint(r.sc.Seed)); err != nil {
		return err
	}
	if err := r.gw.start(ctx, r.out, "", "run", "-config", r.station); err != nil {
		return err
	}
	begin := time.Now()
	type due struct {
		at time.Duration
		f  Fault
	}
	var plan []due
	for _, f := range r.sc.Faults {
		n := max(f.Times, 1)
		for i := 0; i < n; i++ {
			at := f.At + time.Duration(i)*f.Every
			if f.Jitter > 0 {
				at += time.Duration(r.rng.Int64N(int64(f.Jitter)))
			}
			if at < r.sc.Duration {
				plan = append(plan, due{at, f})
			}
		}
	}
	for len(plan) > 0 || time.Since(begin) < r.sc.Duration {
		next := r.sc.Duration
		idx := -1
		for i, d := range plan {
			if d.at <= next {
				next, idx = d.at, i
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Until(begin.Add(next))):
		}
		if idx < 0 {
			break
		}
		f := plan[idx].f
		plan = append(plan[:idx], plan[idx+1:]...)
		r.report.Faults = append(r.report.Faults, fmt.Sprintf("%.1fs %s", time.Since(begin).Seconds(), f.Action))
		if err := r.inject(ctx, f.Action); err != nil {
			return fmt.Errorf("fault %s: %w", f.Action, err)
		}
	}
	if err := r.sim.stop(10 * time.Second); err != nil {
		r.fail("%v", err)
	}
	stats, err := readSimStats(r.statsFile())
	if err != nil {
		return err
	}
	r.report.Readings.Sent = stats.ReadingsServed
	return nil
}

func (r *runner) statsFile() string { return filepath.Join(r.work, "sim-stats.json") }

type simStats struct {
	ReadingsServed int `json:"readings_served"`
}

func readSimStats(path string) (simStats, error) {
	var s simStats
	b, err := os.ReadFile(path)
	if err != nil {
		return s, fmt.Errorf("simulator stats: %w", err)
	}
	return s, json.Unmarshal(b, &s)
}

func (r *runner) inject(ctx context.Context, action string) error {
	switch action {
	case "kill-broker":
		r.mqtt.Kill()
		return r.mqtt.Restart(ctx)
	case "stop-influx":
		r.influx.Stop()
	case "start-influx":
		return r.influx.Restart(ctx)
	case "kill-gateway":
		r.gw.kill()
		r.report.Gateway.Restarts++
		return r.gw.start(ctx, r.out, "", "run", "-config", r.station)
	default:
		return fmt.Errorf("unknown fault action %q", action)
	}
	return nil
}

// collectUntilDrained waits until both hub stores hold every reading sent, or
// the drain time is over, and fills in the report's counts.
func (r *runner) collectUntilDrained(ctx context.Context) error {
	deadline := time.Now().Add(r.sc.Drain)
	sent := r.report.Readings.Sent
	var c counts
	inInflux := 0
	for {
		c = r.col.counts()
		n, err := r.influxReadings(ctx)
		if err == nil {
			inInflux = n
		}
		if (c.Readings >= sent && inInflux >= sent) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	rd := &r.report.Readings
	rd.AtHubMQTT, rd.InInflux, rd.Duplicates, rd.Historical = c.Readings, inInflux, c.Duplicates, c.Historical
	rd.LostMQTT, rd.LostInflux = max(sent-c.Readings, 0), max(sent-inInflux, 0)
	rd.Lost = rd.LostMQTT + rd.LostInflux
	r.report.Events, r.report.Health = c.Events, c.Health
	if sent == 0 {
		r.fail("the simulator served no readings")
	}
	if rd.Lost > 0 {
		r.fail("%d readings lost (%d at the MQTT hub, %d in InfluxDB) of %d sent", rd.Lost, rd.LostMQTT, rd.LostInflux, sent)
	}
	if c.Readings > sent || inInflux > sent {
		r.fail("more readings at the hub than sent: mqtt %d, influx %d, sent %d", c.Readings, inInflux, sent)
	}
	if c.Malformed > 0 {
		r.fail("%d malformed messages at the hub", c.Malformed)
	}
	return nil
}

// influxReadings counts the readings of the station in InfluxDB: the values
// of signal fields, not seq, historical or quality fields.
func (r *runner) influxReadings(ctx context.Context) (int, error) {
	total := 0
	kinds := map[string]bool{}
	for _, t := range r.st.Templates {
		kinds[t.Kind] = true
	}
	for kind := range kinds {
		series, err := r.influx.Query(ctx, fmt.Sprintf(`SELECT count(*) FROM %q WHERE station = '%s'`, kind, r.st.Station.ID))
		if err != nil {
			return 0, err
		}
		for _, s := range series {
			for i, col := range s.Columns {
				name := strings.TrimPrefix(col, "count_")
				if col == "time" || name == "seq" || name == "historical" || strings.HasSuffix(name, "_quality") {
					continue
				}
				for _, row := range s.Values {
					if n, ok := row[i].(json.Number); ok {
						v, _ := n.Int64()
						total += int(v)
					} else if f, ok := row[i].(float64); ok {
						total += int(f)
					}
				}
			}
		}
	}
	return total, nil
}

func (r *runner) shutdown() {
	r.sim.kill()
	r.gw.kill()
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
