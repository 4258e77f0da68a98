package configs

import (
	"crypto/tls"
	"crypto/x509"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"outpost/gateway/model"
)

// Embedded holds the shipped station files and device templates.
//
//go:embed *.yaml devices/*.yaml
var Embedded embed.FS

// Protocols a bus or an endpoint may name; the gateway has a driver for each
// (a test in the gateway holds the two lists together).
var (
	BusProtocols      = []string{"modbus-rtu"}
	EndpointProtocols = []string{"modbus-tcp"}
)

// Load reads, decodes and validates a station file and the device templates
// it uses, and fills in every default. Templates are looked up in the
// devices/ folder beside the station file, then among the embedded ones. On
// any problem it returns Errors, with every problem found.
func Load(path string) (*Station, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("station file: %w", err)
	}
	return parse(path, data, templates{dir: filepath.Join(filepath.Dir(path), "devices")})
}

// LoadEmbedded loads one of the embedded station files, e.g. "police-room.yaml".
func LoadEmbedded(name string) (*Station, error) {
	data, err := Embedded.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("no embedded station %q: %w", name, err)
	}
	return parse("configs/"+name, data, templates{})
}

// Parse decodes and validates station file data; templates come from the
// embedded ones. It serves tools that build station files in memory.
func Parse(name string, data []byte) (*Station, error) {
	return parse(name, data, templates{})
}

// readFile reads a station or template file, refusing one larger than
// MaxFileBytes before reading it.
func readFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fileErr(err)
	}
	if fi.IsDir() {
		return nil, fmt.Errorf("%s is a directory, not a file", path)
	}
	if fi.Size() > MaxFileBytes {
		return nil, fmt.Errorf("%s is %d bytes, more than a station or template file may hold (%d)", path, fi.Size(), MaxFileBytes)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fileErr(err)
	}
	return b, nil
}

// templates finds device templates: in dir (the devices/ folder beside a
// station file) when set, then among the embedded ones.
type templates struct{ dir string }

// find returns a template's file and data. A template that exists nowhere
// gives fs.ErrNotExist; one in dir that cannot be read (a dangling link, a
// directory, no permission, too large) gives an error naming its path, and
// never falls back to the built-in template of that name.
func (ts templates) find(name string) (string, []byte, error) {
	if ts.dir != "" {
		file := filepath.Join(ts.dir, name+".yaml")
		if _, err := os.Lstat(file); err == nil {
			b, err := readFile(file)
			if errors.Is(err, fs.ErrNotExist) {
				err = fmt.Errorf("%s is a link to a file that does not exist", file)
			}
			return file, b, err
		}
	}
	b, err := Embedded.ReadFile("devices/" + name + ".yaml")
	return "configs/devices/" + name + ".yaml", b, err
}

// names lists the templates there are, sorted.
func (ts templates) names() []string {
	set := map[string]bool{}
	add := func(des []fs.DirEntry) {
		for _, de := range des {
			if n, ok := strings.CutSuffix(de.Name(), ".yaml"); ok {
				set[n] = true
			}
		}
	}
	if ts.dir != "" {
		des, _ := os.ReadDir(ts.dir)
		add(des)
	}
	des, _ := Embedded.ReadDir("devices")
	add(des)
	return slices.Sorted(maps.Keys(set))
}

var (
	idPattern     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)
	tmplPattern   = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,63}$`)
	signalPattern = regexp.MustCompile(`^[a-z][a-z0-9_]{0,63}$`)
)

func parse(file string, data []byte, src templates) (*Station, error) {
	d := newDecoder(file)
	st := &Station{File: file, Templates: map[string]*Template{}}
	d.parse(data, st)
	if d.fatal {
		return nil, d.errs.sorted(d.dropped)
	}
	st.defaults()
	d.validateStation(st)
	// found holds the templates that exist, loaded or not (a template
	// with errors is reported with its own errors, not as missing).
	found := map[string]bool{}
	decs := map[string]*decoder{}
	for _, dev := range st.Devices {
		if _, tried := found[dev.Template]; tried || !tmplPattern.MatchString(dev.Template) {
			continue
		}
		t, td, ok := loadTemplate(dev.Template, src)
		found[dev.Template] = ok
		if t != nil {
			st.Templates[dev.Template] = t
			decs[dev.Template] = td
		} else if td != nil {
			d.errs, d.dropped = append(d.errs, td.errs...), d.dropped+td.dropped
		}
	}
	checkKinds(st, decs)
	for _, td := range decs {
		d.errs, d.dropped = append(d.errs, td.errs...), d.dropped+td.dropped
	}
	d.validateDevices(st, found, src)
	if len(d.errs) > 0 {
		return nil, d.errs.sorted(d.dropped)
	}
	return st, nil
}

func (st *Station) defaults() {
	if st.StateDir == "" {
		st.StateDir = filepath.Join("/var/lib/outpost", st.Station.ID)
	}
	// Files the station names are relative to the station file.
	if t := st.Hub.MQTT.TLS; t != nil {
		for _, p := range []*string{&t.CA, &t.Cert, &t.Key} {
			if *p != "" && !filepath.IsAbs(*p) {
				*p = filepath.Join(filepath.Dir(st.File), *p)
			}
		}
	}
	m := &st.Hub.MQTT
	if m.ClientID == "" {
		m.ClientID = "outpost-" + st.Station.ID
	}
	if m.TopicPrefix == "" {
		m.TopicPrefix = model.DefaultTopicPrefix
	}
}

func (d *decoder) validateStation(st *Station) {
	if st.Version != 1 {
		d.errAt("version", "version: this gateway reads station files of version 1, not %d", st.Version)
	}
	if !idPattern.MatchString(st.Station.ID) {
		d.errAt("station.id", "station.id: %q is not a valid id (letters, digits, '_', '-', '.'; at most 64)", st.Station.ID)
	}
	d.checkURL("hub.mqtt.url", st.Hub.MQTT.URL, "tcp://127.0.0.1:1883", "tcp", "mqtt", "ssl", "tls", "mqtts")
	if u, err := url.Parse(st.Hub.MQTT.URL); err == nil && u.Host != "" && u.Port() == "" {
		d.errAt("hub.mqtt.url", "hub.mqtt.url: %q has no port (e.g. tcp://%s:1883, ssl://%s:8883)", st.Hub.MQTT.URL, u.Hostname(), u.Hostname())
	}
	if len(st.Devices) == 0 {
		d.errAt("devices", "devices: a station needs at least one device")
	}
	if t := st.Hub.MQTT.TLS; t != nil {
		d.checkTLS("hub.mqtt.tls", t)
	}
	if n := st.Hub.MQTT.MaxPacketSize; n != 0 && (n < 1024 || n > 268435455) {
		d.errAt("hub.mqtt.max_packet_size", "hub.mqtt.max_packet_size: %d is out of range (1024 to 268435455, or 0 for no limit)", n)
	}
	if st.Hub.Influx != nil {
		d.checkURL("hub.influx.url", st.Hub.Influx.URL, "http://127.0.0.1:8086", "http", "https")
		if st.Hub.Influx.BatchSize < 1 || st.Hub.Influx.BatchSize > 10000 {
			d.errAt("hub.influx.batch_size", "hub.influx.batch_size: %d is out of range (1 to 10000)", st.Hub.Influx.BatchSize)
		}
	}
	if st.Queue.MaxBytes < 64<<10 {
		d.errAt("queue.max_bytes", "queue.max_bytes: %d is too small (at least 65536, 64 KiB)", st.Queue.MaxBytes)
	}
	links := map[string]string{} // id -> path of its first use
	link := func(path, id string) {
		if !idPattern.MatchString(id) {
			d.errAt(path+".id", "%s.id: %q is not a valid id", path, id)
		}
		if first, dup := links[id]; dup {
			d.errAt(path+".id", "%s.id: %q is already the id of %s", path, id, first)
			return
		}
		links[id] = path
	}
	ports := map[string]string{}
	for i := range st.Buses {
		b, path := &st.Buses[i], fmt.Sprintf("buses[%d]", i)
		link(path, b.ID)
		d.oneOf(path+".protocol", b.Protocol, BusProtocols)
		if first, dup := ports[b.Port]; dup {
			d.errAt(path+".port", "%s.port: %s is already the port of %s", path, b.Port, first)
		}
		ports[b.Port] = path
		if b.Baud < 300 || b.Baud > 4000000 {
			d.errAt(path+".baud", "%s.baud: %d is not a usable baud rate (300 to 4000000, e.g. 9600)", path, b.Baud)
		}
		if b.DataBits < 7 || b.DataBits > 8 {
			d.errAt(path+".data_bits", "%s.data_bits: %d (expected 7 or 8)", path, b.DataBits)
		}
		if b.StopBits < 1 || b.StopBits > 2 {
			d.errAt(path+".stop_bits", "%s.stop_bits: %d (expected 1 or 2)", path, b.StopBits)
		}
		d.checkTiming(path, b.Timeout, b.Retries)
	}
	for i := range st.Endpoints {
		e, path := &st.Endpoints[i], fmt.Sprintf("endpoints[%d]", i)
		link(path, e.ID)
		d.oneOf(path+".protocol", e.Protocol, EndpointProtocols)
		if _, port, err := net.SplitHostPort(e.Address); err != nil || port == "" {
			d.errAt(path+".address", "%s.address: %q is not host:port (e.g. 192.168.1.20:502)", path, e.Address)
		}
		d.checkTiming(path, e.Timeout, e.Retries)
	}
}

// checkTLS checks that the TLS files a station names are there and hold
// what they should, so that a wrong path shows at validate, not at the
// first connect in the field.
func (d *decoder) checkTLS(path string, t *TLS) {
	if (t.Cert == "") != (t.Key == "") {
		d.errAt(path, "%s: cert and key go together; give both or neither", path)
	}
	if t.CA != "" {
		if pem, err := readFile(t.CA); err != nil {
			d.errAt(path+".ca", "%s.ca: %v", path, err)
		} else if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			d.errAt(path+".ca", "%s.ca: %s holds no PEM certificate (expected the CA that signed the broker's certificate)", path, t.CA)
		}
	}
	if t.Cert == "" || t.Key == "" {
		return
	}
	certOK, keyOK := true, true
	for _, f := range []struct{ key, file string }{{"cert", t.Cert}, {"key", t.Key}} {
		if _, err := readFile(f.file); err != nil {
			d.errAt(path+"."+f.key, "%s.%s: %v", path, f.key, err)
			certOK, keyOK = certOK && f.key != "cert", keyOK && f.key != "key"
		}
	}
	if certOK && keyOK {
		if _, err := tls.LoadX509KeyPair(t.Cert, t.Key); err != nil {
			d.errAt(path+".cert", "%s: the certificate %s and key %s do not make a pair: %v", path, t.Cert, t.Key, err)
		}
	}
}

// fileErr words a file error for an installer; errors.Is still sees the
// cause.
func fileErr(err error) error {
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist) && errors.As(err, &pe):
		return &fileError{pe.Path + " does not exist", err}
	case errors.Is(err, fs.ErrPermission) && errors.As(err, &pe):
		return &fileError{pe.Path + " cannot be read by this user (check its owner and mode)", err}
	}
	return err
}

// fileError is a file error in an installer's words.
type fileError struct {
	msg string
	err error
}

func (e *fileError) Error() string { return e.msg }
func (e *fileError) Unwrap() error { return e.err }

func (d *decoder) checkTiming(path string, timeout time.Duration, retries int) {
	if timeout < time.Millisecond || timeout > time.Minute {
		d.errAt(path+".timeout", "%s.timeout: %s is out of range (1ms to 1m)", path, timeout)
	}
	if retries < 0 || retries > 10 {
		d.errAt(path+".retries", "%s.retries: %d is out of range (0 to 10)", path, retries)
	}
}

func (d *decoder) checkURL(path, raw, example string, schemes ...string) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !slices.Contains(schemes, u.Scheme) {
		d.errAt(path, "%s: %q is not a URL of scheme %s with a host (e.g. %s)", path, raw, strings.Join(schemes, ", "), example)
	}
}

func (d *decoder) oneOf(path, v string, allowed []string) {
	if !slices.Contains(allowed, v) {
		d.errAt(path, "%s: unknown value %q (expected one of: %s)", path, v, strings.Join(allowed, ", "))
	}
}

func (d *decoder) validateDevices(st *Station, found map[string]bool, src templates) {
	ids := map[string]string{}
	type unitKey struct {
		link string
		unit int
	}
	units := map[unitKey]string{}
	buses := map[string]bool{}
	for _, b := range st.Buses {
		buses[b.ID] = true
	}
	endpoints := map[string]bool{}
	for _, e := range st.Endpoints {
		endpoints[e.ID] = true
	}
	for i := range st.Devices {
		dev, path := &st.Devices[i], fmt.Sprintf("devices[%d]", i)
		if !idPattern.MatchString(dev.ID) {
			d.errAt(path+".id", "%s.id: %q is not a valid id (letters, digits, '_', '-', '.'; at most 64)", path, dev.ID)
		} else if first, dup := ids[dev.ID]; dup {
			d.errAt(path+".id", "%s.id: device id %q is already used by %s", path, dev.ID, first)
		}
		ids[dev.ID] = path
		if !tmplPattern.MatchString(dev.Template) {
			d.errAt(path+".template", "%s.template: %q is not a template name (lower-case letters, digits, '-', '_')", path, dev.Template)
		} else if !found[dev.Template] {
			d.errAt(path+".template", "%s.template: unknown template %q: no devices/%s.yaml beside the station file, nor a built-in one%s",
				path, dev.Template, dev.Template, suggest(dev.Template, src.names()))
		}
		link, maxUnit, minUnit := "", 247, 1
		switch {
		case dev.Bus != "" && dev.Endpoint != "":
			d.errAt(path+".endpoint", "%s: give either bus or endpoint, not both", path)
		case dev.Bus != "":
			link = dev.Bus
			if !buses[dev.Bus] {
				d.errAt(path+".bus", "%s.bus: no bus with id %q in buses", path, dev.Bus)
			}
		case dev.Endpoint != "":
			link, maxUnit, minUnit = dev.Endpoint, 255, 0
			if !endpoints[dev.Endpoint] {
				d.errAt(path+".endpoint", "%s.endpoint: no endpoint with id %q in endpoints", path, dev.Endpoint)
			}
		case d.quiet(path + ".bus"), d.quiet(path + ".endpoint"):
		default:
			d.errAt(path, "%s: missing bus or endpoint: say where the device is connected", path)
		}
		if dev.UnitID < minUnit || dev.UnitID > maxUnit {
			d.errAt(path+".unit_id", "%s.unit_id: %d is out of range (%d to %d)", path, dev.UnitID, minUnit, maxUnit)
		} else if link != "" {
			k := unitKey{link, dev.UnitID}
			if first, dup := units[k]; dup {
				d.errAt(path+".unit_id", "%s.unit_id: unit id %d is already used on %s by %s", path, dev.UnitID, link, first)
			}
			units[k] = fmt.Sprintf("%s (%s)", path, dev.ID)
		}
		if dev.Poll < 10*time.Millisecond || dev.Poll > 24*time.Hour {
			d.errAt(path+".poll", "%s.poll: %s is out of range (10ms to 24h)", path, dev.Poll)
		}
	}
}

// loadTemplate loads and checks a template. ok is false when there is no
// template of that name; the decoder holds the template's errors (t may be
// nil when it could not be read).
func loadTemplate(name string, src templates) (t *Template, d *decoder, ok bool) {
	file, data, err := src.find(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, false
	}
	d = newDecoder(file)
	if err != nil {
		d.errorf(pos{1, 1}, "template %s cannot be read: %v", name, err)
		return nil, d, true
	}
	t = &Template{File: file}
	d.parse(data, t)
	if d.fatal {
		return nil, d, true
	}
	if t.Name != name {
		d.errAt("template", "template: the file says template %q, but its name is %q", t.Name, name)
	}
	if t.Kind == "" || !signalPattern.MatchString(t.Kind) {
		d.errAt("kind", "kind: %q is not a device kind (lower-case letters, digits, '_')", t.Kind)
	} else if strings.HasPrefix(t.Kind, "outpost_") {
		d.errAt("kind", "kind: %q is reserved: kinds starting outpost_ name the hub's event and health measurements in InfluxDB", t.Kind)
	}
	if len(t.Registers) == 0 {
		d.errAt("registers", "registers: a template needs at least one register")
	}
	signals := map[string]string{}
	type cell struct {
		table Table
		addr  int
	}
	used := map[cell]string{}
	for i := range t.Registers {
		r, path := &t.Registers[i], fmt.Sprintf("registers[%d]", i)
		if !signalPattern.MatchString(r.Signal) {
			d.errAt(path+".signal", "%s.signal: %q is not a signal name (lower-case letters, digits, '_')", path, r.Signal)
		} else if reserved(r.Signal) {
			d.errAt(path+".signal", "%s.signal: %q is reserved: InfluxDB keeps time, the hub contract's tags (station, station_type, device) and fields (seq, historical, and names ending in _quality) under these names", path, r.Signal)
		} else if first, dup := signals[r.Signal]; dup {
			d.errAt(path+".signal", "%s.signal: signal %q is already defined by %s", path, r.Signal, first)
		}
		signals[r.Signal] = path
		if r.Table.IsBits() && r.Type != TypeBool {
			d.errAt(path+".type", "%s.type: a %s holds single bits, so its type must be bool, not %s", path, r.Table, r.Type)
		}
		if r.Bit != nil && (r.Type != TypeBool || r.Table.IsBits() || *r.Bit < 0 || *r.Bit > 15) {
			d.errAt(path+".bit", "%s.bit: bit selects 0 to 15 of a register for a bool on an input or holding register", path)
		}
		if r.Type == TypeString && (r.Length < 1 || r.Length > 125) {
			d.errAt(path+".length", "%s.length: a string needs its length in registers, 1 to 125 (got %d)", path, r.Length)
		}
		if r.Type != TypeString && r.Length != 0 {
			d.errAt(path+".length", "%s.length: only a string has a length", path)
		}
		if r.Scale == 0 {
			d.errAt(path+".scale", "%s.scale: a scale of 0 would make every value 0", path)
		}
		if span := r.Span(); r.Address < 0 || r.Address+span-1 > 65535 {
			d.errAt(path+".address", "%s.address: registers %d to %d are beyond the Modbus address range 0 to 65535", path, r.Address, r.Address+span-1)
		} else if r.Bit == nil {
			for a := r.Address; a < r.Address+span; a++ {
				c := cell{r.Table, a}
				if first, dup := used[c]; dup {
					d.errAt(path+".address", "%s.address: %s %d is already mapped by %s", path, r.Table, a, first)
					break
				}
				used[c] = path
			}
		}
		if r.Range != nil {
			if r.Type == TypeBool || r.Type == TypeString {
				d.errAt(path+".range", "%s.range: only a number has a range, not a %s", path, r.Type)
			} else if r.Range.Min > r.Range.Max {
				d.errAt(path+".range", "%s.range: min %v is above max %v", path, r.Range.Min, r.Range.Max)
			}
		}
		if r.Event != nil {
			if r.Type != TypeBool {
				d.errAt(path+".event", "%s.event: events are raised by bool signals only", path)
			}
			if !signalPattern.MatchString(r.Event.Kind) {
				d.errAt(path+".event.kind", "%s.event.kind: %q is not an event kind (lower-case letters, digits, '_')", path, r.Event.Kind)
			}
		}
	}
	return t, d, true
}

// reserved says whether a signal name would collide in InfluxDB with what
// the hub contract writes beside signals, or with InfluxDB's own time.
func reserved(signal string) bool {
	switch signal {
	case "time", "seq", "historical", "station", "station_type", "device":
		return true
	}
	return strings.HasSuffix(signal, "_quality")
}

// fieldType is the InfluxDB field type a signal's values get.
func (r *Register) fieldType() string {
	switch r.Type {
	case TypeBool:
		return "boolean"
	case TypeString:
		return "string"
	}
	return "float"
}

// checkKinds holds the templates of one device kind (one InfluxDB
// measurement) to one field type per signal: InfluxDB refuses a point
// whose field has another type than the measurement's. The station's
// templates are checked against each other and against the built-in ones
// of their kind, which stations of the same hub may use.
func checkKinds(st *Station, decs map[string]*decoder) {
	type first struct {
		typ, where string
	}
	fields := map[string]first{} // kind/signal -> its first type
	note := func(t *Template, builtin bool) {
		for i := range t.Registers {
			r := &t.Registers[i]
			key := t.Kind + "/" + r.Signal
			where := fmt.Sprintf("template %s", t.Name)
			if builtin {
				where = fmt.Sprintf("the built-in template %s", t.Name)
			}
			f, seen := fields[key]
			switch {
			case !seen:
				fields[key] = first{r.fieldType(), where}
			case f.typ != r.fieldType() && !builtin:
				path := fmt.Sprintf("registers[%d].type", i)
				decs[t.Name].errAt(path, "%s: signal %s is a %s here but a %s in %s; both are of kind %s, one InfluxDB measurement, and InfluxDB refuses a field of two types",
					path, r.Signal, r.fieldType(), f.typ, f.where, t.Kind)
			}
		}
	}
	kinds := map[string]bool{}
	for _, t := range st.Templates {
		kinds[t.Kind] = true
	}
	des, _ := Embedded.ReadDir("devices")
	for _, de := range des {
		name := strings.TrimSuffix(de.Name(), ".yaml")
		if st.Templates[name] != nil {
			continue
		}
		if t, _, _ := loadTemplate(name, templates{}); t != nil && kinds[t.Kind] {
			note(t, true)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(st.Templates)) {
		note(st.Templates[n], false)
	}
}

// suggest names the template closest to name, if one is close, and the
// templates there are.
func suggest(name string, names []string) string {
	best, bestD := "", max(2, len(name)/4)+1
	for _, n := range names {
		if dist := distance(name, n); dist < bestD {
			best, bestD = n, dist
		}
	}
	s := ""
	if best != "" {
		s = fmt.Sprintf("; did you mean %q?", best)
	}
	return s + " (templates: " + strings.Join(names, ", ") + ")"
}

// distance is the Levenshtein distance of two strings.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
