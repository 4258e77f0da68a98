package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/status"
	"outpost/testbench/hub"
)

// TestStatusShowsRefusal: a hub broker that refuses the gateway's password
// shows in `gateway status` with the cause, and the command exits 1.
func TestStatusShowsRefusal(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := hub.PasswordFile(pw, "outpost", "right"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := hub.StartMosquittoWith(ctx, filepath.Join(dir, "broker"), slog.New(slog.DiscardHandler), hub.MosquittoOptions{
		Config: "allow_anonymous false\npassword_file " + pw + "\n"})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	path := station(t, "tcp://outpost:wrong@"+m.Addr()).File
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()

	var s status.Snapshot
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if s, err = status.Read(status.File(st.StateDir)); err == nil && len(s.Uplinks) == 1 && s.Uplinks[0].Cause != "" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	var out, errb bytes.Buffer
	code := cli([]string{"status", "-config", path}, &out, &errb)
	if code != 1 {
		t.Errorf("gateway status exited %d, want 1; stderr %s", code, errb.String())
	}
	for _, want := range []string{"station sd-1 (safety_post), running since", "mqtt    DOWN",
		"mqtt: the broker refused the gateway: not authorised (check hub.mqtt.username and password, and that the broker allows its client id)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, out.String())
		}
	}
}

// TestStatusStale: a status file the gateway stopped writing says the
// gateway is not running.
func TestStatusStale(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	s := status.Snapshot{Station: "pr-0001", Type: "police_room", Time: now.Add(-time.Minute), Started: now.Add(-time.Hour),
		Uplinks: []status.Uplink{{Name: "mqtt", Connected: true, Since: now.Add(-time.Hour)}}}
	var out bytes.Buffer
	if code := printStatus(&out, s, now, 0, nil); code != 1 || !strings.Contains(out.String(), "NOT RUNNING: the gateway last wrote its status 1m0s ago") {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
}

// TestStatusForwarderRestarted: a forwarder that failed and was restarted
// is named, with how often, though the gateway runs and reaches the hub.
func TestStatusForwarderRestarted(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	s := status.Snapshot{Station: "pr-0001", Type: "police_room", Time: now, Started: now.Add(-time.Hour),
		Uplinks: []status.Uplink{{Name: "influx", Connected: true, Since: now.Add(-time.Hour),
			Forwarders: []status.Forwarder{{Lane: "alarm", Delivered: 3}, {Lane: "telemetry", Delivered: 900, Restarts: 2}}}}}
	var out bytes.Buffer
	want := "influx: the telemetry lane's forwarder failed and was restarted 2 times (the log says why)"
	if code := printStatus(&out, s, now, 0, nil); code != 0 || !strings.Contains(out.String(), want) || strings.Contains(out.String(), "alarm lane") {
		t.Errorf("exit %d:\n%s\nwant exit 0 and only %q", code, out.String(), want)
	}
}

// TestStatusBroker: the broker each connection of the broker's uplink is
// on is named, so that a move within a clustered hub shows.
func TestStatusBroker(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		up   status.Uplink
		want string
	}{
		{"one broker", status.Uplink{Name: "mqtt", Connected: true, Broker: "tcp://a:1883", AlarmBroker: "tcp://a:1883"},
			"mqtt: on broker tcp://a:1883\n"},
		{"two", status.Uplink{Name: "mqtt", Connected: true, Broker: "tcp://a:1883", AlarmBroker: "tcp://b:1883"},
			"mqtt: on broker tcp://a:1883, alarm connection on tcp://b:1883\n"},
		{"down", status.Uplink{Name: "mqtt", Cause: "connection lost", Broker: "tcp://a:1883", AlarmBroker: "tcp://a:1883"},
			"mqtt: last on broker tcp://a:1883\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.up.Since = now.Add(-time.Minute)
			s := status.Snapshot{Station: "pr-0001", Type: "police_room", Time: now, Started: now.Add(-time.Hour), Uplinks: []status.Uplink{c.up}}
			var out bytes.Buffer
			printStatus(&out, s, now, 0, nil)
			if !strings.Contains(out.String(), c.want) {
				t.Errorf("status lacks %q:\n%s", c.want, out.String())
			}
		})
	}
}

// TestStatusDevices: each device's line says how many of its readings
// report by exception left out (unchanged), and why it is not online.
func TestStatusDevices(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	s := status.Snapshot{Station: "pr-0001", Type: "police_room", Time: now, Started: now.Add(-time.Hour), Devices: []status.Device{
		{ID: "th-hall", State: model.Online, Since: now, LastSeen: now, Unchanged: 157},
		{ID: "door-front", State: model.Offline, Since: now, Reason: "no answer"},
	}}
	var out bytes.Buffer
	printStatus(&out, s, now, 0, nil)
	got := map[string][]string{}
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			got[f[0]] = f
		}
	}
	if h := got["device"]; len(h) < 6 || h[5] != "unchanged" {
		t.Errorf("the devices' header %q: want an unchanged column\n%s", h, out.String())
	}
	for dev, want := range map[string]string{"th-hall": "157", "door-front": "0"} {
		if f := got[dev]; len(f) < 5 || f[4] != want {
			t.Errorf("%s's line %q: want %q in the unchanged column\n%s", dev, f, want, out.String())
		}
	}
	if f := got["door-front"]; len(f) < 7 || strings.Join(f[5:], " ") != "no answer" {
		t.Errorf("door-front's line %q: want the reason last\n%s", f, out.String())
	}
}

// TestStatusDeviceAttention: a device the station does not hear makes
// `gateway status` exit 1 and says which, and so does one degraded for a
// minute without a good value since; one degraded with good values since
// (it answers, a noisy line) does not, nor one degraded for less.
func TestStatusDeviceAttention(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name     string
		state    model.HealthState
		since    time.Duration // before now
		lastGood time.Duration // before now; 0 for never
		want     string        // the last line; "" for exit 0
	}{
		{name: "offline", state: model.Offline, since: time.Minute, lastGood: time.Hour, want: "1 of 3 devices offline: ups-1"},
		{name: "degraded, good values since", state: model.Degraded, since: time.Hour, lastGood: time.Second},
		{name: "degraded a minute, none since", state: model.Degraded, since: time.Minute, lastGood: time.Hour, want: "1 of 3 devices degraded for 1m0s or more without a good value: ups-1"},
		{name: "degraded a minute, never a good value", state: model.Degraded, since: time.Minute, want: "1 of 3 devices degraded for 1m0s or more without a good value: ups-1"},
		{name: "degraded under a minute, none since", state: model.Degraded, since: 59 * time.Second},
		{name: "online, never a good value", state: model.Online, since: time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ups := status.Device{ID: "ups-1", State: tc.state, Since: now.Add(-tc.since), Reason: "module at address 01 says it is 4050, template dcon-panic-box-latched expects 7050"}
			if tc.lastGood > 0 {
				ups.LastSeen = now.Add(-tc.lastGood)
			}
			s := status.Snapshot{Station: "pr-0001", Type: "police_room", Time: now, Started: now.Add(-2 * time.Hour),
				Uplinks: []status.Uplink{{Name: "mqtt", Connected: true, Since: now.Add(-time.Hour)}},
				Devices: []status.Device{
					{ID: "th-hall", State: model.Online, Since: now.Add(-time.Hour), LastSeen: now},
					{ID: "door-front", State: model.Degraded, Since: now.Add(-time.Hour), LastSeen: now, Reason: "exception 2 (illegal data address) reading holding register 1 (0x0001): model"},
					ups,
				}}
			var out bytes.Buffer
			code := printStatus(&out, s, now, 0, nil)
			lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
			last := lines[len(lines)-1]
			switch {
			case tc.want == "" && code != 0:
				t.Errorf("exit %d:\n%s\nwant exit 0", code, out.String())
			case tc.want != "" && (code != 1 || last != tc.want):
				t.Errorf("exit %d:\n%s\nwant exit 1 and the last line %q", code, out.String(), tc.want)
			}
		})
	}
}

// TestStateDirDeleted: the state directory deleted under a running gateway
// is made again with what a restart and the operator's commands need: the
// sequence-number leases (a restart must not number from 1 again), the
// commands file and the pid file (gateway reload finds the gateway).
func TestStateDirDeleted(t *testing.T) {
	m := startBroker(t)
	st := station(t, m.URL())
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()
	files := []string{st.SeqFile(), st.CommandsFile(), pidFile(st.StateDir), status.File(st.StateDir)}
	waitFiles := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			var missing []string
			for _, f := range files {
				if _, err := os.Stat(f); err != nil {
					missing = append(missing, filepath.Base(f))
				}
			}
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v missing after 15s", what, missing)
			}
		}
	}
	waitFiles("at start") // meter-1 never answers: its device_lost leases numbers
	before, err := os.ReadFile(st.SeqFile())
	if err != nil {
		t.Fatal(err)
	}
	// As an operator's rm -rf would, this may meet a file the gateway
	// writes meanwhile ("directory not empty"): then again.
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := os.RemoveAll(st.StateDir)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
	}
	waitFiles("after the state directory was deleted")
	// The gateway's own queue_damage event leases numbers of its own.
	after, err := os.ReadFile(st.SeqFile())
	var was, now map[string]uint64
	if err == nil {
		err = errors.Join(json.Unmarshal(before, &was), json.Unmarshal(after, &now))
	}
	if err != nil || len(was) == 0 || now["meter-1"] != was["meter-1"] || now[model.GatewayDevice] == 0 {
		t.Errorf("sequence-number leases written again: %s (%v), want meter-1's of %s, and the gateway's", after, err, before)
	}
	if pid, _, err := runningGateway(st); err != nil || pid != os.Getpid() {
		t.Errorf("gateway reload finds pid %d (%v), want this process, %d", pid, err, os.Getpid())
	}
}

// TestStatusFileFollowsDevices: a device's change of state reaches the
// status file about a second later, not at the next of its writes every
// statusEvery, so that `gateway status` run just after an adapter was
// plugged back in shows its devices online.
func TestStatusFileFollowsDevices(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.json")
	var mu sync.Mutex
	state, changed := model.Offline, make(chan struct{})
	snap := func() status.Snapshot {
		mu.Lock()
		defer mu.Unlock()
		return status.Snapshot{Station: "sp-1", Time: time.Now(), Devices: []status.Device{{ID: "box-1", State: state}}}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeStatus(ctx, path, nil, snap, nil, func() <-chan struct{} { mu.Lock(); defer mu.Unlock(); return changed }, func() {}, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	read := func() model.HealthState {
		s, err := status.Read(path)
		if err != nil || len(s.Devices) != 1 {
			return ""
		}
		return s.Devices[0].State
	}
	for deadline := time.Now().Add(5 * time.Second); read() != model.Offline; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no first status file in 5 s")
		}
	}
	mu.Lock()
	state = model.Online
	close(changed)
	changed = make(chan struct{})
	mu.Unlock()
	start := time.Now()
	for read() != model.Online {
		if time.Since(start) > snapshotCalm+time.Second {
			t.Fatalf("the status file still says box-1 %s %s after it came online, want online within %s", read(), time.Since(start).Round(time.Millisecond), snapshotCalm+time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("the status file said box-1 online %s after it came online", time.Since(start).Round(time.Millisecond))
}

// TestSecondGateway: a second gateway started on the station file of one
// that runs (an installer's gateway run beside the service) stops at once
// and names the other one and the fix, not the queue's lock.
func TestSecondGateway(t *testing.T) {
	m := startBroker(t)
	st := station(t, m.URL())
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()
	awaitRunning(t, st)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, st, slog.New(slog.DiscardHandler), nil)
	want := fmt.Sprintf("another gateway (pid %d) runs with state_dir %s: stop it first (sudo systemctl stop outpost), or give this station file a state_dir of its own (queue: %s is in use by another queue)",
		os.Getpid(), st.StateDir, st.QueueDir())
	if err == nil || err.Error() != want {
		t.Errorf("second gateway: %v\nwant %s", err, want)
	}
}

// awaitRunning waits until gateway reload would find the station's
// gateway: its pid file and a fresh status file written.
func awaitRunning(t *testing.T, st *configs.Station) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, _, err := runningGateway(st); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the first gateway wrote no pid file and status file in 15 s")
		}
	}
}

// TestStatusNotAnswering: a stale status file with the gateway's process
// alive (stopped, stuck) says so, with its pid; once that process is gone,
// or when the pid file names a process that is not a gateway's run, it
// says the gateway does not run.
func TestStatusNotAnswering(t *testing.T) {
	if os.Getenv("OUTPOST_TEST_RUN_SLEEPS") == "1" {
		select {} // a stand-in for a stuck gateway, killed by the test
	}
	path, state := stationWithState(t)
	written := time.Now().Add(-time.Minute).Truncate(time.Second)
	if err := status.Write(status.File(state), status.Snapshot{Station: "pr-0001", Type: "police_room", Time: written, Started: written.Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	// The stand-in's arguments end with "run", as a gateway's do.
	stuck := exec.Command(os.Args[0], "-test.run=^TestStatusNotAnswering$", "run")
	stuck.Env = append(os.Environ(), "OUTPOST_TEST_RUN_SLEEPS=1")
	if err := stuck.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stuck.Process.Kill(); stuck.Wait() })
	at := written.Local().Format(time.DateTime)
	notRunning := "NOT RUNNING: the gateway last wrote its status "
	for _, c := range []struct {
		name string
		pid  func() int
		want string
	}{
		{"stuck", func() int { return stuck.Process.Pid }, fmt.Sprintf("NOT ANSWERING: the gateway (pid %d) runs, but last wrote its status ", stuck.Process.Pid)},
		{"another process", os.Getpid, notRunning},
		{"gone", func() int { stuck.Process.Kill(); stuck.Wait(); return stuck.Process.Pid }, notRunning},
	} {
		t.Run(c.name, func(t *testing.T) {
			if err := os.WriteFile(pidFile(state), []byte(fmt.Sprintln(c.pid())), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := cli([]string{"status", "-config", path}, &out, &errb)
			if code != 1 || !strings.Contains(out.String(), c.want) || !strings.Contains(out.String(), "("+at+")") {
				t.Errorf("exit %d, stdout:\n%s\nwant exit 1 and %q ... (%s)", code, out.String(), c.want, at)
			}
		})
	}
}

// TestStatusFileSpare: while the status file cannot be written (here a
// directory stands in its way; on a station, a disk remounted read-only),
// the status goes to a spare directory, where gateway status finds it;
// once the status file can be written again, the spare one goes.
func TestStatusFileSpare(t *testing.T) {
	dir, spare := t.TempDir(), filepath.Join(t.TempDir(), "spare")
	path := status.File(dir)
	if err := os.Mkdir(path, 0o700); err != nil { // in the way of the file
		t.Fatal(err)
	}
	snap := func() status.Snapshot { return status.Snapshot{Station: "sp-1", Time: time.Now()} }
	now := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		writeStatus(ctx, path, []string{spare}, snap, now, func() <-chan struct{} { return nil }, func() {}, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	waitFile := func(p string, there bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			s, err := status.Read(p)
			if (err == nil && s.Station == "sp-1") == there {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v after 5 s, want there %v", p, err, there)
			}
		}
	}
	waitFile(status.File(spare), true)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	now <- struct{}{}
	waitFile(path, true)
	waitFile(status.File(spare), false)
}

// TestStatusDeadLetters: messages the hub refused for good, waiting in the
// station's dead-letter files, make `gateway status` exit 1 and say where
// they are; once the operator has moved the file away to send them again,
// it exits 0.
func TestStatusDeadLetters(t *testing.T) {
	path, state := stationWithState(t)
	now := time.Now()
	if err := status.Write(status.File(state), status.Snapshot{Station: "rl-1", Type: "police_room", Time: now, Started: now.Add(-time.Hour),
		Uplinks: []status.Uplink{{Name: "influx", Connected: true, Since: now.Add(-time.Hour), DeadLetters: 2}}}); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	dead := &pipeline.DeadLetters{Dir: st.DeadLetterDir()}
	defer dead.Close()
	for seq := range uint64(2) {
		m := &model.Message{Station: "rl-1", Device: "th-hall", Kind: model.KindTelemetry, Seq: seq + 1, Time: now}
		if _, err := dead.Put("influx", m, "InfluxDB 400: partial write: field type conflict", nil); err != nil {
			t.Fatal(err)
		}
	}
	file := filepath.Join(st.DeadLetterDir(), "influx.jsonl")
	var out, errb bytes.Buffer
	want := fmt.Sprintf("\ninflux: 2 messages the hub refused for good wait in %s: mend the cause, send them again, then delete the file (docs/operations.md, \"When the hub refuses a message\")\n", file)
	if code := cli([]string{"status", "-config", path}, &out, &errb); code != 1 || !strings.Contains(out.String(), want) {
		t.Errorf("exit %d, stdout:\n%s\nwant exit 1 and%s", code, out.String(), want)
	}
	if err := os.Rename(file, filepath.Join(t.TempDir(), "influx.jsonl")); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := cli([]string{"status", "-config", path}, &out, &errb); code != 0 || strings.Contains(out.String(), "refused for good") {
		t.Errorf("with the file moved away: exit %d, stdout:\n%s\nwant exit 0", code, out.String())
	}
}
