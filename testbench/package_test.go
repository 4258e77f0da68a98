package main

import (
	"context"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"outpost/gateway/model"
)

// TestDebianPackage builds the gateway's amd64 Debian package as make dist
// does, installs it on this machine, and checks what an installer relies
// on: the files, the outpost user in the dialout group, the permissions
// of /etc/outpost and /var/lib/outpost, a unit systemd-analyze verifies
// without a word; the installed gateway, run as its user, reads a
// simulated power meter into a real Mosquitto; an upgrade keeps the
// state, removal keeps it too, and purge removes the configuration and the
// user but not the state. The machine is left as it was.
func TestDebianPackage(t *testing.T) {
	t.Parallel() // beside the other tests that run their own processes: its own files and ports
	if os.Geteuid() != 0 {
		t.Fatal("installing a package needs root (make test runs as root, or with sudo for its setup)")
	}
	if out, err := exec.Command("dpkg-query", "-W", "outpost-gateway").CombinedOutput(); err == nil {
		t.Fatalf("outpost-gateway is installed on this machine already; the test would replace it: %s", out)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "outpost-gateway")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=0.0.1", "-o", bin, "../gateway/cmd/gateway")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	deb := func(version string) string {
		out, err := exec.Command("../gateway/dist/deb.sh", version, "amd64", bin, filepath.Join(dir, "debs")).CombinedOutput()
		if err != nil {
			t.Fatalf("deb.sh: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		exec.Command("dpkg", "--purge", "outpost-gateway").Run()
		os.RemoveAll("/etc/outpost")
		os.RemoveAll("/var/lib/outpost")
	})
	run("dpkg", "-i", deb("0.0.1"))

	// Files, user, permissions.
	for path, want := range map[string]string{
		"/usr/bin/outpost-gateway":            "-rwxr-xr-x root root",
		"/lib/systemd/system/outpost.service": "-rw-r--r-- root root",
		"/etc/outpost":                        "drwxr-x--- root outpost",
		"/var/lib/outpost":                    "drwx------ outpost outpost",
	} {
		if got := strings.TrimSpace(run("stat", "-c", "%A %U %G", path)); got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
	if groups := run("id", "-nG", "outpost"); !slices.Contains(strings.Fields(groups), "dialout") {
		t.Errorf("the outpost user is not in dialout: %s", groups)
	}
	if out, err := exec.Command("systemd-analyze", "verify", "/lib/systemd/system/outpost.service").CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	if v := run("/usr/bin/outpost-gateway", "version"); !strings.HasPrefix(v, "outpost gateway 0.0.1") {
		t.Errorf("installed version: %q", v)
	}
	// The example station validates without a warning: its state is
	// where the service keeps it.
	example := "/usr/share/doc/outpost-gateway/examples/police-room.yaml"
	if out := run("/usr/bin/outpost-gateway", "validate", example); strings.Contains(out, "warning") || !strings.Contains(out, "valid") {
		t.Errorf("validate %s:\n%s", example, out)
	}

	// The installed gateway, as its user, against a simulated meter.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pr := newPoliceRoomFrom(t, ctx, `version: 2
station: {id: pk-1, type: police_room}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: meter-lan, protocol: modbus-tcp, address: "127.0.0.1:0"}
devices:
  - {id: meter-main, template: ddsu666, link: meter-lan, unit_id: 1, poll: 500ms}
`)
	station := "/etc/outpost/station.yaml"
	src, err := os.ReadFile(pr.station)
	if err != nil {
		t.Fatal(err)
	}
	// The package's state directory, as the unit has it.
	moved := strings.Replace(string(src), "state_dir: "+pr.st.StateDir, "state_dir: /var/lib/outpost/pk-1", 1)
	if moved == string(src) {
		t.Fatalf("no state_dir: %s in the prepared station file:\n%s", pr.st.StateDir, src)
	}
	src = []byte(moved)
	if err := os.WriteFile(station, src, 0o640); err != nil {
		t.Fatal(err)
	}
	run("chown", "root:outpost", station)
	got := make(chan string, 100)
	col, err := collect(ctx, pr.mq.URL(), pr.st, func(m *model.Message, _ []byte, _ bool) {
		if m.Kind == model.KindTelemetry {
			got <- m.Device
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer col.close()
	if err := pr.sim.start(ctx, pr.out(t), "firmware-sim ready", "-config", pr.station); err != nil {
		t.Fatal(err)
	}
	gw := exec.CommandContext(ctx, "/usr/bin/outpost-gateway", "run", "-config", station)
	gw.Stdout, gw.Stderr = pr.out(t), pr.out(t)
	gw.SysProcAttr = &syscall.SysProcAttr{Credential: asUser(t, "outpost")}
	if err := gw.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case dev := <-got:
		if dev != "meter-main" {
			t.Errorf("telemetry of %s, want meter-main", dev)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing from the installed gateway at the hub")
	}
	gw.Process.Signal(os.Interrupt)
	gw.Wait()
	seq := "/var/lib/outpost/pk-1/seq.json"
	if _, err := os.Stat(seq); err != nil {
		t.Fatalf("the gateway kept no state in /var/lib/outpost: %v", err)
	}

	// An upgrade keeps the state; removal too; purge removes the user.
	run("dpkg", "-i", deb("0.0.2"))
	if v := run("/usr/bin/outpost-gateway", "version"); !strings.HasPrefix(v, "outpost gateway 0.0.1") {
		t.Errorf("upgraded binary: %q", v) // deb.sh packs the same binary; the package version is what changed
	}
	if _, err := os.Stat(seq); err != nil {
		t.Errorf("the upgrade lost the state: %v", err)
	}
	run("dpkg", "-r", "outpost-gateway")
	for _, gone := range []string{"/usr/bin/outpost-gateway", "/lib/systemd/system/outpost.service"} {
		if _, err := os.Stat(gone); err == nil {
			t.Errorf("%s is still there after removal", gone)
		}
	}
	if _, err := os.Stat(seq); err != nil {
		t.Errorf("removal deleted the state: %v", err)
	}
	run("dpkg", "--purge", "outpost-gateway")
	if err := exec.Command("getent", "passwd", "outpost").Run(); err == nil {
		t.Error("the outpost user is still there after purge")
	}
	if _, err := os.Stat("/etc/outpost"); err == nil {
		t.Error("/etc/outpost (the station file and its secrets) is still there after purge")
	}
	if _, err := os.Stat(seq); err != nil {
		t.Errorf("purge deleted the state: %v", err)
	}
}

// asUser is the credential of a system user and its groups.
func asUser(t *testing.T, name string) *syscall.Credential {
	t.Helper()
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	ids, err := u.GroupIds()
	if err != nil {
		t.Fatal(err)
	}
	var groups []uint32
	for _, g := range ids {
		n, _ := strconv.Atoi(g)
		groups = append(groups, uint32(n))
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: groups}
}
