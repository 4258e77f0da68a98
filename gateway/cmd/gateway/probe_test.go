package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	"outpost/firmware-sim/sim"
)

// TestProbe: `gateway probe` finds the units of a simulated RS-485 bus
// (a real pty at 19200 baud), names the template each reads as, and finds
// no device where there is none; with -scan it finds the line settings
// first (a pty carries no parity, so the baud rate tells them apart).
func TestProbe(t *testing.T) {
	port := filepath.Join(t.TempDir(), "ttyRS485")
	st, err := configs.Parse("probe-test", []byte(fmt.Sprintf(`version: 2
station: {id: pb-1, type: police_room}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: rs485-1, protocol: modbus-rtu, port: %q, baud: 19200}
devices:
  - {id: th-1, template: xy-md02, link: rs485-1, unit_id: 1, poll: 1s}
  - {id: meter-1, template: sdm120, link: rs485-1, unit_id: 2, poll: 1s}
  - {id: door-1, template: generic-door-contact, link: rs485-1, unit_id: 4, poll: 1s}
`, port)))
	if err != nil {
		t.Fatal(err)
	}
	// Devices that answer garbage to a master at other line settings, as
	// real ones do.
	_, stop, err := sim.Start(st, &st.Links[0], sim.Options{Seed: 1, Start: time.Now(), Sink: &served{rs: map[string][]sim.Reading{}},
		Log: slog.New(slog.DiscardHandler), CheckLine: true, Turnaround: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("simulator: %v", err)
		}
	})
	var out, errb bytes.Buffer
	code := cli([]string{"probe", "-port", port, "-baud", "19200", "-units", "1-5"}, &out, &errb)
	t.Logf("gateway probe:\n%s%s", out.String(), errb.String())
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"3 of 5 units answer"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	rows := map[string]string{}
	for _, l := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(l); len(f) > 1 && f[1] != "of" && strings.Contains("12345", f[0]) {
			rows[f[0]] = strings.Join(f[1:], " ")
		}
	}
	for unit, want := range map[string]string{"1": "xy-md02 (", "2": "sdm120 (", "4": "generic-door-contact ("} {
		if !strings.HasPrefix(rows[unit], want) && !strings.Contains(rows[unit], "; "+want) {
			t.Errorf("unit %s reads as %q, want %s...", unit, rows[unit], want)
		}
	}
	if strings.Contains(rows["1"], "sdm120") || strings.Contains(rows["2"], "xy-md02") {
		t.Errorf("a sensor and a meter read as each other: %v", rows)
	}
	if _, ok := rows["3"]; ok {
		t.Errorf("unit 3 has no device, yet: %q", rows["3"])
	}

	// Units with no device, and a port that is not there, say why.
	out.Reset()
	errb.Reset()
	if code := cli([]string{"probe", "-port", port, "-baud", "19200", "-units", "6-7"}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), "\nnone of the 2 units answers (no answer from any unit on bus: check wiring, port, baud rate and parity)\n") {
		t.Errorf("units with no device: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	if code := cli([]string{"probe", "-port", port, "-baud", "19200", "-units", "7"}, &out, &errb); code != 1 ||
		!strings.Contains(out.String(), "\nthe unit does not answer (no answer from unit 7 on bus: wrong unit id, or device off; or check wiring, port, baud rate and parity)\n") {
		t.Errorf("a unit with no device: exit %d\n%s%s", code, out.String(), errb.String())
	}
	out.Reset()
	errb.Reset()
	gone := filepath.Join(t.TempDir(), "ttyUSB9")
	want := "gateway probe: open " + gone + ": no such file or directory: the adapter is unplugged, or the port is named wrong (gateway ports lists those there are)\n"
	if code := cli([]string{"probe", "-port", gone, "-scan"}, &out, &errb); code != 1 || errb.String() != want || out.Len() != 0 {
		t.Errorf("a port that is not there: exit %d\nstdout: %s\nstderr: %s\nwant stderr: %s", code, out.String(), errb.String(), want)
	}

	out.Reset()
	errb.Reset()
	if code := cli([]string{"probe", "-port", port, "-units", "1-2", "-scan"}, &out, &errb); code != 0 ||
		!strings.Contains(out.String(), "trying 9600 baud, parity none ... ") ||
		strings.Contains(out.String(), "trying 9600 baud, parity none ... 2 of 2 units answer") ||
		!strings.Contains(out.String(), "trying 19200 baud, parity none ... 2 of 2 units answer, 0 with damaged frames") ||
		!strings.Contains(out.String(), "probing "+port+" at 19200 baud, parity none") {
		t.Errorf("-scan: exit %d\n%s%s", code, out.String(), errb.String())
	}
}

// TestProbeTCP: behind a Modbus TCP endpoint, a unit id with no device
// gets exception 11 (gateway target failed to respond) from the endpoint,
// as from a real RTU-to-TCP gateway: that is no device, not one that
// answers with an exception.
func TestProbeTCP(t *testing.T) {
	addr := freeAddr(t)
	st, err := configs.Parse("probe-tcp-test", []byte(fmt.Sprintf(`version: 2
station: {id: pb-2, type: police_room}
hub:
  mqtt: {url: "tcp://127.0.0.1:1883"}
links:
  - {id: tcp-1, protocol: modbus-tcp, address: %q}
devices:
  - {id: meter-1, template: sdm120, link: tcp-1, unit_id: 1, poll: 1s}
`, addr)))
	if err != nil {
		t.Fatal(err)
	}
	simulate(t, st, &served{rs: map[string][]sim.Reading{}})
	var out, errb bytes.Buffer
	code := cli([]string{"probe", "-tcp", addr, "-units", "1-3"}, &out, &errb)
	t.Logf("gateway probe:\n%s%s", out.String(), errb.String())
	if code != 0 || !strings.Contains(out.String(), "1 of 3 units answer") {
		t.Errorf("exit %d, want 0 and 1 of 3 units answering (unit 1, an SDM120)", code)
	}
}
