package deadband_test

import (
	"math"
	"testing"
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
	_ "outpost/configs/protocols"
	"outpost/firmware-sim/enc"
	"outpost/firmware-sim/signal"
	"outpost/gateway/deadband"
	"outpost/gateway/model"
)

// TestPoliceRoomDay is the figure of report by exception: the police
// room's signals with a report rule (its slow signals: temperatures,
// humidity, power factor, frequency), made by the simulator's generators
// over a day at the profile's poll intervals, as the gateway decodes them
// from the registers, through the real filter. It asserts at least 5×
// fewer readings sent, every change beyond a deadband sent, and no signal
// silent longer than its max_silence (plus one poll).
func TestPoliceRoomDay(t *testing.T) {
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !st.ReportByException {
		t.Fatal("police-room.yaml turns report by exception off")
	}
	start := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	const day = 24 * time.Hour
	var read, sent int
	for _, d := range st.Devices {
		tmpl := st.Templates[d.Template]
		body, ok := tmpl.Body.(*modbus.Template)
		if !ok {
			continue
		}
		poll := d.Settings.(configs.Poller).PollEvery()
		var f deadband.Device
		f.SetRules(body.Signals(), true)
		for i, sg := range body.Signals() {
			reg := &body.Registers[i]
			if sg.Report == nil || reg.Sim == nil {
				continue
			}
			g, err := signal.New(*reg.Sim, 1, d.ID+"/"+sg.Name, start)
			if err != nil {
				t.Fatal(err)
			}
			rule := *sg.Report
			var n, kept int
			var last float64
			var lastAt time.Time
			for at := start; at.Before(start.Add(day)); at = at.Add(poll) {
				_, want, err := enc.Encode(reg, g.At(at))
				if err != nil {
					t.Fatalf("%s/%s at %s: %v", d.ID, sg.Name, at, err)
				}
				v := want.Float()
				n++
				r := model.Reading{Signal: sg.Name, Value: model.Number(v), Quality: model.Good}
				if !f.Keep(&r, at) {
					if kept > 0 && beyond(rule, last, v) {
						t.Fatalf("%s/%s at %s: %v suppressed, %v beyond the deadband of %v", d.ID, sg.Name, at, v, math.Abs(v-last), last)
					}
					if at.Sub(lastAt) >= rule.MaxSilence {
						t.Fatalf("%s/%s at %s: suppressed after %s of silence (max_silence %s)", d.ID, sg.Name, at, at.Sub(lastAt), rule.MaxSilence)
					}
					continue
				}
				if kept > 0 && at.Sub(lastAt) > rule.MaxSilence+poll {
					t.Errorf("%s/%s at %s: silent for %s (max_silence %s, poll %s)", d.ID, sg.Name, at, at.Sub(lastAt), rule.MaxSilence, poll)
				}
				kept++
				last, lastAt = v, at
			}
			t.Logf("%-11s %-20s poll %-5s %6d read, %5d sent, %5.1f× fewer", d.ID, sg.Name, poll, n, kept, float64(n)/float64(kept))
			read, sent = read+n, sent+kept
		}
	}
	if read == 0 {
		t.Fatal("no signal of police-room.yaml has a report rule")
	}
	ratio := float64(read) / float64(sent)
	t.Logf("police room, slow signals, one day: %d readings read, %d sent: %.1f× fewer", read, sent, ratio)
	if ratio < 5 {
		t.Errorf("report by exception sends %d of %d readings: %.1f× fewer, want at least 5×", sent, read, ratio)
	}
}

// beyond says whether v is beyond rule's deadband around last.
func beyond(rule configs.Report, last, v float64) bool {
	band := 0.0
	if rule.Deadband != nil {
		band = *rule.Deadband
	} else {
		band = *rule.DeadbandPercent / 100 * math.Abs(last)
	}
	return math.Abs(v-last) > band
}
