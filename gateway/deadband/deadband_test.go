package deadband_test

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/deadband"
	"outpost/gateway/model"
)

func ptr(f float64) *float64 { return &f }

var t0 = time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)

func num(sig string, v float64) model.Reading {
	return model.Reading{Signal: sig, Value: model.Number(v), Quality: model.Good}
}

// step is one reading offered to the filter, seconds after t0, and
// whether it must be sent.
type step struct {
	sec  float64
	r    model.Reading
	sent bool
}

func TestKeep(t *testing.T) {
	abs := &configs.Report{Deadband: ptr(0.5), MaxSilence: time.Minute}
	pct := &configs.Report{DeadbandPercent: ptr(10), MaxSilence: time.Minute}
	zero := &configs.Report{Deadband: ptr(0), MaxSilence: time.Minute}
	bad := model.Reading{Signal: "t", Quality: model.Bad}
	unc := num("t", 20)
	unc.Quality = model.Uncertain
	for _, tc := range []struct {
		name  string
		rule  *configs.Report
		steps []step
	}{
		{"the first reading is sent", abs, []step{{0, num("t", 20), true}}},
		{"within the deadband, suppressed", abs, []step{{0, num("t", 20), true}, {1, num("t", 20.3), false}, {2, num("t", 19.5), false}}},
		{"exactly the deadband, suppressed", abs, []step{{0, num("t", 20), true}, {1, num("t", 20.5), false}}},
		{"beyond it, sent", abs, []step{{0, num("t", 20), true}, {1, num("t", 20.51), true}, {2, num("t", 20.01), false}, {3, num("t", 20.0), true}}},
		{"drift is measured from the value sent", abs, []step{{0, num("t", 20), true}, {1, num("t", 20.2), false}, {2, num("t", 20.4), false}, {3, num("t", 20.6), true}}},
		{"max_silence sends it unchanged", abs, []step{{0, num("t", 20), true}, {59, num("t", 20), false}, {60, num("t", 20), true}, {61, num("t", 20), false}}},
		{"a clock set back sends it", abs, []step{{10, num("t", 20), true}, {5, num("t", 20), true}}},
		{"good to bad and back", abs, []step{{0, num("t", 20), true}, {1, bad, true}, {2, bad, false}, {3, num("t", 20), true}}},
		{"good to uncertain", abs, []step{{0, num("t", 20), true}, {1, unc, true}, {2, unc, false}}},
		{"percent of the value sent", pct, []step{{0, num("t", 200), true}, {1, num("t", 219), false}, {2, num("t", 181), false}, {3, num("t", 221), true}, {4, num("t", 200), false}, {5, num("t", 198), true}}},
		{"percent: any change from 0", pct, []step{{0, num("t", 0), true}, {1, num("t", 0), false}, {2, num("t", 0.001), true}}},
		{"percent: negative values", pct, []step{{0, num("t", -50), true}, {1, num("t", -54), false}, {2, num("t", -56), true}}},
		{"deadband 0: every change", zero, []step{{0, num("t", 1), true}, {1, num("t", 1), false}, {2, num("t", 1.0001), true}}},
		{"a NaN is sent", abs, []step{{0, num("t", 1), true}, {1, num("t", math.NaN()), true}}},
		{"a bool: when it changes", zero, []step{{0, model.Reading{Signal: "t", Value: model.Bool(false), Quality: model.Good}, true},
			{1, model.Reading{Signal: "t", Value: model.Bool(false), Quality: model.Good}, false},
			{2, model.Reading{Signal: "t", Value: model.Bool(true), Quality: model.Good}, true}}},
		{"a string: when it changes", zero, []step{{0, model.Reading{Signal: "t", Value: model.String("a"), Quality: model.Good}, true},
			{1, model.Reading{Signal: "t", Value: model.String("a"), Quality: model.Good}, false},
			{2, model.Reading{Signal: "t", Value: model.String("b"), Quality: model.Good}, true}}},
		{"a signal without a rule: always", nil, []step{{0, num("t", 1), true}, {1, num("t", 1), true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d deadband.Device
			d.SetRules([]configs.Signal{{Name: "t", Report: tc.rule}}, true)
			for i, s := range tc.steps {
				at := t0.Add(time.Duration(s.sec * float64(time.Second)))
				if got := d.Keep(&s.r, at); got != s.sent {
					t.Errorf("step %d (%v at +%vs): sent %v, want %v", i, s.r.Value, s.sec, got, s.sent)
				}
			}
		})
	}
}

func TestRulesAndForget(t *testing.T) {
	rule := &configs.Report{Deadband: ptr(1), MaxSilence: time.Hour}
	sigs := []configs.Signal{
		{Name: "t", Type: configs.Number, Report: rule},
		{Name: "alarm", Type: configs.Bool, Event: &configs.EventRule{Kind: "panic"}, Report: &configs.Report{Deadband: ptr(0), MaxSilence: time.Hour}},
		{Name: "v", Type: configs.Number},
	}
	rs := []model.Reading{num("t", 20), {Signal: "alarm", Value: model.Bool(false), Quality: model.Good}, num("v", 230)}
	var d deadband.Device
	d.SetRules(sigs, true)
	if got := d.Filter(rs, t0); len(got) != 3 {
		t.Fatalf("first readings: %d sent, want 3", len(got))
	}
	got := d.Filter(rs, t0.Add(time.Second))
	if names := signals(got); !slices.Equal(names, []string{"alarm", "v"}) {
		t.Errorf("unchanged readings: %v sent, want [alarm v] (an event's signal and one without a rule)", names)
	}
	if rs[0].Signal != "t" {
		t.Error("Filter changed its argument")
	}
	// A reload with the same rule keeps the value sent; another rule
	// sends the next reading.
	d.SetRules(sigs, true)
	if got := d.Filter(rs[:1], t0.Add(2*time.Second)); len(got) != 0 {
		t.Errorf("after a reload with the same rule: %v sent", signals(got))
	}
	sigs[0].Report = &configs.Report{Deadband: ptr(2), MaxSilence: time.Hour}
	d.SetRules(sigs, true)
	if got := d.Filter(rs[:1], t0.Add(3*time.Second)); len(got) != 1 {
		t.Error("after a reload with another rule: the next reading not sent")
	}
	// The device was offline: its next readings are sent.
	d.Forget()
	if got := d.Filter(rs[:1], t0.Add(4*time.Second)); len(got) != 1 {
		t.Error("after Forget: the next reading not sent")
	}
	// The station turns report by exception off.
	d.SetRules(sigs, false)
	for i := range 3 {
		if got := d.Filter(rs, t0.Add(time.Duration(5+i)*time.Second)); len(got) != 3 {
			t.Errorf("report by exception off: %v sent, want all 3", signals(got))
		}
	}
}

func signals(rs []model.Reading) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Signal)
	}
	return out
}

// TestProperties offers random walks, jumps and quality changes at
// irregular intervals to random rules, and checks the two promises made
// to a consumer: a value that moved by more than its deadband from the
// value last sent is sent, and no reading is suppressed once max_silence
// has passed since the signal was last sent (so a signal is never silent
// longer than max_silence and one poll).
func TestProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 34))
	for run := range 500 {
		rule := configs.Report{MaxSilence: time.Duration(1+rng.IntN(120)) * time.Second}
		if rng.IntN(2) == 0 {
			rule.Deadband = ptr(rng.Float64() * 2)
		} else {
			rule.DeadbandPercent = ptr(0.1 + rng.Float64()*20)
		}
		var d deadband.Device
		d.SetRules([]configs.Signal{{Name: "x", Type: configs.Number, Report: &rule}}, true)
		v, at := rng.NormFloat64()*10, t0
		var sent bool
		var last float64
		var lastQ model.Quality
		var lastAt time.Time
		for i := range 2000 {
			at = at.Add(time.Duration(1+rng.IntN(3000)) * time.Millisecond)
			switch k := rng.IntN(100); {
			case k < 2:
				v += rng.NormFloat64() * 50 // a jump
			case k < 4:
				v = 0
			default:
				v += rng.NormFloat64() * 0.3
			}
			r := num("x", v)
			if rng.IntN(100) == 0 {
				r.Quality = model.Uncertain
			}
			keep := d.Keep(&r, at)
			if !keep {
				band := 0.0
				if rule.Deadband != nil {
					band = *rule.Deadband
				} else {
					band = *rule.DeadbandPercent / 100 * math.Abs(last)
				}
				switch {
				case !sent:
					t.Fatalf("run %d step %d: the first reading suppressed", run, i)
				case math.Abs(v-last) > band:
					t.Fatalf("run %d step %d: %v suppressed, %v from %v sent (deadband %v)", run, i, v, math.Abs(v-last), last, band)
				case r.Quality != lastQ:
					t.Fatalf("run %d step %d: quality %s suppressed after %s", run, i, r.Quality, lastQ)
				case at.Sub(lastAt) >= rule.MaxSilence:
					t.Fatalf("run %d step %d: suppressed %s after the last sent (max_silence %s)", run, i, at.Sub(lastAt), rule.MaxSilence)
				}
				continue
			}
			sent, last, lastQ, lastAt = true, v, r.Quality, at
		}
	}
}
