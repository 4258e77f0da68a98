package bus

import (
	"context"
	"io/fs"
	"log/slog"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/creack/pty"
	"go.bug.st/serial"
	"golang.org/x/sys/unix"

	"outpost/configs"
)

// TestReadBy: an answer that came in time is read even when the reader
// looks only after its limit (a loaded machine schedules it late); only an
// empty port past the limit is expired. Through the port the gateway opens
// (OpenSerial) and through go.bug.st/serial's own.
func TestReadBy(t *testing.T) {
	for _, c := range []struct {
		name string
		open OpenFunc
	}{
		{"OpenSerial", OpenSerial},
		{"go.bug.st/serial", func(path string, mode *serial.Mode) (Port, error) { return serial.Open(path, mode) }},
	} {
		t.Run(c.name, func(t *testing.T) { testReadBy(t, c.open) })
	}
}

func testReadBy(t *testing.T, open OpenFunc) {
	m, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer tty.Close()
	p, err := open(tty.Name(), &serial.Mode{BaudRate: 115200})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	buf := make([]byte, 16)

	start := time.Now()
	n, expired, err := ReadBy(p, buf, start.Add(20*time.Millisecond))
	if n != 0 || !expired || err != nil {
		t.Fatalf("empty port: %d bytes, expired %v, %v; want 0, expired", n, expired, err)
	}
	if waited := time.Since(start); waited < 20*time.Millisecond {
		t.Errorf("empty port: gave up after %v, before the limit", waited)
	}

	if _, err := m.Write([]byte("#01\r")); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; {
		q, err := unix.IoctlGetInt(int(tty.Fd()), unix.TIOCINQ)
		if err != nil {
			t.Fatal(err)
		}
		if q == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d bytes in the port, want 4", q)
		}
		time.Sleep(time.Millisecond)
	}
	past := time.Now().Add(-time.Second)
	n, expired, err = ReadBy(p, buf, past)
	if string(buf[:n]) != "#01\r" || expired || err != nil {
		t.Fatalf("answer waiting past the limit: %q, expired %v, %v; want \"#01\\r\"", buf[:n], expired, err)
	}
	n, expired, err = ReadBy(p, buf, past)
	if n != 0 || !expired || err != nil {
		t.Fatalf("then: %d bytes, expired %v, %v; want 0, expired", n, expired, err)
	}
}

// TestOpenHints: a port that does not open says what to check: the
// adapter or the name, the user's groups, another program on it.
func TestOpenHints(t *testing.T) {
	_, err := OpenSerial("/dev/outpost-no-such-port", &serial.Mode{BaudRate: 9600})
	want := "open /dev/outpost-no-such-port: no such file or directory: the adapter is unplugged, or the port is named wrong (gateway ports lists those there are)"
	if err == nil || err.Error() != want {
		t.Errorf("a port that is not there: %v\nwant %s", err, want)
	}
	// The tests run as root, whom neither a port's mode nor another's
	// exclusive hold keeps out: the errors the kernel gives others.
	for _, c := range []struct {
		err  error
		want string
	}{
		{&fs.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.EACCES},
			"open /dev/ttyUSB0: permission denied: the gateway's user may not open it: add the user to group dialout (the packaged service's user outpost is in it)"},
		{&fs.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.EBUSY},
			"open /dev/ttyUSB0: device or resource busy: another program holds the port (another gateway, gateway read or commission while the service runs, or ModemManager)"},
		{&fs.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.EIO},
			"open /dev/ttyUSB0: input/output error"},
	} {
		if got := openHint(c.err).Error(); got != c.want {
			t.Errorf("%v: %s\nwant %s", c.err, got, c.want)
		}
	}
}

// TestReopenPace: a port that stays missing is tried again at least every
// PortReopenMax (an adapter plugged back in carries a press at once) and
// logged once per reason, not at every try; an endpoint is redialled at
// most every ReopenMax.
func TestReopenPace(t *testing.T) {
	missing := &fs.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.ENOENT}
	refused := &fs.PathError{Op: "open", Path: "/dev/ttyUSB0", Err: syscall.EBUSY}
	fail := error(missing)
	open := func(string, *serial.Mode) (Port, error) { return nil, fail }
	var logged []string
	s, err := NewSerial(&configs.Serial{Port: "/dev/ttyUSB0", Baud: 9600, DataBits: 8, StopBits: 1, Parity: "none"}, open,
		slog.New(handlerFunc(func(r slog.Record) { logged = append(logged, r.Message) })))
	if err != nil {
		t.Fatal(err)
	}
	try := func(n int) {
		for range n {
			s.reopen.next = time.Time{} // the pause is over
			if _, _, err := s.Port(); err == nil {
				t.Fatal("a port that cannot open opened")
			}
		}
	}
	try(10)
	if d := s.reopen.Delay(); d != PortReopenMax {
		t.Errorf("after 10 failed opens the pause is %s, want %s", d, PortReopenMax)
	}
	fail = refused
	try(3)
	if want := []string{"serial port unavailable", "serial port unavailable"}; !slices.Equal(logged, want) {
		t.Errorf("13 failed opens, for two reasons, logged %q, want %q", logged, want)
	}
	var r Reopen
	for range 10 {
		r.Fail(missing)
	}
	if r.Delay() != ReopenMax {
		t.Errorf("an endpoint after 10 failed dials waits %s, want %s", r.Delay(), ReopenMax)
	}
}

// handlerFunc is a slog.Handler that calls itself with every record.
type handlerFunc func(slog.Record)

func (h handlerFunc) Enabled(context.Context, slog.Level) bool      { return true }
func (h handlerFunc) Handle(_ context.Context, r slog.Record) error { h(r); return nil }
func (h handlerFunc) WithAttrs([]slog.Attr) slog.Handler            { return h }
func (h handlerFunc) WithGroup(string) slog.Handler                 { return h }
