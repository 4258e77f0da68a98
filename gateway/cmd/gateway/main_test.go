package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"outpost/configs"
	"outpost/configs/mqtt"
	"outpost/drivers"
)

func TestValidate(t *testing.T) {
	cases := []struct {
		args       []string
		code       int
		out, errln string // a line the output must hold
	}{
		{[]string{"validate", "../../../configs/police-room.yaml"}, 0,
			"../../../configs/police-room.yaml: valid: station pr-0001 (police_room), 7 devices on 3 links", ""},
		{[]string{"validate", "../../../configs/testdata/errors/references.yaml"}, 1, "",
			"../../../configs/testdata/errors/references.yaml:12:77: devices[2].unit_id: unit id 1 is already used on rs485-1 by devices[0] (th-1)"},
		{[]string{"validate", "no-such-file.yaml"}, 1, "", "station file: no-such-file.yaml does not exist"},
		{[]string{"validate"}, 2, "", "usage: gateway validate STATION.yaml"},
		{[]string{"run"}, 2, "", "gateway run: -config STATION.yaml is required"},
		{[]string{"run", "-config", "../../../configs/testdata/errors/missing.yaml"}, 1, "",
			"gateway run: not started: fix the station file first (gateway validate checks it)"},
		{[]string{"frobnicate"}, 2, "", `gateway: unknown command "frobnicate"`},
	}
	for _, c := range cases {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := cli(c.args, &out, &errb)
			if code != c.code {
				t.Errorf("exit code %d, want %d\nstdout: %s\nstderr: %s", code, c.code, out.String(), errb.String())
			}
			if c.out != "" && !slices.Contains(strings.Split(out.String(), "\n"), c.out) {
				t.Errorf("stdout lacks the line %q:\n%s", c.out, out.String())
			}
			if c.errln != "" && !slices.Contains(strings.Split(errb.String(), "\n"), c.errln) {
				t.Errorf("stderr lacks the line %q:\n%s", c.errln, errb.String())
			}
		})
	}
}

// TestEveryConfigProtocolHasADriver holds the protocols the station file
// may name and the drivers this binary registers together.
func TestEveryConfigProtocolHasADriver(t *testing.T) {
	for _, p := range configs.Protocols() {
		if !slices.Contains(drivers.Protocols(), p) {
			t.Errorf("station files may name protocol %q, but no driver registers it (have %v)", p, drivers.Protocols())
		}
	}
}

// TestEveryCommandHasHelp: every command answers --help (and -h, and
// `gateway help CMD`) on stdout with its usage and an example, exit 0.
func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range commands {
		for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}, {c.name, "x.yaml", "--help"}} {
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				var out, errb bytes.Buffer
				if code := cli(args, &out, &errb); code != 0 {
					t.Fatalf("exit %d, stderr %s", code, errb.String())
				}
				for _, want := range []string{"usage: gateway " + c.name, "example:\n  gateway " + c.name} {
					if !strings.Contains(out.String(), want) {
						t.Errorf("help lacks %q:\n%s", want, out.String())
					}
				}
			})
		}
	}
}

// TestValidateWarnsOfABusyBus: a station file whose polls would take most
// of a bus's wire is valid, with a warning that says so and what to do;
// so is one whose state directory is under /tmp.
func TestValidateWarnsOfABusyBus(t *testing.T) {
	var out, errb bytes.Buffer
	if code := cli([]string{"validate", "testdata/busy-bus.yaml"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := "warning: link rs485-1: its polls would take about 130% of the wire (alarm polls 107%), more than 70%: polls will run late; raise the baud rate, lengthen poll or alarm_poll, or split the devices over two buses"
	if !slices.Contains(strings.Split(out.String(), "\n"), want) {
		t.Errorf("no warning line %q in:\n%s", want, out.String())
	}
	// The police room's buses have room; its state directory, for the
	// demo, is not one a station box keeps.
	out.Reset()
	want = "warning: state_dir /tmp/outpost/pr-0001/state is under /tmp: the queue and the sequence numbers may not survive a reboot, and the packaged service has a /tmp of its own; use /var/lib/outpost/pr-0001"
	if code := cli([]string{"validate", "../../../configs/police-room.yaml"}, &out, &errb); code != 0 || strings.Count(out.String(), "warning") != 1 || !strings.Contains(out.String(), want+"\n") {
		t.Errorf("the police room: exit %d, output:\n%s\nwant one warning: %s", code, out.String(), want)
	}
	// The other shipped stations, which installers copy, warn of nothing
	// (their device password file is one of the test's).
	dir := t.TempDir()
	line, err := mqtt.Hash("kiosk-1", "pw-kiosk-1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "devices.passwd"), []byte(line+"\n"), 0o600)
	for _, name := range []string{"safety-post", "workstation", "grid-station", "police-cube"} {
		src, err := os.ReadFile("../../../configs/" + name + ".yaml")
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name+".yaml")
		os.WriteFile(path, []byte(strings.ReplaceAll(string(src), "/etc/outpost/devices.passwd", filepath.Join(dir, "devices.passwd"))), 0o600)
		out.Reset()
		errb.Reset()
		if code := cli([]string{"validate", path}, &out, &errb); code != 0 || strings.Contains(out.String(), "warning") {
			t.Errorf("%s: exit %d, output:\n%s%s", name, code, out.String(), errb.String())
		}
	}
}

// A station broker on every address of the box is on the hub's side too.
func TestValidateWarnsOfABrokerOnEveryAddress(t *testing.T) {
	dir := t.TempDir()
	line, err := mqtt.Hash("kiosk-1", "pw-kiosk-1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "devices.passwd"), []byte(line+"\n"), 0o600)
	path := filepath.Join(dir, "station.yaml")
	os.WriteFile(path, []byte(`version: 2
station: {id: pc-1, type: police_cube}
state_dir: /var/lib/outpost/pc-1
hub: {mqtt: {url: "tcp://10.0.0.5:1883"}}
links:
  - {id: lan, protocol: mqtt, listen: "0.0.0.0:1883", credentials: devices.passwd}
devices:
  - {id: kiosk-1, template: outpost-kiosk, link: lan}
`), 0o600)
	var out, errb bytes.Buffer
	if code := cli([]string{"validate", path}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	want := "warning: link lan: the station broker listens on every address of the box (0.0.0.0:1883), the hub's side too: give its address on the station LAN (e.g. 192.168.10.1:1883)"
	if !slices.Contains(strings.Split(out.String(), "\n"), want) {
		t.Errorf("no warning line %q in:\n%s", want, out.String())
	}
}
