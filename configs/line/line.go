// Package line is the ASCII-line part of station files and device
// templates: the settings of line links (a serial line, RS-232 or RS-485,
// of devices that speak lines of text: kiosks, displays, GNSS receivers,
// sensors), of the devices on them, and the template format (family line)
// that describes a device's lines without code: where a line starts and
// ends, its checksum, its kinds of line and their fields, the command the
// gateway polls it with, and which field is which signal. The gateway's
// driver (drivers/line) and the simulator (firmware-sim/line) both read
// them from here; each reads and writes lines with its own code.
package line

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"outpost/configs"
)

// Protocol and Family are the names station files and templates use.
const (
	Protocol = "line"
	Family   = "line"
)

func init() {
	configs.RegisterFamily(Family, configs.Family{Template: func() configs.Body { return &Template{} }})
	configs.Register(Protocol, configs.Protocol{Family: Family,
		Link: func() any { return &Link{} }, Device: func() any { return &Device{} }, Check: checkLink})
}

// Link is a line link: a serial line of devices that speak lines of
// text, either one device that talks on its own, or devices the gateway
// polls in turn.
type Link struct {
	configs.Serial `yaml:",inline"`
	// Timeout is how long a polled device has to answer its poll
	// command, 1ms to 1m, beyond the time the command and a line of the
	// template's max_length take on the wire. A good line within one more
	// timeout still answers it, counted late (late_answers): the link
	// waits for it before it carries another device's command.
	Timeout time.Duration `yaml:"timeout" default:"500ms" example:"1s"`
	// Retries are extra tries of a poll command that got no good line,
	// 0 to 10. A device that talks on its own cannot be asked again: it
	// may send this many bad lines in a row, counted, before they count
	// against its health.
	Retries int `yaml:"retries" default:"1" example:"2"`
}

// Line is the link's serial line.
func (l *Link) Line() *configs.Serial { return &l.Serial }

// Check checks the link's settings.
func (l *Link) Check(p configs.Problems) {
	l.Serial.Check(p)
	configs.CheckTiming(p, l.Timeout, l.Retries)
}

// Device is a line device's settings.
type Device struct {
	// Address is the device's address on the line, 0 to 65535, written
	// into the template's poll command where it says {address}: required
	// for such a template, refused for any other. Devices of one link
	// need addresses of their own.
	Address *int `yaml:"address" example:"5"`
	// Poll is how often the gateway sends the template's poll command,
	// 100ms to 24h: required when the template has one, refused when the
	// device talks on its own.
	Poll time.Duration `yaml:"poll" example:"10s"`
	// Silence is how long a device that talks on its own may go without
	// a good line before it is offline, 1s to 24h; set it to a few of
	// the device's own intervals. A polled device is offline after
	// health.offline_after polls in a row without an answer instead.
	Silence time.Duration `yaml:"silence" default:"30s" example:"5s"`
}

// PollEvery is how often the device is heard from at the least when it
// is well (configs.Poller): its poll, or for a device that talks on its
// own, its silence.
func (d *Device) PollEvery() time.Duration {
	if d.Poll > 0 {
		return d.Poll
	}
	return d.Silence
}

// Check checks the device's settings.
func (d *Device) Check(p configs.Problems) {
	if d.Poll != 0 && (d.Poll < 100*time.Millisecond || d.Poll > 24*time.Hour) {
		p.Errorf("poll", "%s is out of range (100ms to 24h)", d.Poll)
	}
	if d.Silence < time.Second || d.Silence > 24*time.Hour {
		p.Errorf("silence", "%s is out of range (1s to 24h)", d.Silence)
	}
	if a := d.Address; a != nil && (*a < 0 || *a > 65535) {
		p.Errorf("address", "%d is out of range (0 to 65535)", *a)
	}
}

// checkLink holds the devices of a link to what the link can carry: one
// device that talks on its own and nothing else (its lines could not be
// told from another's), or polled devices, each at an address of its
// own when there are several; and each device's poll and address to its
// template's poll command.
func checkLink(p configs.Problems, st *configs.Station, link *configs.Link) {
	type dev struct {
		path, id, tmpl string
		set            *Device
		body           *Template
	}
	var devs []dev
	for i := range st.Devices {
		d := &st.Devices[i]
		set, ok := d.Settings.(*Device)
		if d.Link != link.ID || !ok {
			continue
		}
		var body *Template
		if t := st.Templates[d.Template]; t != nil {
			body, _ = t.Body.(*Template)
		}
		devs = append(devs, dev{fmt.Sprintf("devices[%d]", i), d.ID, d.Template, set, body})
	}
	addrs := map[int]string{}
	for i, d := range devs {
		if d.body == nil {
			continue // its template's errors are reported there
		}
		polled := d.body.Poll != nil
		switch {
		case polled && d.set.Poll == 0:
			p.Errorf(d.path, "template %s sends a poll command: give the device a poll interval (poll: 10s)", d.tmpl)
		case !polled && d.set.Poll != 0:
			p.Errorf(d.path+".poll", "template %s describes a device that talks on its own (it has no poll command): remove poll", d.tmpl)
		}
		takes := polled && d.body.Poll.TakesAddress()
		switch {
		case takes && d.set.Address == nil:
			p.Errorf(d.path, "missing key \"address\": the poll command of template %s takes the device's address ({address})", d.tmpl)
		case !takes && d.set.Address != nil:
			p.Errorf(d.path+".address", "template %s takes no address: it has no poll command with {address}", d.tmpl)
		}
		if !polled && len(devs) > 1 {
			p.Errorf(d.path+".link", "device %s talks on its own, so it must be alone on link %s: the gateway could not tell its lines from another device's", d.id, link.ID)
			continue
		}
		if polled && !takes && len(devs) > 1 && i > 0 {
			p.Errorf(d.path+".link", "device %s is polled without an address (the poll command of its template has no {address}), so it must be alone on link %s: several devices would answer", d.id, link.ID)
			continue
		}
		if d.set.Address != nil {
			a := *d.set.Address
			if first, dup := addrs[a]; dup {
				p.Errorf(d.path+".address", "address %d is already used on %s by %s", a, link.ID, first)
			}
			addrs[a] = fmt.Sprintf("%s (%s)", d.path, d.id)
		}
	}
}

// Template is a device that speaks lines of text: how its lines are
// framed and checked, the kinds of line it sends and their fields, the
// command it is polled with (if any), and its signals.
type Template struct {
	// Framing says where a line starts and where it ends.
	Framing Framing `yaml:"framing" required:"true"`
	// Checksum says how a line's checksum is computed and written; lines
	// have none when it is absent.
	Checksum Checksum `yaml:"checksum"`
	// Poll is the command that makes the device send a line; absent for
	// a device that talks on its own.
	Poll *Poll `yaml:"poll"`
	// Unmatched says what a line that passes its checksum but matches
	// none of lines is: count makes it a bad line (unmatched_lines, and
	// the device degraded); ignore counts it in ignored_lines only, for a
	// device that sends lines the template does not read (an NMEA
	// receiver's GSV and VTG).
	Unmatched Unmatched `yaml:"unmatched" default:"count" example:"ignore"`
	// Lines are the kinds of line the device sends, tried in order: a
	// line is read by the first that matches it.
	Lines []Line `yaml:"lines" required:"true"`
	// SignalDefs say which field of which line is which signal.
	SignalDefs []Signal `yaml:"signals" required:"true"`
}

// Framing says where a line starts and ends.
type Framing struct {
	// Start is what begins every line: "$" (NMEA 0183), "\x02" (STX);
	// none when empty. A start inside a line cuts that line short, and
	// bytes outside a line are garbage.
	Start string `yaml:"start" example:"\"\\x02\""`
	// End is what ends every line: "\r\n" (CR LF), "\r", "\n", "\x03"
	// (ETX).
	End string `yaml:"end" required:"true" example:"\"\\r\\n\""`
	// MaxLength is the longest line, start to end, in bytes, 8 to 4096. A
	// longer one is dropped up to its end (too_long): the gateway never
	// holds more of it.
	MaxLength int `yaml:"max_length" default:"256" example:"82"`
}

// Checksum says how a line's checksum is computed and written: the last
// thing of a line before its end, in hex digits, after the marker.
type Checksum struct {
	// Type is none; xor8, the bytes XORed (NMEA 0183); sum8, the bytes
	// added modulo 256; or crc16-modbus, CRC-16/MODBUS (polynomial 0x8005
	// reflected, initial value 0xFFFF). xor8 and sum8 are written as 2 hex
	// digits, crc16-modbus as 4; upper or lower case are both read.
	Type ChecksumType `yaml:"type" default:"none" example:"xor8"`
	// Marker is the text between a line's last field and its checksum
	// ("*" in NMEA 0183); none when empty. It is not summed.
	Marker string `yaml:"marker" example:"\"*\""`
	// IncludeStart makes the checksum cover the line's start too; by
	// default it covers the text after the start, up to the marker.
	IncludeStart bool `yaml:"include_start" example:"true"`
	// Order is the order of a CRC-16's bytes in its digits: msb_first
	// writes the value as a number (0x4B37 is 4B37), lsb_first writes its
	// bytes as Modbus RTU sends them (374B).
	Order ByteOrder `yaml:"order" default:"msb_first" example:"lsb_first"`
}

// Poll is the command the gateway polls a device with.
type Poll struct {
	// Command is the text sent, without its end; {address} stands for
	// the device's address ({address:02}: two digits, zero-padded).
	Command string `yaml:"command" required:"true" example:"send {address}"`
	// End ends the command; default the framing's end.
	End string `yaml:"end" example:"\"\\r\""`
	// Checksum makes the gateway write the template's checksum into the
	// command as into a line: the marker and the digits before the end.
	Checksum bool `yaml:"checksum" example:"true"`
}

// TakesAddress says whether the command has an {address}.
func (p *Poll) TakesAddress() bool {
	parts, err := Parts(p.Command)
	return err == nil && slices.ContainsFunc(parts, func(pt Part) bool { return pt.Field == "address" })
}

// Terminator is what ends the command.
func (t *Template) Terminator() string {
	if t.Poll != nil && t.Poll.End != "" {
		return t.Poll.End
	}
	return t.Framing.End
}

// Line is a kind of line the device sends.
type Line struct {
	// Name names the kind of line for signals (line) and in logs:
	// lower-case letters, digits, '_'.
	Name string `yaml:"name" required:"true" example:"status"`
	// Prefix is how a line of this kind begins (after the start): one
	// that does not is of another kind. Without a start in the framing,
	// the prefix is also how the gateway finds a good line in what
	// follows a line cut short.
	Prefix string `yaml:"prefix" example:"KSK,STAT,"`
	// Regex must match the whole line (after the start, without the
	// checksum and its marker), in RE2 syntax as Go reads it; its named
	// groups, (?P<name>...), are the line's fields. A line needs a
	// prefix, a regex or both.
	Regex string `yaml:"regex" example:"T=\\s*(?P<t>-?[0-9.]+) 'C"`
	// Pairs makes the line's fields its key=value pairs after the
	// prefix (a regex then has no named groups).
	Pairs *Pairs `yaml:"pairs"`
	// Format is the line as the device writes it (after the start,
	// without the checksum), with {field} where a field's value goes,
	// {field:5.1} for a width of 5 with one decimal, {field:09.4}
	// zero-padded: the simulator writes the device's lines so, and it
	// shows an installer what a line looks like.
	Format string `yaml:"format" required:"true" example:"KSK,STAT,T={T:.1},H={H:.1}"`
	// Every is how often a device that talks on its own sends this
	// line, 100ms to 24h; for the simulator, and for the installer.
	Every time.Duration `yaml:"every" example:"10s"`
	// OnChange says the device sends this line whenever one of the bool
	// signals it carries changes (an event line), besides every.
	OnChange bool `yaml:"on_change" example:"true"`
}

// Pairs are a line's key=value fields.
type Pairs struct {
	// Separator separates the pairs; empty pairs (two separators in a
	// row, one at the end) are skipped.
	Separator string `yaml:"separator" default:"\",\"" example:"\";\""`
	// Assign separates a pair's key from its value, at its first
	// occurrence.
	Assign string `yaml:"assign" default:"\"=\"" example:"\":\""`
}

// Signal maps a field of the device's lines to a signal.
type Signal struct {
	// Signal is the signal's name at the hub: lower-case letters,
	// digits, '_'.
	Signal string `yaml:"signal" required:"true" example:"temperature"`
	// Field is where the value is: a named group of a line's regex, or a
	// key of its pairs. Spaces around a field's text are not part of it;
	// a field that is empty gives a reading of bad quality (no value).
	Field string `yaml:"field" required:"true" example:"T"`
	// Line restricts the signal to the lines of that kind; by default
	// every line that carries the field gives the signal a value.
	Line string `yaml:"line" example:"status"`
	// Type is how the field is read: float (a decimal number such as
	// -12.5), int (a whole number), bool (see true_values) or string.
	Type SignalType `yaml:"type" required:"true" example:"float"`
	// Unit of the value after scale and offset, as the hub shows it.
	Unit string `yaml:"unit" example:"°C"`
	// Scale multiplies a number as read (in decimal: 234 at 0.1 is
	// 23.4).
	Scale float64 `yaml:"scale" default:"1" example:"0.1"`
	// Offset is added after the scale.
	Offset float64 `yaml:"offset" example:"-40"`
	// Range is the device's measuring range from its datasheet, after
	// scale and offset: a value outside it is published as uncertain.
	Range *configs.Range `yaml:"range"`
	// TrueValues are the texts of a bool field that mean true.
	TrueValues []string `yaml:"true_values" default:"[\"1\"]" example:"[A]"`
	// FalseValues are the texts of a bool field that mean false; any
	// other text is a field that does not parse.
	FalseValues []string `yaml:"false_values" default:"[\"0\"]" example:"[V]"`
	// DegreesMinutes reads a float written as NMEA 0183 writes latitude
	// and longitude, degrees and minutes (4807.038 is 48° 07.038'), and
	// makes it decimal degrees (48.1173).
	DegreesMinutes bool `yaml:"degrees_minutes" example:"true"`
	// Hemisphere names the field that says on which side of the equator
	// or meridian a degrees_minutes value lies: negative makes it
	// negative.
	Hemisphere *Hemisphere `yaml:"hemisphere"`
	// Event raises an event when a bool signal becomes true.
	Event *configs.EventRule `yaml:"event"`
	// Report sends the signal by exception: when it moved by more than
	// its deadband, or after max_silence (unless the station turns
	// report_by_exception off); without it every reading is sent.
	Report *configs.Report `yaml:"report"`
	// Sim tells the simulator how to make this signal's values; bool
	// signals are false until acted on unless a sim says otherwise.
	Sim *configs.Sim `yaml:"sim"`
}

// Hemisphere is the field with the side of a degrees_minutes value.
type Hemisphere struct {
	// Field is the field with the letter.
	Field string `yaml:"field" required:"true" example:"ns"`
	// Positive is the letter of positive values (N, E).
	Positive string `yaml:"positive" required:"true" example:"N"`
	// Negative is the letter of negative values (S, W).
	Negative string `yaml:"negative" required:"true" example:"S"`
}

// SignalType is how a field is read.
type SignalType string

const (
	Float  SignalType = "float"
	Int    SignalType = "int"
	Bool   SignalType = "bool"
	String SignalType = "string"
)

// Values lists the signal types a template may name.
func (SignalType) Values() []string { return []string{"float", "int", "bool", "string"} }

// ChecksumType is a kind of line checksum.
type ChecksumType string

const (
	None        ChecksumType = "none"
	XOR8        ChecksumType = "xor8"
	Sum8        ChecksumType = "sum8"
	CRC16Modbus ChecksumType = "crc16-modbus"
)

// Values lists the checksums a template may name.
func (ChecksumType) Values() []string { return []string{"none", "xor8", "sum8", "crc16-modbus"} }

// Digits is how many hex digits the checksum is written with (0 for
// none).
func (c ChecksumType) Digits() int {
	switch c {
	case XOR8, Sum8:
		return 2
	case CRC16Modbus:
		return 4
	}
	return 0
}

// ByteOrder is the order of a CRC-16's bytes in its digits.
type ByteOrder string

const (
	MSBFirst ByteOrder = "msb_first"
	LSBFirst ByteOrder = "lsb_first"
)

// Values lists the byte orders a template may name.
func (ByteOrder) Values() []string { return []string{"msb_first", "lsb_first"} }

// Unmatched is what a line that matches no kind is.
type Unmatched string

const (
	Count  Unmatched = "count"
	Ignore Unmatched = "ignore"
)

// Values lists what a template may say of unmatched lines.
func (Unmatched) Values() []string { return []string{"count", "ignore"} }

// Signals lists the template's signals.
func (t *Template) Signals() []configs.Signal {
	out := make([]configs.Signal, len(t.SignalDefs))
	for i, s := range t.SignalDefs {
		typ := configs.Number
		switch s.Type {
		case Bool:
			typ = configs.Bool
		case String:
			typ = configs.Text
		}
		out[i] = configs.Signal{Name: s.Signal, Path: fmt.Sprintf("signals[%d]", i), Type: typ, Unit: s.Unit, Event: s.Event, Range: s.Range, Report: s.Report}
	}
	return out
}

// Compile compiles a line's regex, anchored at both ends; nil when the
// line has none.
func (l *Line) Compile() (*regexp.Regexp, error) {
	if l.Regex == "" {
		return nil, nil
	}
	return regexp.Compile(`^(?:` + l.Regex + `)$`)
}

// Fields lists the fields a line's regex names, or nil for a line of
// pairs (whose fields are whatever keys it has) or one that does not
// compile.
func (l *Line) Fields() []string {
	re, err := l.Compile()
	if err != nil || re == nil {
		return nil
	}
	var out []string
	for _, n := range re.SubexpNames() {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}

// Carries says whether lines of this kind carry a field.
func (l *Line) Carries(field string) bool {
	return l.Pairs != nil || slices.Contains(l.Fields(), field)
}

// Reads says whether the signal takes values from lines of kind l.
func (s *Signal) Reads(l *Line) bool {
	return (s.Line == "" || s.Line == l.Name) && l.Carries(s.Field)
}

// Part is a piece of a line's format or of a poll command: literal text,
// or a field's place.
type Part struct {
	Text  string // the text, when Field is ""
	Field string
	Spec  Spec
}

// Spec is how a field's value is written: {field:SPEC}, SPEC being
// [0][width][.decimals].
type Spec struct {
	Zero     bool // pad with zeros rather than spaces
	Width    int  // at least this many characters
	Decimals int  // digits after the point; -1 when not given
}

var specPattern = regexp.MustCompile(`^(0?)([0-9]*)(?:\.([0-9]+))?$`)

// Parts splits a format or command into text and fields: {name} or
// {name:spec}; {{ and }} are literal braces.
func Parts(format string) ([]Part, error) {
	var out []Part
	var text strings.Builder
	flush := func() {
		if text.Len() > 0 {
			out = append(out, Part{Text: text.String()})
			text.Reset()
		}
	}
	for i := 0; i < len(format); i++ {
		c := format[i]
		switch {
		case c == '{' && i+1 < len(format) && format[i+1] == '{', c == '}' && i+1 < len(format) && format[i+1] == '}':
			text.WriteByte(c)
			i++
		case c == '}':
			return nil, fmt.Errorf("a } at %d closes nothing (write }} for a brace)", i+1)
		case c == '{':
			end := strings.IndexByte(format[i:], '}')
			if end < 0 {
				return nil, fmt.Errorf("the { at %d is not closed (write {{ for a brace)", i+1)
			}
			inner := format[i+1 : i+end]
			name, spec, hasSpec := strings.Cut(inner, ":")
			if !fieldPattern.MatchString(name) {
				return nil, fmt.Errorf("{%s}: %q is not a field name (letters, digits, '_')", inner, name)
			}
			pt := Part{Field: name, Spec: Spec{Decimals: -1}}
			if hasSpec {
				m := specPattern.FindStringSubmatch(spec)
				if m == nil || spec == "" {
					return nil, fmt.Errorf("{%s}: %q is not a width and decimals such as 5.1, .2 or 09.4", inner, spec)
				}
				pt.Spec.Zero = m[1] == "0"
				pt.Spec.Width, _ = strconv.Atoi(m[2])
				if m[3] != "" {
					pt.Spec.Decimals, _ = strconv.Atoi(m[3])
				}
				if pt.Spec.Width > 32 || pt.Spec.Decimals > 15 {
					return nil, fmt.Errorf("{%s}: at most 32 wide, 15 decimals", inner)
				}
			}
			flush()
			out = append(out, pt)
			i += end
		default:
			text.WriteByte(c)
		}
	}
	flush()
	return out, nil
}

var (
	namePattern  = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
	fieldPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)
)

// Check checks the template: its framing, checksum and poll command, its
// kinds of line and their formats, and that every signal has a field to
// come from.
func (t *Template) Check(p configs.Problems) {
	f := t.Framing
	switch {
	case f.End == "":
		p.Errorf("framing.end", "a line needs an end (\"\\r\\n\", \"\\r\", \"\\n\", \"\\x03\", ...)")
	case f.Start != "" && (strings.Contains(f.End, f.Start) || strings.Contains(f.Start, f.End)):
		p.Errorf("framing.start", "%q and the end %q overlap: the start could not be told from the end", f.Start, f.End)
	}
	if f.MaxLength < 8 || f.MaxLength > 4096 {
		p.Errorf("framing.max_length", "%d is out of range (8 to 4096 bytes)", f.MaxLength)
	}
	c := t.Checksum
	if c.Type == None && c.Marker != "" {
		p.Errorf("checksum.marker", "a marker without a checksum: give the type (xor8, sum8, crc16-modbus)")
	}
	if c.Type == None && c.IncludeStart {
		p.Errorf("checksum.include_start", "there is no checksum to include the start in: give the type")
	}
	if c.Order == LSBFirst && c.Type != CRC16Modbus {
		p.Errorf("checksum.order", "only a CRC-16 has a byte order; %s is one byte", c.Type)
	}
	if t.Poll != nil {
		t.checkPoll(p)
	}
	kinds := map[string]string{}
	for i := range t.Lines {
		t.checkLine(p, i, kinds)
	}
	if len(t.Lines) == 0 {
		p.Errorf("lines", "a template needs at least one kind of line")
	}
	if len(t.SignalDefs) == 0 {
		p.Errorf("signals", "a template needs at least one signal")
	}
	for i := range t.SignalDefs {
		t.checkSignal(p, i)
	}
}

func (t *Template) checkPoll(p configs.Problems) {
	parts, err := Parts(t.Poll.Command)
	switch {
	case err != nil:
		p.Errorf("poll.command", "%v", err)
	case t.Poll.Command == "":
		p.Errorf("poll.command", "the command is empty")
	default:
		for _, pt := range parts {
			if pt.Field != "" && (pt.Field != "address" || pt.Spec.Decimals >= 0) {
				p.Errorf("poll.command", "{%s}: a poll command takes {address} or {address:0N} only", pt.Field)
			}
		}
	}
	if t.Poll.Checksum && t.Checksum.Type == None {
		p.Errorf("poll.checksum", "the template has no checksum to write into the command (checksum.type)")
	}
}

func (t *Template) checkLine(p configs.Problems, i int, kinds map[string]string) {
	l := &t.Lines[i]
	path := fmt.Sprintf("lines[%d]", i)
	switch first, dup := kinds[l.Name]; {
	case !namePattern.MatchString(l.Name):
		p.Errorf(path+".name", "%q is not a name of a kind of line (lower-case letters, digits, '_')", l.Name)
	case dup:
		p.Errorf(path+".name", "%q is already the name of %s", l.Name, first)
	}
	kinds[l.Name] = path
	if l.Prefix == "" && l.Regex == "" {
		p.Errorf(path, "a line needs a prefix, a regex or both, to be told from the device's other lines")
	}
	if _, err := regexp.Compile(l.Regex); err != nil {
		p.Errorf(path+".regex", "%v", strings.TrimPrefix(err.Error(), "error parsing regexp: "))
	}
	re, _ := l.Compile()
	if re != nil && l.Pairs != nil && len(l.Fields()) > 0 {
		p.Errorf(path+".regex", "a line of pairs takes its fields from the pairs: the regex may only match, without named groups (use (?:...))")
	}
	if ps := l.Pairs; ps != nil {
		switch {
		case ps.Separator == "" || ps.Assign == "":
			p.Errorf(path+".pairs", "a separator and an assign are needed (\",\" and \"=\" by default)")
		case strings.Contains(ps.Separator, ps.Assign) || strings.Contains(ps.Assign, ps.Separator):
			p.Errorf(path+".pairs", "separator %q and assign %q overlap", ps.Separator, ps.Assign)
		}
	}
	if t.Poll != nil && (l.Every != 0 || l.OnChange) {
		p.Errorf(path, "the device is polled (the template has a poll command): it sends its lines when polled, not every nor on_change")
	}
	if l.Every != 0 && (l.Every < 100*time.Millisecond || l.Every > 24*time.Hour) {
		p.Errorf(path+".every", "%s is out of range (100ms to 24h)", l.Every)
	}
	if l.OnChange && !slices.ContainsFunc(t.SignalDefs, func(s Signal) bool { return s.Type == Bool && s.Reads(l) }) {
		p.Errorf(path+".on_change", "the line carries no bool signal to change")
	}
	parts, err := Parts(l.Format)
	if err != nil {
		p.Errorf(path+".format", "%v", err)
		return
	}
	if l.Prefix != "" && (len(parts) == 0 || parts[0].Field != "" || !strings.HasPrefix(parts[0].Text, l.Prefix)) {
		p.Errorf(path+".format", "%q does not begin with the prefix %q", l.Format, l.Prefix)
	}
	fields := l.Fields()
	for _, pt := range parts {
		if pt.Field == "" {
			continue
		}
		switch {
		case l.Pairs == nil && l.Regex == "":
			p.Errorf(path+".format", "{%s}: the line has no fields: give it a regex with a group (?P<%s>...), or pairs", pt.Field, pt.Field)
		case l.Pairs == nil && !slices.Contains(fields, pt.Field):
			p.Errorf(path+".format", "{%s}: the regex has no group (?P<%s>...)", pt.Field, pt.Field)
		}
		if !slices.ContainsFunc(t.SignalDefs, func(s Signal) bool {
			return s.Field == pt.Field || s.Hemisphere != nil && s.Hemisphere.Field == pt.Field
		}) {
			p.Errorf(path+".format", "{%s}: no signal reads field %s, so the simulator has no value for it (write the device's text there instead)", pt.Field, pt.Field)
		}
	}
	if l.Pairs == nil {
		for _, s := range t.SignalDefs {
			if !s.Reads(l) {
				continue
			}
			for _, fld := range []string{s.Field, s.hemisphereField()} {
				if fld != "" && !slices.ContainsFunc(parts, func(pt Part) bool { return pt.Field == fld }) {
					p.Errorf(path+".format", "the line carries field %s (signal %s) but its format has no {%s}", fld, s.Signal, fld)
				}
			}
		}
	}
}

func (s *Signal) hemisphereField() string {
	if s.Hemisphere == nil {
		return ""
	}
	return s.Hemisphere.Field
}

func (t *Template) checkSignal(p configs.Problems, i int) {
	s := &t.SignalDefs[i]
	path := fmt.Sprintf("signals[%d]", i)
	var from []*Line
	lineKnown := s.Line == ""
	for j := range t.Lines {
		l := &t.Lines[j]
		lineKnown = lineKnown || l.Name == s.Line
		if s.Reads(l) {
			from = append(from, l)
		}
	}
	switch {
	case !lineKnown:
		p.Errorf(path+".line", "the template has no line named %q", s.Line)
	case len(from) == 0 && len(t.Lines) > 0:
		p.Errorf(path+".field", "no line carries a field %s: name it in a regex as (?P<%s>...), or read it from a line of pairs", s.Field, s.Field)
	}
	number := s.Type == Float || s.Type == Int
	if number && s.Scale == 0 {
		p.Errorf(path+".scale", "a scale of 0 would make every value 0")
	}
	if !number && (s.Scale != 1 || s.Offset != 0) {
		p.Errorf(path+".scale", "only a number has a scale and an offset, not a %s", s.Type)
	}
	if s.Type == Bool {
		if len(s.TrueValues) == 0 || len(s.FalseValues) == 0 {
			p.Errorf(path+".true_values", "a bool needs texts for true and for false")
		}
		for _, v := range s.TrueValues {
			if slices.Contains(s.FalseValues, v) {
				p.Errorf(path+".false_values", "%q means both true and false", v)
			}
			if strings.TrimSpace(v) != v || v == "" {
				p.Errorf(path+".true_values", "%q: a field's text has no spaces around it and is not empty", v)
			}
		}
	}
	if s.DegreesMinutes && (s.Type != Float || s.Scale != 1 || s.Offset != 0) {
		p.Errorf(path+".degrees_minutes", "degrees and minutes are read into a float, without scale or offset")
	}
	if h := s.Hemisphere; h != nil {
		switch {
		case !s.DegreesMinutes:
			p.Errorf(path+".hemisphere", "only a degrees_minutes value has a hemisphere")
		case h.Positive == "" || h.Negative == "" || h.Positive == h.Negative:
			p.Errorf(path+".hemisphere", "the positive and negative letters must differ (N and S, E and W)")
		}
		for _, l := range from {
			if !l.Carries(h.Field) {
				p.Errorf(path+".hemisphere.field", "line %s carries the value but no field %s", l.Name, h.Field)
			}
		}
	}
}
