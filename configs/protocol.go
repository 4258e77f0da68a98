package configs

import (
	"fmt"
	"maps"
	"slices"
	"sync"
)

// Protocol is a device protocol's part of station files: the settings of
// its links and of the devices on them. A protocol's package under
// configs/ registers it in init(); the loader decodes a link's keys it does
// not know itself into Link(), and a device's into Device(), as strictly as
// its own, and then calls their Check methods (see Checker) and the
// protocol's Check.
type Protocol struct {
	// Family is the template format of the protocol's devices: protocols
	// of one family share templates ("modbus" for modbus-rtu and
	// modbus-tcp).
	Family string
	// Link and Device make new settings of a link of the protocol and of
	// a device on one: pointers to structs, whose fields are tagged like
	// the station file's.
	Link, Device func() any
	// Check, when set, checks a link and its devices together (a unit id
	// used twice on a bus, say); p takes paths from the station file's top
	// ("devices[3].unit_id").
	Check func(p Problems, st *Station, link *Link)
}

// Family is a template format: the part of a template after its kind.
type Family struct {
	// Template makes a new body of a template of the family (a pointer to
	// a struct), decoded from the template's keys after its header.
	Template func() Body
	// Messages says the family's devices take actions as messages: an
	// action sends the command, with its args, to the device (which
	// answers it), and sets no signal.
	Messages bool
}

// Problems receives what a check finds wrong, at a path below the
// section it checks ("baud", "registers[2].address"); each becomes an
// Error at the position of that key in its file.
type Problems interface {
	Errorf(path, format string, args ...any)
}

// Checker is implemented by settings and template bodies that check
// themselves after decoding.
type Checker interface {
	Check(p Problems)
}

var (
	registry sync.RWMutex
	protos   = map[string]Protocol{}
	families = map[string]Family{}
)

// Register makes a protocol known to station files by name. It panics on
// a name registered twice, which is a programming error.
func Register(name string, p Protocol) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := protos[name]; dup {
		panic("configs: protocol registered twice: " + name)
	}
	protos[name] = p
}

// RegisterFamily makes a template format known by name.
func RegisterFamily(name string, f Family) {
	registry.Lock()
	defer registry.Unlock()
	if _, dup := families[name]; dup {
		panic("configs: template family registered twice: " + name)
	}
	families[name] = f
}

// Protocols lists the registered protocols, sorted.
func Protocols() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(protos))
}

// Families lists the registered template families, sorted.
func Families() []string {
	registry.RLock()
	defer registry.RUnlock()
	return slices.Sorted(maps.Keys(families))
}

// LookupProtocol returns a registered protocol.
func LookupProtocol(name string) (Protocol, bool) {
	registry.RLock()
	defer registry.RUnlock()
	p, ok := protos[name]
	return p, ok
}

func lookupFamily(name string) (Family, bool) {
	registry.RLock()
	defer registry.RUnlock()
	f, ok := families[name]
	return f, ok
}

// problems reports at paths below a prefix, through a decoder.
type problems struct {
	d      *decoder
	prefix string
}

func (p problems) Errorf(path, format string, args ...any) {
	full := join(p.prefix, path)
	p.d.errAt(full, "%s: %s", full, fmt.Sprintf(format, args...))
}

// Under is p for a part at path below what p checks: a Check method
// hands it to the Check of a nested part (a list's item).
func Under(p Problems, path string) Problems { return under{p, path} }

type under struct {
	p      Problems
	prefix string
}

func (u under) Errorf(path, format string, args ...any) {
	u.p.Errorf(join(u.prefix, path), format, args...)
}

// check runs v's own Check, if it has one, with problems below prefix.
func (d *decoder) check(v any, prefix string) {
	if c, ok := v.(Checker); ok {
		c.Check(problems{d, prefix})
	}
}
