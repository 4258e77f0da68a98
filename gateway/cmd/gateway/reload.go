package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"outpost/configs"
	"outpost/drivers"
	desk "outpost/gateway/command"
	"outpost/gateway/pipeline"
	"outpost/gateway/status"
)

// Changes in the field: SIGHUP (or gateway reload) makes the running
// gateway read its station file again. Links whose settings, devices or
// templates changed restart; the others keep polling; the queues are
// untouched. A file with errors, or one that changes what only a restart
// can (the station, the hub, the queue, the state directory, the status
// server), is refused with its reasons, and the running configuration
// stays.

// linkSet runs the station's links, each with its driver under a
// supervisor, and restarts those a reload changed.
type linkSet struct {
	ctx  context.Context // the drivers' parent
	wg   *sync.WaitGroup
	emit drivers.Emit
	rtt  *prometheus.HistogramVec // the devices' round trips
	log  *slog.Logger
	run  map[string]*linkRun
}

type linkRun struct {
	link   drivers.Link
	d      drivers.Driver
	cancel context.CancelFunc
	done   chan struct{}
}

// build makes the drivers of links without starting them: every error
// before any I/O.
func build(links []drivers.Link, rtt *prometheus.HistogramVec, log *slog.Logger) (map[string]*linkRun, error) {
	out := map[string]*linkRun{}
	for _, l := range links {
		l.RoundTrip = func(device string, d time.Duration) { rtt.WithLabelValues(l.Name(), device).Observe(d.Seconds()) }
		d, err := drivers.New(l, log)
		if err != nil {
			return nil, err
		}
		out[l.Name()] = &linkRun{link: l, d: d}
	}
	return out, nil
}

// start runs a built link until the set's ctx ends or it is stopped.
func (s *linkSet) start(r *linkRun) {
	ctx, cancel := context.WithCancel(s.ctx)
	r.cancel, r.done = cancel, make(chan struct{})
	s.run[r.link.Name()] = r
	sup := pipeline.DefaultSupervisor
	sup.Failed = func(err error, restarts int, pause time.Duration) {
		s.log.Error("link failed; restarting it", "link", r.link.Name(), "err", err, "restarts", restarts, "in", pause)
	}
	s.wg.Go(func() {
		defer close(r.done)
		sup.Run(ctx, func(ctx context.Context) error { return r.d.Run(ctx, s.emit) })
	})
}

// stop stops a link and waits for its driver to end, up to stopLimit.
func (s *linkSet) stop(name string) {
	r := s.run[name]
	delete(s.run, name)
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(stopLimit):
		s.log.Warn("link did not stop in time; leaving it", "link", name, "after", stopLimit)
	}
}

// targetsOf are the devices the duty desk can command, on these links.
func targetsOf(runs map[string]*linkRun) map[string]desk.Target {
	ts := map[string]desk.Target{}
	for name, r := range runs {
		commander, _ := r.d.(drivers.Commander)
		messenger, _ := r.d.(drivers.Messenger)
		for _, dev := range r.link.Devices {
			ts[dev.ID] = desk.Target{Template: r.link.Template(dev), Link: name, Commander: commander, Messenger: messenger}
		}
	}
	return ts
}

// reloadStation reads the station file again and applies it, or logs why
// not; it returns the station now running. stateDir is the state_dir the
// gateway started with: a file that still names it keeps the gateway on
// the directory it runs on (its fallback, when it has one).
func reloadStation(cur *configs.Station, stateDir string, links *linkSet, ingest *pipeline.Ingest, board *status.Board, commands *desk.Desk, log *slog.Logger) (*configs.Station, status.Reload) {
	log.Info("reloading the station file", "file", cur.File)
	st, err := configs.Load(cur.File)
	if err == nil && st.StateDir == stateDir {
		st.StateDir = cur.StateDir
	}
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			log.Error("station file", "error", line)
		}
		log.Error("reload refused: fix the station file (gateway validate checks it); the gateway runs on as it was", "file", cur.File)
		return cur, status.Reload{At: time.Now().UTC(), Detail: "the station file has errors: " + err.Error()}
	}
	did, err := links.reload(cur, st, func() {
		ingest.SetStation(st)
		board.SetStation(st, time.Now())
	})
	if err != nil {
		log.Error("reload refused; the gateway runs on as it was", "err", err)
		return cur, status.Reload{At: time.Now().UTC(), Detail: err.Error()}
	}
	commands.SetTargets(targetsOf(links.run))
	log.Info("station file reloaded", "links", did)
	return st, status.Reload{At: time.Now().UTC(), Applied: true, Detail: did}
}

// reload applies a station file read again: it stops the links that
// changed or went, calls apply, and starts the changed and new ones. It
// returns what it did, for the log, or why it refused (before any change).
func (s *linkSet) reload(old, st *configs.Station, apply func()) (string, error) {
	if fixed := fixedChanges(old, st); len(fixed) > 0 {
		return "", fmt.Errorf("%s changed: restart the gateway to apply that (systemctl restart outpost)", strings.Join(fixed, ", "))
	}
	var changed, added []drivers.Link
	unchanged := 0
	for _, l := range drivers.Links(st) {
		switch r := s.run[l.Name()]; {
		case r == nil:
			added = append(added, l)
		case sameLink(r.link, l):
			r.link = l // the new file's devices, alike
			unchanged++
		default:
			changed = append(changed, l)
		}
	}
	built, err := build(append(slices.Clone(changed), added...), s.rtt, s.log)
	if err != nil {
		return "", err
	}
	var removed []string
	for name := range s.run {
		if st.Link(name) == nil {
			removed = append(removed, name)
		}
	}
	// Every changed or removed link lets go of its port before any
	// starts: a port may have moved from one link to another.
	for _, name := range removed {
		s.stop(name)
	}
	for _, l := range changed {
		s.stop(l.Name())
	}
	apply()
	for _, r := range built {
		s.start(r)
	}
	return fmt.Sprintf("restarted %s; added %s; removed %s; %d unchanged, still polling",
		names(changed), names(added), orNone(removed), unchanged), nil
}

func names(ls []drivers.Link) string {
	var out []string
	for _, l := range ls {
		out = append(out, l.Name())
	}
	return orNone(out)
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	slices.Sort(s)
	return strings.Join(s, ", ")
}

// fixedChanges names what changed between two station files that only a
// restart can apply.
func fixedChanges(a, b *configs.Station) []string {
	var out []string
	for _, f := range []struct {
		name string
		a, b any
	}{
		{"station", a.Station, b.Station},
		{"hub", a.Hub, b.Hub},
		{"queue", a.Queue, b.Queue},
		{"state_dir", a.StateDir, b.StateDir},
		{"status", a.Status, b.Status},
	} {
		if !reflect.DeepEqual(f.a, f.b) {
			out = append(out, f.name)
		}
	}
	return out
}

// sameLink says whether a link runs alike under both files: the same
// settings, and the same devices with the same settings and templates.
func sameLink(a, b drivers.Link) bool {
	if a.Config.Protocol != b.Config.Protocol || !reflect.DeepEqual(a.Config.Settings, b.Config.Settings) || len(a.Devices) != len(b.Devices) {
		return false
	}
	for i, da := range a.Devices {
		db := b.Devices[i]
		ta, tb := a.Template(da), b.Template(db)
		if da.ID != db.ID || da.Template != db.Template || !reflect.DeepEqual(da.Settings, db.Settings) ||
			ta.Kind != tb.Kind || ta.Alarm != tb.Alarm || !reflect.DeepEqual(ta.Actions, tb.Actions) || !reflect.DeepEqual(ta.Body, tb.Body) {
			return false
		}
	}
	return true
}

// pidFile is where the running gateway of a state directory writes its
// process id, for gateway reload.
func pidFile(stateDir string) string { return filepath.Join(stateDir, "gateway.pid") }

// readPid is the process id in the state directory's pid file: the
// gateway that runs with it, or ran last.
func readPid(stateDir string) (int, error) {
	b, err := os.ReadFile(pidFile(stateDir))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return 0, fmt.Errorf("no %s: it has not been started with this station file", pidFile(stateDir))
	case err != nil:
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s holds no process id (%q)", pidFile(stateDir), strings.TrimSpace(string(b)))
	}
	return pid, nil
}

// pidIn is the process id in the pid file of dir, the directory of the
// station's freshest status, or else of its state_dir (where a gateway
// that could write it at start wrote it, before the disk went read-only).
func pidIn(st *configs.Station, dir string) (int, error) {
	pid, err := readPid(dir)
	if err != nil && dir != st.StateDir {
		pid, err = readPid(st.StateDir)
	}
	return pid, err
}

// runningGateway is the process id of the gateway that runs with this
// station's state, and the directory it keeps it in (state_dir, or a
// fallback), or why none runs.
func runningGateway(st *configs.Station) (int, string, error) {
	dir, s, serr := liveDir(st)
	pid, err := pidIn(st, dir)
	if err != nil {
		return 0, dir, fmt.Errorf("no gateway runs with state_dir %s (%w)", st.StateDir, err)
	}
	// A gateway that died left its pid file; its status file then stops
	// being written, and the pid may be another process's by now. Until
	// then, a pid that no process has is a gateway killed (kill -9, a
	// crash) in the last seconds.
	if serr != nil || time.Since(s.Time) > staleAfter {
		return 0, dir, fmt.Errorf("no gateway runs with state_dir %s (its status file is missing or older than %s)", st.StateDir, staleAfter)
	}
	if !alive(pid) {
		return 0, dir, fmt.Errorf("no gateway runs with state_dir %s (its process %d has ended)", st.StateDir, pid)
	}
	return pid, dir, nil
}

// notWhileRunning says why a command that talks to the station's devices
// must not run beside its gateway, when one runs: two masters on one bus
// answer each other's frames.
func notWhileRunning(st *configs.Station) error {
	pid, _, err := runningGateway(st)
	if err != nil {
		return nil
	}
	return fmt.Errorf("the station's gateway runs (pid %d, state_dir %s): stop it first (sudo systemctl stop outpost), or two masters on its buses scramble each other's frames; while it runs, gateway status and its status page show what it reads", pid, st.StateDir)
}

func cmdReload(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	config := fs.String("config", "", "station file (required)")
	wait := fs.Duration("wait", 15*time.Second, "how long to wait for the gateway to say how the reload went")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	if *config == "" {
		fmt.Fprintln(stderr, "gateway reload: -config STATION.yaml is required")
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		fmt.Fprintln(stderr, "gateway reload: not reloaded: fix the station file first; the gateway runs on as it was")
		return 1
	}
	pid, dir, err := runningGateway(st)
	if err != nil {
		fmt.Fprintln(stderr, "gateway reload:", err)
		return 1
	}
	p, _ := os.FindProcess(pid)
	asked := time.Now()
	if err := p.Signal(syscall.SIGHUP); err != nil {
		fmt.Fprintf(stderr, "gateway reload: cannot signal the gateway (pid %d from %s): %v\n", pid, pidFile(dir), err)
		return 1
	}
	// The gateway writes the outcome into its status file at once.
	for deadline := asked.Add(*wait); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		s, err := status.Read(status.File(dir))
		if err != nil || s.Reload == nil || s.Reload.At.Before(asked) {
			continue
		}
		if !s.Reload.Applied {
			fmt.Fprintf(stderr, "gateway reload: the gateway (pid %d) refused %s and runs on as it was: %s\n", pid, *config, s.Reload.Detail)
			return 1
		}
		fmt.Fprintf(stdout, "gateway (pid %d) reloaded %s: %s\n", pid, *config, s.Reload.Detail)
		for _, w := range warnings(st, nil) {
			fmt.Fprintln(stdout, "warning: "+w)
		}
		return 0
	}
	fmt.Fprintf(stderr, "gateway reload: the gateway (pid %d) was asked to reload %s but has not said how it went within %s; its log says\n", pid, *config, *wait)
	return 1
}
