package status

import (
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

func testStation() *configs.Station {
	return &configs.Station{
		Devices: []configs.Device{
			{ID: "th-1", Template: "xy-md02", Link: "rs485-1"},
			{ID: "door-1", Template: "generic-door-contact", Link: "rs485-1"},
		},
		Templates: map[string]*configs.Template{
			"xy-md02":              {Kind: "temperature_humidity"},
			"generic-door-contact": {Kind: "door_contact"},
		},
	}
}

// TestBoard: a device is unknown until its driver says; a change of state
// sets since, a report of the same state does not; values keep their
// last reading, and last seen moves only with a good one.
func TestBoard(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	b := NewBoard(testStation(), t0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	changed := b.Changed()
	b.Saw(model.Message{Device: "th-1", Kind: model.KindTelemetry, Time: at(1), Readings: []model.Reading{
		{Signal: "temperature", Value: model.Number(23.4), Unit: "°C", Quality: model.Good},
		{Signal: "humidity", Value: model.Number(41.5), Unit: "%", Quality: model.Good},
	}})
	select {
	case <-changed:
		t.Fatal("values closed Changed; only a state change should")
	default:
	}
	b.Saw(model.Message{Device: "th-1", Kind: model.KindHealth, Time: at(2), Health: &model.Health{State: model.Online, Counters: map[string]uint64{"requests": 3}}})
	<-changed
	b.Saw(model.Message{Device: "th-1", Kind: model.KindHealth, Time: at(5), Health: &model.Health{State: model.Online, Counters: map[string]uint64{"requests": 9}}})
	b.Saw(model.Message{Device: "th-1", Kind: model.KindTelemetry, Time: at(6), Readings: []model.Reading{
		{Signal: "temperature", Quality: model.Bad},
	}})
	b.Saw(model.Message{Device: "gateway", Kind: model.KindHealth, Time: at(7), Health: &model.Health{State: model.Offline}})

	ds := b.Devices()
	if len(ds) != 2 || ds[0].ID != "th-1" || ds[1].ID != "door-1" {
		t.Fatalf("devices %+v, want th-1 and door-1 in the station's order", ds)
	}
	th, door := ds[0], ds[1]
	if th.State != model.Online || !th.Since.Equal(at(2)) || th.Counters["requests"] != 9 || th.Kind != "temperature_humidity" {
		t.Errorf("th-1: %s since %v, counters %v, kind %s; want online since %v (the change), requests 9", th.State, th.Since, th.Counters, th.Kind, at(2))
	}
	if !th.LastSeen.Equal(at(1)) {
		t.Errorf("th-1 last seen %v, want %v (the last good value)", th.LastSeen, at(1))
	}
	want := []Value{
		{Signal: "temperature", Value: "", Quality: model.Bad, Time: at(6)},
		{Signal: "humidity", Value: "41.5", Unit: "%", Quality: model.Good, Time: at(1)},
	}
	if len(th.Values) != 2 || th.Values[0].Signal != want[0].Signal || th.Values[0].Value != "" || th.Values[0].Quality != model.Bad || !th.Values[0].Time.Equal(at(6)) ||
		th.Values[1].Signal != "humidity" || th.Values[1].Value != "41.5" || th.Values[1].Quality != model.Good {
		t.Errorf("th-1 values %+v, want %+v", th.Values, want)
	}
	if door.State != Unknown || !door.Since.Equal(t0) || !door.LastSeen.IsZero() {
		t.Errorf("door-1: %s since %v, last seen %v; want unknown since the start, never seen", door.State, door.Since, door.LastSeen)
	}
	// The copy is the caller's.
	ds[0].Counters["requests"] = 0
	if b.Devices()[0].Counters["requests"] != 9 {
		t.Error("Devices returned the board's own counters")
	}
}
