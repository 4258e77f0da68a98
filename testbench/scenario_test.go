package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"outpost/configs"
)

// TestScenariosLoad: every scenario file decodes, and its station loads as
// a run prepares it (keys made, ports chosen), with the devices it names
// silent in it; so a typo fails here in a
// second, not after a run's minute.
func TestScenariosLoad(t *testing.T) {
	files, err := filepath.Glob("scenarios/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenario files: %v", err)
	}
	for _, f := range files {
		sc, err := loadScenario(f)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if want := strings.TrimSuffix(filepath.Base(f), ".yaml"); sc.Name != want {
			t.Errorf("%s: scenario %q, want %q (run by file name)", f, sc.Name, want)
		}
		spec, err := sc.stationSpec()
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		_, st, err := prepareStation(spec, t.TempDir(), hubAddrs{MQTT: "tcp://127.0.0.1:1883"})
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		for _, id := range sc.Silent {
			if !slices.ContainsFunc(st.Devices, func(d configs.Device) bool { return d.ID == id }) {
				t.Errorf("%s: silent device %s is not in the station", f, id)
			}
		}
	}
}

// TestStationFileRelative: a scenario's station_file is found beside it,
// wherever the testbench runs from; and a scenario names one station.
func TestStationFileRelative(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sc, err := loadScenario(write("a.yaml", "scenario: a\nstation_file: stations/s.yaml\nduration: 1s\n"))
	if err != nil || sc.StationFile != filepath.Join(dir, "stations", "s.yaml") {
		t.Errorf("station file %q, %v; want it beside the scenario", sc.StationFile, err)
	}
	if _, err := loadScenario(write("b.yaml", "scenario: b\nstation: police-room.yaml\nstation_file: s.yaml\nduration: 1s\n")); err == nil {
		t.Error("a scenario with both station and station_file loaded")
	}
}
