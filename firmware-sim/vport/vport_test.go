package vport

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"outpost/configs"
	"outpost/firmware-sim/slave"
)

func TestOpenRefusesFiles(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "ttyS0")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(file); err == nil || err.Error() != "vport "+file+": exists and is not a symlink (----------); refusing to replace it" {
		t.Errorf("Open over a regular file: %v", err)
	}
	// An old symlink is replaced.
	link := filepath.Join(dir, "bus")
	if err := os.Symlink("/nonexistent", link); err != nil {
		t.Fatal(err)
	}
	p, err := Open(link)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if dst, _ := os.Readlink(link); dst != p.Path() {
		t.Errorf("link points at %q, want %q", dst, p.Path())
	}
}

// TestLink: the link reaches the pty, bytes pass both ways untouched, the
// master's line settings are read back, and Close removes the link.
func TestLink(t *testing.T) {
	link := filepath.Join(t.TempDir(), "a", "b", "tty")
	p, err := Open(link)
	if err != nil {
		t.Fatal(err)
	}
	m, err := os.OpenFile(link, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	// Bytes a line discipline would touch: CR, LF, ^C, ^S, DEL.
	raw := []byte{0x0D, 0x0A, 0x03, 0x13, 0x7F, 0x00, 0xFF}
	if _, err := m.Write(raw); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, len(raw))
	buf := make([]byte, 16)
	for len(got) < len(raw) {
		n, err := p.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
	}
	if string(got) != string(raw) {
		t.Errorf("read % x, want % x", got, raw)
	}
	rc, _ := m.SyscallConn()
	var serr error
	rc.Control(func(fd uintptr) {
		tio, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
		if err != nil {
			serr = err
			return
		}
		tio.Cflag = tio.Cflag&^(unix.CBAUD|unix.CSIZE) | unix.B4800 | unix.CS8 | unix.CSTOPB
		serr = unix.IoctlSetTermios(int(fd), unix.TCSETS, tio)
	})
	if serr != nil {
		t.Fatal(serr)
	}
	// (Linux ptys keep CS8 and refuse parity whatever a master asks, so
	// only the speed and stop bits are seen here.)
	line, err := p.MasterLine()
	want := slave.Line{Baud: 4800, DataBits: 8, Parity: configs.ParityNone, StopBits: 2}
	if err != nil || line != want {
		t.Errorf("MasterLine = %+v, %v; want %+v", line, err, want)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link after Close: %v", err)
	}
}
