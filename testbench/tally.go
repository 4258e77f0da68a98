package main

import (
	"encoding/json"
	"strings"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/testbench/hub"
)

// tally counts the readings the testbench holds the gateway to: those of
// signals that are not fast (configs.Signal.Fast). A fast signal (an alarm
// input, or what comes in the same answer) is read far more often than it
// is published: the gateway reads it at its device's alarm_poll and
// publishes what changed. The changes of alarm inputs are held to the
// events instead (the simulator's events_served, the raised alarms); the
// simulator leaves fast reads out of readings_served likewise.
type tally struct {
	alarm map[string]bool // "device/signal" and "kind/signal" of fast signals
}

func newTally(st *configs.Station) tally {
	t := tally{alarm: map[string]bool{}}
	for _, d := range st.Devices {
		tmpl := st.Templates[d.Template]
		for _, sg := range tmpl.Body.Signals() {
			if d.Fast(sg) {
				t.alarm[d.ID+"/"+sg.Name] = true
				t.alarm[tmpl.Kind+"/"+sg.Name] = true
			}
		}
	}
	return t
}

// values counts the readings of m with a value, alarm inputs left out.
func (t tally) values(m *model.Message) int {
	n := 0
	for i := range m.Readings {
		if model.HasValue(&m.Readings[i]) && !t.alarm[m.Device+"/"+m.Readings[i].Signal] {
			n++
		}
	}
	return n
}

// field says whether an InfluxDB field of a measurement (a device kind)
// is a reading the testbench counts.
func (t tally) field(kind, field string) bool { return !t.alarm[kind+"/"+field] }

// counted sums, in the series of a count(*) query on a measurement (a
// device kind), the counts of the readings the testbench counts: those of
// signal fields, not of seq, historical or quality fields.
func (t tally) counted(kind string, series []hub.Series) int {
	total := 0
	for _, s := range series {
		for i, col := range s.Columns {
			name := strings.TrimPrefix(col, "count_")
			if col == "time" || name == "seq" || name == "historical" || strings.HasSuffix(name, "_quality") || !t.field(kind, name) {
				continue
			}
			for _, row := range s.Values {
				if n, ok := row[i].(json.Number); ok {
					v, _ := n.Int64()
					total += int(v)
				}
			}
		}
	}
	return total
}
