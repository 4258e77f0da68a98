package modbus

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/drivers"
	"outpost/gateway/model"
)

const python = "/usr/bin/python3"

// requireTool fails the test when a binary the test needs is missing.
func requireTool(t testing.TB, path string) string {
	t.Helper()
	p, err := exec.LookPath(path)
	if err != nil {
		t.Fatalf("%s is required (%v): run `make test-deps`", path, err)
	}
	return p
}

// slaveSpec is the register contents of a pymodbus slave: unit -> table
// (hr, ir, co, di) -> address -> value.
type slaveSpec map[int]map[string]map[int]int

// startSlave runs testdata/slave.py with args after the spec file and waits
// for its "ready" line; it returns the rest of that line.
func startSlave(t testing.TB, spec slaveSpec, args ...string) string {
	t.Helper()
	requireTool(t, python)
	dir := t.TempDir()
	specFile := filepath.Join(dir, "spec.json")
	js := map[string]map[string]map[string]int{}
	for unit, tables := range spec {
		u := map[string]map[string]int{}
		for table, regs := range tables {
			m := map[string]int{}
			for a, v := range regs {
				m[itoa(a)] = v
			}
			u[table] = m
		}
		js[itoa(unit)] = u
	}
	b, _ := json.Marshal(js)
	if err := os.WriteFile(specFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(python, append([]string{"testdata/slave.py", specFile}, args...)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
	}()
	select {
	case s := <-line:
		if !strings.HasPrefix(s, "ready") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("pymodbus slave did not start: %q %s", s, stderr.String())
		}
		return strings.TrimSpace(strings.TrimPrefix(s, "ready"))
	case <-time.After(20 * time.Second):
		t.Fatalf("pymodbus slave not ready after 20s: %s", stderr.String())
	}
	return ""
}

func itoa(i int) string { return strconv.Itoa(i) }

// socatPair makes a virtual serial pair and returns its two ends.
func socatPair(t testing.TB) (a, b string) {
	t.Helper()
	socat := requireTool(t, "socat")
	dir := t.TempDir()
	a, b = filepath.Join(dir, "a"), filepath.Join(dir, "b")
	cmd := exec.Command(socat, "pty,raw,echo=0,link="+a, "pty,raw,echo=0,link="+b)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	waitFor(t, 5*time.Second, "socat links", func() bool {
		_, ea := os.Stat(a)
		_, eb := os.Stat(b)
		return ea == nil && eb == nil
	})
	return a, b
}

// waitFor polls cond until it holds or the time is up.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v", what, limit)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// running is a driver running in the background.
type running struct {
	driver  drivers.Driver
	msgs    chan model.Message
	pending []model.Message // read by next but not yet wanted
	logs    *logs
	stop    func() error
}

// runDriver builds the link's driver through the registry and runs it
// until the test ends (or stop is called). Its log is kept in r.logs (and
// printed with -v).
func runDriver(t testing.TB, tl tLink) *running {
	t.Helper()
	return runLinkDriver(t, tl.link())
}

// runLinkDriver is runDriver of a link as drivers.Links makes it.
func runLinkDriver(t testing.TB, link drivers.Link) *running {
	t.Helper()
	var print slog.Handler
	if testing.Verbose() {
		print = slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	l := &logs{}
	d, err := drivers.New(link, slog.New(&capture{logs: l, next: print}))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{driver: d, msgs: make(chan model.Message, 1024), logs: l}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, func(m model.Message) error { r.msgs <- m; return nil }) }()
	stopped := false
	var runErr error
	r.stop = func() error {
		if stopped {
			return runErr
		}
		stopped = true
		cancel()
		for {
			select {
			case runErr = <-done:
				return runErr
			case <-r.msgs:
			}
		}
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
	return r
}

// logRecord is one record a driver logged, its attributes as text.
type logRecord struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r logRecord) String() string { return fmt.Sprintf("%s %q %v", r.level, r.msg, r.attrs) }

// logs are the records of a driver's log.
type logs struct {
	mu   sync.Mutex
	recs []logRecord
}

// find returns the records with this message.
func (l *logs) find(msg string) []logRecord {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []logRecord
	for _, r := range l.recs {
		if r.msg == msg {
			out = append(out, r)
		}
	}
	return out
}

// capture is a slog handler that keeps every record in logs and passes it
// on to next, if set.
type capture struct {
	logs  *logs
	attrs []slog.Attr
	next  slog.Handler
}

func (h *capture) Enabled(context.Context, slog.Level) bool { return true }

func (h *capture) Handle(ctx context.Context, r slog.Record) error {
	rec := logRecord{level: r.Level, msg: r.Message, attrs: map[string]string{}}
	for _, a := range h.attrs {
		rec.attrs[a.Key] = a.Value.String()
	}
	r.Attrs(func(a slog.Attr) bool {
		rec.attrs[a.Key] = a.Value.String()
		return true
	})
	h.logs.mu.Lock()
	h.logs.recs = append(h.logs.recs, rec)
	h.logs.mu.Unlock()
	if h.next != nil && h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *capture) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clip(h.attrs), as...)
	if h.next != nil {
		c.next = h.next.WithAttrs(as)
	}
	return &c
}

func (h *capture) WithGroup(string) slog.Handler { return h } // the driver uses no groups

// next returns the next message of a device and kind; others wait for
// their own next call.
func (r *running) next(t testing.TB, device string, kind model.Kind, within time.Duration) model.Message {
	t.Helper()
	for i, m := range r.pending {
		if m.Device == device && m.Kind == kind {
			r.pending = append(r.pending[:i:i], r.pending[i+1:]...)
			return m
		}
	}
	timer := time.NewTimer(within)
	defer timer.Stop()
	for {
		select {
		case m := <-r.msgs:
			if m.Device == device && m.Kind == kind {
				return m
			}
			r.pending = append(r.pending, m)
		case <-timer.C:
			t.Fatalf("no %s message from %s within %v", kind, device, within)
		}
	}
}

// poll returns the next telemetry message of a device with n readings (a
// poll's), skipping those of its alarm polls.
func (r *running) poll(t testing.TB, device string, n int, within time.Duration) model.Message {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("no poll of %s within %v", device, within)
		}
		if m := r.next(t, device, model.KindTelemetry, left); len(m.Readings) == n {
			return m
		}
	}
}

// health returns the next health message of a device in state, skipping
// others, within the time given.
func (r *running) health(t testing.TB, device string, state model.HealthState, within time.Duration) *model.Health {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			t.Fatalf("%s not %s within %v", device, state, within)
		}
		if h := r.next(t, device, model.KindHealth, left).Health; h.State == state {
			return h
		}
	}
}

func symlink(target, name string) error { return os.Symlink(target, name) }
