package main

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/status"
)

// Timeline is what a run looked like over time: enough of it in the JSON
// report to draw the HTML report again from the JSON alone. Times are in
// seconds since the gateway's first start.
type Timeline struct {
	// LoadEndS is when the simulator stopped, EndS the end of the drain.
	LoadEndS float64 `json:"load_end_s"`
	EndS     float64 `json:"end_s"`
	// Hub is sampled once a second.
	Hub []hubSample `json:"hub"`
	// Queue is each new status file of the gateway (it writes one every
	// few seconds): the messages waiting, alarms and telemetry, per uplink.
	Queue  []queueSample  `json:"queue,omitempty"`
	Faults []faultWindow  `json:"faults,omitempty"`
	Health []healthChange `json:"health,omitempty"`
	// Alarms are the raised alarms, per source (dc09, dcon, ...): when
	// each was raised and how long it took to reach the hub.
	Alarms map[string][]alarmPoint `json:"alarms,omitempty"`
}

// hubSample counts readings of every device, the backlog included; a
// store's count in InfluxDB is not sampled: it scans everything stored,
// and would take CPU from the gateway it watches (see watchDrain).
type hubSample struct {
	T float64 `json:"t"`
	// Sent is what the simulator served so far, as its stats file said.
	Sent int `json:"sent"`
	// AtHub is what reached the hub's MQTT so far (first copies), and
	// PerS what of it arrived since the sample before, per second.
	AtHub int     `json:"at_hub_mqtt"`
	PerS  float64 `json:"at_hub_per_s"`
}

type queueSample struct {
	T       float64          `json:"t"`
	Uplinks map[string]int64 `json:"uplinks"`
}

// faultWindow is a fault as a span of the run (a server down, a device
// silent), or a moment (FromS equals ToS: a gateway killed, a device act).
type faultWindow struct {
	Action string  `json:"action"`
	Label  string  `json:"label"`
	FromS  float64 `json:"from_s"`
	ToS    float64 `json:"to_s"`
}

func (w faultWindow) moment() bool { return w.ToS == w.FromS }

// healthChange is a device's health state from T on, as the gateway
// stamped the health message that said so.
type healthChange struct {
	T      float64 `json:"t"`
	Device string  `json:"device"`
	State  string  `json:"state"`
}

type alarmPoint struct {
	T  float64 `json:"t"`
	MS float64 `json:"ms"`
}

// faultMark is a fault played: when it began and when inject returned
// (negative while it runs). Device is the device acting, for "device".
type faultMark struct {
	Action string
	Device string
	Do     string
	At     float64
	Done   float64
}

// faultWindows makes the fault windows of the faults played, in their
// order, by end (seconds, the end of the run): a killed server is down
// until it was restarted (inject returned), a partition until it healed;
// stop-X to the next start-X, freeze-X to thaw-X, partition-start to
// partition-heal and a device's silence to its answer are windows, to
// end when never closed; anything else is a moment.
func faultWindows(marks []faultMark, end float64) []faultWindow {
	var out []faultWindow
	open := map[string]int{} // the act that closes a window -> its index in out
	doneOr := func(m faultMark) float64 {
		if m.Done < 0 {
			return end
		}
		return m.Done
	}
	for _, m := range marks {
		act := m.Action
		if act == "device" {
			act = "device " + m.Device + " " + m.Do
		}
		if i, ok := open[act]; ok {
			out[i].ToS = doneOr(m)
			delete(open, act)
			continue
		}
		w := faultWindow{Action: m.Action, Label: m.Action, FromS: m.At, ToS: m.At}
		closer := "" // the act that closes w
		verb, what, _ := strings.Cut(m.Action, "-")
		switch {
		case m.Action == "device" && m.Do == "silence":
			w.Label, closer = m.Device+" silent", "device "+m.Device+" answer"
		case m.Action == "device":
			w.Label = m.Device + " " + m.Do
		case m.Action == "kill-gateway":
			w.Label = "gateway killed"
		case m.Action == "power-cut":
			w.Label = "power cut"
		case m.Action == "partition":
			w.Label, w.ToS = "network partitioned", doneOr(m)
		case m.Action == "partition-start":
			w.Label, closer = "network partitioned", "partition-heal"
		case verb == "kill":
			w.Label, w.ToS = what+" down", doneOr(m)
		case verb == "stop":
			w.Label, closer = what+" down", "start-"+what
		case verb == "freeze":
			w.Label, closer = what+" frozen", "thaw-"+what
		case verb == "fill":
			w.Label, closer = what+" full", "free-"+what
		}
		if closer != "" {
			w.ToS = end
			open[closer] = len(out)
		}
		out = append(out, w)
	}
	return out
}

// under says which fault windows hold the moment t (moments within the
// last span s), for the progress line.
func under(ws []faultWindow, t, span float64) []string {
	var now []string
	for _, w := range ws {
		holds := w.FromS <= t && (t <= w.ToS || w.moment() && t-w.FromS < span)
		if holds && !slices.Contains(now, w.Label) {
			now = append(now, w.Label)
		}
	}
	return now
}

// healthChanges turns health observations, in the order they arrived,
// into each device's changes of state in time order.
func healthChanges(obs []healthChange) []healthChange {
	s := slices.Clone(obs)
	slices.SortStableFunc(s, func(a, b healthChange) int { return cmp.Compare(a.T, b.T) })
	last := map[string]string{}
	var out []healthChange
	for _, o := range s {
		if last[o.Device] != o.State {
			last[o.Device] = o.State
			out = append(out, o)
		}
	}
	return out
}

// recorder keeps a run's timeline: a sampler started with the gateway
// adds the hub's count and the gateway's queues once a second and says
// how the run goes every progressEvery; the runner adds faults, health
// and alarms as they come. Its zero value is ready; stop ends the
// sampler, and waits for it.
type recorder struct {
	mu     sync.Mutex
	start  time.Time // the gateway's first start
	tl     Timeline
	health []healthSeen // health messages as they arrived
	marks  []faultMark
	status time.Time // the last status file's time

	stopSampler context.CancelFunc
	done        chan struct{}
}

// healthSeen is a device's health as a message stamped at said it; a
// message may come before the gateway's start is known.
type healthSeen struct {
	device, state string
	at            time.Time
}

// progressEvery is how often the sampler logs the run's progress.
const progressEvery = 5 * time.Second

// probe is what the sampler reads: each is cheap (a counter under a
// lock, small files the simulator and the gateway rewrite anyway).
type probe struct {
	atHub  func() int
	sent   func() (int, error)
	status func() (status.Snapshot, error)
	// load and drain are the scenario's, for the progress line.
	load, drain time.Duration
}

// begin starts the sampler at the gateway's start; it runs until stop or
// the end of ctx.
func (rc *recorder) begin(ctx context.Context, start time.Time, p probe, log *slog.Logger) {
	rc.mu.Lock()
	rc.start = start
	rc.mu.Unlock()
	ctx, rc.stopSampler = context.WithCancel(ctx)
	rc.done = make(chan struct{})
	go func() {
		defer close(rc.done)
		rc.sample(ctx, p, log)
	}()
}

func (rc *recorder) sample(ctx context.Context, p probe, log *slog.Logger) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastLog := time.Now()
	for {
		rc.take(p)
		if time.Since(lastLog) >= progressEvery-100*time.Millisecond {
			lastLog = time.Now()
			rc.progress(p, log)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// take adds a sample of the hub's count and, when the gateway wrote a new
// one, of its status file.
func (rc *recorder) take(p probe) {
	now := time.Now()
	atHub := p.atHub()
	sent, err := p.sent()
	st, stErr := p.status()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	t := now.Sub(rc.start).Seconds()
	s := hubSample{T: t, AtHub: atHub}
	if err != nil && len(rc.tl.Hub) > 0 {
		sent = rc.tl.Hub[len(rc.tl.Hub)-1].Sent // the simulator has not written its stats yet
	}
	s.Sent = sent
	if n := len(rc.tl.Hub); n > 0 {
		prev := rc.tl.Hub[n-1]
		if dt := t - prev.T; dt > 0 {
			s.PerS = float64(atHub-prev.AtHub) / dt
		}
	}
	rc.tl.Hub = append(rc.tl.Hub, s)
	if stErr == nil && st.Time.After(rc.status) && !st.Time.Before(rc.start) {
		rc.status = st.Time
		q := queueSample{T: st.Time.Sub(rc.start).Seconds(), Uplinks: map[string]int64{}}
		for _, u := range st.Uplinks {
			q.Uplinks[u.Name] = u.Queue.Alarms + u.Queue.Telemetry
		}
		rc.tl.Queue = append(rc.tl.Queue, q)
	}
}

// progress logs how the run goes: where it is, what was sent and what the
// hub has, what waits in the gateway, and the fault under way.
func (rc *recorder) progress(p probe, log *slog.Logger) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if len(rc.tl.Hub) == 0 {
		return
	}
	s := rc.tl.Hub[len(rc.tl.Hub)-1]
	phase := fmt.Sprintf("load %.0f/%.0f s", s.T, p.load.Seconds())
	if at := s.T - p.load.Seconds(); at > 0 {
		phase = fmt.Sprintf("drain %.0f/%.0f s", at, p.drain.Seconds())
	}
	var queued []string
	if n := len(rc.tl.Queue); n > 0 {
		q := rc.tl.Queue[n-1].Uplinks
		for _, u := range slices.Sorted(maps.Keys(q)) {
			queued = append(queued, fmt.Sprintf("%s %d", u, q[u]))
		}
	}
	fault := strings.Join(under(faultWindows(rc.marks, s.T), s.T, progressEvery.Seconds()), ", ")
	if fault == "" {
		fault = "none"
	}
	log.Info("progress", "at", phase, "sent", s.Sent, "at_hub_mqtt", s.AtHub,
		"queued", strings.Join(queued, ", "), "fault", fault)
}

// observe is the collector's hook: it keeps each health message's state.
func (rc *recorder) observe(m *model.Message, _ []byte, dup bool) {
	if dup || m.Kind != model.KindHealth || m.Health == nil {
		return
	}
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.health = append(rc.health, healthSeen{m.Device, string(m.Health.State), m.Time})
}

// faultStarts notes a fault as it begins; faultDone(i) when inject returned.
func (rc *recorder) faultStarts(f Fault) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	m := faultMark{Action: f.Action, At: time.Since(rc.start).Seconds(), Done: -1}
	if f.Device != nil {
		m.Device, m.Do = f.Device.Device, f.Device.Do
	}
	rc.marks = append(rc.marks, m)
	return len(rc.marks) - 1
}

func (rc *recorder) faultDone(i int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.marks[i].Done = time.Since(rc.start).Seconds()
}

// alarm notes a raised alarm's latency, from its moment at the device.
func (rc *recorder) alarm(source string, at time.Time, took time.Duration) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.tl.Alarms == nil {
		rc.tl.Alarms = map[string][]alarmPoint{}
	}
	rc.tl.Alarms[source] = append(rc.tl.Alarms[source], alarmPoint{T: at.Sub(rc.start).Seconds(), MS: ms(took)})
}

// stop ends the sampler and waits for it; it may be called again.
func (rc *recorder) stop() {
	if rc.stopSampler == nil {
		return
	}
	rc.stopSampler()
	<-rc.done
}

// finish stops the sampler and returns the timeline, or nil when the
// gateway never started.
func (rc *recorder) finish(loadEnd time.Time) *Timeline {
	rc.stop()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.start.IsZero() {
		return nil
	}
	tl := rc.tl
	if n := len(tl.Hub); n > 0 {
		tl.EndS = tl.Hub[n-1].T
	}
	if !loadEnd.IsZero() {
		tl.LoadEndS = loadEnd.Sub(rc.start).Seconds()
	}
	obs := make([]healthChange, len(rc.health))
	for i, h := range rc.health {
		obs[i] = healthChange{T: max(h.at.Sub(rc.start).Seconds(), 0), Device: h.device, State: h.state}
	}
	tl.Health = healthChanges(obs)
	tl.Faults = faultWindows(rc.marks, tl.EndS)
	for src := range tl.Alarms {
		slices.SortFunc(tl.Alarms[src], func(a, b alarmPoint) int { return cmp.Compare(a.T, b.T) })
	}
	return &tl
}

// probe is what the run's sampler reads.
func (r *runner) probe() probe {
	backlog := 0
	if r.report.Drain != nil {
		backlog = r.report.Drain.Backlog
	}
	return probe{
		atHub: r.col.readingsSoFar,
		sent: func() (int, error) {
			s, err := readSimStats(r.statsFile())
			return s.ReadingsServed + backlog, err
		},
		status: func() (status.Snapshot, error) { return status.Read(status.File(r.st.StateDir)) },
		load:   r.sc.Duration,
		drain:  r.sc.Drain,
	}
}
