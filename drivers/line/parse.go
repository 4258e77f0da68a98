package line

import (
	"bytes"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"

	cl "outpost/configs/line"
	"outpost/drivers/crc16"
	"outpost/gateway/model"
)

// Everything in this file is pure: the Framer cuts the bytes of a serial
// line into lines, and the Parser judges one line (its checksum, its kind
// and its fields) and decodes its signals, as the template says. The
// driver feeds them what the port gives; the tests feed them literals.

// Reasons a line is bad, each the name of the device's health counter
// that counts it. Ignored lines are not bad (see cl.Ignore).
const (
	ReasonChecksum  = "checksum_errors" // a checksum that is wrong, missing or not hex
	ReasonTooLong   = "too_long"        // a line longer than max_length
	ReasonTruncated = "truncated_lines" // a line cut short: a new start inside it, a pause, or a good line after it
	ReasonGarbage   = "garbage"         // bytes between lines, outside any
	ReasonUnmatched = "unmatched_lines" // a line of no kind the template has
	ReasonFields    = "bad_fields"      // a field that does not parse as its signal's type
	ReasonIgnored   = "ignored_lines"   // a line of no kind, which the template ignores
)

// LineError is a line that is not a good line of the device.
type LineError struct {
	Reason string // the counter: ReasonChecksum, ...
	Detail string
}

func (e *LineError) Error() string { return e.Detail }

func lineErr(reason, format string, args ...any) *LineError {
	return &LineError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// show quotes a line for a message, cut to a length a log can carry.
func show(b []byte) string {
	const most = 48
	if len(b) > most {
		return strconv.Quote(string(b[:most])) + "..."
	}
	return strconv.Quote(string(b))
}

// Framer cuts a stream of bytes into lines, between the framing's start
// (when it has one) and its end. It never holds more than a line of the
// template's max_length: a longer one is reported and dropped up to its
// end. It is not safe for concurrent use.
type Framer struct {
	start, end []byte
	max        int
	buf        []byte // the line so far (after its start), or the last bytes outside a line
	in         bool   // within a line: always, without a start
	skip       bool   // dropping a line too long, up to its end
	junk       int    // bytes outside a line since the last one (with a start)
	head       []byte // the first of them, for the message
}

// NewFramer makes the framer of a template's framing.
func NewFramer(f cl.Framing) *Framer {
	fr := &Framer{start: []byte(f.Start), end: []byte(f.End), max: f.MaxLength, in: f.Start == ""}
	if fr.max <= 0 {
		fr.max = 256
	}
	fr.buf = make([]byte, 0, fr.max+len(fr.end))
	return fr
}

// Emit receives a line's body (without start and end; valid during the
// call only), or what is wrong with what came instead (a LineError, body
// nil).
type Emit func(body []byte, err *LineError)

// Push takes the bytes that came, and emits every line they end.
func (f *Framer) Push(p []byte, emit Emit) {
	for _, c := range p {
		f.push(c, emit)
	}
}

func (f *Framer) push(c byte, emit Emit) {
	if !f.in {
		f.outside(c, emit)
		return
	}
	f.buf = append(f.buf, c)
	if f.skip {
		switch {
		case bytes.HasSuffix(f.buf, f.end):
			f.reset(false)
		case len(f.start) > 0 && bytes.HasSuffix(f.buf, f.start):
			f.reset(true)
		case len(f.buf) >= f.max:
			// Keep what could be the beginning of an end or a start.
			keep := max(len(f.end), len(f.start))
			n := copy(f.buf, f.buf[len(f.buf)-keep:])
			f.buf = f.buf[:n]
		}
		return
	}
	switch {
	case len(f.start) > 0 && bytes.HasSuffix(f.buf, f.start):
		// A new line begins before this one ended: this one was cut.
		body := f.buf[:len(f.buf)-len(f.start)]
		emit(nil, lineErr(ReasonTruncated, "a line cut short by the start of another: %s", show(body)))
		f.reset(true)
	case bytes.HasSuffix(f.buf, f.end):
		body := f.buf[:len(f.buf)-len(f.end)]
		if len(body) > 0 || len(f.start) > 0 {
			emit(body, nil)
		}
		f.reset(false)
	case len(f.start)+len(f.buf) >= f.max:
		// Its end is yet to come: the line will be longer than max.
		emit(nil, lineErr(ReasonTooLong, "a line longer than %d bytes: %s", f.max, show(f.buf)))
		f.skip = true
	}
}

// outside takes a byte between lines (with a start in the framing).
func (f *Framer) outside(c byte, emit Emit) {
	f.buf = append(f.buf, c)
	f.junk++
	if len(f.head) < 16 {
		f.head = append(f.head, c)
	}
	switch {
	case bytes.HasSuffix(f.buf, f.start):
		if f.junk > len(f.start) {
			f.garbage(f.junk-len(f.start), emit)
		}
		f.reset(true)
		return
	case bytes.HasSuffix(f.buf, f.end):
		// Garbage up to an end is one bad line; a lone end (an empty line
		// between two) is nothing.
		if f.junk > len(f.end) {
			f.garbage(f.junk, emit)
		}
		f.junk, f.head = 0, f.head[:0]
	}
	if keep := max(len(f.start), len(f.end)); len(f.buf) > keep {
		n := copy(f.buf, f.buf[len(f.buf)-keep:])
		f.buf = f.buf[:n]
	}
}

func (f *Framer) garbage(n int, emit Emit) {
	emit(nil, lineErr(ReasonGarbage, "%d bytes between lines: %s", n, show(f.head[:min(n, len(f.head))])))
}

// reset starts afresh, within a line (just after its start) or outside.
func (f *Framer) reset(in bool) {
	f.buf, f.skip, f.junk, f.head = f.buf[:0], false, 0, f.head[:0]
	f.in = in || len(f.start) == 0
}

// Pending says whether part of a line (or garbage) waits for more.
func (f *Framer) Pending() bool {
	if len(f.start) == 0 {
		return len(f.buf) > 0
	}
	return f.in || f.junk > 0
}

// Cut ends what waits: the line so far was cut short (a pause in the
// middle of it: its end was lost), or the garbage so far is done.
func (f *Framer) Cut(emit Emit) {
	switch {
	case f.skip:
	case f.in && (len(f.start) > 0 || len(f.buf) > 0):
		emit(nil, lineErr(ReasonTruncated, "a line cut short (no end came): %s", show(f.buf)))
	case !f.in && f.junk > 0:
		f.garbage(f.junk, emit)
	}
	f.reset(false)
}

// Parser reads the lines of one template. It is safe for concurrent use.
type Parser struct {
	start  []byte
	sum    cl.ChecksumType
	marker []byte
	incl   bool // the checksum covers the start
	order  cl.ByteOrder
	resync bool // no start: find a good line after a cut one by its prefix
	ignore bool // unmatched lines are ignored
	kinds  []kind
	sigs   []sig
}

// kind is a compiled kind of line.
type kind struct {
	name   string
	prefix []byte
	re     *regexp.Regexp
	groups map[string]int // regex group index by name
	pairs  *cl.Pairs
	sigs   []int // the signals it carries, in template order
}

// sig is a signal with what decoding it needs at hand.
type sig struct {
	*cl.Signal
	scaleDec, offsetDec int // decimals of its scale and offset
}

// NewParser compiles a template's lines. The template must have passed
// its Check.
func NewParser(t *cl.Template) (*Parser, error) {
	p := &Parser{start: []byte(t.Framing.Start), sum: t.Checksum.Type, marker: []byte(t.Checksum.Marker),
		incl: t.Checksum.IncludeStart, order: t.Checksum.Order, resync: t.Framing.Start == "", ignore: t.Unmatched == cl.Ignore}
	if p.sum == "" {
		p.sum = cl.None
	}
	for i := range t.SignalDefs {
		s := &t.SignalDefs[i]
		p.sigs = append(p.sigs, sig{Signal: s, scaleDec: decimalsOf(s.Scale), offsetDec: decimalsOf(s.Offset)})
	}
	for i := range t.Lines {
		l := &t.Lines[i]
		re, err := l.Compile()
		if err != nil {
			return nil, fmt.Errorf("line %s: %w", l.Name, err)
		}
		k := kind{name: l.Name, prefix: []byte(l.Prefix), re: re, pairs: l.Pairs, groups: map[string]int{}}
		if re != nil {
			for gi, n := range re.SubexpNames() {
				if n != "" {
					k.groups[n] = gi
				}
			}
		}
		for si := range t.SignalDefs {
			if t.SignalDefs[si].Reads(l) {
				k.sigs = append(k.sigs, si)
			}
		}
		p.kinds = append(p.kinds, k)
	}
	return p, nil
}

// Decoded is a good line: its kind and its signals' readings (of good or
// uncertain quality, or bad without a value for an empty field).
type Decoded struct {
	Kind     string
	Readings []model.Reading
	// Cut is how many bytes before the line were a line cut short
	// (without a start in the framing, they come in the same body).
	Cut int
}

// maxResync bounds the places a good line is looked for after a cut one.
const maxResync = 32

// Parse reads a line's body, the bytes between its start and its end. A
// line that is not good is a LineError. Without a start in the framing, a
// line cut short and the good line after it come as one body: when the
// body is not good as a whole, a good line is looked for where a prefix
// of the template's lines begins in it, and the bytes before it are
// Cut.
func (p *Parser) Parse(body []byte) (Decoded, error) {
	d, err := p.parseOne(body)
	if err == nil || !p.resync {
		return d, err
	}
	for _, at := range p.prefixesIn(body) {
		if d2, err2 := p.parseOne(body[at:]); err2 == nil {
			d2.Cut = at
			return d2, nil
		}
	}
	return d, err
}

// prefixesIn lists where a prefix of the template's lines begins in
// body, after its first byte, in order.
func (p *Parser) prefixesIn(body []byte) []int {
	var at []int
	for _, k := range p.kinds {
		if len(k.prefix) == 0 {
			continue
		}
		for i := 1; i < len(body) && len(at) < maxResync*len(p.kinds); {
			j := bytes.Index(body[i:], k.prefix)
			if j < 0 {
				break
			}
			at = append(at, i+j)
			i += j + 1
		}
	}
	slices.Sort(at)
	at = slices.Compact(at)
	return at[:min(len(at), maxResync)]
}

// parseOne reads a body that holds one line.
func (p *Parser) parseOne(body []byte) (Decoded, error) {
	text, err := p.check(body)
	if err != nil {
		return Decoded{}, err
	}
	for i := range p.kinds {
		k := &p.kinds[i]
		if !bytes.HasPrefix(text, k.prefix) {
			continue
		}
		var loc []int
		if k.re != nil {
			if loc = k.re.FindSubmatchIndex(text); loc == nil {
				continue
			}
		}
		return p.fields(k, text, loc)
	}
	if p.ignore {
		return Decoded{}, lineErr(ReasonIgnored, "a line the template does not read: %s", show(text))
	}
	return Decoded{}, lineErr(ReasonUnmatched, "a line of none of the template's kinds (%s): %s", p.kindNames(), show(text))
}

func (p *Parser) kindNames() string {
	names := make([]string, len(p.kinds))
	for i, k := range p.kinds {
		names[i] = k.name
	}
	return strings.Join(names, ", ")
}

// check checks a body's checksum and returns its text without it.
func (p *Parser) check(body []byte) ([]byte, error) {
	n := p.sum.Digits()
	if n == 0 {
		return body, nil
	}
	m := len(p.marker)
	if len(body) < n+m {
		return nil, lineErr(ReasonChecksum, "no room for a checksum: %s", show(body))
	}
	text, mark, digits := body[:len(body)-n-m], body[len(body)-n-m:len(body)-n], body[len(body)-n:]
	if !bytes.Equal(mark, p.marker) {
		return nil, lineErr(ReasonChecksum, "no checksum after %q: %s", p.marker, show(body))
	}
	got, ok := parseHex(digits)
	if !ok {
		return nil, lineErr(ReasonChecksum, "%q is not a checksum: %s", digits, show(body))
	}
	if want := p.Sum(text); got != want {
		return nil, lineErr(ReasonChecksum, "checksum %s, want %s: %s", digits, p.digits(want), show(body))
	}
	return text, nil
}

// Sum is the checksum of a line's text, as its digits say it (a CRC
// written lsb_first has its bytes swapped).
func (p *Parser) Sum(text []byte) uint16 {
	var v uint16
	switch p.sum {
	case cl.XOR8:
		v = uint16(xor8(p.covered(text)))
	case cl.Sum8:
		v = uint16(sum8(p.covered(text)))
	case cl.CRC16Modbus:
		v = crc16Modbus(p.covered(text))
		if p.order == cl.LSBFirst {
			v = v<<8 | v>>8
		}
	}
	return v
}

// covered yields the bytes the checksum covers: the start, when it is
// included, then the text.
func (p *Parser) covered(text []byte) func(func(byte)) {
	return func(yield func(byte)) {
		if p.incl {
			for _, c := range p.start {
				yield(c)
			}
		}
		for _, c := range text {
			yield(c)
		}
	}
}

func xor8(each func(func(byte))) byte {
	var x byte
	each(func(c byte) { x ^= c })
	return x
}

func sum8(each func(func(byte))) byte {
	var s byte
	each(func(c byte) { s += c })
	return s
}

// crc16Modbus is CRC-16/MODBUS ("123456789" gives 0x4B37).
func crc16Modbus(each func(func(byte))) uint16 {
	crc := uint16(0xFFFF)
	each(func(c byte) { crc = crc16.Update(crc, c) })
	return crc
}

// digits writes a checksum as the template does, in upper case.
func (p *Parser) digits(v uint16) string {
	return fmt.Sprintf("%0*X", p.sum.Digits(), v)
}

// Seal is text as a line carries it: followed by the marker and the
// checksum, when the template has one.
func (p *Parser) Seal(text []byte) []byte {
	out := slices.Clip(text)
	if p.sum.Digits() == 0 {
		return out
	}
	out = append(out, p.marker...)
	return append(out, p.digits(p.Sum(text))...)
}

// parseHex reads hex digits, either case.
func parseHex(b []byte) (uint16, bool) {
	var v uint16
	for _, c := range b {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		default:
			return 0, false
		}
		v = v<<4 | uint16(d)
	}
	return v, true
}

// fields decodes the signals a line of kind k carries; loc is its regex
// match. A field that does not parse makes the whole line bad: on a line
// without checksum it is the sign of damage, and the line's other values
// are no better.
func (p *Parser) fields(k *kind, text []byte, loc []int) (Decoded, error) {
	var get func(name string) (string, bool)
	if k.pairs != nil {
		kv, err := pairs(text[len(k.prefix):], k.pairs)
		if err != nil {
			return Decoded{}, lineErr(ReasonFields, "%v: %s", err, show(text))
		}
		get = func(name string) (string, bool) { v, ok := kv[name]; return v, ok }
	} else {
		get = func(name string) (string, bool) {
			gi, ok := k.groups[name]
			if !ok || loc[2*gi] < 0 {
				return "", false
			}
			return string(text[loc[2*gi]:loc[2*gi+1]]), true
		}
	}
	d := Decoded{Kind: k.name, Readings: make([]model.Reading, 0, len(k.sigs))}
	for _, si := range k.sigs {
		s := &p.sigs[si]
		raw, ok := get(s.Field)
		if !ok {
			continue
		}
		r, err := s.decode(raw, get)
		if err != nil {
			return Decoded{}, lineErr(ReasonFields, "field %s %q (signal %s): %v: %s", s.Field, raw, s.Signal.Signal, err, show(text))
		}
		d.Readings = append(d.Readings, r)
	}
	return d, nil
}

// pairs splits KEY=VALUE pairs; empty pairs are skipped.
func pairs(b []byte, ps *cl.Pairs) (map[string]string, error) {
	kv := map[string]string{}
	for item := range strings.SplitSeq(string(b), ps.Separator) {
		if strings.TrimSpace(item) == "" {
			continue
		}
		k, v, ok := strings.Cut(item, ps.Assign)
		k = strings.TrimSpace(k)
		switch _, dup := kv[k]; {
		case !ok:
			return nil, fmt.Errorf("pair %q has no %q", item, ps.Assign)
		case k == "":
			return nil, fmt.Errorf("pair %q has no key", item)
		case dup:
			return nil, fmt.Errorf("key %s comes twice", k)
		}
		kv[k] = v
	}
	return kv, nil
}

// decode reads a signal's field; get reads another field of its line
// (a hemisphere).
func (s *sig) decode(raw string, get func(string) (string, bool)) (model.Reading, error) {
	r := model.Reading{Signal: s.Signal.Signal, Unit: s.Unit, Quality: model.Good}
	v := strings.TrimSpace(raw)
	if v == "" {
		r.Quality = model.Bad // the device has no value now (an NMEA receiver without a fix)
		return r, nil
	}
	switch s.Type {
	case cl.Bool:
		switch {
		case slices.Contains(s.TrueValues, v):
			r.Value = model.Bool(true)
		case slices.Contains(s.FalseValues, v):
			r.Value = model.Bool(false)
		default:
			return r, fmt.Errorf("not one of %s (true) or %s (false)", strings.Join(s.TrueValues, ", "), strings.Join(s.FalseValues, ", "))
		}
		return r, nil
	case cl.String:
		r.Value = model.String(v)
		return r, nil
	}
	var x float64
	var dec int
	var err error
	switch {
	case s.DegreesMinutes:
		x, err = s.degrees(v, get)
	case s.Type == cl.Int:
		x, err = parseInt(v)
	default:
		x, dec, err = parseDecimal(v)
	}
	if err != nil {
		return r, err
	}
	x = Scale(x, dec, s.Scale, s.scaleDec, s.Offset, s.offsetDec)
	if math.IsInf(x, 0) || math.IsNaN(x) {
		return r, fmt.Errorf("out of range once scaled")
	}
	r.Value = model.Number(x)
	if s.Range != nil && !s.Range.Contains(x) {
		r.Quality = model.Uncertain
	}
	return r, nil
}

// Scale applies a signal's scale and offset to a number read with dec
// decimals, in decimal: the result is rounded to the decimals the exact
// product and sum have (234 at 0.1 is 23.4, not 23.400000000000002).
func Scale(x float64, dec int, scale float64, scaleDec int, offset float64, offsetDec int) float64 {
	if scale == 1 && offset == 0 {
		return x
	}
	y := x*scale + offset
	return round(y, max(dec+scaleDec, offsetDec))
}

// round rounds to n decimals, in decimal.
func round(x float64, n int) float64 {
	if n > 17 || math.IsInf(x, 0) || math.IsNaN(x) {
		return x
	}
	y, err := strconv.ParseFloat(strconv.FormatFloat(x, 'f', n, 64), 64)
	if err != nil {
		return x
	}
	return y
}

// decimalsOf is how many decimals a number is written with at its
// shortest.
func decimalsOf(f float64) int {
	s := strconv.FormatFloat(f, 'f', -1, 64)
	if i := strings.IndexByte(s, '.'); i >= 0 {
		return len(s) - i - 1
	}
	return 0
}

var (
	decimalPattern = regexp.MustCompile(`^[+-]?(?:[0-9]+(?:\.([0-9]*))?|\.([0-9]+))(?:[eE]([+-]?[0-9]{1,3}))?$`)
	intPattern     = regexp.MustCompile(`^[+-]?[0-9]{1,18}$`)
	dmPattern      = regexp.MustCompile(`^([0-9]{1,3})([0-9]{2}(?:\.([0-9]{1,12}))?)$`)
)

// parseDecimal reads a decimal number (-12.5, .5, 1e3; not inf, nan or
// hex) and says how many decimals it has.
func parseDecimal(v string) (float64, int, error) {
	m := decimalPattern.FindStringSubmatch(v)
	if m == nil {
		return 0, 0, fmt.Errorf("not a decimal number")
	}
	x, err := strconv.ParseFloat(v, 64)
	if err != nil || math.IsInf(x, 0) {
		return 0, 0, fmt.Errorf("out of range")
	}
	dec := len(m[1]) + len(m[2])
	if m[3] != "" {
		e, _ := strconv.Atoi(m[3])
		dec = max(dec-e, 0)
	}
	return x, dec, nil
}

func parseInt(v string) (float64, error) {
	if !intPattern.MatchString(v) {
		return 0, fmt.Errorf("not a whole number")
	}
	i, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("out of range")
	}
	return float64(i), nil
}

// degrees reads degrees and minutes (ddmm.mmmm, dddmm.mmmm) into decimal
// degrees, rounded to four decimals more than the minutes have, with the
// sign its hemisphere field gives.
func (s *sig) degrees(v string, get func(string) (string, bool)) (float64, error) {
	m := dmPattern.FindStringSubmatch(v)
	if m == nil {
		return 0, fmt.Errorf("not degrees and minutes (ddmm.mmmm)")
	}
	deg, _ := strconv.Atoi(m[1])
	mins, _ := strconv.ParseFloat(m[2], 64)
	if mins >= 60 {
		return 0, fmt.Errorf("%s minutes", m[2])
	}
	x := round(float64(deg)+mins/60, len(m[3])+4)
	if h := s.Hemisphere; h != nil {
		side, _ := get(h.Field)
		switch strings.TrimSpace(side) {
		case h.Positive:
		case h.Negative:
			x = -x
		default:
			return 0, fmt.Errorf("its hemisphere %s is %q, not %s or %s", h.Field, side, h.Positive, h.Negative)
		}
	}
	return x, nil
}

// Command is the poll command of a device at addr, framed as the template
// says: the command's text with the address in it, the template's
// checksum when the poll asks for it, and its end.
func (p *Parser) Command(t *cl.Template, addr int) ([]byte, error) {
	if t.Poll == nil {
		return nil, fmt.Errorf("the template has no poll command")
	}
	parts, err := cl.Parts(t.Poll.Command)
	if err != nil {
		return nil, err
	}
	var text []byte
	for _, pt := range parts {
		if pt.Field == "" {
			text = append(text, pt.Text...)
			continue
		}
		pad := " "
		if pt.Spec.Zero {
			pad = "0"
		}
		s := strconv.Itoa(addr)
		if n := pt.Spec.Width - len(s); n > 0 {
			s = strings.Repeat(pad, n) + s
		}
		text = append(text, s...)
	}
	if t.Poll.Checksum {
		body := bytes.TrimPrefix(text, p.start)
		text = append(text[:len(text)-len(body)], p.Seal(body)...)
	}
	return append(text, t.Terminator()...), nil
}
