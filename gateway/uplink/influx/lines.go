package influx

import (
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"outpost/gateway/model"
)

// Measurements of events and health changes; telemetry goes to a
// measurement named after the device kind.
const (
	EventMeasurement   = "outpost_event"
	HealthMeasurement  = "outpost_health"
	CommandMeasurement = "outpost_command"
)

// AppendLine appends the line-protocol point of m (without a trailing
// newline) to dst. The mapping is the hub contract's (docs/hub-contract.md):
//
//   - telemetry: measurement = device kind; tags device, station,
//     station_type; one field per reading with a value (float, bool or
//     string), "<signal>_quality" (string) for a reading that is not good,
//     seq (integer) and historical (true, only when set);
//   - event: measurement outpost_event; tags device, device_kind, kind,
//     severity, station, station_type; fields details (JSON object as a
//     string) and seq;
//   - health: measurement outpost_health; tags device, device_kind,
//     station, station_type; fields one integer per counter, reason, seq,
//     state;
//   - result: measurement outpost_command; tags action, device,
//     device_kind, station, station_type, status; fields id, reason, seq.
//
// The timestamp is m.Time in nanoseconds. Tags with empty values are left
// out (InfluxDB has no empty tag values).
func AppendLine(dst []byte, m *model.Message) []byte {
	switch m.Kind {
	case model.KindEvent:
		dst = appendName(dst, EventMeasurement)
		dst = appendTag(dst, "device", m.Device)
		dst = appendTag(dst, "device_kind", m.DeviceKind)
		var kind, sev string
		var details map[string]string
		if m.Event != nil {
			kind, sev, details = m.Event.Kind, string(m.Event.Severity), m.Event.Details
		}
		dst = appendTag(dst, "kind", kind)
		dst = appendTag(dst, "severity", sev)
		dst = appendTag(dst, "station", m.Station)
		dst = appendTag(dst, "station_type", string(m.StationType))
		dst = append(dst, " details="...)
		dst = appendStringField(dst, string(model.AppendStringMap(nil, details)))
		dst = appendSeq(dst, m.Seq)
	case model.KindHealth:
		dst = appendName(dst, HealthMeasurement)
		dst = appendTag(dst, "device", m.Device)
		dst = appendTag(dst, "device_kind", m.DeviceKind)
		dst = appendTag(dst, "station", m.Station)
		dst = appendTag(dst, "station_type", string(m.StationType))
		h := m.Health
		if h == nil {
			h = &model.Health{}
		}
		dst = append(dst, ' ')
		for _, k := range slices.Sorted(maps.Keys(h.Counters)) {
			dst = appendKey(dst, k)
			dst = append(dst, '=')
			dst = strconv.AppendInt(dst, int64(min(h.Counters[k], math.MaxInt64)), 10)
			dst = append(dst, 'i', ',')
		}
		dst = append(dst, "reason="...)
		dst = appendStringField(dst, h.Reason)
		dst = appendSeq(dst, m.Seq)
		dst = append(dst, ",state="...)
		dst = appendStringField(dst, string(h.State))
	case model.KindResult:
		r := m.Result
		if r == nil {
			r = &model.Result{}
		}
		dst = appendName(dst, CommandMeasurement)
		dst = appendTag(dst, "action", r.Action)
		dst = appendTag(dst, "device", m.Device)
		dst = appendTag(dst, "device_kind", m.DeviceKind)
		dst = appendTag(dst, "station", m.Station)
		dst = appendTag(dst, "station_type", string(m.StationType))
		dst = appendTag(dst, "status", string(r.Status))
		dst = append(dst, " id="...)
		dst = appendStringField(dst, r.ID)
		dst = append(dst, ",reason="...)
		dst = appendStringField(dst, r.Reason)
		dst = appendSeq(dst, m.Seq)
	default:
		dst = appendName(dst, m.DeviceKind)
		dst = appendTag(dst, "device", m.Device)
		dst = appendTag(dst, "station", m.Station)
		dst = appendTag(dst, "station_type", string(m.StationType))
		dst = append(dst, ' ')
		for i := range m.Readings {
			r := &m.Readings[i]
			if model.HasValue(r) {
				dst = appendKey(dst, r.Signal)
				dst = append(dst, '=')
				if f, ok := r.Value.Float(); ok {
					dst = strconv.AppendFloat(dst, f, 'g', -1, 64)
				} else if b, ok := r.Value.AsBool(); ok {
					dst = strconv.AppendBool(dst, b)
				} else if str, ok := r.Value.Str(); ok {
					dst = appendStringField(dst, str)
				}
				dst = append(dst, ',')
			}
			if q := model.WireQuality(r); q != model.Good {
				dst = appendKey(dst, r.Signal)
				dst = append(dst, "_quality="...)
				dst = appendStringField(dst, string(q))
				dst = append(dst, ',')
			}
		}
		if m.Historical {
			dst = append(dst, "historical=true,"...)
		}
		dst = append(dst, "seq="...)
		dst = strconv.AppendUint(dst, m.Seq, 10)
		dst = append(dst, 'i')
	}
	dst = append(dst, ' ')
	return strconv.AppendInt(dst, m.Time.UnixNano(), 10)
}

func appendSeq(dst []byte, seq uint64) []byte {
	dst = append(dst, ",seq="...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, 'i')
}

func appendTag(dst []byte, k, v string) []byte {
	if v == "" {
		return dst
	}
	dst = append(dst, ',')
	dst = appendKey(dst, k)
	dst = append(dst, '=')
	return appendKey(dst, v)
}

// appendName escapes a measurement: commas and spaces.
func appendName(dst []byte, s string) []byte { return appendEscaped(dst, s, ", ") }

// appendKey escapes a tag key, tag value or field key: commas, equal signs
// and spaces.
func appendKey(dst []byte, s string) []byte { return appendEscaped(dst, s, ",= ") }

// appendEscaped writes s with a backslash before each byte of special.
// Line breaks cannot be escaped in names and tags; they become spaces
// (escaped). Invalid UTF-8 becomes U+FFFD.
func appendEscaped(dst []byte, s, special string) []byte {
	if plain(s, special) {
		return append(dst, s...)
	}
	for _, r := range s {
		switch {
		case r == '\n' || r == '\r':
			dst = append(dst, '\\', ' ')
		case r < utf8.RuneSelf && strings.IndexByte(special, byte(r)) >= 0:
			dst = append(dst, '\\', byte(r))
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return dst
}

// appendStringField writes a quoted string field value: backslashes and
// double quotes are escaped.
func appendStringField(dst []byte, s string) []byte {
	dst = append(dst, '"')
	if plain(s, `"\\`) {
		dst = append(dst, s...)
		return append(dst, '"')
	}
	for _, r := range s {
		if r == '"' || r == '\\' {
			dst = append(dst, '\\')
		}
		dst = utf8.AppendRune(dst, r)
	}
	return append(dst, '"')
}

// plain reports whether s is valid UTF-8 without line breaks or bytes of
// special, so that it can be written as is.
func plain(s, special string) bool {
	ascii := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			ascii = false
			continue
		}
		if c == '\n' || c == '\r' || strings.IndexByte(special, c) >= 0 {
			return false
		}
	}
	return ascii || utf8.ValidString(s)
}
