package dc09

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	cfg "outpost/configs/dc09"
	"outpost/drivers"
	"outpost/gateway/model"
)

// emitted collects what a driver emits. fail, while set, makes Emit say
// the message is not durable; and not kept at all, unless fail is
// drivers.ErrHeld (delivered from memory).
type emitted struct {
	ch   chan model.Message
	mu   sync.Mutex
	fail error
}

func newEmitted() *emitted { return &emitted{ch: make(chan model.Message, 1000)} }

func (e *emitted) emit(m model.Message) error {
	e.mu.Lock()
	err := e.fail
	e.mu.Unlock()
	if err != nil && !errors.Is(err, drivers.ErrHeld) {
		return err
	}
	e.ch <- m
	return err
}

func (e *emitted) setFail(err error) {
	e.mu.Lock()
	e.fail = err
	e.mu.Unlock()
}

// next waits for the next message.
func (e *emitted) next(t *testing.T) model.Message {
	t.Helper()
	select {
	case m := <-e.ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no message emitted within 5s")
		return model.Message{}
	}
}

// nextOf waits for the next message of a kind, skipping others.
func (e *emitted) nextOf(t *testing.T, kind model.Kind) model.Message {
	t.Helper()
	for {
		if m := e.next(t); m.Kind == kind {
			return m
		}
	}
}

// none says nothing more was emitted: call it after an answer, which
// comes only after the emits of its frame.
func (e *emitted) none(t *testing.T) {
	t.Helper()
	select {
	case m := <-e.ch:
		t.Fatalf("unexpected message %+v (event %+v, health %+v)", m, m.Event, m.Health)
	default:
	}
}

// testLink is a link built without a station file, so that its settings
// can be what a file may not hold (a supervision of 200ms).
func testLink(t *testing.T, set *cfg.Link, devs ...*cfg.Device) drivers.Link {
	t.Helper()
	if set.Listen == "" {
		set.Listen = "127.0.0.1:0"
	}
	if set.Transport == "" {
		set.Transport = cfg.Both
	}
	if set.Window.Past == 0 {
		set.Window = cfg.Window{Past: 40 * time.Second, Future: 20 * time.Second}
	}
	if set.Duplicates == 0 {
		set.Duplicates = 10 * time.Minute
	}
	if set.IdleTimeout == 0 {
		set.IdleTimeout = time.Minute
	}
	if set.MaxConnections == 0 {
		set.MaxConnections = 16
	}
	tmpl := &configs.Template{Name: "generic-alarm-panel", Kind: "alarm_panel", Protocol: cfg.Family, Alarm: true, Body: &cfg.Template{}}
	st := &configs.Station{StateDir: t.TempDir(), Templates: map[string]*configs.Template{tmpl.Name: tmpl}}
	l := &configs.Link{ID: "alarm-rx", Protocol: cfg.Protocol, Settings: set}
	st.Links = []configs.Link{*l}
	for i, d := range devs {
		st.Devices = append(st.Devices, configs.Device{ID: "panel-" + string(rune('1'+i)), Template: tmpl.Name, Link: l.ID, Settings: d})
	}
	return drivers.Links(st)[0]
}

// running is a driver running in the background.
type running struct {
	d    *Driver
	out  *emitted
	stop func() error
}

// start runs a driver of the link; keys (hex, by account) stand for key
// files.
func start(t *testing.T, link drivers.Link, keys ...string) *running {
	t.Helper()
	drv, err := New(link, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	d := drv.(*Driver)
	for i := 0; i+1 < len(keys); i += 2 {
		d.panels[keys[i]].key = mustHex(t, keys[i+1])
	}
	return startDriver(t, d)
}

// startDriver runs a driver until the test ends.
func startDriver(t *testing.T, d *Driver) *running {
	t.Helper()
	out := newEmitted()
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
	r := &running{d: d, out: out}
	var once sync.Once
	var runErr error
	r.stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(5 * time.Second):
				runErr = errors.New("Run did not return within 5s of its context ending")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := r.stop(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// client is a hand-driven panel connection: frames in, answers out.
type client struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dial(t *testing.T, network, addr string) *client {
	t.Helper()
	c, err := net.Dial(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReader(c)}
}

func (c *client) send(b []byte) {
	c.t.Helper()
	if _, err := c.c.Write(b); err != nil {
		c.t.Fatal(err)
	}
}

// answer reads the next answer and parses it with the receiver's own
// parser (an answer is a frame too).
func (c *client) answer() *Frame {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	s, err := c.r.ReadString('\r')
	if err != nil {
		c.t.Fatalf("no answer: %v", err)
	}
	s = strings.TrimSuffix(s[strings.LastIndexByte(s, '\n')+1:], "\r")
	if len(s) > 13 && s[8:13] == `"NAK"` {
		// A NAK names no account (A0[]): no frame a receiver takes, so
		// it is read here, its CRC and length checked.
		text := s[8:]
		i := strings.LastIndexByte(s, '_')
		tm, ok := parseTime(s[i+1:])
		if string(encode(text)) != "\n"+s+"\r" || i < 0 || !ok {
			c.t.Fatalf("NAK %q is damaged or has no time", s)
		}
		return &Frame{Token: NAK, Seq: s[13:17], Time: tm, HasTime: true}
	}
	f, err := ParseFrame(frame(s))
	if err != nil {
		c.t.Fatalf("answer %q: %v", s, err)
	}
	return f
}

// exchange sends a frame and reads its answer.
func (c *client) exchange(b []byte) *Frame {
	c.t.Helper()
	c.send(b)
	return c.answer()
}

// eventually polls cond until it holds, for readiness of what has no
// signal of its own (a counter on the other side of a socket).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// stamp is a DC-09 timestamp.
func stamp(t time.Time) string { return "_" + t.UTC().Format(timeLayout) }
