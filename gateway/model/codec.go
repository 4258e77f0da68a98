package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"time"
)

// BinaryVersion is the version of the binary form written by AppendBinary;
// it is the first byte of every encoded message.
const BinaryVersion = 1

// The binary form is what the gateway keeps in its durable queue. It is
// internal to one gateway (the hub never sees it) but outlives a restart and
// an upgrade, so it is versioned: DecodeBinary refuses versions it does not
// know.
//
// Layout of version 1 (uvarint and varint are encoding/binary's; str is a
// uvarint length followed by that many bytes):
//
//	version byte (1)
//	flags   byte: 1 historical, 2 event present, 4 health present,
//	              8 readings not nil, 16 result present
//	str station, str station type, str device, str device kind
//	uvarint seq
//	varint  time: Unix seconds; uvarint nanoseconds (< 1e9)
//	enum    kind
//	[flags&8] uvarint n, then n readings:
//	        str signal, value, str unit, enum quality
//	        value: byte 0 none | 1 number + 8 bytes IEEE 754 little endian |
//	               2 false | 3 true | 4 string + str
//	[flags&2] str kind, enum severity, map of str to str
//	[flags&4] enum state, str reason, map of str to uvarint
//	[flags&16] str id, str action, enum status, str reason
//
// An enum is a byte: a known constant's code, or 0 followed by a str for any
// other value. A map is uvarint 0 for nil, or n+1 then n entries sorted by
// key (keys are unique).
//
// What round-trips: every field exactly, including a number's bits (NaN
// payloads too), nil against empty maps and nil against empty Readings, and
// the time to the nanosecond. The decoded Time is always in UTC and has no
// monotonic clock reading; a zero Time stays the zero Time.
//
// DecodeBinary checks every length against the bytes that remain before it
// allocates, so a lying length costs an error, never a large allocation; it
// refuses trailing bytes, unknown versions and unknown flags. The strings of a
// decoded Message share one allocation of the size of the input.

const (
	flagHistorical = 1 << iota
	flagEvent
	flagHealth
	flagReadings
	flagResult
	flagsKnown = flagHistorical | flagEvent | flagHealth | flagReadings | flagResult
)

const (
	valNone byte = iota
	valNum
	valFalse
	valTrue
	valStr
)

var (
	kindCodes     = []string{"", string(KindTelemetry), string(KindEvent), string(KindHealth), string(KindResult)}
	qualityCodes  = []string{"", string(Good), string(Uncertain), string(Bad)}
	severityCodes = []string{"", string(Info), string(Warning), string(Critical)}
	stateCodes    = []string{"", string(Online), string(Degraded), string(Offline)}
	statusCodes   = []string{"", string(ResultOK), string(ResultRejected), string(ResultFailed)}
)

// AppendBinary appends the binary form of m to dst and returns the extended
// slice.
func AppendBinary(dst []byte, m *Message) []byte {
	flags := byte(0)
	if m.Historical {
		flags |= flagHistorical
	}
	if m.Event != nil {
		flags |= flagEvent
	}
	if m.Health != nil {
		flags |= flagHealth
	}
	if m.Readings != nil {
		flags |= flagReadings
	}
	if m.Result != nil {
		flags |= flagResult
	}
	dst = append(dst, BinaryVersion, flags)
	dst = binAppendStr(dst, m.Station)
	dst = binAppendStr(dst, string(m.StationType))
	dst = binAppendStr(dst, m.Device)
	dst = binAppendStr(dst, m.DeviceKind)
	dst = binary.AppendUvarint(dst, m.Seq)
	dst = binary.AppendVarint(dst, m.Time.Unix())
	dst = binary.AppendUvarint(dst, uint64(m.Time.Nanosecond()))
	dst = binAppendEnum(dst, kindCodes, string(m.Kind))
	if m.Readings != nil {
		dst = binary.AppendUvarint(dst, uint64(len(m.Readings)))
		for i := range m.Readings {
			r := &m.Readings[i]
			dst = binAppendStr(dst, r.Signal)
			switch r.Value.kind {
			case numValue:
				dst = append(dst, valNum)
				dst = binary.LittleEndian.AppendUint64(dst, math.Float64bits(r.Value.num))
			case boolValue:
				if r.Value.num != 0 {
					dst = append(dst, valTrue)
				} else {
					dst = append(dst, valFalse)
				}
			case strValue:
				dst = append(dst, valStr)
				dst = binAppendStr(dst, r.Value.str)
			default:
				dst = append(dst, valNone)
			}
			dst = binAppendStr(dst, r.Unit)
			dst = binAppendEnum(dst, qualityCodes, string(r.Quality))
		}
	}
	if e := m.Event; e != nil {
		dst = binAppendStr(dst, e.Kind)
		dst = binAppendEnum(dst, severityCodes, string(e.Severity))
		if e.Details == nil {
			dst = append(dst, 0)
		} else {
			dst = binary.AppendUvarint(dst, uint64(len(e.Details))+1)
			for _, k := range sortedKeys(e.Details) {
				dst = binAppendStr(dst, k)
				dst = binAppendStr(dst, e.Details[k])
			}
		}
	}
	if h := m.Health; h != nil {
		dst = binAppendEnum(dst, stateCodes, string(h.State))
		dst = binAppendStr(dst, h.Reason)
		if h.Counters == nil {
			dst = append(dst, 0)
		} else {
			dst = binary.AppendUvarint(dst, uint64(len(h.Counters))+1)
			for _, k := range sortedKeys(h.Counters) {
				dst = binAppendStr(dst, k)
				dst = binary.AppendUvarint(dst, h.Counters[k])
			}
		}
	}
	if r := m.Result; r != nil {
		dst = binAppendStr(dst, r.ID)
		dst = binAppendStr(dst, r.Action)
		dst = binAppendEnum(dst, statusCodes, string(r.Status))
		dst = binAppendStr(dst, r.Reason)
	}
	return dst
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

func binAppendStr(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

func binAppendEnum(dst []byte, codes []string, s string) []byte {
	for i := 1; i < len(codes); i++ {
		if codes[i] == s {
			return append(dst, byte(i))
		}
	}
	dst = append(dst, 0)
	return binAppendStr(dst, s)
}

// errShort is returned for input that ends inside a field.
var errShort = errors.New("truncated")

// binDecoder reads the binary form. s is the whole input as one string, so
// every decoded string is a substring of it: one allocation for all.
type binDecoder struct {
	s   string
	i   int
	err error
}

func (d *binDecoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
}

func (d *binDecoder) left() int { return len(d.s) - d.i }

func (d *binDecoder) byte() byte {
	if d.err != nil || d.i >= len(d.s) {
		d.fail(errShort)
		return 0
	}
	c := d.s[d.i]
	d.i++
	return c
}

func (d *binDecoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	var x uint64
	var shift uint
	for n := 0; n < binary.MaxVarintLen64; n++ {
		if d.i >= len(d.s) {
			d.fail(errShort)
			return 0
		}
		c := d.s[d.i]
		d.i++
		if c < 0x80 {
			if n == binary.MaxVarintLen64-1 && c > 1 {
				break
			}
			return x | uint64(c)<<shift
		}
		x |= uint64(c&0x7f) << shift
		shift += 7
	}
	d.fail(errors.New("varint overflows 64 bits"))
	return 0
}

func (d *binDecoder) varint() int64 {
	ux := d.uvarint()
	x := int64(ux >> 1)
	if ux&1 != 0 {
		x = ^x
	}
	return x
}

func (d *binDecoder) str() string {
	n := d.uvarint()
	if d.err != nil {
		return ""
	}
	if n > uint64(d.left()) {
		d.fail(errShort)
		return ""
	}
	s := d.s[d.i : d.i+int(n)]
	d.i += int(n)
	return s
}

func (d *binDecoder) enum(codes []string) string {
	c := d.byte()
	if c == 0 {
		return d.str()
	}
	if int(c) >= len(codes) {
		d.fail(fmt.Errorf("unknown code %d", c))
		return ""
	}
	return codes[c]
}

// count reads a count of items that take at least min bytes each and checks
// it against the bytes left.
func (d *binDecoder) count(min int) int {
	n := d.uvarint()
	if d.err != nil {
		return 0
	}
	if n > uint64(d.left()/min) {
		d.fail(fmt.Errorf("count %d exceeds the %d bytes left", n, d.left()))
		return 0
	}
	return int(n)
}

// mapCount reads a map's count: -1 for a nil map.
func (d *binDecoder) mapCount(min int) int {
	n := d.uvarint()
	if d.err != nil || n == 0 {
		return -1
	}
	n--
	if n > uint64(d.left()/min) {
		d.fail(fmt.Errorf("map of %d entries exceeds the %d bytes left", n, d.left()))
		return -1
	}
	return int(n)
}

// key reads a map key and checks that keys are strictly increasing.
func (d *binDecoder) key(prev string, first bool) string {
	k := d.str()
	if d.err == nil && !first && k <= prev {
		d.fail(fmt.Errorf("map key %q out of order", k))
	}
	return k
}

// DecodeBinary decodes a Message written by AppendBinary. Malformed input
// gives an error, never a panic.
func DecodeBinary(b []byte) (Message, error) {
	var m Message
	err := DecodeBinaryTo(&m, b)
	return m, err
}

// DecodeBinaryTo is DecodeBinary into m. A message with readings takes
// them in the array of m.Readings: a loop that decodes one telemetry
// message after another into the same m, keeping none, allocates them
// once. On an error m is the zero Message.
func DecodeBinaryTo(m *Message, b []byte) error {
	if err := decodeBinary(m, b); err != nil {
		*m = Message{}
		return err
	}
	return nil
}

func decodeBinary(m *Message, b []byte) error {
	readings := m.Readings[:0]
	*m = Message{}
	if len(b) == 0 {
		return errors.New("binary message: empty")
	}
	if b[0] != BinaryVersion {
		return fmt.Errorf("binary message: unknown version %d", b[0])
	}
	d := binDecoder{s: string(b), i: 1}
	flags := d.byte()
	if flags&^flagsKnown != 0 {
		return fmt.Errorf("binary message: unknown flags %#x", flags)
	}
	m.Historical = flags&flagHistorical != 0
	m.Station = d.str()
	m.StationType = StationType(d.str())
	m.Device = d.str()
	m.DeviceKind = d.str()
	m.Seq = d.uvarint()
	sec := d.varint()
	nsec := d.uvarint()
	if d.err == nil {
		if nsec >= 1e9 {
			d.fail(fmt.Errorf("nanoseconds %d out of range", nsec))
		} else {
			m.Time = time.Unix(sec, int64(nsec)).UTC()
		}
	}
	m.Kind = Kind(d.enum(kindCodes))
	if flags&flagReadings != 0 {
		// A reading takes at least 4 bytes: signal, value tag, unit, quality.
		n := d.count(4)
		m.Readings = slices.Grow(readings, n)[:n]
		if m.Readings == nil {
			m.Readings = []Reading{} // empty, as written
		}
		clear(m.Readings)
		for i := 0; i < n && d.err == nil; i++ {
			r := &m.Readings[i]
			r.Signal = d.str()
			switch tag := d.byte(); tag {
			case valNone:
			case valNum:
				if d.left() < 8 {
					d.fail(errShort)
					break
				}
				r.Value = Number(math.Float64frombits(le64(d.s[d.i : d.i+8])))
				d.i += 8
			case valFalse:
				r.Value = Bool(false)
			case valTrue:
				r.Value = Bool(true)
			case valStr:
				r.Value = String(d.str())
			default:
				d.fail(fmt.Errorf("unknown value tag %d", tag))
			}
			r.Unit = d.str()
			r.Quality = Quality(d.enum(qualityCodes))
		}
	}
	if flags&flagEvent != 0 {
		e := &Event{}
		e.Kind = d.str()
		e.Severity = Severity(d.enum(severityCodes))
		if n := d.mapCount(2); n >= 0 {
			e.Details = make(map[string]string, n)
			var prev string
			for i := 0; i < n && d.err == nil; i++ {
				k := d.key(prev, i == 0)
				e.Details[k] = d.str()
				prev = k
			}
		}
		m.Event = e
	}
	if flags&flagHealth != 0 {
		h := &Health{}
		h.State = HealthState(d.enum(stateCodes))
		h.Reason = d.str()
		if n := d.mapCount(2); n >= 0 {
			h.Counters = make(map[string]uint64, n)
			var prev string
			for i := 0; i < n && d.err == nil; i++ {
				k := d.key(prev, i == 0)
				h.Counters[k] = d.uvarint()
				prev = k
			}
		}
		m.Health = h
	}
	if flags&flagResult != 0 {
		m.Result = &Result{ID: d.str(), Action: d.str(), Status: ResultStatus(d.enum(statusCodes)), Reason: d.str()}
	}
	if d.err == nil && d.i != len(d.s) {
		d.fail(fmt.Errorf("%d trailing bytes", len(d.s)-d.i))
	}
	if d.err != nil {
		return fmt.Errorf("binary message: at byte %d: %w", d.i, d.err)
	}
	return nil
}

func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}
