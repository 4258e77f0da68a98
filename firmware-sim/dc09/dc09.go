// Package dc09 simulates the alarm panels (报警主机) of a station's
// sia-dc09 links: each panel connects to its link's listen address (TCP,
// or UDP when the link or the device's sim settings say so) and reports
// like a panel does: events on request (the control API's actions), link
// tests or Contact ID 602 periodic tests at an interval, each sent again
// until the receiver acknowledges it; on NAK it takes the receiver's time
// and sends again; on DUH it gives the message up. Frames are encrypted
// when the device has a key_file. It registers with the simulator.
package dc09

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"outpost/configs"
	cfg "outpost/configs/dc09"
	"outpost/firmware-sim/sim"
)

func init() {
	sim.Register(cfg.Protocol, newLink)
}

var (
	_ sim.Link  = (*link)(nil)
	_ sim.Actor = (*panel)(nil)
)

// link is the simulated panels of one sia-dc09 link.
type link struct {
	panels []*panel
}

func newLink(st *configs.Station, l *configs.Link, devs []*configs.Device, o sim.Options) (sim.Link, error) {
	set, ok := l.Settings.(*cfg.Link)
	if !ok {
		return nil, fmt.Errorf("link %s: not a %s link", l.ID, cfg.Protocol)
	}
	out := &link{}
	for _, d := range devs {
		p, err := newPanel(st, set, d, o)
		if err != nil {
			return nil, fmt.Errorf("link %s: %w", l.ID, err)
		}
		out.panels = append(out.panels, p)
	}
	return out, nil
}

// Serve runs every panel until ctx ends.
func (l *link) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range l.panels {
		wg.Go(func() { p.run(ctx) })
	}
	wg.Wait()
	return nil
}

// Close releases nothing: each panel's connection ends with Serve.
func (l *link) Close() error { return nil }

func (l *link) Devices() []sim.Device {
	out := make([]sim.Device, len(l.panels))
	for i, p := range l.panels {
		out[i] = p
	}
	return out
}

// Stats are the panels' own counters, by device.
func (l *link) Stats() any {
	out := map[string]Counters{}
	for _, p := range l.panels {
		out[p.id] = p.counters()
	}
	return out
}

// Counters are what a simulated panel did.
type Counters struct {
	Sent            int64 `json:"sent"`            // messages, once each
	Transmissions   int64 `json:"transmissions"`   // frames written, repeats included
	Retransmissions int64 `json:"retransmissions"` // frames written again for want of an ACK
	Acks            int64 `json:"acks"`
	Naks            int64 `json:"naks"`
	Duhs            int64 `json:"duhs"`
	Timeouts        int64 `json:"timeouts"`    // waits for an answer that ran out
	BadAnswers      int64 `json:"bad_answers"` // answers that do not parse or decrypt
	SendErrors      int64 `json:"send_errors"` // connections refused or broken
	Tests           int64 `json:"tests"`       // periodic tests sent
	EventsServed    int64 `json:"events_served"`
}

// panel is one simulated alarm panel.
type panel struct {
	id        string
	hdr       header
	addr      string
	transport cfg.Transport
	table     *cfg.Table
	timeout   time.Duration
	testEvery time.Duration
	test      cfg.TestKind
	faults    *sim.Faults // the panel sends nothing while silent
	sink      sim.Sink
	deaf      *atomic.Bool
	log       *slog.Logger

	queue   chan *outgoing
	answers chan result // from the connection's reader
	testsOn atomic.Bool

	// Used by the sender goroutine only.
	seq    int
	offset time.Duration // the receiver's clock minus ours, from its NAKs
	conn   net.Conn
	reader sync.WaitGroup
	dead   atomic.Bool // the connection's reader saw it end

	n struct {
		sent, transmissions, retransmissions, acks, naks, duhs, timeouts, badAnswers, sendErrors, tests, served atomic.Int64
	}
}

// outgoing is a message on its way, with what the control API waits for.
type outgoing struct {
	msg   message
	raise *sim.Raised   // the alarm it raises at the hub, until raised
	alarm bool          // it raised one: its ACK counts as an event served
	tried chan struct{} // closed after the first try to send it
}

// result is an answer, or the end of the connection.
type result struct {
	a   answer
	err error
}

func newPanel(st *configs.Station, set *cfg.Link, d *configs.Device, o sim.Options) (*panel, error) {
	ds, ok := d.Settings.(*cfg.Device)
	if !ok {
		return nil, fmt.Errorf("device %s: not an alarm panel", d.ID)
	}
	var body *cfg.Template
	if t := st.Templates[d.Template]; t != nil {
		body, _ = t.Body.(*cfg.Template)
	}
	p := &panel{
		id:        d.ID,
		hdr:       header{account: ds.Account, receiver: set.Receiver, line: set.Line, key: ds.Key()},
		addr:      dialAddr(set.Listen),
		transport: cfg.TCP,
		table:     cfg.NewTable(body),
		timeout:   2 * time.Second,
		testEvery: ds.TestEvery(),
		test:      "null",
		faults:    o.Faults,
		sink:      o.Sink,
		deaf:      o.Deaf,
		log:       o.Log.With("device", d.ID, "account", ds.Account),
		queue:     make(chan *outgoing, 64),
		answers:   make(chan result, 16),
	}
	if p.hdr.line == "" {
		p.hdr.line = "0"
	}
	if set.Transport == cfg.UDP {
		p.transport = cfg.UDP
	}
	if s := ds.Sim; s != nil {
		if s.Transport != "" {
			p.transport = s.Transport
		}
		if s.Timeout > 0 {
			p.timeout = s.Timeout
		}
		if s.Test != "" {
			p.test = s.Test
		}
	}
	if p.transport == cfg.Both || (set.Transport != cfg.Both && set.Transport != p.transport) {
		return nil, fmt.Errorf("device %s: sim.transport %s, but the link listens on %s", d.ID, p.transport, set.Transport)
	}
	p.testsOn.Store(p.testEvery > 0)
	return p, nil
}

// dialAddr is where a panel reaches a receiver listening on addr: on this
// machine when it listens on every interface.
func dialAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

func (p *panel) ID() string { return p.id }

func (p *panel) Stats() sim.Stats { return sim.Stats{EventsServed: p.n.served.Load()} }

func (p *panel) counters() Counters {
	return Counters{
		Sent: p.n.sent.Load(), Transmissions: p.n.transmissions.Load(), Retransmissions: p.n.retransmissions.Load(),
		Acks: p.n.acks.Load(), Naks: p.n.naks.Load(), Duhs: p.n.duhs.Load(), Timeouts: p.n.timeouts.Load(),
		BadAnswers: p.n.badAnswers.Load(), SendErrors: p.n.sendErrors.Load(), Tests: p.n.tests.Load(),
		EventsServed: p.n.served.Load(),
	}
}

// Actions lists what the control API may ask of a panel.
func (p *panel) Actions() []string {
	return []string{
		"alarm code=EEE zone=Z [partition=P] [user=U] (a Contact ID new event 1EEE; user= sends the user's number instead of the zone)",
		"restore code=EEE zone=Z [partition=P] (a Contact ID restore 3EEE)",
		"sia code=XX zone=Z [partition=P] (a SIA-DCS event, e.g. code=PA)",
		"tests on=true|false (periodic tests on or off; on sends one at once)",
		"null (a link test now)",
	}
}

// Act queues a message and returns once the panel first tried to send it
// (not waiting for its acknowledgement).
func (p *panel) Act(ctx context.Context, action string, args map[string]string) error {
	var o *outgoing
	var err error
	switch action {
	case "alarm", "restore":
		o, err = p.contactID(action, args)
	case "sia":
		o, err = p.siaEvent(args)
	case "tests":
		on, perr := strconv.ParseBool(args["on"])
		if perr != nil || len(args) != 1 {
			return fmt.Errorf("tests takes on=true or on=false, got %v", args)
		}
		if on && p.testEvery <= 0 {
			return fmt.Errorf("the panel has no test interval (set sim.tests or supervision)")
		}
		if was := p.testsOn.Swap(on); !on || was {
			return nil
		}
		// Back on (its network is back, say): a test at once, as a
		// panel reports in when it can again.
		p.n.tests.Add(1)
		o = p.testMessage()
	case "null":
		if len(args) != 0 {
			return fmt.Errorf("null takes no arguments, got %v", args)
		}
		o = &outgoing{msg: message{token: "NULL"}}
	default:
		return fmt.Errorf("unknown action %q (have: %s)", action, strings.Join(p.Actions(), "; "))
	}
	if err != nil {
		return err
	}
	if p.faults.Silent(p.id) {
		return fmt.Errorf("the panel is silent: it sends nothing")
	}
	o.tried = make(chan struct{})
	select {
	case p.queue <- o:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-o.tried:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// num reads a numeric argument in [lo, hi]; def when absent (def < 0: it
// is required).
func num(args map[string]string, key string, lo, hi, def int) (int, error) {
	v, ok := args[key]
	if !ok {
		if def < 0 {
			return 0, fmt.Errorf("%s= is required", key)
		}
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, fmt.Errorf("%s=%q: want a number from %d to %d", key, v, lo, hi)
	}
	return n, nil
}

func known(args map[string]string, keys ...string) error {
	for k := range args {
		found := false
		for _, want := range keys {
			found = found || k == want
		}
		if !found {
			return fmt.Errorf("unknown argument %s= (takes %s)", k, strings.Join(keys, ", "))
		}
	}
	return nil
}

func (p *panel) contactID(action string, args map[string]string) (*outgoing, error) {
	if err := known(args, "code", "zone", "partition", "user"); err != nil {
		return nil, err
	}
	code, err := num(args, "code", 1, 999, -1)
	if err != nil {
		return nil, err
	}
	part, err := num(args, "partition", 0, 99, 1)
	if err != nil {
		return nil, err
	}
	q := 1
	if action == "restore" {
		q = 3
	}
	_, hasUser := args["user"]
	zone, err := num(args, "zone", 0, 999, map[bool]int{true: 0, false: -1}[hasUser])
	if err != nil {
		return nil, err
	}
	if hasUser {
		if zone, err = num(args, "user", 0, 999, -1); err != nil {
			return nil, err
		}
	}
	m := p.table.ContactID(code, q)
	o := &outgoing{msg: message{token: "ADM-CID", data: fmt.Sprintf("%d%03d %02d %03d", q, code, part, zone)}}
	if !m.Test {
		o.raise = &sim.Raised{Device: p.id, Kind: m.Kind, State: string(m.State), Source: "dc09"}
	}
	return o, nil
}

func (p *panel) siaEvent(args map[string]string) (*outgoing, error) {
	if err := known(args, "code", "zone", "partition"); err != nil {
		return nil, err
	}
	code := args["code"]
	if len(code) != 2 || strings.ToUpper(code) != code || strings.ContainsAny(code, "0123456789") {
		return nil, fmt.Errorf("code=%q: want a SIA event code of two capital letters, e.g. PA", code)
	}
	zone, err := num(args, "zone", 0, 9999, -1)
	if err != nil {
		return nil, err
	}
	part, err := num(args, "partition", 0, 99, 1)
	if err != nil {
		return nil, err
	}
	m := p.table.SIA(code)
	o := &outgoing{msg: message{token: "SIA-DCS", data: fmt.Sprintf("Nri%d/%s%03d", part, code, zone)}}
	if !m.Test {
		o.raise = &sim.Raised{Device: p.id, Kind: m.Kind, State: string(m.State), Source: "dc09"}
	}
	return o, nil
}

// run sends what is queued and the periodic tests, one message at a time
// as a panel does, until ctx ends.
func (p *panel) run(ctx context.Context) {
	defer p.disconnect()
	if p.faults.Silent(p.id) {
		p.log.Info("panel silent")
	}
	var tick <-chan time.Time
	if p.testEvery > 0 {
		t := time.NewTicker(p.testEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		var o *outgoing
		select {
		case <-ctx.Done():
			return
		case o = <-p.queue:
		case <-tick:
			if !p.testsOn.Load() || p.faults.Silent(p.id) {
				continue
			}
			p.n.tests.Add(1)
			o = p.testMessage()
		}
		p.deliver(ctx, o)
	}
}

// testMessage is a periodic test: a NULL link test, or Contact ID 602.
func (p *panel) testMessage() *outgoing {
	if p.test == "602" {
		return &outgoing{msg: message{token: "ADM-CID", data: "1602 00 000"}}
	}
	return &outgoing{msg: message{token: "NULL"}}
}

// Pauses after a failed connection, doubling up to maxPause.
const maxPause = 5 * time.Second

// deliver sends a message until the receiver acknowledges it (or answers
// DUH), or ctx ends.
func (p *panel) deliver(ctx context.Context, o *outgoing) {
	p.seq = p.seq%9999 + 1
	p.n.sent.Add(1)
	tried := sync.OnceFunc(func() {
		if o.tried != nil {
			close(o.tried)
		}
	})
	defer tried()
	pause := p.timeout
	for tries := 0; ctx.Err() == nil; tries++ {
		frame, err := frameOf(p.hdr, o.msg, p.seq, time.Now().Add(p.offset))
		if err != nil {
			p.log.Error("message not encoded", "err", err)
			return
		}
		err = p.send(ctx, frame)
		tried()
		if err != nil {
			p.n.sendErrors.Add(1)
			p.log.Debug("not sent", "err", err)
			p.disconnect()
			if !wait(ctx, pause) {
				return
			}
			pause = min(2*pause, maxPause)
			continue
		}
		p.n.transmissions.Add(1)
		if tries > 0 {
			p.n.retransmissions.Add(1)
		}
		if o.raise != nil {
			// The alarm is on its way once its first frame is written.
			r := *o.raise
			r.At = time.Now()
			o.raise, o.alarm = nil, true
			if p.sink != nil {
				p.sink.Raised(r)
			}
		}
		switch a, ok := p.await(ctx); {
		case !ok:
			p.n.timeouts.Add(1)
		case a.kind == "ACK":
			p.n.acks.Add(1)
			if o.alarm {
				p.n.served.Add(1)
			}
			return
		case a.kind == "NAK":
			p.n.naks.Add(1)
			p.offset = a.clock.Sub(time.Now())
			p.log.Info("NAK: taking the receiver's time", "offset", p.offset.Round(time.Millisecond))
		case a.kind == "DUH":
			p.n.duhs.Add(1)
			p.log.Warn("DUH: the receiver cannot take the message; given up", "id", o.msg.token, "seq", p.seq)
			return
		}
	}
}

// wait pauses for d, or until ctx ends (false).
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// send writes a frame, connecting first if need be.
func (p *panel) send(ctx context.Context, frame []byte) error {
	if p.conn != nil && p.dead.Load() {
		p.disconnect() // the receiver closed it while the panel was idle
	}
	if p.conn == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, p.timeout)
		c, err := d.DialContext(dctx, string(p.transport), p.addr)
		cancel()
		if err != nil {
			return err
		}
		if c.LocalAddr().String() == c.RemoteAddr().String() {
			// Nothing listens there yet, and the kernel gave the socket
			// that very port: it would talk to itself for good.
			c.Close()
			return fmt.Errorf("%s %s: connected to itself (the receiver is not up yet)", p.transport, p.addr)
		}
		p.conn = c
		p.dead.Store(false)
		p.drain()
		p.reader.Go(func() { p.read(c) })
	}
	p.conn.SetWriteDeadline(time.Now().Add(p.timeout))
	_, err := p.conn.Write(frame)
	return err
}

// drain drops answers left from an earlier connection.
func (p *panel) drain() {
	for {
		select {
		case <-p.answers:
		default:
			return
		}
	}
}

// disconnect closes the connection and waits for its reader to end.
func (p *panel) disconnect() {
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
	p.reader.Wait()
}

// read passes the answers that arrive on c to the sender, until c is
// closed; then it passes the error.
func (p *panel) read(c net.Conn) {
	pass := func(r result) {
		if r.err != nil {
			p.dead.Store(true)
		}
		select {
		case p.answers <- r:
		default: // the sender is not waiting: a late answer, dropped
		}
	}
	if p.transport == cfg.UDP {
		buf := make([]byte, 8192)
		for {
			n, err := c.Read(buf)
			if err != nil {
				pass(result{err: err})
				return
			}
			p.take(string(buf[:n]), pass)
		}
	}
	r := bufio.NewReaderSize(c, 8192)
	for {
		line, err := r.ReadString('\r')
		if err != nil {
			pass(result{err: err})
			return
		}
		p.take(line, pass)
	}
}

// take parses one answer frame (LF ... CR) and passes it on.
func (p *panel) take(s string, pass func(result)) {
	if p.deaf != nil && p.deaf.Load() {
		return
	}
	i := strings.LastIndexByte(s, '\n')
	if i < 0 || !strings.HasSuffix(s, "\r") {
		p.n.badAnswers.Add(1)
		return
	}
	a, err := readAnswer(s[i+1:len(s)-1], p.hdr.key)
	if err != nil {
		p.n.badAnswers.Add(1)
		p.log.Warn("answer refused", "err", err)
		return
	}
	pass(result{a: a})
}

// await waits up to the timeout for the answer to the frame just sent; a
// NAK carries no sequence number. A broken connection ends the wait at
// once (false), as does a timeout.
func (p *panel) await(ctx context.Context) (answer, bool) {
	t := time.NewTimer(p.timeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return answer{}, false
		case <-t.C:
			return answer{}, false
		case r := <-p.answers:
			if r.err != nil {
				p.disconnect()
				return answer{}, false
			}
			if r.a.kind == "NAK" || r.a.seq == p.seq && strings.EqualFold(r.a.acct, p.hdr.account) {
				return r.a, true
			}
		}
	}
}
