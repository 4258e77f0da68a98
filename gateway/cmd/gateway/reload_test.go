package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/gateway/status"
)

// TestReloadRefusesAStalePidFile: a gateway that died leaves its pid file;
// gateway reload must not signal whatever process has that pid now.
func TestReloadRefusesAStalePidFile(t *testing.T) {
	path, state := stationWithState(t)
	other := exec.Command("sleep", "60") // the process that has the dead gateway's pid now
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer other.Process.Kill()
	exited := make(chan error, 1)
	go func() { exited <- other.Wait() }()
	os.WriteFile(pidFile(state), []byte(fmt.Sprintln(other.Process.Pid)), 0o644)
	if err := status.Write(status.File(state), status.Snapshot{Station: "rl-1", Time: time.Now().Add(-time.Minute)}); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := cli([]string{"reload", "-config", path}, &out, &errb); code != 1 ||
		!strings.Contains(errb.String(), "no gateway runs with state_dir "+state+" (its status file is missing or older than 15s)") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	select {
	case err := <-exited:
		t.Errorf("the other process was signalled: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestReloadNoGateway: gateway reload of a station whose gateway never
// ran, or whose pid file is damaged, says so in words.
func TestReloadNoGateway(t *testing.T) {
	path, state := stationWithState(t)
	for _, c := range []struct {
		pid  *string // the pid file's content; nil: none
		want string
	}{
		{nil, "gateway reload: no gateway runs with state_dir " + state + " (no " + pidFile(state) + ": it has not been started with this station file)\n"},
		{new("4x2\n"), "gateway reload: no gateway runs with state_dir " + state + " (" + pidFile(state) + " holds no process id (\"4x2\"))\n"},
	} {
		if c.pid != nil {
			if err := os.WriteFile(pidFile(state), []byte(*c.pid), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		var out, errb bytes.Buffer
		if code := cli([]string{"reload", "-config", path}, &out, &errb); code != 1 || errb.String() != c.want {
			t.Errorf("exit %d, stderr\n%q\nwant\n%q", code, errb.String(), c.want)
		}
	}
}

// stationWithState writes a one-device station file with a state
// directory of its own, and returns their paths.
func stationWithState(t *testing.T) (path, state string) {
	t.Helper()
	dir := t.TempDir()
	state = filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	path = filepath.Join(dir, "station.yaml")
	src := fmt.Sprintf(`version: 2
station: {id: rl-1, type: police_room}
state_dir: %s
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: lan, protocol: modbus-tcp, address: "127.0.0.1:1502"}
devices:
  - {id: th-1, template: xy-md02, link: lan, unit_id: 1}
`, state)
	if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, state
}

// TestNotBesideARunningGateway: read and commission talk to the
// station's devices, so they refuse while its gateway runs (its pid file
// and a fresh status file say so), and say what to do; not once it was
// killed, though its status file is still fresh.
func TestNotBesideARunningGateway(t *testing.T) {
	path, state := stationWithState(t)
	os.WriteFile(pidFile(state), []byte(fmt.Sprintln(os.Getpid())), 0o644)
	if err := status.Write(status.File(state), status.Snapshot{Station: "rl-1", Time: time.Now()}); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("the station's gateway runs (pid %d, state_dir %s): stop it first (sudo systemctl stop outpost)", os.Getpid(), state)
	commands := [][]string{{"read", "-config", path, "th-1"}, {"commission", "-config", path}}
	for _, args := range commands {
		var out, errb bytes.Buffer
		if code := cli(args, &out, &errb); code != 1 || !strings.Contains(errb.String(), want) {
			t.Errorf("%s beside a running gateway: exit %d, stderr %q", args[0], code, errb.String())
		}
	}
	killed := exec.Command("sleep", "60")
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	killed.Process.Kill()
	killed.Wait()
	os.WriteFile(pidFile(state), []byte(fmt.Sprintln(killed.Process.Pid)), 0o644)
	for _, args := range commands {
		var out, errb bytes.Buffer
		if cli(args, &out, &errb); strings.Contains(errb.String(), "gateway runs") {
			t.Errorf("%s after the gateway was killed: stderr %q", args[0], errb.String())
		}
	}
}
