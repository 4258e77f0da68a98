// Package deadband decides which readings of a device go to the hub when
// its template has signals report by exception (configs.Report).
//
// A signal with a report rule is sent:
//   - at its first reading, after the gateway starts (the filter keeps no
//     state on disk) and after its device was offline (Forget);
//   - when its quality changed since the reading last sent (good to bad,
//     bad to good, either to uncertain);
//   - when its value moved by more than the deadband from the value last
//     sent: a number by more than deadband, or by more than
//     deadband_percent of the magnitude of the value last sent (so any
//     change from 0); a bool or a string when it changed;
//   - when max_silence has passed since it was last sent (the first
//     reading at or after that time), with its value as it is;
//   - when its time is before the last one sent's (a clock set back).
//
// Otherwise it is suppressed, and the hub keeps the value last sent.
// Signals without a rule (events' signals among them) are always sent.
// The decision is made before the message gets its sequence number, so
// what is suppressed leaves no gap in a device's numbers.
package deadband

import (
	"math"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// signal is a signal's rule and the last reading sent of it.
type signal struct {
	rule    configs.Report
	sent    bool
	value   model.Value
	quality model.Quality
	at      time.Time
}

// Device filters the readings of one device. It is not safe for
// concurrent use: the caller holds the device's lock.
type Device struct {
	signals map[string]*signal
}

// SetRules takes the report rules of a device's signals, at the start or
// when the station is reloaded. A signal whose rule is unchanged keeps what
// was last sent; one whose rule changed is sent at its next reading.
// Signals without a rule (or every signal, when on is false: the station
// turned report by exception off) are always sent.
func (d *Device) SetRules(sigs []configs.Signal, on bool) {
	old := d.signals
	d.signals = map[string]*signal{}
	if !on {
		return
	}
	for _, sg := range sigs {
		if sg.Report == nil || sg.Event != nil {
			continue
		}
		if s := old[sg.Name]; s != nil && equalRules(s.rule, *sg.Report) {
			d.signals[sg.Name] = s
			continue
		}
		d.signals[sg.Name] = &signal{rule: *sg.Report}
	}
}

func equalRules(a, b configs.Report) bool {
	eq := func(x, y *float64) bool { return (x == nil) == (y == nil) && (x == nil || *x == *y) }
	return eq(a.Deadband, b.Deadband) && eq(a.DeadbandPercent, b.DeadbandPercent) && a.MaxSilence == b.MaxSilence
}

// Forget makes the next reading of every signal be sent: the device was
// offline, and the hub must not take the values from before for current.
func (d *Device) Forget() {
	for _, s := range d.signals {
		s.sent = false
	}
}

// Filter returns the readings, taken at time at, that are to be sent: rs
// itself when all are, a new slice otherwise (rs is left as it is). It
// records what it sends.
func (d *Device) Filter(rs []model.Reading, at time.Time) []model.Reading {
	if len(d.signals) == 0 {
		return rs
	}
	var out []model.Reading
	for i := range rs {
		keep := d.Keep(&rs[i], at)
		switch {
		case !keep && out == nil:
			out = append(make([]model.Reading, 0, len(rs)), rs[:i]...)
		case keep && out != nil:
			out = append(out, rs[i])
		}
	}
	if out == nil {
		return rs
	}
	return out
}

// Keep says whether a reading taken at time at is to be sent, and records
// it if so.
func (d *Device) Keep(r *model.Reading, at time.Time) bool {
	s := d.signals[r.Signal]
	if s == nil {
		return true
	}
	if s.sent && r.Quality == s.quality && !at.Before(s.at) && at.Sub(s.at) < s.rule.MaxSilence && !s.moved(r.Value) {
		return false
	}
	s.sent, s.value, s.quality, s.at = true, r.Value, r.Quality, at
	return true
}

// moved says whether v is beyond the deadband of the value last sent.
func (s *signal) moved(v model.Value) bool {
	now, ok1 := v.Float()
	last, ok2 := s.value.Float()
	if !ok1 || !ok2 {
		return !v.Equal(s.value)
	}
	band := 0.0
	switch {
	case s.rule.Deadband != nil:
		band = *s.rule.Deadband
	case s.rule.DeadbandPercent != nil:
		band = *s.rule.DeadbandPercent / 100 * math.Abs(last)
	}
	// Not "diff > band": a NaN on either side is sent.
	return !(math.Abs(now-last) <= band)
}
