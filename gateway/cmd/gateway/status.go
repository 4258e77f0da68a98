package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"outpost/configs"
	"outpost/gateway/durable"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/status"
	"outpost/gateway/uplink/mqtt"
)

// statusEvery is how often the running gateway writes its status file;
// a file older than staleAfter means the gateway is not running. A device
// degraded for badFor without a good value needs attention.
const (
	statusEvery = 5 * time.Second
	staleAfter  = 15 * time.Second
	badFor      = time.Minute
)

// uplinkState says whether an uplink reaches the hub, since when, and why
// not.
type uplinkState func() linkState

// linkState is an uplink's state: whether it reaches the hub, why not,
// since when, and for the broker's uplink the brokers its two connections
// are (or were last) on.
type linkState struct {
	connected           bool
	cause               string
	since               time.Time
	broker, alarmBroker string
}

// snapshots builds the gateway's status, as the status file, the status
// server and the hub's health snapshot show it.
type snapshots struct {
	st       *configs.Station
	started  time.Time
	unusable *model.Message // the state_dir_unusable event, when the state is in a fallback
	queues   map[string]*queue.Reader
	states   map[string]uplinkState
	dead     *pipeline.DeadLetters
	fwds     map[string][]*pipeline.Forwarder // by uplink
	board    *status.Board
	// unchanged is how many of a device's readings report by exception
	// left out.
	unchanged func(device string) uint64
	listen    string // the status server's address, when it runs

	mu       sync.Mutex
	reload   *status.Reload // the last reload's outcome
	writeNow chan struct{}  // asks writeStatus to write at once
}

// reloaded records a reload's outcome and has the status file say it at
// once, for gateway reload to read.
func (g *snapshots) reloaded(r status.Reload) {
	g.mu.Lock()
	g.reload = &r
	g.mu.Unlock()
	select {
	case g.writeNow <- struct{}{}:
	default:
	}
}

func (g *snapshots) snapshot() status.Snapshot {
	st := g.st
	s := status.Snapshot{V: 1, Station: st.Station.ID, Type: string(st.Station.Type), Time: time.Now().UTC(), Started: g.started,
		Disk: status.DiskOf(st.StateDir), Devices: g.board.Devices(), Listen: g.listen}
	for i, d := range s.Devices {
		s.Devices[i].Unchanged = g.unchanged(d.ID)
	}
	if g.unusable != nil {
		s.StateDirError = g.unusable.Event.Details["error"]
	}
	g.mu.Lock()
	s.Reload = g.reload
	g.mu.Unlock()
	for _, name := range st.Uplinks() {
		qs := g.queues[name].Stats()
		a, t := qs.Kept(), qs.Lanes[queue.LaneTelemetry]
		ls := g.states[name]()
		var age float64
		for _, o := range []time.Time{a.Oldest, t.Oldest} {
			if !o.IsZero() {
				age = max(age, time.Since(o).Seconds())
			}
		}
		u := status.Uplink{
			Name: name, Connected: ls.connected, Cause: ls.cause, Since: ls.since.UTC(), DeadLetters: g.dead.Kept(name),
			Broker: ls.broker, AlarmBroker: ls.alarmBroker,
			Queue: status.Queue{Alarms: a.Records, Telemetry: t.Records, Readings: a.Readings + t.Readings,
				Bytes: a.Bytes + t.Bytes, InMemory: a.Memory, TelemetryInMemory: t.Memory, DroppedReadings: t.DroppedReadings, LostAlarms: a.Lost + a.Dropped,
				DiskError: diskError(qs), OldestAgeS: age},
			Forwarders: []status.Forwarder{},
		}
		for _, f := range g.fwds[name] {
			fs := f.State()
			u.Forwarders = append(u.Forwarders, status.Forwarder{Lane: f.Lanes[0].String(), Delivered: fs.Delivered,
				Failures: fs.Failures, Restarts: fs.Restarts, LastDelivery: fs.LastDelivery.UTC()})
		}
		s.Uplinks = append(s.Uplinks, u)
	}
	return s
}

// notReady says what keeps the gateway from doing its job: a queue whose
// disk refuses writes. A hub out of reach does not: the queues keep
// everything meanwhile.
func (g *snapshots) notReady() []string {
	var why []string
	for _, name := range g.st.Uplinks() {
		if e := diskError(g.queues[name].Stats()); e != "" {
			why = append(why, fmt.Sprintf("the disk refuses the %s queue's writes: %s", name, e))
		}
	}
	return why
}

// writeStatus writes the gateway's status file every statusEvery,
// whenever now asks, and snapshotCalm after a device's state changed (see
// changed), until ctx ends, and once more then: `gateway status` run just
// after a device went offline or came back says so. When its directory
// was deleted since the last write (gone, or another directory by now: the
// queue may have made it again) it makes it again and calls deleted. While
// path cannot be written (a disk remounted read-only), the status goes to
// the first of spare that takes it (see fallbackDirs), where gateway status
// finds it.
func writeStatus(ctx context.Context, path string, spare []string, snap func() status.Snapshot, now <-chan struct{}, changed func() <-chan struct{}, deleted func(), log *slog.Logger) {
	dir := filepath.Dir(path)
	var was os.FileInfo // the directory at the last write
	spared := ""        // the spare status file written last
	write := func() {
		fi, err := os.Stat(dir) // metadata: served from memory, also by a disk that hangs
		if errors.Is(err, fs.ErrNotExist) {
			if err = durable.Bounded(func() error { return durable.MkdirAll(dir) }, nil); err == nil {
				fi, err = os.Stat(dir)
			}
		}
		if err == nil {
			if was != nil && !os.SameFile(fi, was) {
				deleted()
			}
			was = fi
			// Bounded: a disk that hangs must not hold the last write at the end.
			err = durable.Bounded(func() error { return status.Write(path, snap()) }, nil)
		}
		if err == nil && spared != "" {
			os.Remove(spared)
			spared = ""
		}
		if err != nil {
			log.Debug("status file not written", "err", err)
			for _, d := range spare {
				p := status.File(d)
				if d != dir && durable.Bounded(func() error { return errors.Join(durable.MkdirAll(d), status.Write(p, snap())) }, nil) == nil {
					spared = p
					break
				}
			}
		}
	}
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		ch := changed() // before the write: a change during it is not missed
		write()
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
		case <-now:
		case <-ch:
			if !calm(ctx) {
				write()
				return
			}
		}
	}
}

// calm waits snapshotCalm after a device's state changed, so that changes
// that come together (the devices of a port that failed) go together. It
// says false when ctx ended first.
func calm(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(snapshotCalm):
		return true
	}
}

// How often the hub is sent the station's health snapshot: every
// snapshotEvery, snapshotCalm after a device's state changed (changes
// that come together go together), and every snapshotRetry while the
// broker cannot take it.
const (
	snapshotEvery = time.Minute
	snapshotCalm  = time.Second
	snapshotRetry = 5 * time.Second
)

// retainer publishes a retained message to the hub's broker.
type retainer interface {
	Retain(ctx context.Context, topic string, payload []byte) error
}

// publishSnapshots sends the hub the station's health snapshot, retained
// on {prefix}/{station}/snapshot, so that an operator's view that connects
// sees every station's devices at once, until ctx ends.
func publishSnapshots(ctx context.Context, hub retainer, topic string, snap func() status.Snapshot, changed func() <-chan struct{}, log *slog.Logger) {
	wait := snapshotCalm
	tooLarge := false // warned that the snapshot is over the broker's limit
	for {
		ch := changed()
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		case <-ch:
			if !calm(ctx) {
				return
			}
		}
		b, err := json.Marshal(snap())
		if err == nil {
			pctx, cancel := context.WithTimeout(ctx, snapshotRetry)
			err = hub.Retain(pctx, topic, b)
			cancel()
		}
		wait = snapshotEvery
		switch {
		case errors.Is(err, mqtt.ErrOverLimit):
			// Sent again when it is small enough: no sooner than usual.
			if !tooLarge {
				log.Warn("health snapshot not sent: larger than the broker takes; raise the broker's max_packet_size (and hub.mqtt.max_packet_size)", "err", err)
			}
			tooLarge = true
		case err != nil:
			log.Debug("health snapshot not sent", "err", err)
			wait = snapshotRetry
		default:
			tooLarge = false
		}
	}
}

func diskError(s queue.Stats) string {
	if s.WriteFailing {
		return s.WriteError
	}
	return ""
}

func cmdStatus(c *command, args []string, stdout, stderr io.Writer) int {
	flags := c.flags(stderr)
	config := flags.String("config", "", "station file (required)")
	if ok, code := c.parse(flags, args, stdout); !ok {
		return code
	}
	if *config == "" {
		fmt.Fprintln(stderr, "gateway status: -config STATION.yaml is required")
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	dir, s, err := liveDir(st)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stdout, "station %s: the gateway has not run with this station file (no %s)\n", st.Station.ID, status.File(st.StateDir))
		return 1
	}
	if errors.Is(err, fs.ErrPermission) {
		fmt.Fprintf(stderr, "gateway status: %v: the state directory is the gateway's user's alone; run it with sudo\n", err)
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "gateway status:", err)
		return 1
	}
	now, pid := time.Now(), 0
	if now.Sub(s.Time) > staleAfter {
		if p, err := pidIn(st, dir); err == nil && gatewayAlive(p) {
			pid = p
		}
	}
	return printStatus(stdout, s, now, pid, deadLettersWaiting(inDir(st, dir).DeadLetterDir()))
}

// deadFile is a dead-letter file that holds messages: the hub refused
// them for good, and they wait for an operator to mend the cause and send
// them again (docs/operations.md, "When the hub refuses a message").
type deadFile struct {
	path     string
	messages int
}

// deadLettersWaiting lists the dead-letter files in dir that hold
// messages. A file the operator moved away to send again, or deleted, no
// longer counts.
func deadLettersWaiting(dir string) []deadFile {
	files, _ := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	var waiting []deadFile
	for _, f := range files {
		b, err := os.ReadFile(f)
		if n := bytes.Count(b, []byte("\n")); err == nil && n > 0 {
			waiting = append(waiting, deadFile{f, n})
		}
	}
	return waiting
}

// liveDir is the directory of the station's freshest status file: its
// state_dir, or a fallback (see fallbackDirs) with a newer one.
func liveDir(st *configs.Station) (string, status.Snapshot, error) {
	dir := st.StateDir
	s, err := status.Read(status.File(dir))
	for _, fb := range fallbackDirs(st.Station.ID) {
		if other, ferr := status.Read(status.File(fb)); ferr == nil && (err != nil || other.Time.After(s.Time)) {
			dir, s, err = fb, other, nil
		}
	}
	return dir, s, err
}

// alive says whether process pid lives.
func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// gatewayAlive says whether process pid lives and, where /proc tells, is
// a gateway's run (a pid file outlives its gateway, and the pid may be
// another process's by now).
func gatewayAlive(pid int) bool {
	if !alive(pid) {
		return false
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return !errors.Is(err, fs.ErrNotExist) || !exists("/proc/self")
	}
	return slices.Contains(strings.Split(string(cmdline), "\x00"), "run")
}

// printStatus prints a status for a person, and returns 0 when the
// gateway runs, reaches every hub store and hears every device, and no
// message the hub refused waits in dead (the station's dead-letter files),
// 1 otherwise. pid is the gateway's process when it lives though its
// status is stale, else 0.
func printStatus(w io.Writer, s status.Snapshot, now time.Time, pid int, dead []deadFile) int {
	code := 0
	age := now.Sub(s.Time).Round(time.Second)
	fmt.Fprintf(w, "station %s (%s), running since %s\n", s.Station, s.Type, s.Started.Local().Format(time.DateTime))
	switch {
	case age <= staleAfter:
	case pid != 0:
		fmt.Fprintf(w, "NOT ANSWERING: the gateway (pid %d) runs, but last wrote its status %s ago (%s): it is stopped or stuck, or its disk hangs; its log says more (sudo systemctl restart outpost restarts it). What follows is as of then.\n",
			pid, age, s.Time.Local().Format(time.DateTime))
		code = 1
	default:
		fmt.Fprintf(w, "NOT RUNNING: the gateway last wrote its status %s ago (%s). What follows is as of then.\n", age, s.Time.Local().Format(time.DateTime))
		code = 1
	}
	if s.StateDirError != "" {
		fmt.Fprintf(w, "STATE IN MEMORY: the gateway could not write its state_dir at start (%s); it keeps its state in %s, and a power cut loses what is queued there: mend the disk, then restart the gateway, which takes the state back.\n",
			s.StateDirError, s.Disk.Dir)
		code = 1
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "uplink\thub\tsince\talarms\ttelemetry\treadings\tdropped\tdead letters")
	var notes []string
	for _, u := range s.Uplinks {
		state := "connected"
		if !u.Connected {
			state, code = "DOWN", 1
		}
		q := u.Queue
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", u.Name, state, u.Since.Local().Format(time.TimeOnly),
			q.Alarms, q.Telemetry, q.Readings, q.DroppedReadings, u.DeadLetters)
		if u.Cause != "" && !u.Connected {
			notes = append(notes, fmt.Sprintf("%s: %s", u.Name, u.Cause))
		}
		if u.Broker != "" {
			on := "on broker"
			if !u.Connected {
				on = "last on broker"
			}
			note := fmt.Sprintf("%s: %s %s", u.Name, on, u.Broker)
			if u.AlarmBroker != "" && u.AlarmBroker != u.Broker {
				note += ", alarm connection on " + u.AlarmBroker
			}
			notes = append(notes, note)
		}
		for _, f := range u.Forwarders {
			if f.Restarts > 0 {
				notes = append(notes, fmt.Sprintf("%s: the %s lane's forwarder failed and was restarted %d times (the log says why)", u.Name, f.Lane, f.Restarts))
			}
		}
		switch {
		case q.DiskError != "":
			code = 1
			notes = append(notes, fmt.Sprintf("%s: the disk refuses the queue's writes (%s); %d alarms and %d telemetry records held in memory, %d alarms lost",
				u.Name, q.DiskError, q.InMemory, q.TelemetryInMemory, q.LostAlarms))
		case q.LostAlarms > 0:
			code = 1
			notes = append(notes, fmt.Sprintf("%s: %d alarms or health changes were lost since start, with queue files deleted or refused (the log says which)", u.Name, q.LostAlarms))
		}
	}
	for _, d := range dead {
		code = 1
		uplink, _, _ := strings.Cut(filepath.Base(d.path), ".")
		notes = append(notes, fmt.Sprintf("%s: %d messages the hub refused for good wait in %s: mend the cause, send them again, then delete the file (docs/operations.md, \"When the hub refuses a message\")",
			uplink, d.messages, d.path))
	}
	tw.Flush()
	slices.Sort(notes)
	if len(notes) > 0 {
		fmt.Fprintln(w, "\n"+strings.Join(notes, "\n"))
	}
	if len(s.Devices) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "device	state	since	last value	unchanged	reason")
		var offline, bad []string
		for _, d := range s.Devices {
			seen := "never"
			if !d.LastSeen.IsZero() {
				seen = d.LastSeen.Local().Format(time.TimeOnly)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.State, d.Since.Local().Format(time.TimeOnly), seen, d.Unchanged, d.Reason)
			switch {
			case d.State == model.Offline:
				offline = append(offline, d.ID)
			case d.State == model.Degraded && d.LastSeen.Before(d.Since) && s.Time.Sub(d.Since) >= badFor:
				bad = append(bad, d.ID)
			}
		}
		tw.Flush()
		// A device the station does not hear needs attention as much as
		// a hub it does not reach, and so does one that answers with
		// nothing good (another module at its address, a template that
		// misreads it). One degraded now and then, with good values
		// between (a noisy line), does not.
		if len(offline) > 0 {
			code = 1
			fmt.Fprintf(w, "\n%d of %d devices offline: %s\n", len(offline), len(s.Devices), strings.Join(offline, ", "))
		}
		if len(bad) > 0 {
			code = 1
			fmt.Fprintf(w, "\n%d of %d devices degraded for %s or more without a good value: %s\n", len(bad), len(s.Devices), badFor, strings.Join(bad, ", "))
		}
	}
	if s.Listen != "" {
		fmt.Fprintf(w, "\nstatus page: http://%s/\n", s.Listen)
	}
	return code
}
