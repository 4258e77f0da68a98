package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"outpost/gateway/model"
)

// AlarmPlan raises alarms through the simulator's control API at random
// moments between From and To after the gateway's start, as many from
// each source.
type AlarmPlan struct {
	Count   int           `yaml:"count"`
	From    time.Duration `yaml:"from"`
	To      time.Duration `yaml:"to"`
	Sources []AlarmSource `yaml:"sources"`
	// Gap is the least time between two alarms of one source, counted
	// from when the last was done (a press with wait=true is done when
	// the button is let go): a button pressed again while it is still
	// held, or released for less than its alarm poll, raises nothing.
	Gap time.Duration `yaml:"gap"`
}

// AlarmSource is what raises one source's alarms, and its own gap where
// it needs a longer one than the plan's (a release is a change to
// confirm too).
type AlarmSource struct {
	DeviceAct `yaml:",inline"`
	Gap       time.Duration `yaml:"gap"`
}

// DeviceAct is an action of a simulated device (see firmware-sim's
// control API); "{n}" in an argument becomes the alarm's number.
type DeviceAct struct {
	Device string            `yaml:"device"`
	Do     string            `yaml:"do"`
	Args   map[string]string `yaml:"args"`
}

// ExpectEvent is an event the hub must get within a time of a fault.
type ExpectEvent struct {
	// AfterFault is the index of the fault (in the order the scenario
	// lists them, first time) the time counts from.
	AfterFault int    `yaml:"after_fault"`
	Device     string `yaml:"device"`
	// Kind is the event's kind; or, with State, "health": a health
	// message of the device in that state.
	Kind     string            `yaml:"kind"`
	State    model.HealthState `yaml:"state"`
	Severity model.Severity    `yaml:"severity"`
	Within   time.Duration     `yaml:"within"`
}

// seenAfter is, in a report, when the hub saw a change a fault made.
type seenAfter struct {
	Device string `json:"device"`
	Change string `json:"change"` // an event's kind, or "health STATE"
	// AtSimulator is when the fault made the change at the simulated
	// device, AtHub when the hub's subscriber got it.
	AtSimulator time.Time `json:"at_simulator"`
	AtHub       time.Time `json:"at_hub,omitzero"`
	TookS       float64   `json:"took_s,omitempty"`
	WithinS     float64   `json:"within_s"`
}

// alarmReport is the events part of a report about raised alarms.
type alarmReport struct {
	Sent        int `json:"sent"`
	Delivered   int `json:"delivered"`
	Lost        int `json:"lost"`
	Duplicates  int `json:"duplicates"`
	Redelivered int `json:"redelivered,omitempty"`
	// LatencyMS is, per source (dc09, dcon, ...), from the alarm's
	// moment at the device (the end of its frame on the wire, the input
	// change) to its arrival at the hub's subscriber.
	LatencyMS map[string]latency `json:"latency_ms"`
}

type latency struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// latencyOf sums up durations (in any order).
func latencyOf(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return ms(s[min(max(i, 0), len(s)-1)])
	}
	return latency{N: len(s), P50: q(0.50), P99: q(0.99), Max: ms(s[len(s)-1])}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// act makes a simulated device act through the control API.
func (r *runner) act(ctx context.Context, a DeviceAct, n int) error {
	// Not while the devices are deaf for a gateway's kill: a device that
	// hears nothing takes no action either. It acts once they hear again.
	r.hearing.RLock()
	defer r.hearing.RUnlock()
	q := url.Values{}
	for k, v := range a.Args {
		q.Set(k, strings.ReplaceAll(v, "{n}", fmt.Sprint(n)))
	}
	if err := postControl(ctx, r.control, fmt.Sprintf("devices/%s/%s?%s", url.PathEscape(a.Device), url.PathEscape(a.Do), q.Encode())); err != nil {
		return fmt.Errorf("%s %s: %w", a.Device, a.Do, err)
	}
	return nil
}

// deafen makes every device of the simulator whose control API is at
// control deaf (true) or hear again: done when the simulator answers, so
// that the two keep their order.
func deafen(ctx context.Context, control string, deaf bool) error {
	path := "hear"
	if deaf {
		path = "deaf"
	}
	if err := postControl(ctx, control, path); err != nil {
		return fmt.Errorf("the simulator's devices %s: %w", path, err)
	}
	return nil
}

// postControl makes a request of the simulator's control API at control
// (path after its address), and returns its error text when it does not
// answer 200.
func postControl(ctx context.Context, control, path string) error {
	if control == "" {
		return fmt.Errorf("the simulator has no control API")
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+control+"/"+path, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return errors.New(strings.TrimSpace(string(body)))
	}
	return nil
}

// raiseAlarms runs the scenario's alarm plan, from the gateway's start.
// The sources act side by side, each its alarms in turn.
func (r *runner) raiseAlarms(ctx context.Context) error {
	p := r.sc.Alarms
	if p == nil {
		return nil
	}
	// Each source's alarms fall one in each of its equal slots of the
	// span, at a random moment of the slot that leaves Gap to the next.
	type alarm struct {
		at time.Duration
		n  int // its number in the plan's time order, for "{n}"
	}
	plan := make([][]alarm, len(p.Sources))
	var all []*alarm
	gap := func(src int) time.Duration { return max(p.Gap, p.Sources[src].Gap) }
	for src := range p.Sources {
		n := p.Count / len(p.Sources)
		if src < p.Count%len(p.Sources) {
			n++
		}
		if n == 0 {
			continue
		}
		slot := (p.To - p.From) / time.Duration(n)
		if slot <= gap(src) {
			return fmt.Errorf("alarms: %d alarms from %d sources, %s apart from %s, do not fit between %s and %s", p.Count, len(p.Sources), gap(src), p.Sources[src].Device, p.From, p.To)
		}
		plan[src] = make([]alarm, n)
		for k := range plan[src] {
			plan[src][k].at = p.From + time.Duration(k)*slot + time.Duration(r.rng.Int64N(int64(slot-gap(src))))
			all = append(all, &plan[src][k])
		}
	}
	slices.SortStableFunc(all, func(a, b *alarm) int { return cmp.Compare(a.at, b.at) })
	for i, a := range all {
		a.n = i + 1
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for src, alarms := range plan {
		wg.Go(func() {
			// An act late behind a slow one (a press that is done when
			// the button is let go, a simulator starved of CPU) still
			// leaves Gap after the last: two presses 5 ms apart are one
			// long press.
			var last time.Time
			for _, a := range alarms {
				at := r.gwStart.Add(a.at)
				if !last.IsZero() && at.Before(last.Add(gap(src))) {
					at = last.Add(gap(src))
				}
				if err := sleepCtx(ctx, time.Until(at)); err != nil {
					cancel(err)
					return
				}
				if err := r.act(ctx, p.Sources[src].DeviceAct, a.n); err != nil {
					cancel(fmt.Errorf("alarm %d: %w", a.n, err))
					return
				}
				last = time.Now()
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}

// raised is a line of the simulator's -raised log.
type raised struct {
	Device string    `json:"device"`
	Kind   string    `json:"kind"`
	State  string    `json:"state"`
	At     time.Time `json:"at"`
	Source string    `json:"source"`
}

func (r *runner) raisedFile() string { return filepath.Join(r.work, "raised.jsonl") }

func readRaised(path string) ([]raised, error) { return readJSONLines[raised](path) }

// readJSONLines reads a file of JSON lines, one T each; none when the
// file is not there.
func readJSONLines[T any](path string) ([]T, error) {
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []T
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var v T
		if err := json.Unmarshal(sc.Bytes(), &v); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, v)
	}
	return out, sc.Err()
}

// checkAlarms matches the alarms the simulator raised with the events that
// reached the hub: per device, kind and state, the k-th raised is the k-th
// arrived in the gateway's order (seq). Every alarm must arrive once. When
// one did not (or one came twice), that order no longer pairs them, and
// their latencies are left out: paired in order past a lost alarm, each
// would be the next one's arrival, a press apart.
func (r *runner) checkAlarms() error {
	rs, err := readRaised(r.raisedFile())
	if err != nil || len(rs) == 0 {
		return err
	}
	arrivals, _, err := r.alarmArrivals()
	if err != nil {
		return err
	}
	type key struct{ device, kind, state string }
	sent := map[key][]raised{}
	for _, x := range rs {
		k := key{x.Device, x.Kind, x.State}
		sent[k] = append(sent[k], x)
	}
	got := map[key][]arrival{}
	for _, a := range arrivals {
		e := a.Msg.Event
		if a.Msg.Kind != model.KindEvent || e == nil {
			continue
		}
		state := e.Details["state"]
		if state == "" {
			state = "active"
		}
		k := key{a.Msg.Device, e.Kind, state}
		if _, raisedThere := sent[k]; raisedThere {
			got[k] = append(got[k], a)
		}
	}
	rep := &alarmReport{LatencyMS: map[string]latency{}}
	lat := map[string][]time.Duration{}
	for k, xs := range sent {
		sort.Slice(xs, func(i, j int) bool { return xs[i].At.Before(xs[j].At) })
		as := got[k]
		sort.Slice(as, func(i, j int) bool { return as[i].Msg.Seq < as[j].Msg.Seq })
		rep.Sent += len(xs)
		n := min(len(xs), len(as))
		rep.Delivered += n
		rep.Lost += len(xs) - n
		rep.Duplicates += len(as) - n
		if len(xs) != len(as) {
			r.fail("alarms of %s %s %s: %d raised, %d arrived (their latencies are left out)", k.device, k.kind, k.state, len(xs), len(as))
			continue
		}
		for i := range n {
			lat[xs[i].Source] = append(lat[xs[i].Source], as[i].At.Sub(xs[i].At))
			r.tl.alarm(xs[i].Source, xs[i].At, as[i].At.Sub(xs[i].At))
		}
	}
	for src, ds := range lat {
		rep.LatencyMS[src] = latencyOf(ds)
		if limit, ok := r.sc.Expect.AlarmP99MS[src]; ok && rep.LatencyMS[src].P99 > limit {
			r.fail("alarms from %s: p99 latency %.1f ms, above %.0f ms", src, rep.LatencyMS[src].P99, limit)
		}
	}
	r.report.Alarms = rep
	return nil
}

// checkExpectedEvents holds the events the scenario expects after its
// faults.
func (r *runner) checkExpectedEvents() {
	arrivals, _, err := r.alarmArrivals()
	if err != nil {
		r.fail("alarm watcher: %v", err)
		return
	}
	for _, want := range r.sc.Expect.EventsAfter {
		if want.AfterFault >= len(r.faultAt) {
			r.fail("expect.events_after: fault %d never ran", want.AfterFault)
			continue
		}
		from := r.faultAt[want.AfterFault]
		change := want.Kind
		if want.State != "" {
			change = "health " + string(want.State)
		}
		seen := seenAfter{Device: want.Device, Change: change, AtSimulator: from, WithinS: want.Within.Seconds()}
		for _, a := range arrivals {
			m := a.Msg
			if m.Device != want.Device || a.At.Before(from) {
				continue
			}
			if want.State != "" {
				if m.Health == nil || m.Health.State != want.State {
					continue
				}
			} else {
				if m.Event == nil || m.Event.Kind != want.Kind {
					continue
				}
				if want.Severity != "" && m.Event.Severity != want.Severity {
					r.fail("%s of %s arrived as %s, want %s", want.Kind, want.Device, m.Event.Severity, want.Severity)
				}
			}
			seen.AtHub, seen.TookS = a.At, a.At.Sub(from).Seconds()
			if took := a.At.Sub(from); took > want.Within {
				r.fail("%s of %s reached the hub %.1fs after fault %d, later than %s", change, want.Device, took.Seconds(), want.AfterFault, want.Within)
			}
			break
		}
		if seen.AtHub.IsZero() {
			r.fail("no %s of %s reached the hub after fault %d", change, want.Device, want.AfterFault)
		}
		r.report.EventsAfter = append(r.report.EventsAfter, seen)
	}
}

func (r *runner) servedFile() string { return filepath.Join(r.work, "served.jsonl") }

// checkValues holds the good values at the hub to those the simulator
// served, and the devices' health counters to the damaged frames they
// must show.
func (r *runner) checkValues() error {
	good, counters := r.col.goodValuesAndCounters()
	r.report.Refused = r.checkCounters(r.sc.Expect.Refused, counters)
	r.report.Counted = r.checkCounters(r.sc.Expect.Counted, counters)
	for _, dev := range r.sc.Expect.BadFramesCounted {
		c := counters[dev]
		n := c["crc_errors"] + c["checksum_errors"] + c["frame_errors"] + c["bad_frames"]
		r.report.BadFrames = append(r.report.BadFrames, fmt.Sprintf("%s: %d", dev, n))
		if n == 0 {
			r.fail("%s: its health counters at the hub show no damaged frames (%v)", dev, c)
		}
	}
	if !r.sc.Expect.ServedValues {
		return nil
	}
	f, err := os.Open(r.servedFile())
	if err != nil {
		return err
	}
	defer f.Close()
	served := map[string]struct{}{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var l struct {
			Device, Signal string
			Value          any
		}
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("served log: %w", err)
		}
		var v model.Value
		switch x := l.Value.(type) {
		case float64:
			v = model.Number(x)
		case bool:
			v = model.Bool(x)
		case string:
			v = model.String(x)
		}
		served[l.Device+"/"+l.Signal+"/"+v.String()] = struct{}{}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	wrong := 0
	for k := range good {
		if _, ok := served[k]; !ok {
			if wrong < 5 {
				r.fail("value at the hub never served (damaged on the way, yet good): %s", k)
			}
			wrong++
		}
	}
	r.report.WrongGoodValues = wrong
	return nil
}

// checkCounters holds the devices' health counters at the hub to their
// bounds [least, most] (expect.refused, expect.counted) and returns them,
// one line each.
func (r *runner) checkCounters(bounds map[string]map[string][2]uint64, counters map[string]map[string]uint64) []string {
	var lines []string
	for _, dev := range slices.Sorted(maps.Keys(bounds)) {
		for _, name := range slices.Sorted(maps.Keys(bounds[dev])) {
			b, n := bounds[dev][name], counters[dev][name]
			lines = append(lines, fmt.Sprintf("%s %s: %d", dev, name, n))
			if n < b[0] || n > b[1] {
				r.fail("%s: %d %s at the hub, want %d to %d", dev, n, name, b[0], b[1])
			}
		}
	}
	return lines
}
