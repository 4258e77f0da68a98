package main

import (
	"bufio"
	"context"
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
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// binDir is where the three binaries are: $OUTPOST_BIN, or beside the
// testbench's own.
func binDir() string {
	if d := os.Getenv("OUTPOST_BIN"); d != "" {
		return d
	}
	exe, err := os.Executable()
	if err != nil {
		return "bin"
	}
	return filepath.Dir(exe)
}

// proc is a child process of the testbench: the simulator or the gateway.
type proc struct {
	name string
	path string // the binary; bin/name beside the testbench's when empty
	cmd  *exec.Cmd
	done chan struct{}
	err  error

	mu    sync.Mutex
	cpu   time.Duration // summed over every process started under this name
	maxRS int64         // KiB, the largest VmHWM of any
	said  []string      // what the latest one printed before it was ready
}

// printed returns what follows prefix on a line the process printed before
// it was ready ("firmware-sim control " -> the address), or "".
func (p *proc) printed(prefix string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.said {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// control is the address of a simulator's control API (firmware-sim
// -control), once it printed it; "" before or without one.
func (p *proc) control() string { return p.printed("firmware-sim control ") }

// start runs bin/name args, copying its output to log, and returns once the
// process printed ready (when ready is not empty).
func (p *proc) start(ctx context.Context, log io.Writer, ready string, args ...string) error {
	path := p.path
	if path == "" {
		path = filepath.Join(binDir(), p.name)
	}
	cmd := exec.Command(path, args...)
	if i := slices.Index(args, "-config"); p.name == "gateway" && i >= 0 && i+1 < len(args) {
		// The gateway's fallback state directory (systemd's runtime
		// directory on a station) beside its station file, not in the
		// machine's /run/outpost.
		cmd.Env = append(os.Environ(), "RUNTIME_DIRECTORY="+filepath.Join(filepath.Dir(args[i+1]), "run"))
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go p.sampleRSS(cmd.Process.Pid, p.done)
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		seen := false
		p.mu.Lock()
		p.said = nil
		p.mu.Unlock()
		for sc.Scan() {
			fmt.Fprintln(log, sc.Text())
			if !seen {
				p.mu.Lock()
				p.said = append(p.said, sc.Text())
				p.mu.Unlock()
			}
			if !seen && ready != "" && strings.Contains(sc.Text(), ready) {
				seen = true
				close(readyc)
			}
		}
		p.err = cmd.Wait()
		p.account()
		close(p.done)
	}()
	if ready == "" {
		return nil
	}
	select {
	case <-readyc:
		return nil
	case <-p.done:
		return fmt.Errorf("%s exited before it was ready: %v (see the run log)", p.name, p.err)
	case <-time.After(30 * time.Second):
		p.kill()
		return fmt.Errorf("%s was not ready after 30s", p.name)
	case <-ctx.Done():
		p.kill()
		return ctx.Err()
	}
}

func (p *proc) account() {
	ps := p.cmd.ProcessState
	if ps == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cpu += ps.UserTime() + ps.SystemTime()
}

// sampleRSS follows the process's peak resident memory (VmHWM) until done.
// The wait status's maxrss cannot serve: Linux carries the parent's peak
// into a child started with vfork and exec, so it would report the
// testbench's own memory.
func (p *proc) sampleRSS(pid int, done <-chan struct{}) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		if kb, ok := peakRSS(pid); ok {
			p.mu.Lock()
			p.maxRS = max(p.maxRS, kb)
			p.mu.Unlock()
		}
		select {
		case <-done:
			return
		case <-t.C:
		}
	}
}

// peakRSS reads VmHWM (KiB) from /proc/PID/status.
func peakRSS(pid int) (int64, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			var kb int64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err == nil {
				return kb, true
			}
		}
	}
	return 0, false
}

// cpuSample is a process's CPU time at a moment.
type cpuSample struct {
	pid int
	cpu time.Duration
	at  time.Time
	ok  bool
}

// cpuNow samples the running process's CPU time (user and system).
func (p *proc) cpuNow() cpuSample {
	if p.cmd == nil || p.cmd.Process == nil {
		return cpuSample{}
	}
	return cpuOf(p.cmd.Process.Pid)
}

// cpuOf samples the CPU time of any process, all its threads, the ended
// ones too. It reads the kernel's CPU clock of the process, which counts
// nanoseconds. /proc/PID/stat, its fallback, counts ticks of 10 ms
// (Linux's USER_HZ is 100): 0.17 ms a second over a 60 s window, a sixth
// of the idle station's whole budget.
func cpuOf(pid int) cpuSample {
	// The clock id of a process's CPU clock, as glibc's clock_getcpuclockid
	// makes it: the pid's complement shifted by three, and CPUCLOCK_SCHED.
	var ts unix.Timespec
	if err := unix.ClockGettime(int32(^pid<<3|2), &ts); err == nil {
		return cpuSample{pid: pid, cpu: time.Duration(ts.Nano()), at: time.Now(), ok: true}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuSample{}
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is the first; utime and stime the 12th and 13th.
	_, rest, ok := strings.Cut(string(b), ") ")
	f := strings.Fields(rest)
	if !ok || len(f) < 13 {
		return cpuSample{}
	}
	var ut, st int64
	if _, err := fmt.Sscan(f[11], &ut); err != nil {
		return cpuSample{}
	}
	if _, err := fmt.Sscan(f[12], &st); err != nil {
		return cpuSample{}
	}
	return cpuSample{pid: pid, cpu: time.Duration(ut+st) * 10 * time.Millisecond, at: time.Now(), ok: true}
}

// percentOf is the share of one core the process used from a to b, or -1
// when it was not the same process throughout.
func percentOf(a, b cpuSample) float64 {
	if !a.ok || !b.ok || a.pid != b.pid || !b.at.After(a.at) {
		return -1
	}
	return 100 * (b.cpu - a.cpu).Seconds() / b.at.Sub(a.at).Seconds()
}

// stop asks the process to end (SIGTERM) and waits up to timeout, then kills it.
func (p *proc) stop(timeout time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	if kb, ok := peakRSS(p.cmd.Process.Pid); ok {
		p.mu.Lock()
		p.maxRS = max(p.maxRS, kb)
		p.mu.Unlock()
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.kill()
		return fmt.Errorf("%s did not stop within %s after SIGTERM", p.name, timeout)
	}
	return nil
}

// kill ends the process with SIGKILL and waits for it.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Kill()
	<-p.done
}

func (p *proc) usage() (cpu time.Duration, maxRSSMB float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cpu, float64(p.maxRS) / 1024
}

func logWriter(log *slog.Logger, path string) (io.WriteCloser, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	log.Debug("process output", "file", path)
	return f, nil
}

// warnings returns the warnings and errors in the processes' log at path,
// one line for each message (its last, and how many there were), at most
// n, in the order they first came: what a failed run's output shows of
// why, without the hundreds of one kind a dead device makes.
func warnings(path string, n int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var order []string
	last, count := map[string]string{}, map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if !strings.Contains(l, "level=WARN") && !strings.Contains(l, "level=ERROR") {
			continue
		}
		msg := logMsg(l)
		if count[msg] == 0 {
			order = append(order, msg)
		}
		last[msg] = l
		count[msg]++
	}
	var out []string
	for _, msg := range order[:min(len(order), n)] {
		out = append(out, fmt.Sprintf("%d× %s", count[msg], last[msg]))
	}
	return out
}

// logMsg is the msg of a line slog's text handler wrote: quoted when it
// has spaces.
func logMsg(line string) string {
	_, v, ok := strings.Cut(line, " msg=")
	if !ok {
		return line
	}
	if q, err := strconv.QuotedPrefix(v); err == nil {
		return q
	}
	v, _, _ = strings.Cut(v, " ")
	return v
}

// signal sends sig to the running process.
func (p *proc) signal(sig syscall.Signal) error {
	if p.cmd == nil || p.cmd.Process == nil {
		return fmt.Errorf("%s is not running", p.name)
	}
	return p.cmd.Process.Signal(sig)
}
