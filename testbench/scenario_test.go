package main

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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
		if _, _, err := prepareStation(spec, t.TempDir(), hubAddrs{MQTT: "tcp://127.0.0.1:1883"}); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
}

// TestScenarioProblems: what decoding cannot see is found before anything
// starts, every problem at once, each saying where and what is expected.
func TestScenarioProblems(t *testing.T) {
	const head = "scenario: x\nstation: police-room.yaml\nduration: 20s\n"
	for _, tc := range []struct {
		name, text string
		want       []string // each in the errors; one that starts with ! not in them
	}{
		{"fault typo and misplaced down", head + "faults:\n  - {action: kill-brokr, at: 2s}\n  - {action: stop-influx, at: 3s, down: 1s}\n",
			[]string{`faults[0].action: "kill-brokr" is not a fault action; one of delete-state, device, fill-disk, free-disk, freeze-broker,`,
				`faults[1].down: stop-influx does not last: down is for kill-broker, kill-influx, partition`}},
		{"fault without its length, late", head + "faults:\n  - {action: partition, at: 25s}\n",
			[]string{`faults[0].down: partition needs how long it lasts (down: 2s)`, `faults[0].at: 25s is outside the load (0 to 20s)`}},
		{"repeat without every", head + "faults:\n  - {action: kill-gateway, at: 2s, times: 3}\n",
			[]string{`faults[0].every: 3 times needs how often (every: 5s)`}},
		{"unknown device", head + "silent: [meter-9]\nfaults:\n  - {action: device, at: 2s, device: {device: th-9, do: silence}}\n",
			[]string{`silent[0]: no device "meter-9" in the station (it has `, `faults[0].device.device: no device "th-9" in the station`}},
		{"device act without device", head + "faults:\n  - {action: device, at: 2s}\n",
			[]string{`faults[0].device: action device, and only it, takes device: {device, do, args}`}},
		{"expectation after no fault", head + "expect:\n  events_after:\n    - {after_fault: 0, device: meter-1, kind: health, state: offline}\n",
			[]string{`expect.events_after[0].after_fault: 0 is not the index of a fault (0 to -1)`, `expect.events_after[0].within: needs how soon`}},
		{"disk frozen without a volume of its own", head + "faults:\n  - {action: freeze-disk, at: 2s}\nexpect:\n  events_after:\n    - {after_fault: 0, device: gateway, kind: queue_write_failed}\n",
			// The gateway's own events are expected as a device's are.
			[]string{`state_volume: freeze-disk needs a state volume of its own to freeze (state_volume: 64m)`, `expect.events_after[0].within: needs how soon`, `!no device "gateway"`}},
		{"disk filled without a volume of its own", head + "faults:\n  - {action: fill-disk, at: 2s}\n",
			[]string{`state_volume: fill-disk needs a state volume of its own to fill (state_volume: 1m)`}},
		{"unknown key", head + "fault: []\n", []string{"field fault not found in type main.Scenario"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.yaml")
			if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
				t.Fatal(err)
			}
			_, err := loadScenario(p)
			if err == nil {
				t.Fatalf("loaded; want errors %q", tc.want)
			}
			for _, w := range tc.want {
				if not, ok := strings.CutPrefix(w, "!"); ok {
					if strings.Contains(err.Error(), not) {
						t.Errorf("error\n%v\nhas %q", err, not)
					}
				} else if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\nlacks %q", err, w)
				}
			}
			if !strings.HasPrefix(err.Error(), p+":") {
				t.Errorf("error %q does not start with the file's name", err)
			}
		})
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
	os.Mkdir(filepath.Join(dir, "stations"), 0o755)
	write("stations/s.yaml", "devices: [{id: d-1}]\n")
	sc, err := loadScenario(write("a.yaml", "scenario: a\nstation_file: stations/s.yaml\nduration: 1s\n"))
	if err != nil || sc.StationFile != filepath.Join(dir, "stations", "s.yaml") {
		t.Errorf("station file %q, %v; want it beside the scenario", sc.StationFile, err)
	}
	if _, err := loadScenario(write("b.yaml", "scenario: b\nstation: police-room.yaml\nstation_file: s.yaml\nduration: 1s\n")); err == nil {
		t.Error("a scenario with both station and station_file loaded")
	}
}

// TestMissingWhere: a failure for readings missing at a store names the
// devices whose readings are missing there (not those the scenario lets
// misbehave) and what the gateway reported of that store's uplink.
func TestMissingWhere(t *testing.T) {
	sc := &Scenario{Name: "t"}
	sc.Expect.Refused = map[string]map[string][2]uint64{"kiosk-2": {"bad_json": {1, 5}}}
	r := newRunner(sc, slog.New(slog.NewTextHandler(io.Discard, nil)))
	byDevice := map[string][3]int{
		"meter-main": {100, 100, 90},
		"th-hall":    {20, 19, 20},
		"kiosk-1":    {55, 55, 55},
		"kiosk-2":    {10, 4, 4},
	}
	c := counts{Drops: map[string]int{"influx": 3}, Damage: map[string]int{"mqtt": 1}}
	for _, tc := range []struct {
		col    int
		uplink string
		want   string
	}{
		{2, "influx", "; there: meter-main 90 of 100; the gateway reported 3 readings dropped or refused on the way there and 0 damaged regions of its queue"},
		{1, "mqtt", "; there: th-hall 19 of 20; the gateway reported 0 readings dropped or refused on the way there and 1 damaged regions of its queue"},
	} {
		if got := r.missingWhere(byDevice, tc.col, c, tc.uplink); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.uplink, got, tc.want)
		}
	}
}

// TestWarnings: a failed run shows each warning or error of its processes
// once, the last of its kind and how many there were, in the order the
// kinds first came.
func TestWarnings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "processes.log")
	log := `time=1 level=INFO msg="gateway starts"
time=2 level=WARN msg="device offline" device=th-hall
firmware-sim ready
time=3 level=ERROR msg=crashed err=x
time=4 level=WARN msg="device offline" device=ups-1
time=5 level=WARN msg="the hub refused messages for good; set aside as dead letters" forwarder=influx-telemetry
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	want := []string{
		`2× time=4 level=WARN msg="device offline" device=ups-1`,
		`1× time=3 level=ERROR msg=crashed err=x`,
	}
	if got := warnings(path, 2); !slices.Equal(got, want) {
		t.Errorf("warnings, at most 2:\n got %q\nwant %q", got, want)
	}
	if got := warnings(path, 20); len(got) != 3 || !strings.Contains(got[2], "dead letters") {
		t.Errorf("warnings, at most 20: %q, want 3 with the dead letters last", got)
	}
}
