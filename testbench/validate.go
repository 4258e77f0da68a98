package main

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"outpost/gateway/model"
)

// faultActions are the fault actions a scenario may name (see
// runner.inject), and whether each takes Down, how long it lasts.
var faultActions = map[string]bool{
	"kill-broker": true, "stop-broker": false, "start-broker": false,
	"kill-influx": true, "stop-influx": false, "start-influx": false,
	"freeze-broker": false, "thaw-broker": false, "freeze-influx": false, "thaw-influx": false,
	"freeze-disk": false, "thaw-disk": false, "fill-disk": false, "free-disk": false, "delete-state": false,
	"partition": true, "partition-start": false, "partition-heal": false,
	"kill-gateway": false, "power-cut": false, "stop-gateway": false, "start-gateway": false,
	"device": false,
}

// validate checks what decoding cannot: names of actions and devices,
// times that fit the load, indexes of faults; every problem at once, each
// with where in the file it is, before anything starts. devices are the
// station's device ids.
func (sc *Scenario) validate(devices []string) error {
	var errs []error
	bad := func(where, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", where, fmt.Sprintf(format, args...)))
	}
	device := func(where, id string) {
		if !slices.Contains(devices, id) {
			bad(where, "no device %q in the station (it has %s)", id, strings.Join(devices, ", "))
		}
	}
	act := func(where string, a DeviceAct) {
		device(where+".device", a.Device)
		if a.Do == "" {
			bad(where+".do", "say what the device does (see `firmware-sim -control` GET /devices for each device's actions)")
		}
	}
	for i, f := range sc.Faults {
		where := fmt.Sprintf("faults[%d]", i)
		takesDown, ok := faultActions[f.Action]
		switch {
		case !ok:
			bad(where+".action", "%q is not a fault action; one of %s", f.Action, strings.Join(slices.Sorted(maps.Keys(faultActions)), ", "))
		case takesDown && f.Down <= 0:
			bad(where+".down", "%s needs how long it lasts (down: 2s)", f.Action)
		case !takesDown && f.Down > 0:
			bad(where+".down", "%s does not last: down is for %s", f.Action, lasting())
		}
		if f.At < 0 || f.At >= sc.Duration {
			bad(where+".at", "%v is outside the load (0 to %v)", f.At, sc.Duration)
		}
		if f.Times > 1 && f.Every <= 0 {
			bad(where+".every", "%d times needs how often (every: 5s)", f.Times)
		}
		if (f.Action == "device") != (f.Device != nil) {
			bad(where+".device", "action device, and only it, takes device: {device, do, args}")
		} else if f.Device != nil {
			act(where+".device", *f.Device)
		}
	}
	if sc.freezesDisk() && sc.StateVolume == "" {
		bad("state_volume", "freeze-disk needs a state volume of its own to freeze (state_volume: 64m)")
	}
	if sc.plays("fill-disk", "free-disk") && sc.StateVolume == "" {
		bad("state_volume", "fill-disk needs a state volume of its own to fill (state_volume: 1m)")
	}
	for i, id := range sc.Silent {
		device(fmt.Sprintf("silent[%d]", i), id)
	}
	if a := sc.Alarms; a != nil {
		if a.Count <= 0 || len(a.Sources) == 0 || a.To <= a.From {
			bad("alarms", "needs count > 0, sources, and from before to")
		}
		for i, s := range a.Sources {
			act(fmt.Sprintf("alarms.sources[%d]", i), s.DeviceAct)
		}
	}
	for i, e := range sc.Expect.EventsAfter {
		where := fmt.Sprintf("expect.events_after[%d]", i)
		if e.AfterFault < 0 || e.AfterFault >= len(sc.Faults) {
			bad(where+".after_fault", "%d is not the index of a fault (0 to %d)", e.AfterFault, len(sc.Faults)-1)
		}
		if e.Device != model.GatewayDevice { // the gateway's own events: queue_write_failed, ...
			device(where+".device", e.Device)
		}
		if e.Within <= 0 {
			bad(where+".within", "needs how soon the hub must see it (within: 10s)")
		}
	}
	for _, id := range slices.Sorted(maps.Keys(sc.Expect.Refused)) {
		device("expect.refused."+id, id)
	}
	for _, id := range slices.Sorted(maps.Keys(sc.Expect.Counted)) {
		device("expect.counted."+id, id)
	}
	for i, id := range sc.Expect.BadFramesCounted {
		device(fmt.Sprintf("expect.bad_frames_counted[%d]", i), id)
	}
	return errors.Join(errs...)
}

// lasting lists the fault actions that take down.
func lasting() string {
	var l []string
	for a, takesDown := range faultActions {
		if takesDown {
			l = append(l, a)
		}
	}
	slices.Sort(l)
	return strings.Join(l, ", ")
}

// stationOutline is what the testbench reads of a station file before
// preparing it: the station's id and type and the devices' ids.
type stationOutline struct {
	Station struct{ ID, Type string }
	Devices []struct{ ID string }
}

func outlineOf(src []byte) (stationOutline, error) {
	var o stationOutline
	if err := yaml.Unmarshal(src, &o); err != nil {
		return o, fmt.Errorf("station file: %w", err)
	}
	return o, nil
}

// deviceIDs are the station's device ids.
func (o stationOutline) deviceIDs() []string {
	ids := make([]string, len(o.Devices))
	for i, d := range o.Devices {
		ids[i] = d.ID
	}
	return ids
}
