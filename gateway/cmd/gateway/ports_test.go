package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.bug.st/serial/enumerator"
)

// TestByID: each device is named by its link in /dev/serial/by-id, made
// here of real symlinks; a dangling link names nothing.
func TestByID(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "ttyUSB0")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ids := filepath.Join(dir, "by-id")
	os.Mkdir(ids, 0o755)
	link := filepath.Join(ids, "usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0")
	if err := os.Symlink(dev, link); err != nil {
		t.Fatal(err)
	}
	os.Symlink(filepath.Join(dir, "ttyUSB9"), filepath.Join(ids, "usb-gone-if00-port0"))
	got := byID(ids)
	want := map[string]string{dev: link}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("byID = %v, want %v", got, want)
	}
	if got := byID(filepath.Join(dir, "none")); len(got) != 0 {
		t.Errorf("byID of a missing folder = %v, want none", got)
	}
}

func TestPortsList(t *testing.T) {
	found := []*enumerator.PortDetails{
		{Name: "/dev/ttyS0"},
		{Name: "/dev/ttyUSB1", IsUSB: true, VID: "1A86", PID: "7523", Product: "USB Serial"},
		{Name: "/dev/ttyUSB0", IsUSB: true, VID: "0403", PID: "6001", SerialNumber: "A10K1ABC", Product: "FT232R USB UART"},
	}
	stable := "/dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1ABC-if00-port0"
	ports := listPorts(found, map[string]string{"/dev/ttyUSB0": stable})
	want := []port{
		{Device: "/dev/ttyUSB0", ByID: stable, USB: true, VID: "0403", PID: "6001", SerialNumber: "A10K1ABC", Product: "FT232R USB UART"},
		{Device: "/dev/ttyUSB1", USB: true, VID: "1a86", PID: "7523", Product: "USB Serial"},
		{Device: "/dev/ttyS0"},
	}
	if !reflect.DeepEqual(ports, want) {
		t.Fatalf("listPorts:\n got %+v\nwant %+v", ports, want)
	}
	var out bytes.Buffer
	printPorts(&out, ports)
	for _, line := range []string{
		"/dev/ttyUSB0  0403:6001  A10K1ABC  FT232R USB UART",
		"/dev/ttyUSB1  1a86:7523  -         USB Serial",
		"/dev/ttyS0    -          -         -",
		"  /dev/ttyUSB0: " + stable,
		"  /dev/ttyUSB1: /dev/ttyUSB1",
	} {
		if !strings.Contains(out.String(), line+"\n") {
			t.Errorf("output lacks the line %q:\n%s", line, out.String())
		}
	}
	for i, l := range strings.Split(out.String(), "\n") { // 80 columns, but for the paths to copy
		if len(l) > 80 && !strings.Contains(l, "/dev/serial/by-id/") {
			t.Errorf("line %d is %d columns wide: %q", i+1, len(l), l)
		}
	}
	out.Reset()
	printPorts(&out, nil)
	if !strings.HasPrefix(out.String(), "No serial ports found. Plug in the USB to RS-485 adapter and run\n") {
		t.Errorf("with no ports: %q", out.String())
	}
	for _, l := range strings.Split(out.String(), "\n") {
		if len(l) > 80 {
			t.Errorf("with no ports, a line of %d columns: %q", len(l), l)
		}
	}
}

// TestPortsCommand runs `gateway ports -json` on this machine: whatever
// ports it has, the output is a JSON list of them.
func TestPortsCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := cli([]string{"ports", "-json"}, &out, &errb); code != 0 {
		t.Fatalf("exit code %d: %s", code, errb.String())
	}
	var ports []port
	if err := json.Unmarshal(out.Bytes(), &ports); err != nil {
		t.Fatalf("not a JSON list of ports: %v\n%s", err, out.String())
	}
	t.Logf("%d serial ports here", len(ports))
}
