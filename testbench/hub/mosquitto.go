package hub

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// MosquittoPath is where the Debian package installs the broker.
const MosquittoPath = "/usr/sbin/mosquitto"

// PasswordFile writes a Mosquitto password file at path that knows user
// with password, as mosquitto_passwd -b -c does (it runs it).
func PasswordFile(path, user, password string) error {
	if out, err := exec.Command("mosquitto_passwd", "-b", "-c", path, user, password).CombinedOutput(); err != nil {
		return fmt.Errorf("hub: mosquitto_passwd: %w: %s", err, out)
	}
	return nil
}

// Mosquitto is a running Mosquitto broker on a loopback port.
type Mosquitto struct {
	port    int
	tlsPort int // 0 without a TLS listener
	p       proc
}

// TLSFiles are the PEM files of a TLS listener: the CA that signs client
// certificates, and the broker's certificate and key.
type TLSFiles struct {
	CA, Cert, Key string
}

// StartMosquitto writes a broker config into dir (which must exist) and
// starts Mosquitto on a free loopback port: anonymous access, sessions saved
// every second (so that a subscriber's session survives a kill -9 of the
// broker, as a hub's would), no limit on queued messages (the default of 1000 silently
// drops messages to a slow subscriber). It returns once the broker accepts
// connections.
func StartMosquitto(ctx context.Context, dir string, log *slog.Logger) (*Mosquitto, error) {
	return StartMosquittoWith(ctx, dir, log, MosquittoOptions{})
}

// StartMosquittoTLS is StartMosquitto with a second listener that speaks
// TLS and requires a client certificate signed by files.CA; TLSURL names it.
func StartMosquittoTLS(ctx context.Context, dir string, log *slog.Logger, files TLSFiles) (*Mosquitto, error) {
	return StartMosquittoWith(ctx, dir, log, MosquittoOptions{TLS: &files})
}

// MosquittoOptions change the test broker.
type MosquittoOptions struct {
	// TLS adds a second listener that speaks TLS (see StartMosquittoTLS).
	TLS *TLSFiles
	// Config is added to the broker's configuration, e.g.
	// "max_packet_size 1000\n".
	Config string
	// NoAutosave keeps the broker from saving its sessions every second:
	// a run that never kills it needs no snapshot, and one of a session
	// holding a large backlog blocks the broker for a while (on one 2-core
	// machine up to 370 ms every second or two, while a million readings
	// drained). The sessions are still saved when the broker stops.
	NoAutosave bool
}

// StartMosquittoWith is StartMosquitto with options.
func StartMosquittoWith(ctx context.Context, dir string, log *slog.Logger, o MosquittoOptions) (*Mosquitto, error) {
	path := MosquittoPath
	if _, err := exec.LookPath(path); err != nil {
		return nil, fmt.Errorf("hub: mosquitto not found at %s (run `make test-deps`): %w", path, err)
	}
	return onFreePorts(log, "mosquitto", func(int) (*Mosquitto, error) { return startMosquitto(ctx, dir, log, o, path) })
}

// startMosquitto starts the broker on ports it finds free.
func startMosquitto(ctx context.Context, dir string, log *slog.Logger, o MosquittoOptions, path string) (*Mosquitto, error) {
	files := o.TLS
	n := 1
	if files != nil {
		n = 2 // the TLS listener's too, found together: never the same
	}
	ports, err := FreePorts(n)
	if err != nil {
		return nil, err
	}
	port := ports[0]
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("hub: %w", err)
	}
	conf := filepath.Join(dir, "mosquitto.conf")
	// set_tcp_nodelay: without it the broker's PUBACKs wait on Nagle's
	// algorithm and the client's delayed ACK, and pipelined QoS 1 batches
	// stall about 40 ms each (measured: 14 times slower).
	// "user root" keeps a broker started by root from switching to the
	// mosquitto user (which could not write into dir); it is ignored when
	// not run as root.
	text := fmt.Sprintf(`# written by the outpost test hub
user root
listener %d 127.0.0.1
allow_anonymous true
max_queued_messages 0
max_inflight_messages 0
persistence true
persistence_location %s/
autosave_interval %d
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
log_type notice
`, port, dir, map[bool]int{false: 1, true: 0}[o.NoAutosave])
	tlsPort := 0
	if files != nil {
		tlsPort = ports[1]
		text += fmt.Sprintf("listener %d 127.0.0.1\ncafile %s\ncertfile %s\nkeyfile %s\nrequire_certificate true\n",
			tlsPort, files.CA, files.Cert, files.Key)
	}
	text += o.Config
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		return nil, fmt.Errorf("hub: mosquitto config: %w", err)
	}
	m := &Mosquitto{port: port, tlsPort: tlsPort, p: proc{
		name: "mosquitto", log: log, path: path,
		args: []string{"-c", conf}, logf: filepath.Join(dir, "mosquitto.log"),
	}}
	if err := m.Restart(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// URL is the broker's address for MQTT clients: tcp://127.0.0.1:PORT.
func (m *Mosquitto) URL() string { return "tcp://" + m.Addr() }

// TLSURL is the TLS listener's address: ssl://127.0.0.1:PORT.
func (m *Mosquitto) TLSURL() string {
	return "ssl://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(m.tlsPort))
}

// Addr is the broker's host:port.
func (m *Mosquitto) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// Restart starts the broker again on the same port (stopping it first if it
// runs) and waits until it accepts connections.
func (m *Mosquitto) Restart(ctx context.Context) error { return m.p.restart(ctx, m.ready) }

func (m *Mosquitto) ready(ctx context.Context) error {
	d := net.Dialer{Timeout: 200 * time.Millisecond}
	c, err := d.DialContext(ctx, "tcp", m.Addr())
	if err != nil {
		return err
	}
	return c.Close()
}

// Kill ends the broker with SIGKILL, like a crash: connections drop without
// a goodbye and nothing is saved.
func (m *Mosquitto) Kill() { m.p.kill() }

// Freeze stops the broker (SIGSTOP) without closing anything: it hangs,
// as a broker on an overloaded or wedged machine does. The kernel still
// accepts connections into its backlog. Thaw resumes it.
func (m *Mosquitto) Freeze() { m.p.send(syscall.SIGSTOP) }

// Thaw resumes a frozen broker.
func (m *Mosquitto) Thaw() { m.p.send(syscall.SIGCONT) }

// Stop ends the broker gracefully. Stopping a stopped broker does nothing.
func (m *Mosquitto) Stop() { m.p.stop() }

// Pid is the broker's process id, or 0 when it is not running.
func (m *Mosquitto) Pid() int { return m.p.pid() }
