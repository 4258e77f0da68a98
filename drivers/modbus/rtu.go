package modbus

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/goburrow/modbus"
	mb "outpost/configs/modbus"
	"outpost/drivers"
	"outpost/drivers/bus"
)

// rtuTransport sends RTU frames on a serial port and reads the answers. It
// implements goburrow's Transporter; goburrow's RTU packager frames the
// requests. It is not safe for concurrent use: the bus lock serialises it.
type rtuTransport struct {
	port    bus.Port
	timeout time.Duration // per request, beyond the frames' own wire time
	silence time.Duration // between frames on the line
	char    time.Duration // one character on the line
	last    time.Time     // when the line last carried a byte
	// unsettled: a bad frame was drained, and more of it may still come.
	unsettled bool
	// echoes: the adapter sends the master's requests back to it before
	// the answers (a two-wire RS-485 adapter whose receiver stays on while
	// it transmits). Learnt from a read request that came back before its
	// answer (an answer to a write is a copy of its request), and dropped
	// from then on.
	echoes bool
	// heard is the last request of another master heard on the bus, at
	// heardAt; news, that the bus has not been told of it yet.
	heard   *Heard
	heardAt time.Time
	news    bool
	sent    []byte // the last request, whose late echo is not another master's
	buf     [256]byte
}

// heardFor is how long a request of another master heard on the bus is
// named in the errors of the gateway's own requests.
const heardFor = time.Minute

var _ modbus.Transporter = (*rtuTransport)(nil)

// Send writes one request after the inter-frame silence and reads its
// response by expected length, stopping early on an exception frame. A
// request that fails while another master was heard on the bus lately
// says so in its error.
func (t *rtuTransport) Send(req []byte) ([]byte, error) {
	resp, err := t.send(req)
	if m := master(err); m != nil && t.heard != nil && time.Since(t.heardAt) < heardFor {
		*m = t.heard
	}
	return resp, err
}

func (t *rtuTransport) send(req []byte) ([]byte, error) {
	want, err := rtuResponseLength(req)
	if err != nil {
		return nil, err
	}
	if t.unsettled {
		t.settle()
	}
	if d := time.Until(t.last.Add(t.silence)); d > 0 {
		time.Sleep(d)
	}
	// Whatever arrived since the last frame is stale: a late answer, noise,
	// or another master's traffic, which is listened for first.
	if err := t.listen(0); err != nil {
		return nil, &bus.PortError{Err: fmt.Errorf("read: %w", err)}
	}
	if err := t.port.ResetInputBuffer(); err != nil {
		return nil, &bus.PortError{Err: fmt.Errorf("flush input: %w", err)}
	}
	if _, err := t.port.Write(req); err != nil {
		return nil, &bus.PortError{Err: fmt.Errorf("write: %w", err)}
	}
	t.sent = append(t.sent[:0], req...)
	t.last = time.Now()
	// The device has Timeout to answer once both frames had time to cross
	// the line; at 9600 baud 125 registers take 0.27 s on the wire.
	deadline := t.last.Add(t.timeout + time.Duration(len(req)+want)*t.char)
	n := 0
	var other byte // the unit whose frame came instead, if one did
	// echo: what came so far may be the adapter's echo of req.
	echo := t.echoes || isRead(req[1])
	for n < want || echo && n > 0 {
		end := want
		if echo {
			end = max(want, len(req))
		}
		m, expired, err := bus.ReadBy(t.port, t.buf[n:end], deadline)
		if err != nil {
			return nil, &bus.PortError{Err: fmt.Errorf("read: %w", err)}
		}
		if expired {
			return nil, &TimeoutError{After: t.timeout, Got: n, Other: other}
		}
		if m == 0 {
			continue
		}
		n += m
		t.last = time.Now()
		if echo {
			switch {
			case !bytes.HasPrefix(req, t.buf[:min(n, len(req))]):
				// The answer: the adapter does not echo (any more: another
				// one was plugged in).
				echo, t.echoes = false, false
			case n < len(req):
				continue // the echo so far, or an answer like it
			default:
				// The echo: the answer follows it.
				echo, t.echoes = false, true
				if n = copy(t.buf[:], t.buf[len(req):n]); n == 0 {
					continue
				}
			}
		}
		if t.buf[0] != req[0] {
			got := t.drain(deadline, n)
			if got < rtuExceptionBytes || got > len(t.buf) || !crcHolds(t.buf[:got]) {
				return nil, &FrameError{Kind: badUnit, Detail: fmt.Sprintf("got %d, want %d", t.buf[0], req[0]), Dropped: got}
			}
			// Another unit's whole frame (a late answer to an earlier
			// request, or another master's request): not this device's
			// answer, which may still come.
			t.hear(t.buf[:got])
			other, n = t.buf[0], 0
			continue
		}
		if n >= 2 {
			switch t.buf[1] {
			case req[1]:
			case req[1] | 0x80:
				want = rtuExceptionBytes
				n = min(n, want)
			default:
				return nil, t.resync(deadline, n, badFunction, fmt.Sprintf("got %d, want %d", t.buf[1], req[1]))
			}
		}
		if n >= 3 && t.buf[1] == req[1] && isRead(req[1]) && int(t.buf[2]) != want-rtuResponseBytes {
			return nil, t.resync(deadline, n, badLength, fmt.Sprintf("byte count %d, want %d", t.buf[2], want-rtuResponseBytes))
		}
		if n < want {
			// The rest cannot come faster than the line carries it: one
			// wakeup for it, not one per character.
			time.Sleep(min(time.Duration(want-n)*t.char, time.Until(deadline)))
		}
	}
	if fe, ok := checkRTU(req, t.buf[:n]).(*FrameError); ok {
		return nil, t.resync(deadline, n, fe.Kind, fe.Detail)
	}
	return append([]byte(nil), t.buf[:n]...), nil
}

// listen reads what the line carried since the last frame, and what it
// carries for d more (0: without waiting), and looks in it for another
// master's request (see hear); it stops at the first one heard.
func (t *rtuTransport) listen(d time.Duration) error {
	var seen []byte // what came since the last whole request could start
	for end := time.Now().Add(d); !t.news; {
		if err := t.port.SetReadTimeout(max(time.Until(end), 0)); err != nil {
			return err
		}
		n, err := t.port.Read(t.buf[:])
		if err != nil || n == 0 {
			return err
		}
		t.last = time.Now()
		seen = append(seen, t.buf[:n]...)
		t.hear(seen)
		// A request that started in what came keeps its first 7 bytes.
		seen = append(seen[:0], seen[max(len(seen)-(rtuReadRequestLen-1), 0):]...)
	}
	return nil
}

// hear notes the last read request of another master in b, if b has one
// that is not the gateway's own last request (an adapter's late echo).
func (t *rtuTransport) hear(b []byte) {
	h, ok := readRequestIn(b)
	if own, _ := readRequestIn(t.sent); !ok || h == own {
		return
	}
	t.heard, t.heardAt, t.news = &h, time.Now(), true
}

// rtuExceptionBytes is the length of an exception frame.
const rtuExceptionBytes = 5

// settleGap is how long the line must be quiet after a bad frame before
// the next request. A frame is sent without pauses, but a USB serial
// adapter hands it on in pieces: FTDI's chips every 16 ms by default
// (their latency timer). The rest of a damaged frame that came after its
// drain and after the next request's flush was taken for the start of the
// next device's answer, and dropped that answer as damaged too.
const settleGap = 20 * time.Millisecond

// settle reads and drops what comes until the line has been quiet for
// settleGap, for at most ten of them (a line that babbles on is the next
// answer's problem).
func (t *rtuTransport) settle() {
	t.unsettled = false
	var scratch [256]byte
	for range 10 {
		if err := t.port.SetReadTimeout(settleGap); err != nil {
			return
		}
		if m, err := t.port.Read(scratch[:]); err != nil || m == 0 {
			return
		}
		t.last = time.Now()
	}
}

// resync drains the line until it has been silent for a frame gap (or the
// deadline passes) and reports the bad frame with the bytes it dropped.
func (t *rtuTransport) resync(deadline time.Time, got int, kind, detail string) error {
	return &FrameError{Kind: kind, Detail: detail, Dropped: t.drain(deadline, got)}
}

// drain reads the line until it has been silent for a frame gap (or the
// deadline passes), keeping in buf what fits after the got bytes there,
// and returns how many bytes the frame had in all. The next request waits
// for the line to be quiet first (settle).
func (t *rtuTransport) drain(deadline time.Time, got int) int {
	t.unsettled = true
	gap := max(t.silence, 2*time.Millisecond)
	var scratch [256]byte
	for time.Now().Before(deadline) {
		if err := t.port.SetReadTimeout(gap); err != nil {
			break
		}
		into := scratch[:]
		if got < len(t.buf) {
			into = t.buf[got:]
		}
		m, err := t.port.Read(into)
		if err != nil || m == 0 {
			break
		}
		got += m
		t.last = time.Now()
	}
	return got
}

// rtuBus is the driver of one RS-485 bus: one port, one wire lock, every
// device on the bus polled by its own goroutines, one request at a time.
type rtuBus struct {
	links
	bus *mb.RTU

	// Under the wire lock:
	port      *bus.Serial
	tr        *rtuTransport
	packagers map[byte]modbus.Packager
	told      time.Time // when the log last said another master was heard
	// listen is how long the bus is listened to when its port opens,
	// before the first request: toolListen for an installer's tool, 0
	// for the gateway.
	listen time.Duration
}

// toolListen is how long an installer's tool (gateway read, commission)
// listens to an RTU bus when it opens its port: another master polling it
// is heard for certain, not only when its traffic falls between the
// port's opening and one of the tool's few requests. The gateway, which
// polls on, hears it before each request (rtuTransport.listen without
// waiting), and does not hold its first polls (an alarm input's) for it.
const toolListen = time.Second

// tellAgain is how often the log says again that another master polls the
// bus, while it does.
const tellAgain = 10 * time.Minute

var (
	_ drivers.Driver    = (*rtuBus)(nil)
	_ drivers.Commander = (*rtuBus)(nil)
)

func newRTU(link drivers.Link, log *slog.Logger) (drivers.Driver, error) {
	b, ok := link.Config.Settings.(*mb.RTU)
	if !ok {
		return nil, fmt.Errorf("modbus-rtu: link %s is not a serial bus", link.Name())
	}
	port, err := bus.NewSerial(&b.Serial, nil, log)
	if err != nil {
		return nil, fmt.Errorf("bus %s: %w", link.Name(), err)
	}
	devs, err := buildDevices(link, BusCost(b))
	if err != nil {
		return nil, err
	}
	r := &rtuBus{bus: b, port: port, packagers: map[byte]modbus.Packager{}}
	if link.Once {
		r.listen = toolListen
	}
	r.links = newLinks(link, busHint, devs, r, log)
	cost := BusCost(b)
	for _, d := range devs {
		for _, q := range slices.Concat(d.plan, d.alarmPlan) {
			r.line.Exchange(cost.Request(q.Table, q.Count))
		}
		h := modbus.NewRTUClientHandler("")
		h.SlaveId = d.unit
		r.packagers[d.unit] = h
	}
	return r, nil
}

// Run polls the bus's devices until ctx ends.
func (b *rtuBus) Run(ctx context.Context, emit drivers.Emit) error {
	b.run(ctx, emit)
	b.closePort() // every poller has stopped
	return nil
}

func (b *rtuBus) timeout() time.Duration {
	if b.bus.Timeout > 0 {
		return b.bus.Timeout
	}
	return 500 * time.Millisecond
}

// ensurePort opens the port unless it is open or waiting out a backoff.
// The caller holds the wire lock.
func (b *rtuBus) ensurePort() error {
	p, opened, err := b.port.Port()
	if err != nil {
		return err
	}
	if opened || b.tr == nil {
		b.tr = &rtuTransport{port: p, timeout: b.timeout(), silence: Silence(b.bus), char: b.bus.CharTime()}
		if err := b.tr.listen(b.listen); err != nil {
			b.tr = nil
			return b.port.Fail(err)
		}
	}
	return nil
}

func (b *rtuBus) closePort() {
	b.port.Close()
	b.tr = nil
}

// exchange runs f on a client of the unit, once; a failure of the port
// closes it and becomes a bus.LinkDownError. Another master's request
// heard on the bus meanwhile, if one was, is logged, at most every
// tellAgain, and given to note when set. The caller holds the wire lock.
func (b *rtuBus) exchange(unit byte, timeout time.Duration, f func(modbus.Client) error, note func(error)) error {
	if err := b.ensurePort(); err != nil {
		return err
	}
	b.tr.timeout = timeout
	err := f(modbus.NewClient2(b.packagers[unit], b.tr))
	if t := b.tr; t.news {
		t.news = false
		if b.told.IsZero() || time.Since(b.told) >= tellAgain {
			b.told = time.Now()
			b.log.Warn("another master polls this bus: "+bus.TwoMasters, "heard", t.heard.String())
		}
		if note != nil {
			note(&OtherMasterError{Heard: *t.heard})
		}
	}
	var pe *bus.PortError
	if errors.As(err, &pe) {
		b.tr = nil
		return b.port.Fail(pe.Err)
	}
	return err
}

// read executes one request for a unit, with the bus's retries unless the
// attempt says once. The caller holds the wire lock.
func (b *rtuBus) read(ctx context.Context, unit byte, r Request, a bus.Attempt, note func(error)) ([]byte, error) {
	tries, timeout := a.On(b.bus.Retries, b.timeout())
	var err error
	for try := 0; try < tries; try++ {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && note != nil {
			note(err)
		}
		var data []byte
		err = b.exchange(unit, timeout, func(c modbus.Client) (err error) {
			data, err = readRequest(c, r)
			return err
		}, note)
		if err == nil {
			return data, nil
		}
		var ld *bus.LinkDownError
		if isException(err) || errors.As(err, &ld) {
			return nil, err // a device's answer, or no port: asking again changes nothing
		}
	}
	return nil, err
}

// do runs one exchange of a write. The caller holds the wire lock.
func (b *rtuBus) do(ctx context.Context, unit byte, f func(modbus.Client) error, note func(error)) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return b.exchange(unit, b.timeout(), f, note)
}

// retries are the bus's extra tries of a failed request.
func (b *rtuBus) retries() int { return max(b.bus.Retries, 0) }

func (b *rtuBus) damaged() string { return damagedHint(b.bus.Port) }

// Load estimates the share of the bus's wire time its polls take, in all
// and for the alarm polls alone, from the request plans and the line's
// speed (no answer time counted: a slow device takes more).
func (b *rtuBus) Load() (all, alarms float64) {
	cost := BusCost(b.bus)
	for _, d := range b.devices {
		all += cost.WireTime(d.plan).Seconds() / d.every().Seconds()
		if len(d.alarmPlan) > 0 {
			a := cost.WireTime(d.alarmPlan).Seconds() / d.alarmEvery().Seconds()
			all, alarms = all+a, alarms+a
		}
	}
	return all, alarms
}
