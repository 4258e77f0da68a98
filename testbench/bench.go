package main

// The load benchmark: one station of N Modbus TCP units of 15 fields each,
// polled by the real gateway (its durable queue on, as always) against the
// real Mosquitto and InfluxDB. Per window it gives what the slave served,
// what reached each store, and what that cost the gateway and the hub.
//
//	testbench run bench-tcp -units 100 -poll 100ms -windows 1 -window 60s -report bench.json
//
// The slave runs in the testbench, built from firmware-sim's device and
// slave code, so that it can draw each window's line exactly: it notes
// when every request was asked, and counts what it served by window. The
// gateway reads a unit's poll in one request and stamps its message with
// the time the answer came; the next poll of the unit is asked after that.
// So a unit's messages of a window are those stamped from the first
// request it was asked in the window to the first one asked after it: the
// counts at the hub are held to the slave's exactly, not within a poll.

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	mb "outpost/configs/modbus"
	"outpost/firmware-sim/device"
	"outpost/firmware-sim/slave"
	"outpost/gateway/model"
	"outpost/testbench/hub"
)

// benchTemplate is the bench's device: the first 15 input registers of an
// Eastron SDM630 (see the file).
//
//go:embed bench/sdm630-phases.yaml
var benchTemplate []byte

const (
	benchTemplateName = "sdm630-phases"
	benchFields       = 15 // the template's signals, read in one request
	benchStationID    = "bench-tcp"
)

// benchPlan says what to run.
type benchPlan struct {
	Units     int
	Endpoints int // the units are spread over this many Modbus TCP endpoints, one link (one connection) each
	Poll      time.Duration
	Warmup    time.Duration // from the gateway's start to the first window
	Window    time.Duration
	Windows   int
	Drain     time.Duration // longest wait, after the last window, for the stores to have everything
	// Gateway is the gateway binary; bin/gateway beside the testbench
	// when empty.
	Gateway string
	// BatchSize is the station's hub.influx.batch_size; 0 leaves it out
	// (the gateway's default).
	BatchSize int
}

func (p benchPlan) check() error {
	var errs []error
	if p.Units < 1 {
		errs = append(errs, fmt.Errorf("-units %d: at least 1", p.Units))
	}
	if p.Endpoints < 1 || p.Endpoints > max(p.Units, 1) {
		errs = append(errs, fmt.Errorf("-endpoints %d: from 1 to the units (%d)", p.Endpoints, p.Units))
	} else if per := (p.Units + p.Endpoints - 1) / p.Endpoints; per > 247 {
		errs = append(errs, fmt.Errorf("-units %d on -endpoints %d: %d units on an endpoint, at most 247 (unit ids 1 to 247)", p.Units, p.Endpoints, per))
	}
	if p.BatchSize < 0 || p.BatchSize > 50000 {
		errs = append(errs, fmt.Errorf("-batch-size %d: 1 to 50000, or 0 for the gateway's default", p.BatchSize))
	}
	if p.Poll < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("-poll %s: at least 10ms (the gateway's least poll interval)", p.Poll))
	}
	if p.Windows < 1 || p.Window <= 0 || p.Warmup < 0 || p.Drain <= 0 {
		errs = append(errs, fmt.Errorf("-windows %d, -window %s, -warmup %s, -drain %s: at least one window, a positive window and drain, a warm-up not negative",
			p.Windows, p.Window, p.Warmup, p.Drain))
	}
	return errors.Join(errs...)
}

// scheduledPerS is the readings a second the poll schedule calls for.
func (p benchPlan) scheduledPerS() float64 {
	return float64(p.Units*benchFields) / p.Poll.Seconds()
}

// benchReport is what a bench writes.
type benchReport struct {
	Pass     bool     `json:"pass"`
	Failures []string `json:"failures,omitempty"`
	Gateway  string   `json:"gateway"`
	Units    int      `json:"units"`
	Fields   int      `json:"fields_per_unit"`
	// Endpoints are Modbus TCP endpoints (links); the units are spread
	// over them evenly.
	Endpoints int     `json:"endpoints"`
	PollMS    float64 `json:"poll_ms"`
	Template  string  `json:"template"`
	// BatchSize is the station's hub.influx.batch_size, 0 for the
	// gateway's default.
	BatchSize     int     `json:"influx_batch_size,omitempty"`
	ScheduledPerS float64 `json:"scheduled_readings_per_s"`
	WarmupS       float64 `json:"warmup_s"`
	// SettleS is how long after the last window both stores took to hold
	// every reading of every window (or the drain limit, when they never
	// did).
	SettleS       float64       `json:"settle_s"`
	Cores         int           `json:"machine_cores"`
	LoadAvgBefore [3]float64    `json:"loadavg_before"`
	Windows       []benchWindow `json:"windows"`
}

// benchWindow is one window's figures.
type benchWindow struct {
	Seconds float64 `json:"seconds"`
	// Expected is what the slave served: fields of the requests it was
	// asked in the window and answered; MQTT what the testbench's
	// subscriber got of them, InfluxDB what a query finds.
	Expected     int64   `json:"readings_expected"`
	MQTT         int64   `json:"readings_mqtt"`
	Influx       int64   `json:"readings_influx"`
	ReadingsPerS float64 `json:"readings_per_s"`
	// Scheduled is what the poll schedule calls for: for each unit,
	// fields × the time its readings were counted over (from its first
	// request in the window to its first after it) / poll, so that a
	// window's edges do not count as a poll gained or lost;
	// SchedulePercent the readings delivered to both stores (the lesser
	// count) against it.
	Scheduled       float64 `json:"readings_scheduled"`
	SchedulePercent float64 `json:"schedule_kept_percent"`
	// The gateway's CPU (user and system) per reading expected, its share
	// of a core, and its peak resident memory (VmHWM) at the window's end.
	GatewayUSPerReading   float64 `json:"gateway_cpu_us_per_reading"`
	GatewayCores          float64 `json:"gateway_cores"`
	GatewayPeakRSSMB      float64 `json:"gateway_peak_rss_mb"`
	MosquittoUSPerReading float64 `json:"mosquitto_cpu_us_per_reading"`
	InfluxdUSPerReading   float64 `json:"influxd_cpu_us_per_reading"`
	// InfluxDB's own counters (/debug/vars, httpd): write requests
	// answered and the points they carried.
	InfluxWrites   int64   `json:"influx_write_requests"`
	InfluxPoints   int64   `json:"influx_points_written"`
	PointsPerWrite float64 `json:"influx_points_per_request"`
	// The testbench (the slave and the subscriber) and the whole machine,
	// everyone's work included, in cores.
	TestbenchCores   float64 `json:"testbench_cores"`
	MachineBusyCores float64 `json:"machine_busy_cores"`
}

// cmdBench is `testbench run bench-tcp`.
func cmdBench(ctx context.Context, args []string, log *slog.Logger) int {
	fs := flag.NewFlagSet("run bench-tcp", flag.ExitOnError)
	var p benchPlan
	fs.IntVar(&p.Units, "units", 100, "Modbus TCP units of 15 fields each")
	fs.IntVar(&p.Endpoints, "endpoints", 1, "Modbus TCP endpoints the units are spread over, one link (one connection) each")
	fs.DurationVar(&p.Poll, "poll", 100*time.Millisecond, "every unit's poll interval")
	fs.DurationVar(&p.Warmup, "warmup", 10*time.Second, "from the gateway's start to the first window")
	fs.DurationVar(&p.Window, "window", 60*time.Second, "length of a window")
	fs.IntVar(&p.Windows, "windows", 1, "how many windows, one after the other")
	fs.DurationVar(&p.Drain, "drain", time.Minute, "longest wait after the last window for both stores to have every reading")
	fs.StringVar(&p.Gateway, "gateway", "", "the gateway binary to measure (default: bin/gateway beside the testbench)")
	fs.IntVar(&p.BatchSize, "batch-size", 0, "the station's hub.influx.batch_size, the most points an InfluxDB write carries (default: the gateway's)")
	reportPath := fs.String("report", "", "write the JSON report to this file")
	fs.Parse(args)
	if err := p.check(); err != nil {
		fmt.Fprintln(os.Stderr, "run bench-tcp:", err)
		return 2
	}
	if p.Gateway != "" {
		abs, err := filepath.Abs(p.Gateway)
		if err != nil {
			fmt.Fprintln(os.Stderr, "run bench-tcp: -gateway:", err)
			return 2
		}
		p.Gateway = abs
	}
	work, err := os.MkdirTemp("", "outpost-bench-")
	if err != nil {
		log.Error("bench", "err", err)
		return 2
	}
	rep, err := runBench(ctx, p, work, log)
	written := settleRun(err, &rep.Pass, &rep.Failures, work, *reportPath, &rep, log)
	printBench(os.Stdout, rep)
	if !written {
		return 2
	}
	if !rep.Pass {
		return 1
	}
	return 0
}

// benchStation writes the station file of a plan into work, with the
// bench's template in devices/ beside it: the units spread over the
// endpoints in turn, each endpoint on a free loopback port with unit ids
// from 1. It leaves report_by_exception out, so that gateways from before
// it read the file too; the template gives no signal a report section, so
// a gateway that has it sends every reading all the same.
func benchStation(p benchPlan, work string, addrs hubAddrs) (string, *configs.Station, error) {
	var b strings.Builder
	fmt.Fprintf(&b, `version: 2
station:
  id: %s
  type: workstation
  name: Load benchmark, %d Modbus TCP units
state_dir: %s
status:
  listen: 127.0.0.1:0
hub:
  mqtt:
    url: %s
  influx:
    url: %s
    bucket: %s
`, benchStationID, p.Units, filepath.Join(work, "state"), addrs.MQTT, addrs.Influx, addrs.DB)
	if p.BatchSize > 0 {
		fmt.Fprintf(&b, "    batch_size: %d\n", p.BatchSize)
	}
	b.WriteString("links:\n")
	// Found together, so that no two endpoints are given the same port.
	ports, err := hub.FreePorts(p.Endpoints)
	if err != nil {
		return "", nil, err
	}
	for e, port := range ports {
		// A long timeout: an answer the gateway gave up on was counted
		// served by the slave, and would be missing at the hub.
		fmt.Fprintf(&b, "  - {id: lan-%d, protocol: modbus-tcp, address: 127.0.0.1:%d, timeout: 5s}\n", e+1, port)
	}
	b.WriteString("devices:\n")
	for i := range p.Units {
		fmt.Fprintf(&b, "  - {id: meter-%04d, template: %s, link: lan-%d, unit_id: %d, poll: %s}\n",
			i+1, benchTemplateName, i%p.Endpoints+1, i/p.Endpoints+1, p.Poll)
	}
	if err := os.MkdirAll(filepath.Join(work, "devices"), 0o755); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "devices", benchTemplateName+".yaml"), benchTemplate, 0o644); err != nil {
		return "", nil, err
	}
	path := filepath.Join(work, "station.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", nil, err
	}
	st, err := configs.Load(path)
	if err != nil {
		return "", nil, fmt.Errorf("bench station file:\n%w", err)
	}
	return path, st, nil
}

// runBench starts the hub, the slave and the gateway in work, and measures.
func runBench(ctx context.Context, p benchPlan, work string, log *slog.Logger) (rep benchReport, err error) {
	rep = benchReport{Gateway: p.Gateway, Units: p.Units, Fields: benchFields, Endpoints: p.Endpoints,
		PollMS: float64(p.Poll) / float64(time.Millisecond), Template: benchTemplateName, BatchSize: p.BatchSize,
		ScheduledPerS: p.scheduledPerS(), WarmupS: p.Warmup.Seconds(), Cores: runtime.NumCPU(), LoadAvgBefore: loadAvg()}
	if rep.Gateway == "" {
		rep.Gateway = filepath.Join(binDir(), "gateway")
	}
	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		return rep, err
	}
	defer mq.Stop()
	in, err := hub.StartInflux(ctx, filepath.Join(work, "influx"), log)
	if err != nil {
		return rep, err
	}
	defer in.Stop()

	station, st, err := benchStation(p, work, hubAddrs{MQTT: mq.URL(), Influx: in.URL(), DB: in.Database()})
	if err != nil {
		return rep, err
	}
	sl, err := startBenchSlave(ctx, st, log)
	if err != nil {
		return rep, err
	}
	defer sl.stop()
	got := newArrivals(st)
	col, err := collect(ctx, mq.URL(), st, got.observe)
	if err != nil {
		return rep, err
	}
	defer col.close()

	out, err := logWriter(log, filepath.Join(work, "gateway.log"))
	if err != nil {
		return rep, err
	}
	defer out.Close()
	gw := &proc{name: "gateway", path: p.Gateway}
	if err := gw.start(ctx, out, "", "run", "-config", station); err != nil {
		return rep, err
	}
	defer gw.kill()
	upCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = statusAddr(upCtx, st, time.Time{})
	cancel()
	if err != nil {
		return rep, err
	}
	log.Info("bench starts", "units", p.Units, "endpoints", p.Endpoints, "poll", p.Poll,
		"scheduled_readings_per_s", rep.ScheduledPerS, "gateway", rep.Gateway)

	// The windows, back to back after the warm-up.
	if err := sleepCtx(ctx, p.Warmup); err != nil {
		return rep, err
	}
	servers := []func() int{func() int { return gw.cmd.Process.Pid }, mq.Pid, in.Pid}
	samples := []benchSample{sampleBench(ctx, sl.marks.mark(), servers, in)}
	for i := range p.Windows {
		if err := sleepCtx(ctx, time.Until(samples[0].at.Add(time.Duration(i+1)*p.Window))); err != nil {
			return rep, err
		}
		samples = append(samples, sampleBench(ctx, sl.marks.mark(), servers, in))
	}
	ended := time.Now()
	// Every unit is asked once more, which closes its last window; then
	// the slave goes deaf, and what the gateway has queued drains.
	if err := sl.awaitAsked(ctx, len(samples), ended.Add(p.Poll+5*time.Second)); err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	sl.deaf.Store(true)
	windows := sl.windows(len(samples))
	rep.Windows = make([]benchWindow, p.Windows)
	for i := range rep.Windows {
		rep.Windows[i] = benchFigures(p, samples[i], samples[i+1], windows[i])
	}
	rep.SettleS, err = settleBench(ctx, rep.Windows, windows, got, in, st, col.tally, ended, p.Drain)
	if err != nil {
		return rep, err
	}
	if err := gw.stop(15 * time.Second); err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	if err := sl.err(); err != nil {
		rep.Failures = append(rep.Failures, err.Error())
	}
	for i, w := range rep.Windows {
		if w.Expected == 0 {
			rep.Failures = append(rep.Failures, fmt.Sprintf("window %d: the slave served nothing", i+1))
		}
		if w.MQTT != w.Expected || w.Influx != w.Expected {
			f := fmt.Sprintf("window %d: the slave served %d readings; %d reached MQTT, %d InfluxDB (after %.1f s of settling)",
				i+1, w.Expected, w.MQTT, w.Influx, rep.SettleS)
			if short := w.Expected - w.MQTT; short > 0 && short == w.Expected-w.Influx && short%benchFields == 0 {
				f += fmt.Sprintf("; %d whole polls missing at both: answers the gateway gave up waiting for (its log says which devices went degraded), which the slave counted", short/benchFields)
			}
			rep.Failures = append(rep.Failures, f)
		}
	}
	rep.Pass = len(rep.Failures) == 0
	return rep, nil
}

// benchSample is the counters at a window's edge.
type benchSample struct {
	at               time.Time // the mark
	gw, mq, in, self cpuSample
	rssKB            int64
	writes, points   int64
	varsErr          error
	busy             machineCPU
}

// sampleBench reads the counters at mark: the processes' CPU first, then
// the gateway's peak memory and InfluxDB's write counters.
func sampleBench(ctx context.Context, mark time.Time, pids []func() int, in *hub.Influx) benchSample {
	s := benchSample{at: mark, gw: cpuOf(pids[0]()), mq: cpuOf(pids[1]()), in: cpuOf(pids[2]()),
		self: cpuOf(os.Getpid()), busy: readMachineCPU()}
	s.rssKB, _ = peakRSS(pids[0]())
	s.writes, s.points, s.varsErr = influxWrites(ctx, in.URL())
	return s
}

// influxWrites reads InfluxDB 1.8's write counters from /debug/vars: its
// HTTP service's write requests answered (writeReq, less writeReqActive)
// and the points written from them (pointsWrittenOK). A request is counted
// in writeReq as it comes and its points when written: a window that
// counted requests as they came would take the points of one in flight at
// its start without the request.
func influxWrites(ctx context.Context, base string) (requests, points int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/vars", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("influxdb /debug/vars: %w", err)
	}
	defer resp.Body.Close()
	var vars map[string]json.RawMessage
	if err := json.NewDecoder(resp.Body).Decode(&vars); err != nil {
		return 0, 0, fmt.Errorf("influxdb /debug/vars: %w", err)
	}
	return parseHTTPDVars(vars)
}

// parseHTTPDVars finds the httpd statistics among InfluxDB's /debug/vars.
func parseHTTPDVars(vars map[string]json.RawMessage) (requests, points int64, err error) {
	for _, raw := range vars {
		var v struct {
			Name   string `json:"name"`
			Values struct {
				WriteReq        *int64 `json:"writeReq"`
				WriteReqActive  *int64 `json:"writeReqActive"`
				PointsWrittenOK *int64 `json:"pointsWrittenOK"`
			} `json:"values"`
		}
		if json.Unmarshal(raw, &v) != nil || v.Name != "httpd" {
			continue
		}
		if v.Values.WriteReq == nil || v.Values.WriteReqActive == nil || v.Values.PointsWrittenOK == nil {
			return 0, 0, errors.New("influxdb /debug/vars: httpd has no writeReq, writeReqActive or pointsWrittenOK")
		}
		return *v.Values.WriteReq - *v.Values.WriteReqActive, *v.Values.PointsWrittenOK, nil
	}
	return 0, 0, errors.New("influxdb /debug/vars: no httpd statistics")
}

// benchFigures is a window's figures from its two samples and the slave's
// counts; the deliveries come later (settleBench).
func benchFigures(p benchPlan, a, b benchSample, units []unitWindow) benchWindow {
	w := benchWindow{Seconds: b.at.Sub(a.at).Seconds()}
	for _, u := range units {
		w.Expected += u.served
		if u.to > u.from && u.to != math.MaxInt64 {
			w.Scheduled += float64(benchFields) * float64(u.to-u.from) / float64(p.Poll)
		}
	}
	if w.Seconds > 0 {
		w.ReadingsPerS = float64(w.Expected) / w.Seconds
	}
	perReading := func(x, y cpuSample) float64 {
		if !x.ok || !y.ok || x.pid != y.pid || w.Expected == 0 {
			return -1
		}
		return float64((y.cpu - x.cpu).Microseconds()) / float64(w.Expected)
	}
	w.GatewayUSPerReading = perReading(a.gw, b.gw)
	w.MosquittoUSPerReading = perReading(a.mq, b.mq)
	w.InfluxdUSPerReading = perReading(a.in, b.in)
	w.GatewayCores, w.TestbenchCores = cores(a.gw, b.gw), cores(a.self, b.self)
	w.GatewayPeakRSSMB = float64(b.rssKB) / 1024
	w.MachineBusyCores = b.busy.since(a.busy)
	if a.varsErr == nil && b.varsErr == nil {
		w.InfluxWrites, w.InfluxPoints = b.writes-a.writes, b.points-a.points
		if w.InfluxWrites > 0 {
			w.PointsPerWrite = float64(w.InfluxPoints) / float64(w.InfluxWrites)
		}
	} else {
		w.InfluxWrites, w.InfluxPoints, w.PointsPerWrite = -1, -1, -1
	}
	return w
}

// cores is the share of a core a process used from a to b, or -1 when it
// was not the same process throughout.
func cores(a, b cpuSample) float64 {
	if pct := percentOf(a, b); pct >= 0 {
		return pct / 100
	}
	return -1
}

// settleBench waits until both stores hold what the slave served in every
// window, at most drain from end (the last window's), and fills in the
// windows' deliveries. It returns how long that took from end.
func settleBench(ctx context.Context, ws []benchWindow, units [][]unitWindow, got *arrivals, in *hub.Influx, st *configs.Station, t tally, end time.Time, drain time.Duration) (float64, error) {
	deadline := end.Add(drain)
	for {
		done := true
		for i := range ws {
			ws[i].MQTT = got.count(units[i])
			done = done && ws[i].MQTT == ws[i].Expected
		}
		if done { // InfluxDB is asked once MQTT has it all: its counts are the dearer
			for i := range ws {
				n, err := influxInWindow(ctx, in, st, t, units[i])
				if err != nil {
					return 0, err
				}
				ws[i].Influx = n
				done = done && n == ws[i].Expected
			}
		}
		if done || time.Now().After(deadline) {
			break
		}
		if err := sleepCtx(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
	}
	for i := range ws {
		if ws[i].Influx == 0 && ws[i].Expected > 0 { // never asked: MQTT fell short
			n, err := influxInWindow(ctx, in, st, t, units[i])
			if err != nil {
				return 0, err
			}
			ws[i].Influx = n
		}
		if ws[i].Scheduled > 0 {
			ws[i].SchedulePercent = 100 * float64(min(ws[i].MQTT, ws[i].Influx)) / ws[i].Scheduled
		}
	}
	return time.Since(end).Seconds(), nil
}

// influxInWindow counts the readings in InfluxDB of each unit's part of a
// window, a hundred units to a request.
func influxInWindow(ctx context.Context, in *hub.Influx, st *configs.Station, t tally, units []unitWindow) (int64, error) {
	kind := st.Templates[benchTemplateName].Kind
	var total int64
	for lo := 0; lo < len(units); lo += 100 {
		var q []string
		for _, u := range units[lo:min(lo+100, len(units))] {
			if u.from >= u.to {
				continue
			}
			q = append(q, fmt.Sprintf(`SELECT count(*) FROM %q WHERE station = '%s' AND device = '%s' AND time >= %d AND time < %d`,
				kind, st.Station.ID, u.device, u.from, u.to))
		}
		if len(q) == 0 {
			continue
		}
		series, err := in.Query(ctx, strings.Join(q, "; "))
		if err != nil {
			return 0, err
		}
		total += int64(t.counted(kind, series))
	}
	return total, nil
}

// unitWindow is one unit's part of a window: the readings the slave served
// it, and the span of message times (Unix ns, [from, to)) that holds
// exactly the polls of them.
type unitWindow struct {
	device   string
	served   int64
	from, to int64
}

// benchSlave is the bench's Modbus TCP slave: firmware-sim's devices
// behind firmware-sim's TCP slave, one listener per endpoint of the
// station, each device noting when it was asked.
type benchSlave struct {
	marks  benchMarks
	units  []*benchUnit
	deaf   atomic.Bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

func startBenchSlave(ctx context.Context, st *configs.Station, log *slog.Logger) (_ *benchSlave, err error) {
	ctx, cancel := context.WithCancel(ctx)
	s := &benchSlave{cancel: cancel}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	start := time.Now()
	for _, l := range st.Links {
		ep, ok := l.Settings.(*mb.TCP)
		if !ok {
			return nil, fmt.Errorf("bench: link %s is not modbus-tcp", l.ID)
		}
		units := map[byte]slave.Unit{}
		for _, d := range st.DevicesOn(l.ID) {
			dev, err := device.New(*d, st.Templates[d.Template], device.Options{Seed: 1, Start: start})
			if err != nil {
				return nil, fmt.Errorf("bench: %w", err)
			}
			u := &benchUnit{Device: dev, id: d.ID, marks: &s.marks}
			s.units = append(s.units, u)
			units[dev.Unit()] = u
		}
		ln, err := net.Listen("tcp", ep.Address)
		if err != nil {
			return nil, fmt.Errorf("bench: endpoint %s: %w", l.ID, err)
		}
		srv := &slave.TCP{Units: units, Log: log.With("endpoint", l.ID), Deaf: &s.deaf}
		s.wg.Go(func() {
			if err := srv.Serve(ctx, ln); err != nil {
				s.mu.Lock()
				s.errs = append(s.errs, fmt.Errorf("bench: endpoint %s: %w", l.ID, err))
				s.mu.Unlock()
			}
		})
	}
	return s, nil
}

// stop ends the endpoints and waits for them.
func (s *benchSlave) stop() {
	s.cancel()
	s.wg.Wait()
	for _, u := range s.units {
		u.Close()
	}
}

func (s *benchSlave) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errors.Join(s.errs...)
}

// awaitAsked waits until every unit was asked after the first n marks,
// until deadline: one that was not by then is named in the error.
func (s *benchSlave) awaitAsked(ctx context.Context, n int, deadline time.Time) error {
	for {
		var late []string
		for _, u := range s.units {
			if u.askedAfter() < n {
				late = append(late, u.id)
			}
		}
		if len(late) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("bench: %d units not asked after the last window (%s, ...): their deliveries are counted to the end", len(late), late[0])
		}
		if err := sleepCtx(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

// windows is each unit's part of the n-1 windows between n marks.
func (s *benchSlave) windows(n int) [][]unitWindow {
	out := make([][]unitWindow, n-1)
	for _, u := range s.units {
		u.mu.Lock()
		edge := func(j int) int64 { // the first request asked after mark j
			if j < len(u.first) {
				return u.first[j].UnixNano()
			}
			return math.MaxInt64
		}
		for i := range out {
			var served int64
			if i+1 < len(u.served) {
				served = u.served[i+1]
			}
			out[i] = append(out[i], unitWindow{device: u.id, served: served, from: edge(i), to: edge(i + 1)})
		}
		u.mu.Unlock()
	}
	return out
}

// benchMarks are the windows' edges. A request's epoch is how many marks
// came before it was asked.
type benchMarks struct {
	mu sync.RWMutex
	at []time.Time
}

// mark draws an edge now.
func (m *benchMarks) mark() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	t := time.Now()
	m.at = append(m.at, t)
	return t
}

// ask is the moment of a request and its epoch. The moment is read
// under the lock that mark takes: a request asked after an edge is never
// counted before it.
func (m *benchMarks) ask() (time.Time, int) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return time.Now(), len(m.at)
}

// benchUnit is a simulated device that counts what it served by epoch,
// and notes the first request asked after each mark.
type benchUnit struct {
	*device.Device
	id    string
	marks *benchMarks

	mu     sync.Mutex
	served []int64     // readings served, by the epoch of the request
	first  []time.Time // the first request asked after each mark
}

var _ slave.Unit = (*benchUnit)(nil)

// ReadWords answers as the device does, and counts what it served by the
// epoch in which it was asked.
func (u *benchUnit) ReadWords(t mb.Table, addr, qty int) ([]uint16, func(), slave.Exception) {
	at, epoch := u.marks.ask()
	u.mu.Lock()
	for len(u.first) < epoch {
		u.first = append(u.first, at)
	}
	u.mu.Unlock()
	words, commit, exc := u.Device.ReadWords(t, addr, qty)
	if commit == nil {
		return words, nil, exc
	}
	return words, func() {
		u.mu.Lock()
		defer u.mu.Unlock()
		before := u.Device.Stats().ReadingsServed
		commit()
		for len(u.served) <= epoch {
			u.served = append(u.served, 0)
		}
		u.served[epoch] += u.Device.Stats().ReadingsServed - before
	}, exc
}

// askedAfter is how many marks the unit was asked after.
func (u *benchUnit) askedAfter() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.first)
}

// arrivals are the telemetry messages the testbench's subscriber got, by
// device: each one's time and readings.
type arrivals struct {
	t  tally
	mu sync.Mutex
	by map[string][]delivery
}

type delivery struct {
	at       int64 // the message's time, Unix ns
	readings int
}

func newArrivals(st *configs.Station) *arrivals {
	return &arrivals{t: newTally(st), by: map[string][]delivery{}}
}

// observe is the collector's hook: first copies of telemetry only.
func (a *arrivals) observe(m *model.Message, _ []byte, dup bool) {
	if dup || m.Kind != model.KindTelemetry {
		return
	}
	n := a.t.values(m)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.by[m.Device] = append(a.by[m.Device], delivery{m.Time.UnixNano(), n})
}

// count is the readings that arrived in the units' parts of a window.
func (a *arrivals) count(units []unitWindow) int64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n int64
	for _, u := range units {
		for _, m := range a.by[u.device] {
			if m.at >= u.from && m.at < u.to {
				n += int64(m.readings)
			}
		}
	}
	return n
}

// printBench prints the report: the plan, then a paragraph per window.
func printBench(out io.Writer, rep benchReport) {
	verdict := "PASS"
	if !rep.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(out, "%s bench-tcp: %d units × %d fields every %gms on %d endpoint(s): %.0f readings/s scheduled; gateway %s\n",
		verdict, rep.Units, rep.Fields, rep.PollMS, rep.Endpoints, rep.ScheduledPerS, rep.Gateway)
	for i, w := range rep.Windows {
		fmt.Fprintf(out, "  window %d (%.1f s): expected %d readings (%.0f/s), mqtt %d, influx %d; schedule kept %.2f%%\n",
			i+1, w.Seconds, w.Expected, w.ReadingsPerS, w.MQTT, w.Influx, w.SchedulePercent)
		fmt.Fprintf(out, "    gateway %.2f µs/reading (%.2f cores), peak RSS %.1f MB; mosquitto %.2f µs/reading, influxd %.2f µs/reading\n",
			w.GatewayUSPerReading, w.GatewayCores, w.GatewayPeakRSSMB, w.MosquittoUSPerReading, w.InfluxdUSPerReading)
		fmt.Fprintf(out, "    influxdb: %d write requests, %.0f points each; testbench %.2f cores, machine %.2f of %d cores busy\n",
			w.InfluxWrites, w.PointsPerWrite, w.TestbenchCores, w.MachineBusyCores, rep.Cores)
	}
	fmt.Fprintf(out, "  settled %.1f s after the last window\n", rep.SettleS)
	for _, f := range rep.Failures {
		fmt.Fprintf(out, "  failed: %s\n", f)
	}
}
