// Package hub starts a real city-brain hub for tests and the testbench: a
// Mosquitto broker and an InfluxDB 1.8 server, each on loopback ports of its
// own, with its files under a directory the caller owns. The shipped gateway
// never imports it.
package hub

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrNotRunning is returned by operations that need the server running.
var ErrNotRunning = errors.New("hub: server not running")

// FreePort finds a free loopback TCP port (see FreePorts).
func FreePort() (int, error) {
	ports, err := FreePorts(1)
	if err != nil {
		return 0, err
	}
	return ports[0], nil
}

// FreePorts finds n free loopback TCP ports, each another: all are held
// until the last is found. They are taken below the kernel's range of
// ephemeral ports (net.ipv4.ip_local_port_range), from which every
// outgoing connection gets its own port: a server restarted on its port
// (a broker or a node of a cluster, killed and started again) found it
// taken by some test's connection meanwhile, when the kernel had handed
// it out. Where the range leaves no room below it, the kernel picks.
func FreePorts(n int) ([]int, error) {
	lo, hi := listenRange()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		addr := "127.0.0.1:0"
		if hi > lo && tries < 100*n {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo)))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			if addr == "127.0.0.1:0" {
				return nil, fmt.Errorf("hub: find a free port: %w", err)
			}
			continue // taken
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// listenRange is where FreePorts looks: from 10000 up to the first
// ephemeral port; empty when the kernel's range is not known or starts
// lower.
func listenRange() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first <= 11000 {
		return 0, 0
	}
	return 10000, first
}

// portTries is how many times a server is started on ports found free:
// another process can take one before the server listens on it (tests run
// side by side), and the server then exits at once.
const portTries = 3

// onFreePorts calls start, which finds its ports free and starts the
// server named name on them, up to portTries times while the server found
// a port taken.
func onFreePorts[T any](log *slog.Logger, name string, start func(try int) (T, error)) (T, error) {
	for try := 1; ; try++ {
		v, err := start(try)
		if err == nil || try == portTries || !strings.Contains(strings.ToLower(err.Error()), "address already in use") {
			return v, err
		}
		log.Info("hub: a port found free was taken; starting again on other ports", "server", name, "err", err)
	}
}

// errGiveUp, in the error of a readiness check, ends waitReady at once.
var errGiveUp = errors.New("gave up")

// proc is one run of a server process. Its waiter goroutine ends when the
// process exits, and closes done.
type proc struct {
	name string
	log  *slog.Logger
	path string
	args []string
	logf string // file that receives stdout and stderr

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error // exit status, valid once done is closed
}

// start starts the process; it is an error if it is already running.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("hub: %s already running", p.name)
	}
	out, err := os.OpenFile(p.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("hub: %s log: %w", p.name, err)
	}
	cmd := exec.Command(p.path, p.args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group, so that a Ctrl-C of `go test` doesn't race Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("hub: start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.cmd, p.done = cmd, done
	go func() {
		err := cmd.Wait()
		out.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	p.log.Debug("hub: started", "server", p.name, "pid", cmd.Process.Pid)
	return nil
}

// current returns the command and done channel of the current run, or nils.
func (p *proc) current() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// pid is the process id of the current run, or 0.
func (p *proc) pid() int {
	if cmd, _ := p.current(); cmd != nil {
		return cmd.Process.Pid
	}
	return 0
}

// restart stops the process if it runs, starts it, and waits until ready
// says it serves.
func (p *proc) restart(ctx context.Context, ready func(context.Context) error) error {
	p.stop()
	if err := p.start(); err != nil {
		return err
	}
	if err := p.waitReady(ctx, ready); err != nil {
		p.kill()
		return err
	}
	return nil
}

// waitReady polls ready until it succeeds, the process exits or ctx ends.
func (p *proc) waitReady(ctx context.Context, ready func(context.Context) error) error {
	_, done := p.current()
	if done == nil {
		return ErrNotRunning
	}
	var last error
	for delay := time.Millisecond; ; delay = min(delay*2, 50*time.Millisecond) {
		if last = ready(ctx); last == nil {
			return nil
		} else if errors.Is(last, errGiveUp) {
			return fmt.Errorf("hub: %s not ready: %w", p.name, last)
		}
		t := time.NewTimer(delay)
		select {
		case <-done:
			t.Stop()
			p.mu.Lock()
			exit := p.err
			p.mu.Unlock()
			p.reap()
			return fmt.Errorf("hub: %s exited before it was ready (%v): %s", p.name, exit, p.tail())
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("hub: %s not ready: %w (last: %v); its log ends: %s", p.name, ctx.Err(), last, p.tail())
		case <-t.C:
		}
	}
}

// tail returns the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.logf)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// signal sends sig and waits for the process to exit; after grace it kills
// it. It does nothing when the process is not running.
func (p *proc) signal(sig syscall.Signal, grace time.Duration) {
	cmd, done := p.current()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-done
	}
	p.reap()
	p.log.Debug("hub: stopped", "server", p.name, "signal", sig.String())
}

// exited says whether the current run has ended (false when none started).
func (p *proc) exited() bool {
	_, done := p.current()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return true
	default:
		return false
	}
}

// reap forgets a run that has ended.
func (p *proc) reap() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done != nil {
		select {
		case <-p.done:
			p.cmd, p.done = nil, nil
		default:
		}
	}
}

// send sends sig without waiting for anything.
func (p *proc) send(sig syscall.Signal) {
	if cmd, _ := p.current(); cmd != nil {
		_ = cmd.Process.Signal(sig)
	}
}

// kill ends the process with SIGKILL, as a crash or power cut would.
func (p *proc) kill() { p.signal(syscall.SIGKILL, 5*time.Second) }

// stop ends the process gracefully (SIGTERM), and kills it after 5 s.
func (p *proc) stop() { p.signal(syscall.SIGTERM, 5*time.Second) }
