package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	cfg "outpost/configs/mqtt"
	"outpost/drivers"
	"outpost/gateway/model"
)

// embedded is the settings of the test link with an embedded broker.
const embedded = `listen: "127.0.0.1:0", credentials: devices.passwd, max_payload: 4096`

// station writes a station file with an mqtt link of two kiosks (their
// passwords "pw-kiosk-1" and "pw-kiosk-2") and loads it.
func station(t *testing.T, extra string) *configs.Station {
	t.Helper()
	return stationIn(t, t.TempDir(), embedded, extra)
}

// stationIn writes the station file of station into dir, with the link's
// settings given (files they name relative to dir), and loads it.
func stationIn(t *testing.T, dir, link, extra string) *configs.Station {
	t.Helper()
	var lines string
	for _, dev := range []string{"kiosk-1", "kiosk-2"} {
		l, err := cfg.Hash(dev, "pw-"+dev)
		if err != nil {
			t.Fatal(err)
		}
		lines += l + "\n"
	}
	if err := os.WriteFile(filepath.Join(dir, "devices.passwd"), []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`version: 2
station: {id: pc-0001, type: police_cube}
state_dir: %s
hub: {mqtt: {url: "tcp://127.0.0.1:1"}}
links:
  - {id: station-mqtt, protocol: mqtt, %s}
devices:
  - {id: kiosk-1, template: outpost-kiosk, link: station-mqtt, rate: 50, burst: 20, location: "Xinhua Rd 12"}
  - {id: kiosk-2, template: outpost-kiosk, link: station-mqtt}
%s`, filepath.Join(dir, "state"), link, extra)
	path := filepath.Join(dir, "station.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := configs.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// emitted collects what a driver emits.
type emitted struct {
	ch      chan model.Message
	mu      sync.Mutex
	fail    error // what emit says, when set
	refused int   // messages emit refused with fail
}

func (e *emitted) emit(m model.Message) error {
	e.mu.Lock()
	err := e.fail
	if err != nil {
		e.refused++
	}
	e.mu.Unlock()
	if err != nil {
		return err
	}
	e.ch <- m
	return nil
}

// failing makes emit refuse every message with err (nil: take them).
func (e *emitted) failing(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.fail = err
}

// refusals is how many messages emit refused.
func (e *emitted) refusals() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.refused
}

// nextOf waits for the next message of a device and kind, skipping
// others.
func (e *emitted) nextOf(t *testing.T, device string, kind model.Kind) model.Message {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case m := <-e.ch:
			if m.Device == device && m.Kind == kind {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s of %s emitted within 10s", kind, device)
		}
	}
}

// next waits for the next message emitted.
func (e *emitted) next(t *testing.T) model.Message {
	t.Helper()
	select {
	case m := <-e.ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("nothing emitted within 10s")
		return model.Message{}
	}
}

// health waits for a device's health in a state.
func (e *emitted) health(t *testing.T, device string, state model.HealthState) model.Message {
	t.Helper()
	for {
		if m := e.nextOf(t, device, model.KindHealth); m.Health.State == state {
			return m
		}
	}
}

// none says nothing but health was emitted for a device so far.
func (e *emitted) none(t *testing.T, device string) {
	t.Helper()
	for {
		select {
		case m := <-e.ch:
			if m.Device == device && m.Kind != model.KindHealth {
				t.Fatalf("unexpected %s of %s: %+v %+v", m.Kind, m.Device, m.Readings, m.Event)
			}
		default:
			return
		}
	}
}

// start runs the link's driver until the test ends.
func start(t *testing.T, st *configs.Station) (*Driver, *emitted) {
	t.Helper()
	d, out, stop := run(t, st)
	t.Cleanup(stop)
	return d, out
}

// run runs the link's driver until stop, which waits for Run to return.
func run(t *testing.T, st *configs.Station) (d *Driver, out *emitted, stop func()) {
	t.Helper()
	d = build(t, st)
	out = &emitted{ch: make(chan model.Message, 10000)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, out.emit) }()
	select {
	case <-d.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("driver stopped before listening: %v", err)
	case <-time.After(5 * time.Second):
		cancel()
		t.Fatal("driver not listening within 5s")
	}
	return d, out, sync.OnceFunc(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(5 * time.Second):
			t.Error(errors.New("Run did not return within 5s of its context ending"))
		}
	})
}

// withSilence gives a device of the station a silence of its own.
func withSilence(t *testing.T, st *configs.Station, device, silence string) *configs.Station {
	t.Helper()
	src, err := os.ReadFile(st.File)
	if err != nil {
		t.Fatal(err)
	}
	line := "{id: " + device + ", template: outpost-kiosk, link: station-mqtt"
	if !strings.Contains(string(src), line) {
		t.Fatalf("no %s in %s", line, src)
	}
	src = []byte(strings.Replace(string(src), line, line+", silence: "+silence, 1))
	if err := os.WriteFile(st.File, src, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err = configs.Load(st.File)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// build makes the driver of the station's first link.
func build(t *testing.T, st *configs.Station) *Driver {
	t.Helper()
	drv, err := New(drivers.Links(st)[0], slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return drv.(*Driver)
}

// kiosk is a device's paho client.
type kiosk struct {
	t   *testing.T
	c   paho.Client
	cmd chan paho.Message

	mu   sync.Mutex
	conn net.Conn // the connection, for cut
}

// connect logs a device in to the embedded broker at addr with a
// password; the error is the broker's answer.
func connect(t *testing.T, addr, id, password string, will bool) (*kiosk, error) {
	t.Helper()
	return dial(t, "tcp://"+addr, id, password, will, nil)
}

// dial logs a device in to a broker by its URL (tcp:// or ssl://, then
// trusting tc's roots).
func dial(t *testing.T, broker, id, password string, will bool, tc *tls.Config) (*kiosk, error) {
	t.Helper()
	k := &kiosk{t: t, cmd: make(chan paho.Message, 100)}
	o := paho.NewClientOptions().AddBroker(broker).SetClientID(id).SetUsername(id).SetPassword(password).
		SetProtocolVersion(4).SetCleanSession(false).SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(5 * time.Second).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			dialer := &net.Dialer{Timeout: 5 * time.Second}
			var c net.Conn
			var err error
			if u.Scheme == "ssl" {
				c, err = tls.DialWithDialer(dialer, "tcp", u.Host, tc)
			} else {
				c, err = dialer.Dial("tcp", u.Host)
			}
			k.mu.Lock()
			k.conn = c
			k.mu.Unlock()
			return c, err
		})
	if will {
		o.SetWill("dev/"+id+"/state", "offline", 1, true)
	}
	k.c = paho.NewClient(o)
	tok := k.c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, errors.New("connect timed out")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { k.c.Disconnect(0) })
	// Subscribed before the caller publishes the kiosk's birth, as
	// docs/kiosks.md asks: a command sent when the gateway sees it online
	// would otherwise reach an external broker before the subscription,
	// and wait for the gateway's next send, 30 s on.
	sub := k.c.Subscribe("dev/"+id+"/cmd", 1, func(_ paho.Client, m paho.Message) { k.cmd <- m })
	if !sub.WaitTimeout(10*time.Second) || sub.Error() != nil {
		return nil, fmt.Errorf("subscribe to dev/%s/cmd: %v", id, sub.Error())
	}
	return k, nil
}

// cut closes the kiosk's connection without a goodbye: the broker sends
// its will.
func (k *kiosk) cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.conn.Close()
}

// publish sends a message at QoS 1 and waits for the broker's
// acknowledgement (or the connection's loss).
func (k *kiosk) publish(topic, payload string) error {
	tok := k.c.Publish(topic, 1, false, payload)
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("publish not acknowledged within 10s")
	}
	return tok.Error()
}

// get is a link counter's count.
func (c *counters) get(name string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[name]
}
