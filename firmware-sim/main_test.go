package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireTool fails (never skips) when an interop peer is missing.
func requireTool(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("%s is required by this test (%v): run `make test-deps`", path, err)
	}
}

// writeStation copies the test station and templates into a temporary
// folder, with its ports there and its endpoint at tcpAddr.
func writeStation(t *testing.T, tcpAddr string) (station, portDir string) {
	t.Helper()
	dir := t.TempDir()
	portDir = filepath.Join(dir, "ports")
	b, err := os.ReadFile("testdata/station.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.ReplaceAll(b, []byte("PORT_DIR"), []byte(portDir))
	b = bytes.ReplaceAll(b, []byte("TCP_ADDR"), []byte(tcpAddr))
	station = filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(station, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "devices"), 0o755); err != nil {
		t.Fatal(err)
	}
	tmpls, _ := filepath.Glob("testdata/devices/*.yaml")
	for _, f := range tmpls {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "devices", filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return station, portDir
}

// running is a simulator started in-process.
type running struct {
	sim     *station
	tcp     string // the endpoint's address
	control string // the control API's address, with o.control
	ports   string // folder of the bus links
	served  string
	stats   string
	stopped bool
	stop    func() error
}

func startSim(t *testing.T, opts ...func(*options)) *running {
	t.Helper()
	station, ports := writeStation(t, "127.0.0.1:0")
	dir := filepath.Dir(station)
	o := options{config: station, served: filepath.Join(dir, "served.jsonl"), stats: filepath.Join(dir, "stats.json"), seed: 1, turnaround: -1}
	for _, f := range opts {
		f(&o)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := open(o, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := s.serve(ctx, pw)
		s.close()
		done <- err
	}()
	br := bufio.NewReader(pr)
	line, err := br.ReadString('\n')
	control, isControl := strings.CutPrefix(line, "firmware-sim control ")
	if isControl {
		line, err = br.ReadString('\n')
	}
	go io.Copy(io.Discard, pr)
	if err != nil || line != "firmware-sim ready\n" {
		t.Fatalf("readiness line %q, %v", line, err)
	}
	r := &running{sim: s, tcp: s.links["lan"].(interface{ Addr() net.Addr }).Addr().String(), control: strings.TrimSpace(control),
		ports: ports, served: o.served, stats: o.stats}
	r.stop = func() error {
		if r.stopped {
			return nil
		}
		r.stopped = true
		cancel()
		err := <-done
		pw.Close()
		return err
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	return r
}

// servedLines reads the served log.
func servedLines(t *testing.T, path string) []servedLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []servedLine
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var l servedLine
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("served log: %v", err)
		}
		out = append(out, l)
	}
	return out
}

// values collects the distinct values served per signal of one device, in
// order of first appearance.
func values(lines []servedLine, dev string) map[string][]any {
	out := map[string][]any{}
	for _, l := range lines {
		if l.Device != dev {
			continue
		}
		seen := false
		for _, v := range out[l.Signal] {
			seen = seen || v == l.Value
		}
		if !seen {
			out[l.Signal] = append(out[l.Signal], l.Value)
		}
	}
	return out
}

var mbpollLine = regexp.MustCompile(`(?m)^\[(\d+)\]:\s+(\S+)`)

// TestMbpoll reads and writes the simulator with Debian's mbpoll, over each
// virtual serial port and over TCP.
func TestMbpoll(t *testing.T) {
	requireTool(t, "/usr/bin/mbpoll")
	r := startSim(t)
	_, port, _ := net.SplitHostPort(r.tcp)
	transports := []struct {
		name   string
		args   []string // mode, line and target
		unit   string
		strict string // unit id of the sim-strict device, if any
		device string
	}{
		{"rtu 9600 8N1", []string{"-m", "rtu", "-b", "9600", "-P", "none", filepath.Join(r.ports, "bus-a")}, "1", "2", "all-rtu"},
		{"rtu 19200 8E1", []string{"-m", "rtu", "-b", "19200", "-P", "even", filepath.Join(r.ports, "bus-b")}, "7", "", "all-b"},
		{"tcp", []string{"-m", "tcp", "-p", port, "127.0.0.1"}, "1", "2", "all-tcp"},
	}
	reads := []struct {
		args []string
		want map[string]string // mbpoll's address -> first field printed
	}{
		{[]string{"-t", "3", "-r", "0", "-c", "3"}, map[string]string{"0": "213", "1": "555", "2": "65524"}},
		{[]string{"-t", "3:int", "-B", "-r", "3"}, map[string]string{"3": "-100000"}},
		{[]string{"-t", "3:int", "-r", "5"}, map[string]string{"5": "305419896"}},
		{[]string{"-t", "3:float", "-B", "-r", "7"}, map[string]string{"7": "229.5"}},
		{[]string{"-t", "3:float", "-r", "9"}, map[string]string{"9": "50.25"}},
		{[]string{"-t", "3", "-r", "20", "-c", "11"}, map[string]string{"20": "130", "21": "0", "29": "0", "30": "7"}},
		{[]string{"-t", "0", "-r", "0", "-c", "3"}, map[string]string{"0": "1", "1": "0", "2": "1"}},
		{[]string{"-t", "1", "-r", "0"}, map[string]string{"0": "1"}},
		{[]string{"-t", "4", "-r", "0", "-c", "6"}, map[string]string{"0": "9", "1": "21840", "2": "21293", "3": "13131", "4": "0", "5": "1234"}},
	}
	mbpoll := func(t *testing.T, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "/usr/bin/mbpoll", append([]string{"-0", "-1", "-o", "2"}, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, tr := range transports {
		t.Run(tr.name, func(t *testing.T) {
			before := r.sim.stats().Devices[tr.device]
			for _, rd := range reads {
				args := append(append([]string{"-a", tr.unit}, rd.args...), tr.args...)
				out, err := mbpoll(t, args...)
				if err != nil {
					t.Fatalf("mbpoll %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				got := map[string]string{}
				for _, m := range mbpollLine.FindAllStringSubmatch(out, -1) {
					got[m[1]] = m[2]
				}
				for a, w := range rd.want {
					if got[a] != w {
						t.Errorf("mbpoll %s: [%s] = %q, want %q\n%s", strings.Join(rd.args, " "), a, got[a], w, out)
					}
				}
			}
			// A write reads back.
			if out, err := mbpoll(t, append(append([]string{"-a", tr.unit, "-t", "4", "-r", "5"}, tr.args...), "4321")...); err != nil {
				t.Fatalf("mbpoll write: %v\n%s", err, out)
			}
			out, err := mbpoll(t, append([]string{"-a", tr.unit, "-t", "4", "-r", "5"}, tr.args...)...)
			if m := mbpollLine.FindStringSubmatch(out); err != nil || m == nil || m[2] != "4321" {
				t.Errorf("read back after writing 4321: %v\n%s", err, out)
			}
			if tr.strict != "" {
				// A gap the device refuses: exception 02.
				out, _ := mbpoll(t, append([]string{"-a", tr.strict, "-t", "3", "-r", "0", "-c", "6"}, tr.args...)...)
				if !strings.Contains(out, "Illegal data address") {
					t.Errorf("reading a refused gap: want Illegal data address, got\n%s", out)
				}
			}
			after := r.sim.stats().Devices[tr.device]
			// mbpoll makes one request per read; 9 reads, a write, a read.
			if after.Polls-before.Polls != 11 || after.Exceptions != before.Exceptions {
				t.Errorf("device %s: stats went from %+v to %+v, want 11 polls more and no exception", tr.device, before, after)
			}
		})
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	// The served log holds what mbpoll was given, as exact decoded values.
	vals := values(servedLines(t, r.served), "all-tcp")
	want := map[string][]any{
		"temp": {21.3}, "hum": {55.5}, "neg": {-12.0}, "i32": {-100000.0}, "u32": {305419896.0},
		"f_abcd": {229.5}, "f_cdab": {50.25}, "offs": {25.0}, "far": {7.0},
		"relay1": {true}, "relay2": {false}, "relay3": {true}, "door": {true},
		"armed": {true}, "fault": {true}, "model": {"UPS-3K"}, "setpoint": {1234.0, 4321.0},
	}
	for sig, w := range want {
		if fmt.Sprint(vals[sig]) != fmt.Sprint(w) {
			t.Errorf("served %s = %v, want %v", sig, vals[sig], w)
		}
	}
	for _, sig := range []string{"f_badc", "f_dcba", "f64"} {
		if vals[sig] != nil {
			t.Errorf("%s was never read whole, yet served %v", sig, vals[sig])
		}
	}
	// The stats file was written on exit and agrees with the log.
	var st Stats
	b, err := os.ReadFile(r.stats)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if n := int64(len(servedLines(t, r.served))); st.ReadingsServed != n || n == 0 {
		t.Errorf("stats say %d readings served, the log has %d", st.ReadingsServed, n)
	}
	if d := st.Devices["strict-rtu"]; d.Polls != 1 || d.Exceptions != 1 {
		t.Errorf("strict-rtu stats %+v, want 1 poll, 1 exception", d)
	}
}

// pymodbusSignals: how the script's raw numbers become values, and the
// value a human expects.
var pymodbusSignals = []struct {
	signal        string
	scale, offset float64
	want          float64
}{
	{"temp", 0.1, 0, 21.3}, {"hum", 0.1, 0, 55.5}, {"neg", 1, 0, -12}, {"i32", 1, 0, -100000},
	{"u32", 1, 0, 305419896}, {"f_abcd", 1, 0, 229.5}, {"f_cdab", 1, 0, 50.25}, {"f_badc", 1, 0, 1.5},
	{"f_dcba", 1, 0, -3.75}, {"f64", 1, 0, 12345.678}, {"offs", 0.5, -40, 25}, {"far", 1, 0, 7},
}

// TestPymodbus reads every type and byte order with python3-pymodbus over a
// virtual serial port and over TCP: its decoders get exactly the values the
// simulator says it served.
func TestPymodbus(t *testing.T) {
	const python = "/usr/bin/python3"
	requireTool(t, python)
	if out, err := exec.Command(python, "-c", "import pymodbus").CombinedOutput(); err != nil {
		t.Fatalf("python3-pymodbus is required by this test (%v: %s): run `make test-deps`", err, out)
	}
	r := startSim(t)
	cases := []struct {
		name, device string
		args         []string
	}{
		{"rtu", "all-rtu", []string{"rtu", filepath.Join(r.ports, "bus-a"), "1", "9600", "N"}},
		{"tcp", "all-tcp", []string{"tcp", r.tcp, "1"}},
	}
	got := map[string]map[string]any{}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := exec.CommandContext(ctx, python, append([]string{"testdata/pymodbus_read.py"}, c.args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		cancel()
		if err != nil {
			t.Fatalf("%s: pymodbus: %v\n%s", c.name, err, stderr.String())
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("%s: %v in %s", c.name, err, out)
		}
		got[c.name] = m
	}
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	served := servedLines(t, r.served)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := got[c.name]
			vals := values(served, c.device)
			for _, s := range pymodbusSignals {
				raw, ok := m[s.signal].(float64)
				if !ok {
					t.Errorf("%s: pymodbus gave %v", s.signal, m[s.signal])
					continue
				}
				decoded := float64(raw*s.scale) + s.offset
				if len(vals[s.signal]) != 1 || vals[s.signal][0] != decoded {
					t.Errorf("%s: pymodbus decodes %v (raw %v), simulator served %v", s.signal, decoded, raw, vals[s.signal])
				}
				if diff := decoded - s.want; diff > 1e-9 || diff < -1e-9 {
					t.Errorf("%s: decoded %v, want about %v", s.signal, decoded, s.want)
				}
			}
			exact := map[string]any{
				"armed": true, "fault": true, "model": "UPS-3K", "setpoint": 1234.0,
				"relay1": true, "relay2": false, "relay3": true, "door": true,
				"setpoint_written": 4321.0, "relay2_written": true, "past_map_exception": 2.0,
			}
			for k, w := range exact {
				if m[k] != w {
					t.Errorf("pymodbus %s = %v, want %v", k, m[k], w)
				}
			}
			for sig, w := range map[string][]any{"armed": {true}, "fault": {true}, "model": {"UPS-3K"}, "setpoint": {1234.0, 4321.0}, "relay2": {false, true}} {
				if fmt.Sprint(vals[sig]) != fmt.Sprint(w) {
					t.Errorf("served %s = %v, want %v", sig, vals[sig], w)
				}
			}
		})
	}
}

// TestBinary runs the built command: it links its ports, says it is ready,
// answers, and on SIGTERM writes its stats and removes its links.
func TestBinary(t *testing.T) {
	requireTool(t, "/usr/bin/mbpoll")
	bin := filepath.Join(t.TempDir(), "firmware-sim")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	station, ports := writeStation(t, "127.0.0.1:0")
	stats := filepath.Join(filepath.Dir(station), "stats.json")
	cmd := exec.Command(bin, "-config", station, "-stats", stats, "-seed", "7", "-turnaround", "2ms")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || line != "firmware-sim ready\n" {
		t.Fatalf("readiness line %q, %v\n%s", line, err, stderr.String())
	}
	for _, bus := range []string{"bus-a", "bus-b"} {
		if dst, err := os.Readlink(filepath.Join(ports, bus)); err != nil || !strings.HasPrefix(dst, "/dev/pts/") {
			t.Errorf("%s links to %q, %v", bus, dst, err)
		}
	}
	out, err := exec.Command("/usr/bin/mbpoll", "-m", "rtu", "-b", "9600", "-P", "none", "-a", "1", "-0", "-1", "-t", "3", "-r", "0", "-c", "2", filepath.Join(ports, "bus-a")).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "[0]: \t213") {
		t.Fatalf("mbpoll: %v\n%s", err, out)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, stderr.String())
	}
	for _, bus := range []string{"bus-a", "bus-b"} {
		if _, err := os.Lstat(filepath.Join(ports, bus)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there after exit: %v", bus, err)
		}
	}
	b, err := os.ReadFile(stats)
	if err != nil {
		t.Fatal(err)
	}
	var st Stats
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	if d := st.Devices["all-rtu"]; st.ReadingsServed != 2 || d.Polls != 1 || d.ReadingsServed != 2 {
		t.Errorf("stats on exit: %s", b)
	}

	// A regular file where a port goes is not replaced.
	if err := os.WriteFile(filepath.Join(ports, "bus-a"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(bin, "-config", station).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "firmware-sim: bus bus-a: vport "+filepath.Join(ports, "bus-a")+": exists and is not a symlink") {
		t.Errorf("over a regular file: %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(filepath.Join(ports, "bus-a")); string(b) != "keep" {
		t.Errorf("the regular file was changed: %q", b)
	}
}

// TestSilent: devices named by -silent never answer, on a bus or behind an
// endpoint, while their neighbours do; they are in the stats, having
// served nothing. The control API silences a device and lets it answer
// again, and makes every device deaf and hear again.
func TestSilent(t *testing.T) {
	requireTool(t, "/usr/bin/mbpoll")
	o, err := parseFlags([]string{"-config", "x.yaml", "-silent", "all-rtu, strict-tcp"}, io.Discard)
	if err != nil || fmt.Sprint(o.silent) != "[all-rtu strict-tcp]" {
		t.Fatalf("-silent parsed as %q, %v", o.silent, err)
	}
	r := startSim(t, func(o *options) { o.silent, o.control = []string{"all-rtu", "strict-tcp"}, "127.0.0.1:0" })
	_, port, _ := net.SplitHostPort(r.tcp)
	bus := filepath.Join(r.ports, "bus-a")
	rtu := []string{"-m", "rtu", "-b", "9600", "-P", "none", bus}
	tcp := []string{"-m", "tcp", "-p", port, "127.0.0.1"}
	type poll struct {
		name, unit string
		target     []string
		answers    bool
		late       time.Duration // answers no sooner than this
	}
	cases := []struct {
		control []string // paths posted to the control API first
		poll
	}{
		{nil, poll{"silent on a bus", "1", rtu, false, 0}},
		{nil, poll{"its neighbour on the bus", "2", rtu, true, 0}},
		{nil, poll{"silent behind an endpoint", "2", tcp, false, 0}},
		{nil, poll{"its neighbour behind the endpoint", "1", tcp, true, 0}},
		// The control API silences devices, and lets them answer again.
		{[]string{"devices/all-rtu/answer"}, poll{"answering again on the bus", "1", rtu, true, 0}},
		// The whole station falls deaf, and hears again.
		{[]string{"deaf"}, poll{"deaf on the bus", "1", rtu, false, 0}},
		{[]string{"hear"}, poll{"hearing again on the bus", "1", rtu, true, 0}},
		// A slow device answers late (here within the master's timeout).
		{[]string{"devices/all-rtu/slow?delay=200ms"}, poll{"slow on the bus", "1", rtu, true, 200 * time.Millisecond}},
		{[]string{"devices/all-rtu/slow?delay=0s", "devices/all-rtu/silence"}, poll{"silenced again on the bus", "1", rtu, false, 0}},
		{[]string{"devices/all-tcp/silence"}, poll{"silenced behind the endpoint", "1", tcp, false, 0}},
	}
	for _, c := range cases {
		for _, p := range c.control {
			resp, err := http.Post("http://"+r.control+"/"+p, "", nil)
			if err != nil || resp.StatusCode != 200 {
				t.Fatalf("POST %s: %v %v", p, resp, err)
			}
			resp.Body.Close()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		args := append([]string{"-a", c.unit, "-0", "-1", "-o", "0.3", "-t", "3", "-r", "0"}, c.target...)
		start := time.Now()
		out, err := exec.CommandContext(ctx, "/usr/bin/mbpoll", args...).CombinedOutput()
		took := time.Since(start)
		cancel()
		answered := mbpollLine.Match(out)
		if answered != c.answers || !c.answers && !strings.Contains(string(out), "timed out") {
			t.Errorf("%s: mbpoll %s: %v\n%s", c.name, strings.Join(args, " "), err, out)
		}
		if took < c.late {
			t.Errorf("%s: answered in %v, sooner than %v", c.name, took, c.late)
		}
	}
	st := r.sim.stats()
	if d, ok := st.Devices["strict-tcp"]; !ok || d.Polls != 0 || d.ReadingsServed != 0 {
		t.Errorf("strict-tcp stats %+v (listed %v), want listed with nothing served", d, ok)
	}
	if d := st.Devices["all-rtu"]; d.Polls != 3 {
		t.Errorf("all-rtu stats %+v, want the three polls it answered while neither silent nor deaf", d)
	}
	if st.Time.IsZero() {
		t.Error("stats carry no time")
	}

	// An action a device does not take, or a device there is not, is
	// answered with what there is.
	for _, c := range []struct {
		path string
		code int
		want string
	}{
		{"all-rtu/off", 400, `all-rtu takes no action "off" (it takes: silence; answer; flaky share=0.3; slow delay=300ms`},
		{"all-rtu/slow?delay=soon", 400, `slow: delay="soon": want how late the device answers, e.g. 300ms`},
		{"nope/silence", 404, "no device nope (have ["},
	} {
		resp, err := http.Post("http://"+r.control+"/devices/"+c.path, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.code || !strings.HasPrefix(string(body), c.want) {
			t.Errorf("POST %s: %d %q, want %d %q...", c.path, resp.StatusCode, body, c.code, c.want)
		}
	}

	station, _ := writeStation(t, "127.0.0.1:0")
	_, err = open(options{config: station, silent: []string{"all-rtu", "nope"}}, slog.New(slog.DiscardHandler))
	if want := "-silent: no device nope in " + station; err == nil || err.Error() != want {
		t.Errorf("unknown silent device: %v, want %s", err, want)
	}
}
