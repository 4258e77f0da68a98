package configs

import (
	"crypto/tls"
	"crypto/x509"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"outpost/gateway/model"
)

// Embedded holds the shipped station files and device templates.
//
//go:embed *.yaml devices/*.yaml
var Embedded embed.FS

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
	if st.Version != Version && !d.quiet("version") {
		// The rest of a file of another version is read another way: its
		// errors would only confuse.
		d.errs, d.dropped = nil, 0
		d.errAt("version", "version: this gateway reads station files of version %d, not %d%s", Version, st.Version, upgradeHint(st.Version))
		return nil, d.errs
	}
	st.defaults()
	d.validateStation(st)
	d.decodeLinks(st)
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
	builtin, _ := BuiltinTemplates()
	checkKinds(st, decs, builtin)
	checkSources(st, decs, builtin)
	for _, td := range decs {
		d.errs, d.dropped = append(d.errs, td.errs...), d.dropped+td.dropped
		st.Warnings = append(st.Warnings, td.warns...)
	}
	st.Warnings = Errors(st.Warnings).sorted(0)
	d.decodeDevices(st, found, src)
	for i := range st.Links {
		l := &st.Links[i]
		if p, ok := LookupProtocol(l.Protocol); ok && p.Check != nil && l.Settings != nil {
			p.Check(problems{d: d}, st, l)
		}
	}
	if len(d.errs) > 0 {
		return nil, d.errs.sorted(d.dropped)
	}
	return st, nil
}

// upgradeHint says how to bring an older station file up to date.
func upgradeHint(v int) string {
	if v != 1 {
		return ""
	}
	return ": in version 2 the buses and endpoints are links (each with its protocol: modbus-rtu or modbus-tcp), " +
		"and every device names its link (link: rs485-1) instead of bus or endpoint; see docs/station-file.md"
}

func (st *Station) defaults() {
	if st.StateDir == "" {
		st.StateDir = filepath.Join("/var/lib/outpost", st.Station.ID)
	}
	// Files the station names are relative to the station file.
	files := []*string{&st.Hub.Commands.KeyFile, &st.Status.TokenFile}
	if t := st.Hub.MQTT.TLS; t != nil {
		files = append(files, &t.CA, &t.Cert, &t.Key)
	}
	for _, p := range files {
		*p = st.Path(*p)
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
	if !idPattern.MatchString(st.Station.ID) {
		d.errAt("station.id", "station.id: %q is not a valid id (letters, digits, '_', '-', '.'; at most 64)", st.Station.ID)
	}
	d.checkBrokers(&st.Hub.MQTT)
	if t := st.Hub.MQTT.TLS; t != nil {
		d.checkTLS("hub.mqtt.tls", t)
	}
	if n := st.Hub.MQTT.MaxPacketSize; n != 0 && (n < 1024 || n > 268435455) {
		d.errAt("hub.mqtt.max_packet_size", "hub.mqtt.max_packet_size: %d is out of range (1024 to 268435455, or 0 for no limit)", n)
	}
	if st.Hub.Influx != nil {
		if d.checkURL("hub.influx.url", st.Hub.Influx.URL, "http://127.0.0.1:8086", "http", "https") {
			d.notBroker(st.Hub.Influx.URL, &st.Hub.MQTT)
		}
		if st.Hub.Influx.BatchSize < 1 || st.Hub.Influx.BatchSize > 50000 {
			d.errAt("hub.influx.batch_size", "hub.influx.batch_size: %d is out of range (1 to 50000)", st.Hub.Influx.BatchSize)
		}
		if w := st.Hub.Influx.BatchWait; w < 0 || w > 10*time.Second {
			d.errAt("hub.influx.batch_wait", "hub.influx.batch_wait: %s is out of range (0s to 10s)", w)
		}
		switch w := st.Hub.Influx.Timeout; {
		case w < time.Second || w > 5*time.Minute:
			d.errAt("hub.influx.timeout", "hub.influx.timeout: %s is out of range (1s to 5m)", w)
		case w%time.Second != 0:
			d.errAt("hub.influx.timeout", "hub.influx.timeout: %s is not whole seconds (e.g. 30s)", w)
		}
	}
	if c := st.Hub.Commands; c.KeyFile != "" {
		if _, err := ReadKey(c.KeyFile); err != nil {
			d.errAt("hub.commands.key_file", "hub.commands.key_file: %v", err)
		}
	}
	if ttl := st.Hub.Commands.MaxTTL; ttl < time.Second || ttl > 24*time.Hour {
		d.errAt("hub.commands.max_ttl", "hub.commands.max_ttl: %s is out of range (1s to 24h)", ttl)
	}
	d.checkStatus(&st.Status)
	for _, h := range []struct {
		key string
		n   int
	}{{"health.offline_after", st.Health.OfflineAfter}, {"health.degraded_after", st.Health.DegradedAfter}} {
		if h.n < 1 || h.n > 100 {
			d.errAt(h.key, "%s: %d is out of range (1 to 100 polls)", h.key, h.n)
		}
	}
	if r := st.Health.ReportEvery; r < 5*time.Second || r > time.Hour {
		d.errAt("health.report_every", "health.report_every: %s is out of range (5s to 1h)", r)
	}
	if st.Queue.MaxBytes < 64<<10 {
		d.errAt("queue.max_bytes", "queue.max_bytes: %d is too small (at least 65536, 64 KiB)", st.Queue.MaxBytes)
	}
}

// mqttSchemes are the schemes of a hub broker's URL.
var mqttSchemes = []string{"tcp", "mqtt", "ssl", "tls", "mqtts"}

// checkBrokers checks the hub's broker URLs: url or urls, not both; each
// a URL of an MQTT scheme with a host and a port; in a list, each once and
// all of one scheme, as they share one tls section.
func (d *decoder) checkBrokers(m *MQTT) {
	switch {
	case m.URL != "" && len(m.URLs) > 0:
		d.errAt("hub.mqtt.urls", "hub.mqtt: give url (one broker) or urls (the brokers of a cluster), not both")
		return
	case d.quiet("hub.mqtt.url") || d.quiet("hub.mqtt.urls"):
		return // reported
	case m.URL == "" && m.URLs == nil:
		d.errAt("hub.mqtt", "hub.mqtt: missing the broker: url (one broker) or urls (the brokers of a cluster)")
		return
	case m.URL == "" && len(m.URLs) == 0:
		d.errAt("hub.mqtt.urls", "hub.mqtt.urls: the list is empty; name at least one broker")
		return
	}
	if len(m.URLs) == 0 {
		d.checkBroker("hub.mqtt.url", m.URL)
		return
	}
	first := map[string]string{} // URL -> path of its first place
	var scheme, schemePath string
	for i, raw := range m.URLs {
		path := fmt.Sprintf("hub.mqtt.urls[%d]", i)
		if !d.checkBroker(path, raw) {
			continue
		}
		u, _ := url.Parse(raw)
		switch prev, dup := first[raw]; {
		case dup:
			d.errAt(path, "%s: %s is already listed as %s", path, Redact(raw), prev)
			continue
		case scheme == "":
			scheme, schemePath = u.Scheme, path
		case u.Scheme != scheme:
			d.errAt(path, "%s: scheme %s differs from %s's %s: the brokers of a hub share one scheme (and the tls settings)", path, u.Scheme, schemePath, scheme)
		}
		first[raw] = path
	}
}

// hostPort is where a hub URL points: its host and port, the port its
// scheme implies when it names none (a broker's URL always names one).
func hostPort(raw string) (host, port string) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", ""
	}
	port = u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	return u.Hostname(), port
}

// loopback says whether host names this box's loopback interface.
func loopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || ip != nil && ip.IsLoopback()
}

// EveryAddress says whether a listener on host takes every address of the
// box ("", 0.0.0.0, ::).
func EveryAddress(host string) bool {
	ip := net.ParseIP(host)
	return host == "" || ip != nil && ip.IsUnspecified()
}

// brokerAt returns the first of the hub's brokers that a listener at
// host:port would take: the same port, on the same host, or on this box
// when the listener takes every address or both are loopback; "" for none.
func brokerAt(m *MQTT, host, port string) string {
	for _, b := range append([]string{m.URL}, m.URLs...) {
		bh, bp := hostPort(b)
		if b != "" && bp == port && (bh == host || loopback(bh) && (EveryAddress(host) || loopback(host))) {
			return b
		}
	}
	return ""
}

// notBroker checks that InfluxDB's URL (valid) is not at one of the
// brokers' addresses: ports swapped by hand give only "connection reset by
// peer" at run time.
func (d *decoder) notBroker(influx string, m *MQTT) {
	host, port := hostPort(influx)
	if b := brokerAt(m, host, port); b != "" {
		d.errAt("hub.influx.url", "hub.influx.url: %s is the address of the MQTT broker %s: InfluxDB listens on a port of its own (8086 unless its http-bind-address says otherwise)", net.JoinHostPort(host, port), Redact(b))
	}
}

// checkBroker checks one broker URL at path, and says whether it is good.
func (d *decoder) checkBroker(path, raw string) bool {
	if !d.checkURL(path, raw, "tcp://127.0.0.1:1883", mqttSchemes...) {
		return false
	}
	if u, _ := url.Parse(raw); u.Port() == "" {
		d.errAt(path, "%s: %q has no port (e.g. tcp://%s:1883, ssl://%s:8883)", path, raw, u.Hostname(), u.Hostname())
		return false
	}
	return true
}

// checkStatus checks the status server's address, and that one other
// than loopback has a token.
func (d *decoder) checkStatus(s *Status) {
	if s.Listen == "off" {
		return
	}
	host, port, err := net.SplitHostPort(s.Listen)
	if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
		d.errAt("status.listen", "status.listen: %q is not an address (expected HOST:PORT such as 127.0.0.1:9180, or off)", s.Listen)
		return
	}
	if s.TokenFile != "" {
		if _, err := ReadToken(s.TokenFile); err != nil {
			d.errAt("status.token_file", "status.token_file: %v", err)
		}
		return
	}
	if !loopback(host) {
		d.errAt("status.listen", "status.listen: %s is reachable from other machines, so a token_file is required (or listen on 127.0.0.1)", s.Listen)
	}
}

// portDevice is the device a serial port's path names on this machine,
// through its symlinks (/dev/serial/by-id/...), or the path made clean
// when it is not there (an adapter not plugged in yet).
func portDevice(port string) string {
	if dev, err := filepath.EvalSymlinks(port); err == nil {
		return dev
	}
	return filepath.Clean(port)
}

// decodeLinks checks the links' ids and decodes each link's protocol
// settings, which then check themselves. Two links never share a serial
// port, under any of its names.
func (d *decoder) decodeLinks(st *Station) {
	ids := map[string]string{} // id -> path of its first use
	type linkPort struct{ link, port string }
	ports := map[string]linkPort{} // by the port's device (see portDevice)
	for i := range st.Links {
		l, path := &st.Links[i], fmt.Sprintf("links[%d]", i)
		if !idPattern.MatchString(l.ID) {
			d.errAt(path+".id", "%s.id: %q is not a valid id (letters, digits, '_', '-', '.'; at most 64)", path, l.ID)
		} else if first, dup := ids[l.ID]; dup {
			d.errAt(path+".id", "%s.id: %q is already the id of %s", path, l.ID, first)
			continue // its devices are the first one's
		} else {
			ids[l.ID] = path
		}
		p, ok := LookupProtocol(l.Protocol)
		if !ok {
			if !d.quiet(path + ".protocol") {
				d.errAt(path+".protocol", "%s.protocol: unknown protocol %q (expected one of: %s)", path, l.Protocol, strings.Join(Protocols(), ", "))
			}
			continue
		}
		l.Settings = p.Link()
		d.rest(l.Rest, l.Settings, path)
		d.check(l.Settings, path)
		if s, ok := l.Settings.(interface{ ListenAddr() string }); ok {
			// The station's own broker or receiver where the hub's broker
			// is: the gateway would send the hub its own messages.
			if host, port, err := net.SplitHostPort(s.ListenAddr()); err == nil {
				if b := brokerAt(&st.Hub.MQTT, host, port); b != "" {
					d.errAt(path+".listen", "%s.listen: %s is where the hub's broker %s is (%s): the gateway would send the hub's messages to its own listener; give the hub's real address, or this link another port",
						path, s.ListenAddr(), Redact(b), st.Hub.MQTT.BrokersKey())
				}
			}
		}
		if s, ok := l.Settings.(interface{ Line() *Serial }); ok {
			port := s.Line().Port
			dev := portDevice(port)
			switch first, dup := ports[dev]; {
			case dup && first.port == port:
				d.errAt(path+".port", "%s.port: %s is already the port of %s", path, port, first.link)
			case dup:
				// /dev/ttyUSB0 and its /dev/serial/by-id/ name: two
				// masters on one wire scramble each other's frames.
				d.errAt(path+".port", "%s.port: %s is %s, already the port of %s (%s)", path, port, dev, first.link, first.port)
			default:
				ports[dev] = linkPort{path, port}
			}
		}
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

// CheckTiming checks a link's request timeout and retries.
func CheckTiming(p Problems, timeout time.Duration, retries int) {
	if timeout < time.Millisecond || timeout > time.Minute {
		p.Errorf("timeout", "%s is out of range (1ms to 1m)", timeout)
	}
	if retries < 0 || retries > 10 {
		p.Errorf("retries", "%d is out of range (0 to 10)", retries)
	}
}

// checkURL checks that raw is a URL of one of schemes with a host, and
// says whether it is.
func (d *decoder) checkURL(path, raw, example string, schemes ...string) bool {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || !slices.Contains(schemes, u.Scheme) {
		d.errAt(path, "%s: %q is not a URL of scheme %s with a host (e.g. %s)", path, raw, strings.Join(schemes, ", "), example)
		return false
	}
	return true
}

func (d *decoder) oneOf(path, v string, allowed []string) {
	if !slices.Contains(allowed, v) {
		d.errAt(path, "%s: unknown value %q (expected one of: %s)", path, v, strings.Join(allowed, ", "))
	}
}

// decodeDevices checks the devices' ids, links and templates, and decodes
// each device's settings for its link's protocol, which then check
// themselves.
func (d *decoder) decodeDevices(st *Station, found map[string]bool, src templates) {
	if len(st.Devices) == 0 && !d.quiet("devices") {
		d.errAt("devices", "devices: a station needs at least one device")
	}
	ids := map[string]string{}
	for i := range st.Devices {
		dev, path := &st.Devices[i], fmt.Sprintf("devices[%d]", i)
		if !idPattern.MatchString(dev.ID) {
			d.errAt(path+".id", "%s.id: %q is not a valid id (letters, digits, '_', '-', '.'; at most 64)", path, dev.ID)
		} else if first, dup := ids[dev.ID]; dup {
			d.errAt(path+".id", "%s.id: device id %q is already used by %s", path, dev.ID, first)
		}
		ids[dev.ID] = path
		t := st.Templates[dev.Template]
		if !tmplPattern.MatchString(dev.Template) {
			d.errAt(path+".template", "%s.template: %q is not a template name (lower-case letters, digits, '-', '_')", path, dev.Template)
		} else if !found[dev.Template] {
			d.errAt(path+".template", "%s.template: unknown template %q: no devices/%s.yaml beside the station file, nor a built-in one%s",
				path, dev.Template, dev.Template, suggest(dev.Template, "templates", src.names()))
		}
		link := st.Link(dev.Link)
		switch {
		case link == nil && !d.quiet(path+".link"):
			d.errAt(path+".link", "%s.link: no link with id %q in links%s", path, dev.Link, suggest(dev.Link, "links", linkIDs(st)))
			continue
		case link == nil || link.Settings == nil:
			continue // reported at the link
		}
		p, _ := LookupProtocol(link.Protocol)
		dev.Settings = p.Device()
		d.rest(dev.Rest, dev.Settings, path)
		d.check(dev.Settings, path)
		if t != nil && t.Protocol != p.Family {
			d.errAt(path+".template", "%s.template: %s is a %s template, but link %s speaks %s (templates of family %s)",
				path, t.Name, t.Protocol, link.ID, link.Protocol, p.Family)
		}
	}
}

func linkIDs(st *Station) []string {
	ids := make([]string, len(st.Links))
	for i, l := range st.Links {
		ids[i] = l.ID
	}
	return ids
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
	f, ok := lookupFamily(t.Protocol)
	if !ok {
		if !d.quiet("protocol") {
			d.errAt("protocol", "protocol: unknown template family %q (expected one of: %s)", t.Protocol, strings.Join(Families(), ", "))
		}
		return t, d, true
	}
	t.Body = f.Template()
	d.rest(t.Rest, t.Body, "")
	d.check(t.Body, "")
	d.checkSignals(t.Body.Signals())
	d.checkActions(t.Actions, t.Body.Signals(), f.Messages)
	return t, d, true
}

// checkActions checks a template's actions against its signals: each
// sets writable signals to values of their type, within their limits.
func (d *decoder) checkActions(actions []Action, sigs []Signal, messages bool) {
	byName := map[string]*Signal{}
	for i := range sigs {
		byName[sigs[i].Name] = &sigs[i]
	}
	seen := map[string]string{}
	settings := func(path string, set []Setting) {
		for j, st := range set {
			sp := fmt.Sprintf("%s[%d]", path, j)
			sg := byName[st.Signal]
			switch {
			case sg == nil:
				d.errAt(sp+".signal", "%s.signal: the template has no signal %q", sp, st.Signal)
			case !sg.Writable:
				d.errAt(sp+".signal", "%s.signal: %s is not writable (mark it writable where the template maps it)", sp, st.Signal)
			default:
				if err := sg.Accepts(st.Value.Value); err != nil {
					d.errAt(sp+".value", "%s.value: %v", sp, err)
				}
			}
		}
	}
	for i, a := range actions {
		path := fmt.Sprintf("actions[%d]", i)
		switch first, dup := seen[a.Name]; {
		case !signalPattern.MatchString(a.Name):
			d.errAt(path+".name", "%s.name: %q is not an action name (lower-case letters, digits, '_')", path, a.Name)
		case a.Name == "set":
			d.errAt(path+".name", `%s.name: "set" is the action every writable signal takes; name this one otherwise`, path)
		case dup:
			d.errAt(path+".name", "%s.name: action %q is already defined by %s", path, a.Name, first)
		}
		seen[a.Name] = path
		if messages {
			// Sent to the device as it is: the device acts on it.
			d.checkArgs(path, a)
			continue
		}
		if len(a.Args) > 0 {
			d.errAt(path+".args", "%s.args: only devices that take actions as messages (mqtt) take args; this action sets signals", path)
		}
		if len(a.Set) == 0 {
			d.errAt(path+".set", "%s.set: an action sets at least one signal", path)
		}
		settings(path+".set", a.Set)
		settings(path+".then", a.Then)
		switch {
		case a.For == 0 && len(a.Then) > 0:
			d.errAt(path+".then", "%s.then: only an action that lasts (for) sets signals back", path)
		case a.For != 0 && (a.For < time.Second || a.For > 24*time.Hour):
			d.errAt(path+".for", "%s.for: %s is out of range (1s to 24h)", path, a.For)
		case a.For != 0 && len(a.Then) == 0:
			for j, st := range a.Set {
				if _, ok := st.Value.AsBool(); !ok {
					sp := fmt.Sprintf("%s.set[%d].value", path, j)
					d.errAt(sp, "%s: %s is a number: give the action a then: with what it is set back to when %s has passed", sp, st.Signal, a.For)
				}
			}
		}
	}
}

// checkArgs checks an action sent as a message: args, each named once,
// and none of what sets signals.
func (d *decoder) checkArgs(path string, a Action) {
	for _, k := range []struct {
		key string
		set bool
	}{{"set", len(a.Set) > 0}, {"for", a.For != 0}, {"then", len(a.Then) > 0}} {
		if k.set {
			d.errAt(path+"."+k.key, "%s.%s: this device takes actions as messages: an action sends its args and sets no signal", path, k.key)
		}
	}
	names := map[string]bool{}
	for j := range a.Args {
		ap := fmt.Sprintf("%s.args[%d]", path, j)
		a.Args[j].Check(problems{d, ap})
		if names[a.Args[j].Name] {
			d.errAt(ap+".name", "%s.name: arg %q is listed twice", ap, a.Args[j].Name)
		}
		names[a.Args[j].Name] = true
	}
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

// checkSignals checks what every template's signals must be, whatever
// their protocol: names the hub can store, each once, ranges on numbers
// and events on bools.
func (d *decoder) checkSignals(sigs []Signal) {
	seen := map[string]string{}
	for _, sg := range sigs {
		path := sg.Path
		switch first, dup := seen[sg.Name]; {
		case !signalPattern.MatchString(sg.Name):
			d.errAt(path+".signal", "%s.signal: %q is not a signal name (lower-case letters, digits, '_')", path, sg.Name)
		case reserved(sg.Name):
			d.errAt(path+".signal", "%s.signal: %q is reserved: InfluxDB keeps time, the hub contract's tags (station, station_type, device) and fields (seq, historical, and names ending in _quality) under these names", path, sg.Name)
		case dup:
			d.errAt(path+".signal", "%s.signal: signal %q is already defined by %s", path, sg.Name, first)
		}
		seen[sg.Name] = path
		if r := sg.Range; r != nil {
			if sg.Type != Number {
				d.errAt(path+".range", "%s.range: only a number has a range, not a %s", path, sg.Type)
			} else if r.Min > r.Max {
				d.errAt(path+".range", "%s.range: min %v is above max %v", path, r.Min, r.Max)
			}
		}
		if sg.Report != nil {
			d.checkReport(path+".report", sg)
		}
		if ev := sg.Event; ev != nil {
			if sg.Type != Bool {
				d.errAt(path+".event", "%s.event: events are raised by bool signals only", path)
			}
			if !signalPattern.MatchString(ev.Kind) {
				d.errAt(path+".event.kind", "%s.event.kind: %q is not an event kind (lower-case letters, digits, '_')", path, ev.Kind)
			}
		}
	}
}

// checkReport checks a signal's report by exception, at path.
func (d *decoder) checkReport(path string, sg Signal) {
	r := sg.Report
	switch db, pc := r.Deadband, r.DeadbandPercent; {
	case sg.Event != nil:
		d.errAt(path, "%s: %s has an event rule: it is always sent, so it takes no report section", path, sg.Name)
	case db == nil && pc == nil:
		d.errAt(path, "%s: give deadband (in %s) or deadband_percent: a max_silence alone suppresses nothing", path, sg.unitName())
	case db != nil && pc != nil:
		d.errAt(path+".deadband_percent", "%s.deadband_percent: give deadband or deadband_percent, not both", path)
	case sg.Type != Number && (pc != nil || *db != 0):
		d.errAt(path, "%s: %s is a %s, sent when it changes: its only deadband is 0", path, sg.Name, sg.Type)
	case db != nil && (*db < 0 || math.IsInf(*db, 0) || math.IsNaN(*db)):
		d.errAt(path+".deadband", "%s.deadband: %v is not a deadband (0 or more, in %s)", path, *db, sg.unitName())
	case pc != nil && (*pc <= 0 || *pc > 100 || math.IsNaN(*pc)):
		d.errAt(path+".deadband_percent", "%s.deadband_percent: %v is out of range (above 0, at most 100)", path, *pc)
	}
	if s := r.MaxSilence; s < time.Second || s > 24*time.Hour {
		d.errAt(path+".max_silence", "%s.max_silence: %s is out of range (1s to 24h)", path, s)
	}
}

// unitName is the signal's unit for messages.
func (sg Signal) unitName() string {
	if sg.Unit == "" {
		return "the signal's unit"
	}
	return sg.Unit
}

// fieldType is the InfluxDB field type a signal's values get.
func (sg Signal) fieldType() string {
	switch sg.Type {
	case Bool:
		return "boolean"
	case Text:
		return "string"
	}
	return "float"
}

// checkKinds holds the templates of one device kind (one InfluxDB
// measurement) to one field type per signal: InfluxDB refuses a point
// whose field has another type than the measurement's. The station's
// templates are checked against each other and against the built-in ones
// of their kind, which stations of the same hub may use.
func checkKinds(st *Station, decs map[string]*decoder, builtin []*Template) {
	type first struct {
		typ, where string
	}
	fields := map[string]first{} // kind/signal -> its first type
	note := func(t *Template, builtin bool) {
		if t.Body == nil {
			return
		}
		for _, r := range t.Body.Signals() {
			key := t.Kind + "/" + r.Name
			where := fmt.Sprintf("template %s", t.Name)
			if builtin {
				where = fmt.Sprintf("the built-in template %s", t.Name)
			}
			f, seen := fields[key]
			switch {
			case !seen:
				fields[key] = first{r.fieldType(), where}
			case f.typ != r.fieldType() && !builtin:
				path := r.Path + ".type"
				decs[t.Name].errAt(path, "%s: signal %s is a %s here but a %s in %s; both are of kind %s, one InfluxDB measurement, and InfluxDB refuses a field of two types",
					path, r.Name, r.fieldType(), f.typ, f.where, t.Kind)
			}
		}
	}
	kinds := map[string]bool{}
	for _, t := range st.Templates {
		kinds[t.Kind] = true
	}
	for _, t := range builtin {
		if st.Templates[t.Name] == nil && kinds[t.Kind] {
			note(t, true)
		}
	}
	for _, n := range slices.Sorted(maps.Keys(st.Templates)) {
		note(st.Templates[n], false)
	}
}

// checkSources warns of a station's template that reads a signal from
// where a built-in template reads one of the same name and unit, but
// converts it another way (another scale, type or byte order), unless
// another built-in template reads it that way too. The built-in templates
// come from the devices' datasheets; a register map copied with a wrong
// scale gives values that look plausible and are not.
func checkSources(st *Station, decs map[string]*decoder, builtin []*Template) {
	type read struct{ template, conversion string }
	var reads map[[4]string][]read // protocol, signal, unit, source -> the built-ins' reads
	for _, t := range st.Templates {
		if t.Body == nil || slices.ContainsFunc(builtin, func(b *Template) bool { return b.File == t.File }) {
			continue
		}
		if reads == nil {
			reads = map[[4]string][]read{}
			for _, b := range builtin {
				for _, bs := range b.Body.Signals() {
					k := [4]string{b.Protocol, bs.Name, bs.Unit, bs.Source}
					reads[k] = append(reads[k], read{b.Name, bs.Conversion})
				}
			}
		}
		for _, sg := range t.Body.Signals() {
			rs := reads[[4]string{t.Protocol, sg.Name, sg.Unit, sg.Source}]
			if sg.Source == "" || len(rs) == 0 || slices.ContainsFunc(rs, func(r read) bool { return r.conversion == sg.Conversion }) {
				continue
			}
			if t.Unlike == nil {
				t.Unlike = map[string]Unlike{}
			}
			t.Unlike[sg.Name] = Unlike{rs[0].template, rs[0].conversion}
			decs[t.Name].warnAt(sg.Path, "%s: template %s reads %s from %s as %s, where the built-in template %s, made from that device's datasheet, reads it as %s: use template %s if the device is of that model; if not, check the type, byte order and scale against the device's datasheet",
				sg.Path, t.Name, sg.Name, sg.Source, sg.Conversion, rs[0].template, rs[0].conversion, rs[0].template)
		}
	}
}

// BuiltinTemplates loads every built-in template (configs/devices), in
// name order; the error lists the problems of those that do not load.
func BuiltinTemplates() ([]*Template, error) {
	des, err := Embedded.ReadDir("devices")
	if err != nil {
		return nil, err
	}
	var out []*Template
	var errs Errors
	for _, de := range des {
		t, d, _ := loadTemplate(strings.TrimSuffix(de.Name(), ".yaml"), templates{})
		if d != nil {
			errs = append(errs, d.errs...)
		}
		if t != nil && t.Body != nil {
			out = append(out, t)
		}
	}
	if len(errs) > 0 {
		return out, errs.sorted(0)
	}
	return out, nil
}

// suggest names the name of names closest to name, if one is close, and
// the names there are (what they are: "templates").
func suggest(name, what string, names []string) string {
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
	return s + " (" + what + ": " + strings.Join(names, ", ") + ")"
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
