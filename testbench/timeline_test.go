package main

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"testing"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/status"
)

func TestFaultWindows(t *testing.T) {
	const end = 100
	for _, tc := range []struct {
		name  string
		marks []faultMark
		want  []faultWindow
	}{{
		name:  "a killed broker is down until it was restarted",
		marks: []faultMark{{Action: "kill-broker", At: 4, Done: 5.6}, {Action: "kill-broker", At: 9, Done: 10.5}},
		want:  []faultWindow{{"kill-broker", "broker down", 4, 5.6}, {"kill-broker", "broker down", 9, 10.5}},
	}, {
		name:  "a kill under way lasts to the end",
		marks: []faultMark{{Action: "kill-influx", At: 4, Done: -1}},
		want:  []faultWindow{{"kill-influx", "influx down", 4, end}},
	}, {
		name:  "stop to start, the start's restart included",
		marks: []faultMark{{Action: "stop-influx", At: 10, Done: 10}, {Action: "start-influx", At: 30, Done: 31}},
		want:  []faultWindow{{"stop-influx", "influx down", 10, 31}},
	}, {
		name:  "a stop never started again lasts to the end",
		marks: []faultMark{{Action: "stop-broker", At: 10, Done: 10}},
		want:  []faultWindow{{"stop-broker", "broker down", 10, end}},
	}, {
		name: "freeze to thaw, each server its own",
		marks: []faultMark{{Action: "freeze-broker", At: 5, Done: 5}, {Action: "freeze-influx", At: 6, Done: 6},
			{Action: "thaw-influx", At: 8, Done: 8}, {Action: "thaw-broker", At: 9, Done: 9}},
		want: []faultWindow{{"freeze-broker", "broker frozen", 5, 9}, {"freeze-influx", "influx frozen", 6, 8}},
	}, {
		name:  "a start with no stop before it is a moment",
		marks: []faultMark{{Action: "start-broker", At: 3, Done: 4}},
		want:  []faultWindow{{"start-broker", "start-broker", 3, 3}},
	}, {
		name: "a partition until it healed, in one fault or two",
		marks: []faultMark{{Action: "partition", At: 5, Done: 8}, {Action: "partition-start", At: 14, Done: 14},
			{Action: "partition-heal", At: 39, Done: 39}},
		want: []faultWindow{{"partition", "network partitioned", 5, 8}, {"partition-start", "network partitioned", 14, 39}},
	}, {
		name:  "a gateway stopped is down until it is started",
		marks: []faultMark{{Action: "stop-gateway", At: 6, Done: 7}, {Action: "start-gateway", At: 11, Done: 11.2}},
		want:  []faultWindow{{"stop-gateway", "gateway down", 6, 11.2}},
	}, {
		name:  "a gateway killed and a power cut are moments",
		marks: []faultMark{{Action: "kill-gateway", At: 7, Done: 9}, {Action: "power-cut", At: 12, Done: 14}},
		want:  []faultWindow{{"kill-gateway", "gateway killed", 7, 7}, {"power-cut", "power cut", 12, 12}},
	}, {
		name: "a device silent until it answers; other acts are moments",
		marks: []faultMark{{Action: "device", Device: "th-server", Do: "silence", At: 4, Done: 4},
			{Action: "device", Device: "meter-main", Do: "silence", At: 4, Done: 4},
			{Action: "device", Device: "door-front", Do: "tamper", At: 8, Done: 8},
			{Action: "device", Device: "th-server", Do: "answer", At: 12, Done: 12}},
		want: []faultWindow{{"device", "th-server silent", 4, 12}, {"device", "meter-main silent", 4, end},
			{"device", "door-front tamper", 8, 8}},
	}, {
		name:  "an answer with no silence before it is a moment",
		marks: []faultMark{{Action: "device", Device: "ups-1", Do: "answer", At: 2, Done: 2}},
		want:  []faultWindow{{"device", "ups-1 answer", 2, 2}},
	}, {
		name: "nothing played",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got := faultWindows(tc.marks, end)
			if !slices.Equal(got, tc.want) {
				t.Errorf("faultWindows(%+v):\n got %s\nwant %s", tc.marks, windows(got), windows(tc.want))
			}
		})
	}
}

// windows prints fault windows one to a line.
func windows(ws []faultWindow) string {
	s := ""
	for _, w := range ws {
		s += fmt.Sprintf("\n  %s %q %g..%g", w.Action, w.Label, w.FromS, w.ToS)
	}
	return s
}

func TestHealthChanges(t *testing.T) {
	// As they arrived: th-1's offline came late, after its online again.
	obs := []healthChange{{1, "th-1", "online"}, {1, "ups", "online"}, {2, "th-1", "online"},
		{6, "th-1", "online"}, {4, "th-1", "offline"}, {5, "th-1", "offline"}, {7, "ups", "online"}}
	want := []healthChange{{1, "th-1", "online"}, {1, "ups", "online"}, {4, "th-1", "offline"}, {6, "th-1", "online"}}
	if got := healthChanges(obs); !slices.Equal(got, want) {
		t.Errorf("healthChanges:\n got %+v\nwant %+v", got, want)
	}
}

func TestUnder(t *testing.T) {
	ws := []faultWindow{{"kill-broker", "broker down", 4, 6}, {"kill-gateway", "gateway killed", 10, 10},
		{"stop-broker", "broker down", 20, 30}, {"freeze-influx", "influx frozen", 22, 24}}
	for _, tc := range []struct {
		t    float64
		want []string
	}{{3, nil}, {4, []string{"broker down"}}, {6, []string{"broker down"}}, {7, nil}, {12, []string{"gateway killed"}}, {15.5, nil},
		{23, []string{"broker down", "influx frozen"}}} {
		if got := under(ws, tc.t, 5); !slices.Equal(got, tc.want) {
			t.Errorf("under(%g) = %q, want %q", tc.t, got, tc.want)
		}
	}
}

// TestRecorder runs the sampler on real files (a status file as the
// gateway writes it) and the runner's hooks side by side, and checks what
// the timeline holds once finished: finish stops the sampler, which has
// sampled at least once.
func TestRecorder(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	snap := status.Snapshot{Time: start.Add(time.Millisecond), Uplinks: []status.Uplink{
		{Name: "mqtt", Queue: status.Queue{Alarms: 1, Telemetry: 4}}, {Name: "influx"}}}
	if err := status.Write(status.File(dir), snap); err != nil {
		t.Fatal(err)
	}
	var rc recorder
	health := func(dev string, at time.Duration, state model.HealthState) {
		rc.observe(&model.Message{Kind: model.KindHealth, Device: dev, Time: start.Add(at), Health: &model.Health{State: state}}, nil, false)
	}
	health("th-1", -time.Second, model.Online) // before the gateway started: at 0
	rc.begin(t.Context(), start, probe{
		atHub:  func() int { return 10 },
		sent:   func() (int, error) { return 12, nil },
		status: func() (status.Snapshot, error) { return status.Read(status.File(dir)) },
		load:   time.Second, drain: time.Second,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	health("th-1", 3*time.Second, model.Offline)
	health("th-1", 4*time.Second, model.Offline)
	i := rc.faultStarts(Fault{Action: "kill-broker"})
	rc.faultDone(i)
	rc.alarm("dcon", start.Add(time.Second), 50*time.Millisecond)
	tl := rc.finish(start.Add(2 * time.Second))

	if len(tl.Hub) == 0 || tl.Hub[0].AtHub != 10 || tl.Hub[0].Sent != 12 {
		t.Errorf("hub samples %+v, want at least one of 10 at the hub, 12 sent", tl.Hub)
	}
	if len(tl.Queue) != 1 || !maps.Equal(tl.Queue[0].Uplinks, map[string]int64{"mqtt": 5, "influx": 0}) {
		t.Errorf("queue samples %+v, want the status file's once: mqtt 5, influx 0", tl.Queue)
	}
	if want := []healthChange{{0, "th-1", "online"}, {3, "th-1", "offline"}}; !slices.Equal(tl.Health, want) {
		t.Errorf("health %+v, want %+v", tl.Health, want)
	}
	if len(tl.Faults) != 1 || tl.Faults[0].Label != "broker down" {
		t.Errorf("faults %s, want one: broker down", windows(tl.Faults))
	}
	if a := tl.Alarms["dcon"]; len(a) != 1 || a[0] != (alarmPoint{T: 1, MS: 50}) {
		t.Errorf("alarms %+v, want dcon's at 1 s, 50 ms", tl.Alarms)
	}
	if tl.LoadEndS != 2 || tl.EndS != tl.Hub[len(tl.Hub)-1].T {
		t.Errorf("load ends at %g s, the timeline at %g s; want 2 s and the last sample's", tl.LoadEndS, tl.EndS)
	}
	n := len(tl.Hub)
	if again := rc.finish(start.Add(2 * time.Second)); len(again.Hub) != n {
		t.Errorf("the sampler went on after finish: %d samples, then %d", n, len(again.Hub))
	}
}
