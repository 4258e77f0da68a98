// Package dc09 is the SIA DC-09 receiver ("sia-dc09"): alarm panels
// (报警主机) report to it over TCP and UDP with Contact ID (ADM-CID) or SIA
// (SIA-DCS) messages, in clear or AES-encrypted, and send it link tests
// (NULL) and periodic tests. Every event becomes an event message; the ACK
// goes back only once the gateway has the event on disk, so a panel keeps
// sending what the gateway could not keep. A panel that falls silent
// beyond its supervision time is reported offline.
//
// Parsing and answering are pure functions of bytes (frame.go, data.go);
// the remembered acknowledgements that keep a repeated frame from raising
// a second event are in memory.go.
package dc09

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cfg "outpost/configs/dc09"
	"outpost/drivers"
	"outpost/gateway/model"
)

func init() {
	drivers.Register(cfg.Protocol, New)
}

var _ drivers.Driver = (*Driver)(nil)

// Driver receives the frames of the panels on one link.
type Driver struct {
	name   string
	set    *cfg.Link
	panels map[string]*panel // by upper-case account
	mem    *memory
	log    *slog.Logger
	now    func() time.Time

	drivers.Listening
	counts    counters // frames no panel can be held to
	strangers strangers
	limiter   limiter
}

// panel is one alarm panel (a device) and its health.
type panel struct {
	id, kind string
	set      *cfg.Device
	key      []byte
	table    *cfg.Table

	// mu keeps one frame of the panel at a time between the duplicate
	// check, the emit and the acknowledgement, and guards the rest.
	mu        sync.Mutex
	state     model.HealthState // "" until the first frame or silence
	reason    string
	refused   bool // offline, and its frames come but are refused
	counters  map[string]uint64
	lastHeard time.Time
}

// New builds the receiver of a sia-dc09 link. It does no I/O.
func New(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	set, ok := link.Config.Settings.(*cfg.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not a %s link", link.Name(), cfg.Protocol)
	}
	d := &Driver{
		name: link.Name(), set: set, panels: map[string]*panel{}, log: log, now: time.Now,
		mem: newMemory(filepath.Join(link.Station.StateDir, "dc09", link.Name()+".json"), set.Duplicates),
	}
	for _, dev := range link.Devices {
		t := link.Template(dev)
		ds, ok := dev.Settings.(*cfg.Device)
		if t == nil || !ok {
			return nil, fmt.Errorf("device %s on %s: not an alarm panel of protocol %s", dev.ID, link.Name(), cfg.Protocol)
		}
		body, _ := t.Body.(*cfg.Template)
		acct := strings.ToUpper(ds.Account)
		if _, dup := d.panels[acct]; dup {
			return nil, fmt.Errorf("device %s on %s: account %s is used twice", dev.ID, link.Name(), ds.Account)
		}
		d.panels[acct] = &panel{id: dev.ID, kind: t.Kind, set: ds, key: ds.Key(), table: cfg.NewTable(body), counters: map[string]uint64{}}
	}
	return d, nil
}

// Run listens until ctx ends. It returns an error when it cannot listen,
// or a listener fails.
func (d *Driver) Run(ctx context.Context, emit drivers.Emit) error {
	start := d.now()
	if err := d.mem.load(start); err != nil {
		d.log.Warn("remembered acknowledgements unreadable; starting without them", "err", err)
	}
	for _, p := range d.panels {
		p.mu.Lock()
		p.lastHeard = start // supervision counts from the start
		p.mu.Unlock()
	}
	tcp, udp, err := d.listen()
	if err != nil {
		return fmt.Errorf("link %s: %w", d.name, err)
	}
	d.log.Info("receiver up", "address", d.Addr(), "transport", d.set.Transport, "panels", len(d.panels))
	d.Up()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	if tcp != nil {
		wg.Go(func() { errs <- d.serveTCP(ctx, tcp, emit, &wg) })
		context.AfterFunc(ctx, func() { tcp.Close() })
	}
	if udp != nil {
		wg.Go(func() { errs <- d.serveUDP(ctx, udp, emit, &wg) })
		context.AfterFunc(ctx, func() { udp.Close() })
	}
	for _, p := range d.panels {
		if p.set.Supervision > 0 {
			wg.Go(func() { d.supervise(ctx, p, emit) })
		}
	}
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errs:
	}
	cancel()
	wg.Wait()
	return runErr
}

// listen opens the link's listeners. With port 0 and both transports, TCP
// picks the port and UDP takes the same one.
func (d *Driver) listen() (net.Listener, net.PacketConn, error) {
	want := d.set.Transport
	for try := 0; ; try++ {
		var tcp net.Listener
		var udp net.PacketConn
		var err error
		addr := d.set.Listen
		if want != cfg.UDP {
			if tcp, err = net.Listen("tcp", addr); err != nil {
				return nil, nil, err
			}
			addr = tcp.Addr().String()
		}
		if want != cfg.TCP {
			udp, err = net.ListenPacket("udp", addr)
			if err != nil && tcp != nil {
				tcp.Close()
				if _, port, _ := net.SplitHostPort(d.set.Listen); port == "0" && try < 20 {
					continue // another socket has that UDP port: pick again
				}
			}
			if err != nil {
				return nil, nil, err
			}
			addr = udp.LocalAddr().String()
		}
		d.SetAddr(addr)
		return tcp, udp, nil
	}
}

// Timeouts of the sockets.
const writeTimeout = 5 * time.Second

// serveTCP accepts connections until the listener is closed, each served
// in its own goroutine (counted in wg), up to max_connections at once.
func (d *Driver) serveTCP(ctx context.Context, ln net.Listener, emit drivers.Emit, wg *sync.WaitGroup) error {
	slots := make(chan struct{}, d.set.MaxConnections)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("link %s: accept: %w", d.name, err)
		}
		select {
		case slots <- struct{}{}:
		default:
			d.counts.add("refused_connections")
			d.warn("connection refused: too many open", "from", c.RemoteAddr().String(), "max_connections", d.set.MaxConnections)
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-slots }()
			d.serveConn(ctx, c, emit)
		})
	}
}

// serveConn reads frames from one connection, answering each, until the
// panel closes it, it stays idle too long, or ctx ends.
func (d *Driver) serveConn(ctx context.Context, c net.Conn, emit drivers.Emit) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	from := c.RemoteAddr().String()
	r := bufio.NewReaderSize(c, maxFrame)
	for {
		c.SetReadDeadline(time.Now().Add(d.set.IdleTimeout))
		raw, err := d.readFrame(r, from)
		if err != nil {
			return // closed, idle or ctx ended: the panel connects again
		}
		ans := d.handle(raw, from, emit)
		if ans == nil {
			continue
		}
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(ans); err != nil {
			d.log.Debug("answer not sent", "from", from, "err", err)
			return
		}
	}
}

// readFrame reads up to the next CR and returns what follows the last LF
// before it. Bytes that fit no frame, and frames longer than a frame can
// be, are skipped and counted: the buffer never grows.
func (d *Driver) readFrame(r *bufio.Reader, from string) ([]byte, error) {
	for {
		line, err := r.ReadSlice('\r')
		if errors.Is(err, bufio.ErrBufferFull) {
			d.counts.add("length_errors")
			d.warn("frame longer than DC-09 allows; skipped", "from", from, "max_bytes", maxFrame)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = r.ReadSlice('\r')
			}
			if err != nil {
				return nil, err
			}
			continue
		}
		if err != nil {
			return nil, err
		}
		i := bytes.LastIndexByte(line, '\n')
		if i < 0 {
			d.counts.add("bad_frames")
			d.warn("bytes without a frame's LF; skipped", "from", from, "bytes", len(line))
			continue
		}
		return line[i+1 : len(line)-1], nil
	}
}

// serveUDP answers each datagram (one frame) to its sender, handling up to
// max_connections at once, until the socket is closed.
func (d *Driver) serveUDP(ctx context.Context, pc net.PacketConn, emit drivers.Emit, wg *sync.WaitGroup) error {
	slots := make(chan struct{}, d.set.MaxConnections)
	buf := make([]byte, 64<<10)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("link %s: udp: %w", d.name, err)
		}
		from := addr.String()
		raw, ok := datagram(buf[:n])
		if !ok {
			d.counts.add("bad_frames")
			d.warn("datagram is not one LF...CR frame; ignored", "from", from, "bytes", n)
			continue
		}
		if len(raw) > maxFrame {
			d.counts.add("length_errors")
			d.warn("frame longer than DC-09 allows; ignored", "from", from, "bytes", n)
			continue
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		raw = bytes.Clone(raw)
		wg.Go(func() {
			defer func() { <-slots }()
			if ans := d.handle(raw, from, emit); ans != nil {
				if _, err := pc.WriteTo(ans, addr); err != nil {
					d.log.Debug("answer not sent", "from", from, "err", err)
				}
			}
		})
	}
}

// datagram is the frame of a datagram: what stands between its LF and its
// last CR.
func datagram(b []byte) ([]byte, bool) {
	end := bytes.LastIndexByte(b, '\r')
	if end < 0 {
		return nil, false
	}
	i := bytes.LastIndexByte(b[:end], '\n')
	if i < 0 {
		return nil, false
	}
	return b[i+1 : end], true
}

// handle takes one frame and returns the answer, or nil for none: a frame
// whose CRC or length is wrong gets none (the panel sends it again), nor
// does an event the gateway could not keep.
func (d *Driver) handle(raw []byte, from string, emit drivers.Emit) []byte {
	d.counts.add("frames")
	f, err := ParseFrame(raw)
	if f == nil {
		d.counts.add(Counter(err))
		d.warn("frame refused", "from", from, "err", err)
		return nil
	}
	p := d.panels[strings.ToUpper(f.Account)]
	if p == nil {
		d.counts.add("unknown_accounts")
		d.counts.add("duhs")
		d.strangers.heard(f.Account, d.now())
		d.warn("frame from an account no device has: answered DUH", "from", from, "account", f.Account, "id", f.Token)
		return d.answer(DUH, f, nil)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.counters["frames"]++
	ans, why := d.take(p, f, err, emit)
	if why != "" {
		d.log.Warn("frame not acknowledged", "device", p.id, "account", f.Account, "from", from, "answer", ansName(ans), "reason", why)
	}
	return ans
}

// take handles a frame of a panel (p.mu held) and returns the answer and,
// when it is not ACK, why.
func (d *Driver) take(p *panel, f *Frame, perr error, emit drivers.Emit) ([]byte, string) {
	now := d.now()
	duh := func(counter, reason string) ([]byte, string) {
		p.counters[counter]++
		p.counters["duhs"]++
		p.degrade(d, emit, reason)
		return d.answer(DUH, f, nil), reason
	}
	switch {
	case perr != nil:
		return duh(Counter(perr), fmt.Sprintf("account %s: %v", f.Account, perr))
	case d.set.Receiver != "" && f.Receiver != "" && !strings.EqualFold(f.Receiver, d.set.Receiver):
		return duh("bad_frames", fmt.Sprintf("account %s sends to receiver %s, but this is receiver %s: check the panel's receiver number", f.Account, f.Receiver, d.set.Receiver))
	case d.set.Line != "" && f.Line != "" && !strings.EqualFold(f.Line, d.set.Line):
		return duh("bad_frames", fmt.Sprintf("account %s sends on line %s, but this is line %s: check the panel's line prefix", f.Account, f.Line, d.set.Line))
	case f.Token != TokenCID && f.Token != TokenSIA && f.Token != TokenNull:
		return duh("bad_frames", fmt.Sprintf("account %s sends %q messages; this receiver takes ADM-CID, SIA-DCS and NULL", f.Account, f.Token))
	case f.Encrypted && p.key == nil:
		return duh("decrypt_errors", fmt.Sprintf("account %s sends encrypted frames, but the device has no key_file", f.Account))
	case !f.Encrypted && p.key != nil:
		return duh("bad_frames", fmt.Sprintf("account %s sends frames in clear, but the device has a key_file: set the same key in the panel", f.Account))
	}
	if f.Encrypted {
		if err := f.Decrypt(p.key); err != nil {
			return duh("decrypt_errors", fmt.Sprintf("account %s: %v: check that the panel has the key of key_file", f.Account, err))
		}
	}
	if (f.Encrypted && !f.HasTime) || (f.HasTime && !d.set.Window.Contains(f.Time, now)) {
		p.counters["naks"]++
		why := "an encrypted frame without a timestamp"
		if f.HasTime {
			why = fmt.Sprintf("panel time %s is %s off the gateway's", f.Time.Format(time.RFC3339), f.Time.Sub(now).Round(time.Second))
		}
		return d.answer(NAK, f, nil), fmt.Sprintf("account %s: %s: answered NAK with the gateway's time", f.Account, why)
	}
	// A whole, authentic frame of the panel: it is alive.
	p.heard(d, emit, now)
	if f.Token == TokenNull {
		p.counters["link_tests"]++
		return d.ack(p, f), ""
	}
	reports, err := parseData(f)
	if err != nil {
		return duh(Counter(err), fmt.Sprintf("account %s: %v", f.Account, err))
	}
	var events []model.Message
	for _, r := range reports {
		m := meaning(p.table, r)
		if m.Test {
			p.counters["tests"]++
			continue
		}
		events = append(events, p.event(f, r, m, now))
	}
	if len(events) == 0 {
		return d.ack(p, f), ""
	}
	rec := recordOf(f, now)
	if d.mem.seen(rec, now) {
		p.counters["duplicates"]++
		return d.ack(p, f), ""
	}
	held := false
	for _, ev := range events {
		switch err := emit(ev); {
		case errors.Is(err, drivers.ErrHeld):
			held = true
		case err != nil:
			p.counters["emit_errors"]++
			return nil, fmt.Sprintf("account %s: event %s not kept (%v): no ACK, so that the panel sends it again", f.Account, ev.Event.Kind, err)
		}
		p.counters["events"]++
	}
	if held {
		// Sent from memory, not durable: the panel keeps the frame until
		// its next try, which is then a repeat, answered, not raised again.
		p.counters["held"]++
		d.mem.remember(rec, now)
		return nil, fmt.Sprintf("account %s: events held in the gateway's memory, not durable (the disk fails): no ACK until the panel's next try", f.Account)
	}
	if err := d.mem.add(rec, now); err != nil {
		// The events are safe: a lost record can only let a repeat of
		// this frame, after a restart, raise them twice.
		p.counters["state_errors"]++
		d.log.Error("acknowledged frames not remembered", "device", p.id, "err", fmt.Errorf("device %s: %w", p.id, err))
	}
	return d.ack(p, f), ""
}

func (d *Driver) ack(p *panel, f *Frame) []byte {
	p.counters["acks"]++
	return d.answer(ACK, f, p.key)
}

func (d *Driver) answer(kind string, f *Frame, key []byte) []byte {
	b, err := Answer(kind, f, key, d.now())
	if err != nil {
		d.log.Error("answer not built", "answer", kind, "account", f.Account, "err", err)
		return nil
	}
	return b
}

// ansName names an answer for the log.
func ansName(b []byte) string {
	switch {
	case b == nil:
		return "none"
	case bytes.Contains(b, []byte(`"NAK"`)):
		return NAK
	case bytes.Contains(b, []byte(`"DUH"`)):
		return DUH
	}
	return ACK
}

// parseData parses the reports of an event frame.
func parseData(f *Frame) ([]Report, error) {
	if f.Token == TokenCID {
		r, err := ParseContactID(f.Data)
		if err != nil {
			return nil, err
		}
		return []Report{r}, nil
	}
	return ParseSIA(f.Data)
}

// meaning looks a report up in the panel's code table.
func meaning(tb *cfg.Table, r Report) cfg.Meaning {
	if r.Format == TokenSIA {
		return tb.SIA(r.Code)
	}
	code, _ := strconv.Atoi(r.Code)
	return tb.ContactID(code, r.Qualifier)
}

// event is the event message of a report.
func (p *panel) event(f *Frame, r Report, m cfg.Meaning, now time.Time) model.Message {
	det := map[string]string{
		"account":   f.Account,
		"format":    r.Format,
		"code":      r.Code,
		"state":     string(m.State),
		"dc09_seq":  f.Seq,
		"encrypted": strconv.FormatBool(f.Encrypted),
	}
	put := func(k, v string) {
		if v != "" {
			det[k] = v
		}
	}
	put("description", m.Name)
	put("receiver", f.Receiver)
	put("line", f.Line)
	put("text", r.Text)
	if r.Format == TokenCID {
		det["qualifier"] = strconv.Itoa(r.Qualifier)
	}
	if r.Partition != "" {
		det["partition"] = number(r.Partition)
	}
	user := r.User
	if r.Number != "" {
		if m.User {
			user = r.Number
		} else {
			n := number(r.Number)
			det["zone"] = n
			if z, err := strconv.Atoi(n); err == nil {
				put("zone_name", p.set.ZoneName(z))
			}
		}
	}
	if user != "" {
		n := number(user)
		det["user"] = n
		if u, err := strconv.Atoi(n); err == nil {
			put("user_name", p.set.UserName(u))
		}
	}
	t := now
	if f.HasTime {
		t = f.Time
		det["panel_time"] = f.Time.UTC().Format(time.RFC3339)
	}
	return model.Message{Device: p.id, DeviceKind: p.kind, Kind: model.KindEvent, Time: t.UTC(),
		Event: &model.Event{Kind: m.Kind, Severity: m.Severity, Details: det}}
}

// heard marks a valid frame of the panel (p.mu held): it is online.
func (p *panel) heard(d *Driver, emit drivers.Emit, now time.Time) {
	p.lastHeard = now
	p.setState(d, emit, model.Online, "")
}

// degrade marks a frame of the panel that could not be taken (p.mu held):
// the panel is there, but what it says does not get through. A panel
// offline (nothing taken for its supervision time) stays offline: its
// alarms do not get through either, and it would otherwise flap at every
// frame refused and every supervision time. Its reason says once that
// its frames come, refused.
func (p *panel) degrade(d *Driver, emit drivers.Emit, reason string) {
	switch {
	case p.state != model.Offline:
		p.setState(d, emit, model.Degraded, reason)
	case !p.refused:
		p.setState(d, emit, model.Offline, p.refusal(reason))
		p.refused = true
	}
}

// refusal is the offline reason of a panel whose frames come, refused
// for reason.
func (p *panel) refusal(reason string) string {
	return fmt.Sprintf("no message from panel account %s taken for %s; its frames come, but are refused: %s", p.set.Account, p.set.Supervision, reason)
}

// setState changes the panel's health (p.mu held) and emits it when the
// state changed, or an offline panel's reason.
func (p *panel) setState(d *Driver, emit drivers.Emit, state model.HealthState, reason string) {
	if p.state == state && (state != model.Offline || p.reason == reason) {
		return
	}
	p.state, p.reason, p.refused = state, reason, false
	level := slog.LevelInfo
	if state != model.Online {
		level = slog.LevelWarn
	}
	d.log.Log(context.Background(), level, "panel health", "device", p.id, "state", state, "reason", reason)
	err := emit(model.Message{Device: p.id, DeviceKind: p.kind, Kind: model.KindHealth, Time: d.now().UTC(),
		Health: &model.Health{State: state, Reason: reason, Counters: maps.Clone(p.counters)}})
	if err != nil {
		d.log.Warn("health not kept", "device", p.id, "err", err)
	}
}

// supervise reports the panel offline when no valid frame came for its
// supervision time, until ctx ends. The frame handler reports it online
// again.
func (d *Driver) supervise(ctx context.Context, p *panel, emit drivers.Emit) {
	sup := p.set.Supervision
	t := time.NewTimer(sup)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		next := sup
		switch left := sup - d.now().Sub(p.lastHeard); {
		case left > 0:
			next = left
		case p.state == model.Degraded:
			// Its frames come, and are refused: that is the cause.
			p.setState(d, emit, model.Offline, p.refusal(p.reason))
			p.refused = true
		case p.state != model.Offline:
			why := fmt.Sprintf("no message from panel account %s for %s: periodic tests stopped, or the panel's network is down", p.set.Account, sup)
			if others := d.strangers.since(p.lastHeard); len(others) > 0 {
				// A mistyped account, in the panel or in the station file.
				why = fmt.Sprintf("no message from panel account %s for %s, while frames of account %s, which no device has, come on %s: check the account set in the panel against the station file's",
					p.set.Account, sup, strings.Join(others, ", "), d.name)
			}
			p.setState(d, emit, model.Offline, why)
		}
		p.mu.Unlock()
		t.Reset(next)
	}
}

// strangers remembers the accounts no device has whose frames came
// lately (the newest maxStrangers), for the reasons of silent panels.
type strangers struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

const maxStrangers = 8

func (s *strangers) heard(account string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil {
		s.seen = map[string]time.Time{}
	}
	if _, known := s.seen[account]; !known && len(s.seen) >= maxStrangers {
		oldest := ""
		for a, t := range s.seen {
			if oldest == "" || t.Before(s.seen[oldest]) {
				oldest = a
			}
		}
		delete(s.seen, oldest)
	}
	s.seen[account] = now
}

// since lists, sorted, the accounts heard since t.
func (s *strangers) since(t time.Time) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for a, at := range s.seen {
		if !at.Before(t) {
			out = append(out, a)
		}
	}
	slices.Sort(out)
	return out
}

// counters counts what happens on the link outside any panel.
type counters struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *counters) add(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[name]++
}

func (c *counters) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.m)
}

// warn logs a problem of the link with its counters, at most once per
// logEvery, so that a flood of bad frames cannot flood the log.
func (d *Driver) warn(msg string, args ...any) {
	if n, ok := d.limiter.allow(d.now()); ok {
		args = append(args, "counters", d.counts.snapshot())
		if n > 0 {
			args = append(args, "not_logged", n)
		}
		d.log.Warn(msg, args...)
	}
}

const logEvery = 10 * time.Second

// limiter lets one message through per logEvery and counts the others.
type limiter struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (l *limiter) allow(now time.Time) (suppressed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < logEvery {
		l.suppressed++
		return 0, false
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return n, true
}

// Stats are the link's own counters (frames no panel can be held to), for
// tests and the status page.
func (d *Driver) Stats() map[string]uint64 { return d.counts.snapshot() }
