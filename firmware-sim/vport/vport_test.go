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

// TestNoise: noise damages about its share of the bytes, one bit each,
// repeatably for a seed, and none when the share is 0.
func TestNoise(t *testing.T) {
	clean := make([]byte, 100000)
	for i := range clean {
		clean[i] = byte(i)
	}
	b := append([]byte(nil), clean...)
	n := NewNoise(0.05, 1, "rs485-1")
	hit := n.Corrupt(b)
	if hit < 4500 || hit > 5500 || n.Corrupted() != int64(hit) {
		t.Errorf("%d of %d bytes damaged (counted %d), want about 5%%", hit, len(b), n.Corrupted())
	}
	diff := 0
	for i := range b {
		if x := b[i] ^ clean[i]; x != 0 {
			diff++
			if x&(x-1) != 0 {
				t.Fatalf("byte %d: %08b became %08b, more than one bit", i, clean[i], b[i])
			}
		}
	}
	if diff != hit {
		t.Errorf("%d bytes differ, %d said damaged", diff, hit)
	}
	again := append([]byte(nil), clean...)
	NewNoise(0.05, 1, "rs485-1").Corrupt(again)
	if string(again) != string(b) {
		t.Error("the same seed and key damaged other bytes")
	}
	if NewNoise(0, 1, "x").Corrupt(again) != 0 || (*Noise)(nil).Corrupt(again) != 0 {
		t.Error("no noise damaged bytes")
	}
}
