package configs

import (
	"bytes"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"outpost/gateway/model"
)

// Error is one problem in a configuration file, at a line and column.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

func (e Error) Error() string {
	if e.Line == 0 {
		return fmt.Sprintf("%s: %s", e.File, e.Msg)
	}
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Limits on what is loaded: a station or template file larger than
// MaxFileBytes is refused before it is parsed, and an installer is shown
// at most MaxErrors problems (the first, by position), then how many more
// there are.
const (
	MaxFileBytes = 1 << 20
	MaxErrors    = 200
)

// Errors is every problem found in a station file and its templates, in file
// and line order. Its Error text has one problem per line.
type Errors []Error

func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sorted sorts the errors by file and position and cuts them to
// MaxErrors, saying how many more there were (dropped more were not even
// kept).
func (es Errors) sorted(dropped int) Errors {
	sort.SliceStable(es, func(i, j int) bool {
		a, b := es[i], es[j]
		if a.File != b.File {
			return a.File < b.File
		}
		if a.Line != b.Line {
			return a.Line < b.Line
		}
		return a.Col < b.Col
	})
	if n := len(es) + dropped; n > MaxErrors {
		more := Error{File: es[min(MaxErrors, len(es))-1].File, Msg: fmt.Sprintf("and %d more problems (fix the ones above first)", n-MaxErrors)}
		es = append(es[:min(MaxErrors, len(es)):min(MaxErrors, len(es))], more)
	}
	return es
}

// pos is where a value stands in a file.
type pos struct{ line, col int }

// decoder decodes a YAML tree into Go structs strictly, collecting every
// error instead of stopping at the first, and remembering where each value
// stands so that later validation can point at it.
type decoder struct {
	file  string
	errs  Errors
	warns []Error
	at    map[string]pos // path ("devices[2].unit_id") -> position of its value
	// bad holds the paths whose value could not be decoded (or is
	// missing): validation says nothing more about them, so that one
	// mistake gives one error.
	bad map[string]bool
	// fatal is set when the file could not be read as YAML at all.
	fatal bool
	// dropped counts errors beyond collectLimit, not kept.
	dropped int
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, at: map[string]pos{}, bad: map[string]bool{}}
}

// collectLimit bounds the errors kept while loading, whatever the file
// holds; what is shown is cut to MaxErrors with the count of the rest.
const collectLimit = 10 * MaxErrors

func (d *decoder) errorf(p pos, format string, args ...any) {
	if len(d.errs) >= collectLimit {
		d.dropped++
		return
	}
	d.errs = append(d.errs, Error{File: d.file, Line: p.line, Col: p.col, Msg: fmt.Sprintf(format, args...)})
}

// decodeErr reports a value at path that cannot be decoded, and keeps
// validation quiet about it.
func (d *decoder) decodeErr(path string, p pos, format string, args ...any) {
	d.bad[path] = true
	d.errorf(p, format, args...)
}

// quiet says whether path or one of its parents could not be decoded.
func (d *decoder) quiet(path string) bool {
	for p := path; p != ""; {
		if d.bad[p] {
			return true
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return false
		}
		p = p[:i]
	}
	return false
}

// errAt reports an error at the value of path, or at its closest parent,
// unless the value of path could not be decoded (that was reported).
func (d *decoder) errAt(path, format string, args ...any) {
	if !d.quiet(path) {
		d.errorf(d.posOf(path), format, args...)
	}
}

// warnAt notes what may not work as meant at the value of path.
func (d *decoder) warnAt(path, format string, args ...any) {
	p := d.posOf(path)
	d.warns = append(d.warns, Error{File: d.file, Line: p.line, Col: p.col, Msg: fmt.Sprintf(format, args...)})
}

// posOf is the position of the value of path, or of its closest parent.
func (d *decoder) posOf(path string) pos {
	for p := path; ; {
		if at, ok := d.at[p]; ok {
			return at
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return pos{1, 1}
		}
		p = p[:i]
	}
}

// parse decodes data into v, which must be a pointer to a struct.
func (d *decoder) parse(data []byte, v any) {
	if len(data) > MaxFileBytes {
		d.fatal = true
		d.errorf(pos{1, 1}, "the file is %d bytes, more than a station or template file may hold (%d)", len(data), MaxFileBytes)
		return
	}
	if !utf8.Valid(data) {
		d.fatal = true
		d.errorf(badUTF8(data))
		return
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		line := 1
		msg := err.Error()
		// yaml.v3 says "yaml: line N: message".
		if rest, ok := strings.CutPrefix(msg, "yaml: line "); ok {
			if n, m, ok := strings.Cut(rest, ": "); ok {
				if l, err := strconv.Atoi(n); err == nil {
					line, msg = l, m
				}
			}
		} else {
			msg = strings.TrimPrefix(msg, "yaml: ")
		}
		col := 1
		// yaml.v3 says "found character that cannot start any token", or
		// "found a tab character that violates indentation" on the line
		// before the tab's.
		for l := line; l <= line+1; l++ {
			if indent, ok := tabIndent(data, l); ok {
				line, col = l, indent+1
				msg += " (YAML indents with spaces only)"
				break
			}
		}
		d.fatal = true
		d.errorf(pos{line, col}, "invalid YAML: %s", msg)
		return
	}
	if len(root.Content) == 0 {
		d.fatal = true
		d.errorf(pos{1, 1}, "the file is empty")
		return
	}
	d.value(root.Content[0], reflect.ValueOf(v).Elem(), "")
}

// tabIndent says whether line n (from 1) of data has a tab among its
// leading blanks, and where.
func tabIndent(data []byte, n int) (int, bool) {
	for i := 1; i < n; i++ {
		nl := bytes.IndexByte(data, '\n')
		if nl < 0 {
			return 0, false
		}
		data = data[nl+1:]
	}
	for i, c := range data {
		switch c {
		case ' ':
			continue
		case '\t':
			return i, true
		}
		break
	}
	return 0, false
}

var (
	durationType = reflect.TypeOf(time.Duration(0))
	literalType  = reflect.TypeOf(Literal{})
)

// leadingZero matches a decimal-looking integer with a leading 0.
var leadingZero = regexp.MustCompile(`^0[0-9_]+$`)

// enum is a string type with a fixed set of values; the decoder refuses
// any other, and the reference lists them.
type enum interface{ Values() []string }

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch n.Tag {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return "the integer " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "nothing"
	}
	return fmt.Sprintf("%q", n.Value)
}

func (d *decoder) value(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	p := pos{n.Line, n.Column}
	d.at[path] = p
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // an empty value leaves the default
	}
	switch {
	case v.Kind() == reflect.Pointer:
		nv := reflect.New(v.Type().Elem())
		d.value(n, nv.Elem(), path)
		v.Set(nv)
	case v.Type() == literalType:
		var lit model.Value
		switch f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64); {
		case n.Kind == yaml.ScalarNode && n.Tag == "!!bool":
			lit = model.Bool(n.Value == "true" || n.Value == "True" || n.Value == "TRUE")
		case n.Kind == yaml.ScalarNode && (n.Tag == "!!int" || n.Tag == "!!float") && err == nil:
			lit = model.Number(f)
		default:
			d.decodeErr(path, p, "%s: expected true, false or a number, got %s", path, kindName(n))
			return
		}
		v.Set(reflect.ValueOf(Literal{lit}))
	case v.Kind() == reflect.Struct:
		d.mapping(n, v, path)
	case v.Kind() == reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.decodeErr(path, p, "%s: expected a list, got %s", path, kindName(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.value(c, s.Index(i), fmt.Sprintf("%s[%d]", path, i))
		}
		v.Set(s)
	case v.Type() == durationType:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			d.decodeErr(path, p, "%s: expected a duration such as 500ms or 2s, got %s", path, kindName(n))
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || dur < 0 {
			d.decodeErr(path, p, "%s: expected a duration such as 500ms or 2s, got %q", path, n.Value)
			return
		}
		v.SetInt(int64(dur))
	case v.Kind() == reflect.String:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
			d.decodeErr(path, p, "%s: expected a string, got %s", path, kindName(n))
			return
		}
		if e, ok := v.Interface().(enum); ok && !slices.Contains(e.Values(), n.Value) {
			d.decodeErr(path, p, "%s: unknown value %q (expected one of: %s)", path, n.Value, strings.Join(e.Values(), ", "))
			return
		}
		v.SetString(n.Value)
	case v.Kind() == reflect.Int || v.Kind() == reflect.Int64:
		i, err := strconv.ParseInt(strings.ReplaceAll(n.Value, "_", ""), 0, 64)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil {
			d.decodeErr(path, p, "%s: expected an integer, got %s", path, kindName(n))
			return
		}
		if leadingZero.MatchString(n.Value) {
			// 0100 would silently be octal 64.
			dec, _ := strconv.ParseInt(strings.TrimLeft(strings.ReplaceAll(n.Value, "_", ""), "0"), 10, 64)
			d.decodeErr(path, p, "%s: %s has a leading 0, which would make it octal; write %d, or 0x%X in hexadecimal", path, n.Value, dec, dec)
			return
		}
		v.SetInt(i)
	case v.Kind() == reflect.Float64:
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!float") || err != nil {
			d.decodeErr(path, p, "%s: expected a number, got %s", path, kindName(n))
			return
		}
		v.SetFloat(f)
	case v.Kind() == reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			d.decodeErr(path, p, "%s: expected true or false, got %s", path, kindName(n))
			return
		}
		v.SetBool(n.Value == "true" || n.Value == "True" || n.Value == "TRUE")
	default:
		panic("configs: cannot decode into " + v.Type().String())
	}
}

// Rest holds the keys of a section that its struct does not know itself:
// those of the protocol that owns the section (a link's port and baud, a
// device's unit id, a template's registers), kept undecoded until the
// loader knows the protocol and decodes them into its settings (rest).
// A struct field of this type, tagged `yaml:",rest"`, collects them.
type Rest struct {
	node  *yaml.Node // a mapping of the keys left over, at the section's position
	known []string   // the keys the struct itself knows, for error messages
}

// field is a key of a struct: its name and where it is, through inline
// (embedded) structs.
type field struct {
	name  string
	index []int
	sf    reflect.StructField
}

// fieldsOf lists the keys of a struct type in order, those of structs
// embedded with `yaml:",inline"` in their place; rest is the index of a
// Rest field, or nil.
func fieldsOf(t reflect.Type) (fields []field, rest []int) {
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		switch tag := sf.Tag.Get("yaml"); {
		case tag == ",inline" && sf.Type.Kind() == reflect.Struct:
			inner, r := fieldsOf(sf.Type)
			for _, f := range inner {
				f.index = append([]int{i}, f.index...)
				fields = append(fields, f)
			}
			if r != nil {
				rest = append([]int{i}, r...)
			}
		case tag == ",rest":
			rest = []int{i}
		case tag != "" && tag != "-":
			fields = append(fields, field{tag, []int{i}, sf})
		}
	}
	return fields, rest
}

// mapping decodes a mapping node into the struct v. Keys the struct does
// not know go to its Rest field if it has one, and are errors otherwise;
// also lists keys known elsewhere (by the struct whose Rest this is), for
// the error message.
func (d *decoder) mapping(n *yaml.Node, v reflect.Value, path string, also ...string) {
	what := path
	if what == "" {
		what = "the file"
	}
	if n.Kind != yaml.MappingNode {
		d.decodeErr(path, pos{n.Line, n.Column}, "%s: expected a mapping of keys, got %s", what, kindName(n))
		return
	}
	fields, restIdx := fieldsOf(v.Type())
	byName := map[string]field{}
	names := slices.Clone(also)
	for _, f := range fields {
		byName[f.name] = f
		names = append(names, f.name)
	}
	var rest *yaml.Node
	if restIdx != nil {
		rest = &yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column}
		v.FieldByIndex(restIdx).Set(reflect.ValueOf(Rest{node: rest, known: names}))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		kp := pos{k.Line, k.Column}
		f, ok := byName[k.Value]
		switch {
		case !ok && rest != nil:
			rest.Content = append(rest.Content, k, val)
			continue
		case !ok:
			d.errorf(kp, "%s: unknown key %q%s", what, k.Value, suggest(k.Value, "expected one of", names))
			continue
		case seen[k.Value]:
			d.errorf(kp, "%s: key %q given twice", what, k.Value)
			continue
		}
		seen[k.Value] = true
		d.value(val, v.FieldByIndex(f.index), join(path, k.Value))
	}
	for _, f := range fields {
		fv := v.FieldByIndex(f.index)
		switch {
		case seen[f.name]:
		case f.sf.Tag.Get("required") == "true":
			d.decodeErr(join(path, f.name), pos{n.Line, n.Column}, "%s: missing required key %q", what, f.name)
		case f.sf.Type.Kind() == reflect.Struct && f.sf.Type != durationType && f.sf.Type != literalType:
			// An absent section still gets its defaults.
			d.mapping(&yaml.Node{Kind: yaml.MappingNode, Line: n.Line, Column: n.Column}, fv, join(path, f.name))
		case f.sf.Tag.Get("default") != "":
			var def yaml.Node
			if err := yaml.Unmarshal([]byte(f.sf.Tag.Get("default")), &def); err != nil {
				panic("configs: bad default on " + v.Type().Name() + "." + f.sf.Name)
			}
			fp := join(path, f.name)
			d.value(def.Content[0], fv, fp)
			d.at[fp] = pos{n.Line, n.Column}
		}
	}
}

// rest decodes the keys a section left over into into (a pointer to a
// struct, the protocol's settings), as if they had been the section's
// own: missing, unknown and badly typed keys are reported at path.
func (d *decoder) rest(r Rest, into any, path string) {
	n := r.node
	if n == nil {
		n = &yaml.Node{Kind: yaml.MappingNode, Line: d.at[path].line, Column: d.at[path].col}
	}
	d.mapping(n, reflect.ValueOf(into).Elem(), path, r.known...)
}

// badUTF8 is the position of the first byte of data that is not UTF-8,
// and the message for it.
func badUTF8(data []byte) (pos, string, any) {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, size := utf8.DecodeRune(data[i:])
		if r == utf8.RuneError && size <= 1 {
			return pos{line, col}, "byte 0x%02x is not UTF-8: save the file as UTF-8", data[i]
		}
		if r == '\n' {
			line, col = line+1, 1
		} else {
			col++
		}
		i += size
	}
	return pos{line, col}, "%s", "not UTF-8"
}
