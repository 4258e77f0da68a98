// Package vport makes virtual serial ports: a pseudo-terminal pair whose
// slave end is linked at the path a master opens, while the simulator reads
// and writes the other end.
package vport

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"outpost/configs"
	"outpost/firmware-sim/slave"
)

// Port is the device end of a virtual serial port.
type Port struct {
	master *os.File // non-blocking, so deadlines and Close unblock reads
	slave  *os.File // kept open: with no slave open the master reads EIO
	link   string
	noise  *Noise // set before use; nil for a clean line
	echo   bool   // set before use: the master's adapter hears what it sends
}

var _ slave.LineSensor = (*Port)(nil)

// Open creates a pty pair in raw mode and links its slave end at link,
// creating link's directory. An existing symlink at link is replaced; any
// other file there is an error.
func Open(link string) (*Port, error) {
	if fi, err := os.Lstat(link); err == nil {
		if fi.Mode()&fs.ModeSymlink == 0 {
			return nil, fmt.Errorf("vport %s: exists and is not a symlink (%s); refusing to replace it", link, fi.Mode().Type())
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("vport %s: %w", link, err)
	}
	m, s, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("vport %s: open pty: %w", link, err)
	}
	p := &Port{slave: s, link: link}
	fail := func(err error) (*Port, error) {
		if p.master != nil {
			p.master.Close()
		}
		m.Close()
		s.Close()
		return nil, fmt.Errorf("vport %s: %w", link, err)
	}
	// pty.Open's master is in blocking mode (it took its Fd); a dup set to
	// non-blocking joins the runtime poller, so deadlines work on it.
	fd, err := unix.Dup(int(m.Fd()))
	if err != nil {
		return fail(fmt.Errorf("dup master: %w", err))
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("non-blocking master: %w", err))
	}
	p.master = os.NewFile(uintptr(fd), "ptmx")
	m.Close()
	if err := makeRaw(s); err != nil {
		return fail(err)
	}
	if err := os.MkdirAll(filepath.Dir(link), 0o755); err != nil {
		return fail(err)
	}
	tmp := fmt.Sprintf("%s.%d.tmp", link, os.Getpid())
	os.Remove(tmp)
	if err := os.Symlink(s.Name(), tmp); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fail(err)
	}
	return p, nil
}

// makeRaw puts the line in raw mode with echo off, so bytes pass untouched
// even before a master sets its own modes.
func makeRaw(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		t, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			serr = fmt.Errorf("get termios: %w", err)
			return
		}
		t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		t.Oflag &^= unix.OPOST
		t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		t.Cflag &^= unix.CSIZE | unix.PARENB
		t.Cflag |= unix.CS8
		t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(int(fd), unix.TCSETS, t); err != nil {
			serr = fmt.Errorf("set termios: %w", err)
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Path is the pty's own device path (the link points at it).
func (p *Port) Path() string { return p.slave.Name() }

// Link is the path the port is linked at.
func (p *Port) Link() string { return p.link }

// SetNoise makes the line noisy in both directions: what the master wrote
// is damaged before the device reads it, and what the device writes before
// the master reads it. It is called before the port is used.
func (p *Port) SetNoise(n *Noise) { p.noise = n }

// Noise is the line's noise, nil for a clean line.
func (p *Port) Noise() *Noise { return p.noise }

// SetEcho makes the master's adapter echo what the master sends, as a
// two-wire RS-485 adapter whose receiver stays on while it transmits
// does: the master reads its own bytes back before any answer. It is
// called before the port is used.
func (p *Port) SetEcho(on bool) { p.echo = on }

// Read reads what the master wrote.
func (p *Port) Read(b []byte) (int, error) {
	n, err := p.master.Read(b)
	if n > 0 {
		p.noise.Corrupt(b[:n])
		if p.echo {
			p.master.Write(b[:n]) // the echo is best effort, as on the wire
		}
	}
	return n, err
}

// Write sends b to the master.
func (p *Port) Write(b []byte) (int, error) {
	if p.noise != nil {
		b = append([]byte(nil), b...) // the caller's bytes stay intact
		p.noise.Corrupt(b)
	}
	return p.master.Write(b)
}

// ReadFor reads what the master wrote within d, for a simulator's loop: n
// is 0 when nothing came. stop says ctx ended (the simulator then returns
// nil); err is the port's failure otherwise.
func (p *Port) ReadFor(ctx context.Context, b []byte, d time.Duration) (n int, stop bool, err error) {
	if ctx.Err() != nil {
		return 0, true, nil
	}
	if err := p.SetReadDeadline(time.Now().Add(d)); err != nil {
		return 0, false, fmt.Errorf("set deadline: %w", err)
	}
	n, err = p.Read(b)
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
		return n, false, nil
	case ctx.Err() != nil:
		return n, true, nil
	}
	return n, false, fmt.Errorf("read: %w", err)
}

// SetReadDeadline bounds the next reads.
func (p *Port) SetReadDeadline(t time.Time) error { return p.master.SetReadDeadline(t) }

// Close removes the link (if it still points at this port) and closes both
// ends.
func (p *Port) Close() error {
	if dst, err := os.Readlink(p.link); err == nil && dst == p.slave.Name() {
		os.Remove(p.link)
	}
	err := p.master.Close()
	if e := p.slave.Close(); err == nil {
		err = e
	}
	return err
}

// bauds maps the termios speed codes to bits per second.
var bauds = map[uint32]int{
	unix.B50: 50, unix.B75: 75, unix.B110: 110, unix.B134: 134, unix.B150: 150,
	unix.B200: 200, unix.B300: 300, unix.B600: 600, unix.B1200: 1200,
	unix.B1800: 1800, unix.B2400: 2400, unix.B4800: 4800, unix.B9600: 9600,
	unix.B19200: 19200, unix.B38400: 38400, unix.B57600: 57600,
	unix.B115200: 115200, unix.B230400: 230400, unix.B460800: 460800,
	unix.B500000: 500000, unix.B576000: 576000, unix.B921600: 921600,
	unix.B1000000: 1000000,
}

// MasterLine reads the line settings the master set on its end of the pty.
func (p *Port) MasterLine() (slave.Line, error) {
	rc, err := p.slave.SyscallConn()
	if err != nil {
		return slave.Line{}, err
	}
	var t *unix.Termios
	var gerr error
	if err := rc.Control(func(fd uintptr) { t, gerr = unix.IoctlGetTermios(int(fd), unix.TCGETS2) }); err != nil {
		return slave.Line{}, err
	}
	if gerr != nil {
		return slave.Line{}, fmt.Errorf("vport %s: termios: %w", p.link, gerr)
	}
	return LineOf(t), nil
}

// LineOf decodes the line settings of a termios.
func LineOf(t *unix.Termios) slave.Line {
	l := slave.Line{DataBits: 8, StopBits: 1, Parity: configs.ParityNone}
	code := t.Cflag & unix.CBAUD
	if code == unix.BOTHER {
		l.Baud = int(t.Ospeed)
	} else {
		l.Baud = bauds[code]
	}
	switch t.Cflag & unix.CSIZE {
	case unix.CS5:
		l.DataBits = 5
	case unix.CS6:
		l.DataBits = 6
	case unix.CS7:
		l.DataBits = 7
	}
	if t.Cflag&unix.CSTOPB != 0 {
		l.StopBits = 2
	}
	if t.Cflag&unix.PARENB != 0 {
		l.Parity = configs.ParityEven
		if t.Cflag&unix.PARODD != 0 {
			l.Parity = configs.ParityOdd
		}
	}
	return l
}
