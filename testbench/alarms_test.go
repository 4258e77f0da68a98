package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"outpost/gateway/model"
)

// TestAlarmLatencyAfterALoss: three presses raised, the second never
// arrived. The loss fails the run, and the presses' latencies are left
// out: paired in order, the second press would take the third's arrival,
// a second later, for its own.
func TestAlarmLatencyAfterALoss(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	r := &runner{work: t.TempDir(), sc: &Scenario{Expect: Expect{AlarmP99MS: map[string]float64{"dcon": 200}}}}
	var raisedLog []byte
	var w watched
	for i := range 3 {
		at := t0.Add(time.Duration(i) * time.Second)
		line, _ := json.Marshal(raised{Device: "box-1", Kind: "panic", State: "active", At: at, Source: "dcon"})
		raisedLog = append(append(raisedLog, line...), '\n')
		if i == 1 {
			continue // lost
		}
		m := model.Message{Station: "sp-0001", Device: "box-1", Kind: model.KindEvent, Seq: uint64(i + 1), Time: at,
			Event: &model.Event{Kind: "panic"}}
		w.events = append(w.events, arrival{m, at.Add(50 * time.Millisecond)})
	}
	if err := os.WriteFile(filepath.Join(r.work, "raised.jsonl"), raisedLog, 0o600); err != nil {
		t.Fatal(err)
	}
	r.watched = &w
	if err := r.checkAlarms(); err != nil {
		t.Fatal(err)
	}
	want := []string{"alarms of box-1 panic active: 3 raised, 2 arrived (their latencies are left out)"}
	if !slices.Equal(r.report.Failures, want) {
		t.Errorf("failures %q, want %q", r.report.Failures, want)
	}
	if a := r.report.Alarms; a == nil || a.Sent != 3 || a.Delivered != 2 || a.Lost != 1 || len(a.LatencyMS) != 0 {
		t.Errorf("alarm report %+v, want 3 sent, 2 delivered, 1 lost and no latency", a)
	}
}
