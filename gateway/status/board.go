package status

import (
	"maps"
	"slices"
	"sync"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// Board keeps every device of the station as an operator sees it: its
// health (state, reason, since when, counters), its last values and when
// it was last heard. The ingest shows it every message the drivers emit
// (Saw); the status page, the JSON API, the metrics and the hub's health
// snapshot read it. It is safe for concurrent use.
type Board struct {
	mu      sync.Mutex
	devices []*Device // in the station file's order
	byID    map[string]*Device
	changed chan struct{} // closed and replaced when a device's state changes
}

// Device is one device on the board.
type Device struct {
	ID       string `json:"device"`
	Kind     string `json:"device_kind"`
	Template string `json:"template"`
	Link     string `json:"link"`
	// State is unknown until the device's driver first says.
	State    model.HealthState `json:"state"`
	Reason   string            `json:"reason,omitempty"`
	Since    time.Time         `json:"since"`
	Counters map[string]uint64 `json:"counters"`
	// LastSeen is when a good value last came from it.
	LastSeen time.Time `json:"last_seen,omitzero"`
	Values   []Value   `json:"values"`
	// Unchanged counts the readings report by exception left out since
	// the gateway started, each within its deadband of the last sent.
	Unchanged uint64 `json:"unchanged_readings,omitempty"`
}

// Value is a signal's last reading ("" for none).
type Value struct {
	Signal  string        `json:"signal"`
	Value   string        `json:"value"`
	Unit    string        `json:"unit,omitempty"`
	Quality model.Quality `json:"quality"`
	Time    time.Time     `json:"time"`
	// raw is the reading's value; Value is written from it only in the
	// copies Devices returns: a station at load sees thousands of
	// readings a second, and is looked at every few seconds.
	raw model.Value
}

// Unknown is a device's state before its driver first reports it.
const Unknown model.HealthState = "unknown"

// NewBoard puts every device of the station on a board, in unknown state
// since now.
func NewBoard(st *configs.Station, now time.Time) *Board {
	b := &Board{byID: map[string]*Device{}, changed: make(chan struct{})}
	b.SetStation(st, now)
	return b
}

// SetStation puts the devices of a station file on the board, at the
// start or reloaded: a device already there keeps its state (and its
// values, unless its template changed); a new one is unknown since now;
// one no longer in the file leaves.
func (b *Board) SetStation(st *configs.Station, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	byID := map[string]*Device{}
	var devices []*Device
	for i := range st.Devices {
		d := &st.Devices[i]
		kind := ""
		if t := st.Templates[d.Template]; t != nil {
			kind = t.Kind
		}
		dev := b.byID[d.ID]
		switch {
		case dev == nil:
			dev = &Device{ID: d.ID, State: Unknown, Since: now.UTC(), Counters: map[string]uint64{}}
		case dev.Template != d.Template:
			dev.Values = nil
		}
		dev.Kind, dev.Template, dev.Link = kind, d.Template, d.Link
		devices = append(devices, dev)
		byID[d.ID] = dev
	}
	b.devices, b.byID = devices, byID
}

// Saw notes a message a driver emitted: a health change, or values.
func (b *Board) Saw(m model.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	d := b.byID[m.Device]
	if d == nil {
		return // the gateway's own, or a device the station file lacks
	}
	switch m.Kind {
	case model.KindHealth:
		if m.Health == nil {
			return
		}
		if m.Health.State != d.State {
			d.Since = m.Time.UTC()
			close(b.changed)
			b.changed = make(chan struct{})
		}
		d.State, d.Reason = m.Health.State, m.Health.Reason
		d.Counters = maps.Clone(m.Health.Counters)
		if d.Counters == nil {
			d.Counters = map[string]uint64{}
		}
	case model.KindTelemetry:
		for j, r := range m.Readings {
			v := Value{Signal: r.Signal, Unit: r.Unit, Quality: model.WireQuality(&r), Time: m.Time.UTC(), raw: r.Value}
			if v.Quality == model.Good {
				d.LastSeen = v.Time
			}
			i := j // a device's messages name its signals in the same order
			if i >= len(d.Values) || d.Values[i].Signal != r.Signal {
				i = slices.IndexFunc(d.Values, func(x Value) bool { return x.Signal == r.Signal })
			}
			if i < 0 {
				d.Values = append(d.Values, v)
			} else {
				d.Values[i] = v
			}
		}
	}
}

// Devices returns a copy of the board, in the station file's order.
func (b *Board) Devices() []Device {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Device, len(b.devices))
	for i, d := range b.devices {
		out[i] = *d
		out[i].Counters = maps.Clone(d.Counters)
		out[i].Values = slices.Clone(d.Values)
		for j, v := range out[i].Values {
			if !v.raw.IsZero() {
				out[i].Values[j].Value = v.raw.String()
			}
		}
	}
	return out
}

// Changed returns a channel closed at the next change of a device's state.
func (b *Board) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}
