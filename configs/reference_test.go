package configs_test

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	_ "outpost/configs/protocols"
)

// The reference of station files and templates, docs/station-file.md, is
// made from the types the loader decodes into: their yaml keys, types,
// defaults and required marks, and the doc comments and examples of their
// fields. This test makes it again and fails when the file differs, so the
// reference cannot drift from the loader:
//
//	go test ./configs -run TestReference -update
func TestReference(t *testing.T) {
	var b strings.Builder
	b.WriteString(referenceIntro)
	r := &reference{b: &b, comments: map[string]string{}, t: t}
	b.WriteString("## Station file\n\n")
	r.section("", "", reflect.TypeOf(configs.Station{}))
	b.WriteString("## Protocols\n\nA link's `protocol` decides the rest of its keys, and those of the devices on it (besides `id`, `template` and `link`). The protocols this gateway speaks:\n\n")
	for _, name := range configs.Protocols() {
		p, _ := configs.LookupProtocol(name)
		fmt.Fprintf(&b, "### Protocol `%s`\n\nIts devices' templates are of family `%s`. A link of protocol %s has, besides `id` and `protocol`:\n\n", name, p.Family, name)
		r.section("", name+" link", reflect.TypeOf(p.Link()).Elem())
		fmt.Fprintf(&b, "A device on such a link has, besides `id`, `template` and `link`:\n\n")
		r.section("", name+" device", reflect.TypeOf(p.Device()).Elem())
	}
	b.WriteString("## Device template\n\n")
	b.WriteString("A template is `devices/NAME.yaml` beside the station file, or a built-in one of `configs/devices/` (the folder beside the station file is looked at first). Its `protocol` (family) decides the rest of its keys.\n\n")
	r.section("", "", reflect.TypeOf(configs.Template{}))
	for _, name := range configs.Families() {
		fmt.Fprintf(&b, "### Template family `%s`\n\nA template of family %s has, besides `template`, `protocol`, `kind` and `description`:\n\n", name, name)
		r.section("", name+" template", reflect.TypeOf(familyBody(name)).Elem())
	}
	b.WriteString(referenceNotes)
	got := b.String()
	path := filepath.Join("..", "docs", "station-file.md")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (make it with go test ./configs -run TestReference -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from the loader's definitions; run go test ./configs -run TestReference -update and commit it", path)
	}
}

// familyBody is the body of a built-in template of a family.
func familyBody(family string) configs.Body {
	tmpls, _ := configs.BuiltinTemplates()
	for _, t := range tmpls {
		if t.Protocol == family {
			return t.Body
		}
	}
	panic("no built-in template of family " + family)
}

type reference struct {
	b        *strings.Builder
	comments map[string]string // "pkgpath.Type" and "pkgpath.Type.Field" -> doc comment; "pkgpath" once read
	t        *testing.T
}

// comment is the doc comment of a type (field "") or of its field, read
// from the source of the type's package.
func (r *reference) comment(typ reflect.Type, field string) string {
	if _, read := r.comments[typ.PkgPath()]; !read {
		r.comments[typ.PkgPath()] = ""
		dir, ok := strings.CutPrefix(typ.PkgPath(), "outpost/configs")
		if !ok {
			r.t.Fatalf("type %s is not of a package under configs/", typ)
		}
		if err := fieldComments(filepath.Join(".", dir), typ.PkgPath(), r.comments); err != nil {
			r.t.Fatal(err)
		}
	}
	key := typ.PkgPath() + "." + typ.Name()
	if field != "" {
		key += "." + field
	}
	return r.comments[key]
}

// key is a field of a struct that is a key of the file, with the struct
// that declares it (a struct embedded inline declares its own).
type key struct {
	reflect.StructField
	owner reflect.Type
}

// keys lists the keys of a struct type, those of inline structs in place.
func keys(typ reflect.Type) []key {
	var out []key
	for i := 0; i < typ.NumField(); i++ {
		f := typ.Field(i)
		switch tag := f.Tag.Get("yaml"); {
		case tag == ",inline":
			out = append(out, keys(f.Type)...)
		case tag == "" || tag == "-" || strings.HasPrefix(tag, ","):
		default:
			out = append(out, key{f, typ})
		}
	}
	return out
}

// section writes the table of a struct's keys at path, then the sections
// of the structs within it, each headed by its path and scope (the
// protocol or family a section belongs to, "" for the station file's own).
func (r *reference) section(path, scope string, typ reflect.Type) {
	if path != "" {
		heading := "`" + path + "`"
		if scope != "" {
			heading += " (" + scope + ")"
		}
		fmt.Fprintf(r.b, "#### %s\n\n", heading)
		if doc := r.comment(typ, ""); doc != "" {
			fmt.Fprintf(r.b, "%s\n\n", markdown(typ.Name(), path, doc))
		}
	}
	r.b.WriteString("| key | type | default | example | meaning |\n|---|---|---|---|---|\n")
	type sub struct {
		path string
		typ  reflect.Type
	}
	var subs []sub
	for _, f := range keys(typ) {
		key := f.Tag.Get("yaml")
		doc := r.comment(f.owner, f.Name)
		if doc == "" {
			r.t.Errorf("%s.%s (%s) has no doc comment: the reference needs one", f.owner.Name(), f.Name, key)
		}
		def := "—"
		switch {
		case f.Tag.Get("required") == "true":
			def = "**required**"
		case f.Tag.Get("default") != "":
			def = "`" + f.Tag.Get("default") + "`"
		}
		ex := ""
		if e := f.Tag.Get("example"); e != "" {
			ex = "`" + e + "`"
		}
		p := key
		if path != "" {
			p = path + "." + key
		}
		ft := f.Type
		kind := typeName(ft)
		switch {
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			subs = append(subs, sub{p + "[]", ft.Elem()})
			kind = fmt.Sprintf("list of [mappings](#%s)", anchor(p+"[]", scope))
		case ft.Kind() == reflect.Struct && ft != reflect.TypeOf(time.Duration(0)) && ft != reflect.TypeOf(configs.Literal{}):
			subs = append(subs, sub{p, ft})
			kind = fmt.Sprintf("[section](#%s)", anchor(p, scope))
		case ft.Kind() == reflect.Pointer && ft.Elem().Kind() == reflect.Struct:
			subs = append(subs, sub{p, ft.Elem()})
			kind = fmt.Sprintf("[section](#%s), optional", anchor(p, scope))
		default:
			if ex == "" {
				r.t.Errorf("%s.%s (%s) has no example tag: the reference needs one", f.owner.Name(), f.Name, key)
			}
		}
		fmt.Fprintf(r.b, "| `%s` | %s | %s | %s | %s |\n", key, kind, def, ex, markdown(f.Name, key, doc))
	}
	r.b.WriteString("\n")
	for _, s := range subs {
		r.section(s.path, scope, s.typ)
	}
}

// markdown makes a doc comment a cell of the table: the Go name it
// starts with becomes the key, and characters markdown would take are
// escaped.
func markdown(goName, key, doc string) string {
	if rest, ok := strings.CutPrefix(doc, goName+" "); ok {
		doc = "`" + key + "` " + rest
	}
	return strings.NewReplacer("|", "\\|", "<", "&lt;", ">", "&gt;").Replace(doc)
}

// anchor is the anchor GitHub makes of a section's heading.
func anchor(path, scope string) string {
	a := strings.NewReplacer(".", "", "[", "", "]", "").Replace(path)
	if scope != "" {
		a += "-" + strings.ReplaceAll(strings.ToLower(scope), " ", "-")
	}
	return a
}

// typeName names a field's type for an installer.
func typeName(t reflect.Type) string {
	if e, ok := reflect.New(t).Elem().Interface().(interface{ Values() []string }); ok {
		vals := e.Values()
		for i, v := range vals {
			vals[i] = "`" + v + "`"
		}
		return "one of " + strings.Join(vals, ", ")
	}
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "duration"
	case t == reflect.TypeOf(configs.Literal{}):
		return "true, false or a number"
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t.Kind() == reflect.String:
		return "string"
	case t.Kind() == reflect.Int, t.Kind() == reflect.Int64:
		return "integer"
	case t.Kind() == reflect.Float64:
		return "number"
	case t.Kind() == reflect.Bool:
		return "true or false"
	}
	return t.String()
}

// fieldComments reads the doc comments of the types of the package in dir
// (import path pkg) and of their fields into out, as "pkg.Type" and
// "pkg.Type.Field".
func fieldComments(dir, pkg string, out map[string]string) error {
	fset := token.NewFileSet()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return err
	}
	clean := func(g *ast.CommentGroup) string {
		return strings.Join(strings.Fields(g.Text()), " ")
	}
	for _, file := range files {
		if strings.HasSuffix(file, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, file, nil, parser.ParseComments)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			gd, ok := n.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				return true
			}
			for _, spec := range gd.Specs {
				ts := spec.(*ast.TypeSpec)
				if gd.Doc != nil {
					out[pkg+"."+ts.Name.Name] = clean(gd.Doc)
				}
				st, ok := ts.Type.(*ast.StructType)
				if !ok {
					continue
				}
				for _, fld := range st.Fields.List {
					doc := fld.Doc
					if doc == nil {
						doc = fld.Comment
					}
					for _, name := range fld.Names {
						if doc != nil {
							out[pkg+"."+ts.Name.Name+"."+name.Name] = clean(doc)
						}
					}
				}
			}
			return false
		})
	}
	return nil
}

const referenceIntro = `# Station files and device templates: reference

<!-- Made by go test ./configs -run TestReference -update from the types the
loader decodes into (configs/types.go): edit those, not this file. -->

A station is one YAML file; its devices are described by device templates.
` + "`gateway validate STATION.yaml`" + ` checks both and prints every problem at once, each
as ` + "`FILE:LINE:COL: message`" + `. Keys are checked strictly: an unknown key, a value of the
wrong type or a missing required key is an error, never ignored. A file may hold
at most 1 MiB; at most 200 problems are listed, then how many more there are.

Types: a *duration* is written like ` + "`500ms`, `2s`, `1m30s`" + `; an *integer* in decimal or,
with ` + "`0x`" + `, hexadecimal (a leading ` + "`0`" + ` is refused: it would be octal); a *section* is a
mapping of the keys in its own table below. A key absent from the file takes its
default; "—" means none (empty, zero or false).

`

const referenceNotes = `## Addresses

` + "`address`" + ` is the **0-based protocol address** that travels in the Modbus request, not
the 1-based "register number" many datasheets print:

| datasheet says | table | address |
|---|---|---|
| 30001 (input register 1) | ` + "`input`" + ` | ` + "`0`" + ` |
| 30073 | ` + "`input`" + ` | ` + "`72`" + ` (or ` + "`0x48`" + `) |
| 40001 (holding register 1) | ` + "`holding`" + ` | ` + "`0`" + ` |
| 0x2000 (hexadecimal, as CHINT meters print it) | ` + "`holding`" + ` | ` + "`0x2000`" + ` |
| 10001 (discrete input 1) | ` + "`discrete`" + ` | ` + "`0`" + ` |
| 00001 (coil 1) | ` + "`coil`" + ` | ` + "`0`" + ` |

When a datasheet gives hexadecimal addresses (0x0000, 0x2000) it almost always
means protocol addresses: write them as they are, with ` + "`0x`" + `.

## Byte orders

` + "`order`" + ` names the value's bytes as they arrive, by letters of their big-endian order:
` + "`ABCD`" + ` is big-endian (the Modbus default), ` + "`CDAB`" + ` swaps the 16-bit words (common for
32-bit values of meters, "word swapped"), ` + "`BADC`" + ` swaps the bytes within each word and
` + "`DCBA`" + ` is little-endian. 16-bit values only swap bytes (` + "`BADC`, `DCBA`" + `); 64-bit values
swap all four words under ` + "`CDAB`" + ` and ` + "`DCBA`" + `.

## Values

A number is published as the value the device means: a float32 as its
shortest decimal (229.8, not 229.8000030517578), and ` + "`scale`" + ` and ` + "`offset`" + ` applied in
decimal (a register of 234 at scale 0.1 is 23.4). See the hub contract.

A wrong scale or type in a template gives values that may well look plausible
(2.3 °C for a room at 23 °C). Two checks catch it before the station goes live:
` + "`gateway validate`" + ` (and ` + "`commission`" + `, and the gateway's log at start) warns of a
station's template that reads a signal from where a built-in template, made from
that device's datasheet, reads one of the same name and unit, but converts it
another way (another type, byte order, scale or offset); and
` + "`gateway commission`" + ` shows the values it read, for the installer to compare with
the room.
`
