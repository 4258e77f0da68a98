package dc09

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"outpost/gateway/model"
)

// ContactID and SIA are the built-in code tables. A template's codes and
// sia_codes add to them or replace their entries (see Table). Kinds follow
// the hub's event kinds where one fits (panic, duress, tamper, smoke,
// power_fail, comms_failed); codes of one meaning share a kind, and the
// event's details carry the code and its name.
var (
	ContactID = []Code{
		{Code: 100, Kind: "medical", Severity: model.Critical, Name: "medical"},
		{Code: 101, Kind: "personal_emergency", Severity: model.Critical, Name: "personal emergency"},
		{Code: 102, Kind: "medical", Severity: model.Warning, Name: "fail to report in"},
		{Code: 110, Kind: "fire", Severity: model.Critical, Name: "fire"},
		{Code: 111, Kind: model.EventSmoke, Severity: model.Critical, Name: "smoke"},
		{Code: 112, Kind: "fire", Severity: model.Critical, Name: "combustion"},
		{Code: 113, Kind: "fire", Severity: model.Critical, Name: "water flow (sprinkler)"},
		{Code: 114, Kind: "heat", Severity: model.Critical, Name: "heat"},
		{Code: 115, Kind: "fire", Severity: model.Critical, Name: "pull station"},
		{Code: 117, Kind: "fire", Severity: model.Critical, Name: "flame"},
		{Code: 118, Kind: "fire", Severity: model.Warning, Name: "fire near alarm"},
		{Code: 120, Kind: model.EventPanic, Severity: model.Critical, Name: "panic"},
		{Code: 121, Kind: model.EventDuress, Severity: model.Critical, Name: "duress", User: true},
		{Code: 122, Kind: model.EventPanic, Severity: model.Critical, Name: "silent panic"},
		{Code: 123, Kind: model.EventPanic, Severity: model.Critical, Name: "audible panic"},
		{Code: 124, Kind: model.EventDuress, Severity: model.Critical, Name: "duress, access granted"},
		{Code: 125, Kind: model.EventDuress, Severity: model.Critical, Name: "duress, egress granted"},
		{Code: 130, Kind: "burglary", Severity: model.Critical, Name: "burglary"},
		{Code: 131, Kind: "burglary", Severity: model.Critical, Name: "perimeter burglary"},
		{Code: 132, Kind: "burglary", Severity: model.Critical, Name: "interior burglary"},
		{Code: 133, Kind: "burglary", Severity: model.Critical, Name: "24-hour burglary"},
		{Code: 134, Kind: "burglary", Severity: model.Critical, Name: "entry/exit burglary"},
		{Code: 135, Kind: "burglary", Severity: model.Critical, Name: "day/night burglary"},
		{Code: 136, Kind: "burglary", Severity: model.Critical, Name: "outdoor burglary"},
		{Code: 137, Kind: model.EventTamper, Severity: model.Critical, Name: "tamper"},
		{Code: 139, Kind: "burglary", Severity: model.Critical, Name: "intrusion verified"},
		{Code: 140, Kind: "alarm", Severity: model.Critical, Name: "general alarm"},
		{Code: 144, Kind: model.EventTamper, Severity: model.Critical, Name: "sensor tamper"},
		{Code: 145, Kind: model.EventTamper, Severity: model.Warning, Name: "expansion module tamper"},
		{Code: 150, Kind: "alarm", Severity: model.Warning, Name: "24-hour non-burglary"},
		{Code: 151, Kind: "gas", Severity: model.Critical, Name: "gas detected"},
		{Code: 154, Kind: "water", Severity: model.Warning, Name: "water leakage"},
		{Code: 158, Kind: "temperature", Severity: model.Warning, Name: "high temperature"},
		{Code: 159, Kind: "temperature", Severity: model.Warning, Name: "low temperature"},
		{Code: 162, Kind: "gas", Severity: model.Critical, Name: "carbon monoxide detected"},
		{Code: 300, Kind: "trouble", Severity: model.Warning, Name: "system trouble"},
		{Code: 301, Kind: model.EventPowerFail, Severity: model.Warning, Name: "AC power loss"},
		{Code: 302, Kind: "low_battery", Severity: model.Warning, Name: "low system battery"},
		{Code: 305, Kind: "trouble", Severity: model.Info, Name: "system reset"},
		{Code: 309, Kind: "low_battery", Severity: model.Warning, Name: "battery test failure"},
		{Code: 311, Kind: "battery_missing", Severity: model.Warning, Name: "battery missing or dead"},
		{Code: 321, Kind: "trouble", Severity: model.Warning, Name: "bell/siren trouble"},
		{Code: 333, Kind: "trouble", Severity: model.Warning, Name: "expansion module failure"},
		{Code: 344, Kind: "rf_jam", Severity: model.Warning, Name: "RF receiver jam"},
		{Code: 350, Kind: model.EventCommsFailed, Severity: model.Warning, Name: "communication trouble"},
		{Code: 351, Kind: model.EventCommsFailed, Severity: model.Warning, Name: "telco line fault"},
		{Code: 354, Kind: model.EventCommsFailed, Severity: model.Warning, Name: "failure to communicate"},
		{Code: 373, Kind: "fire_trouble", Severity: model.Warning, Name: "fire loop trouble"},
		{Code: 380, Kind: "sensor_trouble", Severity: model.Warning, Name: "sensor trouble"},
		{Code: 383, Kind: model.EventTamper, Severity: model.Warning, Name: "sensor tamper (trouble)"},
		{Code: 384, Kind: "low_battery", Severity: model.Warning, Name: "RF sensor low battery"},
		{Code: 401, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "open/close by user", User: true},
		{Code: 402, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "group open/close", User: true},
		{Code: 403, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "automatic open/close", User: true},
		{Code: 406, Kind: "cancel", Severity: model.Info, Name: "cancel by user", User: true},
		{Code: 407, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "remote arm/disarm", User: true},
		{Code: 408, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "quick arm", User: true},
		{Code: 409, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "keyswitch open/close", User: true},
		{Code: 441, Kind: "disarmed", Restore: "armed", Severity: model.Info, Name: "armed stay", User: true},
		{Code: 461, Kind: model.EventTamper, Severity: model.Warning, Name: "wrong code entry"},
		{Code: 570, Kind: "bypass", Severity: model.Info, Name: "zone bypass"},
		{Code: 572, Kind: "bypass", Severity: model.Warning, Name: "24-hour zone bypass"},
		{Code: 601, Kind: "test", Severity: model.Info, Name: "manual test"},
		{Code: 602, Kind: "periodic_test", Severity: model.Info, Name: "periodic test", Test: true},
		{Code: 603, Kind: "periodic_test", Severity: model.Info, Name: "periodic RF transmission", Test: true},
		{Code: 607, Kind: "walk_test", Severity: model.Info, Name: "walk test mode"},
		{Code: 627, Kind: "program_mode", Severity: model.Warning, Name: "program mode entry", User: true},
		{Code: 628, Kind: "program_mode_end", Severity: model.Info, Name: "program mode exit", User: true},
	}

	SIA = []SIACode{
		{Code: "BA", Kind: "burglary", Severity: model.Critical, State: Active, Name: "burglary alarm"},
		{Code: "BH", Kind: "burglary", Severity: model.Info, State: Cleared, Name: "burglary alarm restore"},
		{Code: "BR", Kind: "burglary", Severity: model.Info, State: Cleared, Name: "burglary restoral"},
		{Code: "BB", Kind: "bypass", Severity: model.Info, State: Active, Name: "burglary bypass"},
		{Code: "BU", Kind: "bypass", Severity: model.Info, State: Cleared, Name: "burglary unbypass"},
		{Code: "CL", Kind: "armed", Severity: model.Info, State: Active, Name: "closing report", User: true},
		{Code: "CA", Kind: "armed", Severity: model.Info, State: Active, Name: "automatic closing", User: true},
		{Code: "OP", Kind: "disarmed", Severity: model.Info, State: Active, Name: "opening report", User: true},
		{Code: "OA", Kind: "disarmed", Severity: model.Info, State: Active, Name: "automatic opening", User: true},
		{Code: "OR", Kind: "disarmed", Severity: model.Info, State: Active, Name: "disarm from alarm", User: true},
		{Code: "FA", Kind: "fire", Severity: model.Critical, State: Active, Name: "fire alarm"},
		{Code: "FH", Kind: "fire", Severity: model.Info, State: Cleared, Name: "fire alarm restore"},
		{Code: "FR", Kind: "fire", Severity: model.Info, State: Cleared, Name: "fire restoral"},
		{Code: "FT", Kind: "fire_trouble", Severity: model.Warning, State: Active, Name: "fire trouble"},
		{Code: "FJ", Kind: "fire_trouble", Severity: model.Info, State: Cleared, Name: "fire trouble restore"},
		{Code: "GA", Kind: "gas", Severity: model.Critical, State: Active, Name: "gas alarm"},
		{Code: "GH", Kind: "gas", Severity: model.Info, State: Cleared, Name: "gas alarm restore"},
		{Code: "HA", Kind: model.EventDuress, Severity: model.Critical, State: Active, Name: "holdup (duress) alarm"},
		{Code: "HH", Kind: model.EventDuress, Severity: model.Info, State: Cleared, Name: "holdup alarm restore"},
		{Code: "HR", Kind: model.EventDuress, Severity: model.Info, State: Cleared, Name: "holdup restoral"},
		{Code: "KA", Kind: "heat", Severity: model.Critical, State: Active, Name: "heat alarm"},
		{Code: "KH", Kind: "heat", Severity: model.Info, State: Cleared, Name: "heat alarm restore"},
		{Code: "KR", Kind: "heat", Severity: model.Info, State: Cleared, Name: "heat restoral"},
		{Code: "MA", Kind: "medical", Severity: model.Critical, State: Active, Name: "medical alarm"},
		{Code: "MH", Kind: "medical", Severity: model.Info, State: Cleared, Name: "medical alarm restore"},
		{Code: "MR", Kind: "medical", Severity: model.Info, State: Cleared, Name: "medical restoral"},
		{Code: "PA", Kind: model.EventPanic, Severity: model.Critical, State: Active, Name: "panic alarm"},
		{Code: "PH", Kind: model.EventPanic, Severity: model.Info, State: Cleared, Name: "panic alarm restore"},
		{Code: "PR", Kind: model.EventPanic, Severity: model.Info, State: Cleared, Name: "panic restoral"},
		{Code: "QA", Kind: "personal_emergency", Severity: model.Critical, State: Active, Name: "emergency alarm"},
		{Code: "QH", Kind: "personal_emergency", Severity: model.Info, State: Cleared, Name: "emergency alarm restore"},
		{Code: "QR", Kind: "personal_emergency", Severity: model.Info, State: Cleared, Name: "emergency restoral"},
		{Code: "TA", Kind: model.EventTamper, Severity: model.Critical, State: Active, Name: "tamper alarm"},
		{Code: "TR", Kind: model.EventTamper, Severity: model.Info, State: Cleared, Name: "tamper restoral"},
		{Code: "JA", Kind: model.EventTamper, Severity: model.Warning, State: Active, Name: "user code tamper", User: true},
		{Code: "UA", Kind: "alarm", Severity: model.Critical, State: Active, Name: "untyped zone alarm"},
		{Code: "UR", Kind: "alarm", Severity: model.Info, State: Cleared, Name: "untyped zone restoral"},
		{Code: "WA", Kind: "water", Severity: model.Warning, State: Active, Name: "water alarm"},
		{Code: "WH", Kind: "water", Severity: model.Info, State: Cleared, Name: "water alarm restore"},
		{Code: "AT", Kind: model.EventPowerFail, Severity: model.Warning, State: Active, Name: "AC trouble"},
		{Code: "AR", Kind: model.EventPowerFail, Severity: model.Info, State: Cleared, Name: "AC restoral"},
		{Code: "YT", Kind: "low_battery", Severity: model.Warning, State: Active, Name: "system battery trouble"},
		{Code: "YR", Kind: "low_battery", Severity: model.Info, State: Cleared, Name: "system battery restoral"},
		{Code: "YM", Kind: "battery_missing", Severity: model.Warning, State: Active, Name: "system battery missing"},
		{Code: "XT", Kind: "low_battery", Severity: model.Warning, State: Active, Name: "transmitter battery trouble"},
		{Code: "XR", Kind: "low_battery", Severity: model.Info, State: Cleared, Name: "transmitter battery restoral"},
		{Code: "YS", Kind: model.EventCommsFailed, Severity: model.Warning, State: Active, Name: "communications trouble"},
		{Code: "YK", Kind: model.EventCommsFailed, Severity: model.Info, State: Cleared, Name: "communications restoral"},
		{Code: "ET", Kind: "trouble", Severity: model.Warning, State: Active, Name: "expansion trouble"},
		{Code: "ER", Kind: "trouble", Severity: model.Info, State: Cleared, Name: "expansion restoral"},
		{Code: "RR", Kind: "trouble", Severity: model.Info, State: Status, Name: "power up"},
		{Code: "RX", Kind: "test", Severity: model.Info, State: Active, Name: "manual test"},
		{Code: "RP", Kind: "periodic_test", Severity: model.Info, State: Active, Name: "automatic test", Test: true},
		{Code: "LB", Kind: "program_mode", Severity: model.Warning, State: Active, Name: "local program begin"},
		{Code: "LX", Kind: "program_mode_end", Severity: model.Info, State: Active, Name: "local program ended"},
	}
)

// Table is the code table of a panel: the built-in one with its
// template's entries added or replacing.
type Table struct {
	cid map[int]Code
	sia map[string]SIACode
}

// NewTable merges a template's codes (t may be nil) into the built-in
// tables.
func NewTable(t *Template) *Table {
	tb := &Table{cid: map[int]Code{}, sia: map[string]SIACode{}}
	for _, c := range ContactID {
		tb.cid[c.Code] = c
	}
	for _, c := range SIA {
		tb.sia[c.Code] = c
	}
	if t != nil {
		for _, c := range t.Codes {
			tb.cid[c.Code] = c
		}
		for _, c := range t.SIACodes {
			tb.sia[c.Code] = c
		}
	}
	return tb
}

// Meaning is what a reported code raises at the hub.
type Meaning struct {
	Kind     string
	Severity model.Severity
	State    State
	Name     string // what the code means; "" for an unknown code
	User     bool   // the number that comes with it is a user's
	Test     bool   // a periodic test: supervision only, not an event
}

// ContactID is the meaning of a Contact ID event with a qualifier (1 new
// event, 3 restore, 6 status). An unknown code is never dropped: it is
// kind contact_id_<code>, severity warning.
func (tb *Table) ContactID(code, qualifier int) Meaning {
	c, ok := tb.cid[code]
	if !ok {
		c = Code{Code: code, Kind: fmt.Sprintf("contact_id_%03d", code), Severity: model.Warning}
	}
	m := Meaning{Kind: c.Kind, Severity: c.Severity, State: Active, Name: c.Name, User: c.User, Test: c.Test}
	switch {
	case qualifier == 3 && c.Restore != "":
		m.Kind = c.Restore
	case qualifier == 3:
		m.State, m.Severity = Cleared, model.Info
	case qualifier == 6:
		m.State = Status
	}
	return m
}

// SIA is the meaning of a SIA event code. An unknown code is kind
// sia_<code>, severity warning.
func (tb *Table) SIA(code string) Meaning {
	c, ok := tb.sia[code]
	if !ok {
		return Meaning{Kind: "sia_" + strings.ToLower(code), Severity: model.Warning, State: Active}
	}
	return Meaning{Kind: c.Kind, Severity: c.Severity, State: c.State, Name: c.Name, User: c.User, Test: c.Test}
}

// ContactIDCodes and SIACodes list the table's entries in code order.
func (tb *Table) ContactIDCodes() []Code {
	out := make([]Code, 0, len(tb.cid))
	for _, k := range slices.Sorted(maps.Keys(tb.cid)) {
		out = append(out, tb.cid[k])
	}
	return out
}

func (tb *Table) SIACodes() []SIACode {
	out := make([]SIACode, 0, len(tb.sia))
	for _, k := range slices.Sorted(maps.Keys(tb.sia)) {
		out = append(out, tb.sia[k])
	}
	return out
}
