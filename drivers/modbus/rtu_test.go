package modbus

import (
	"errors"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"github.com/goburrow/modbus"
	"go.bug.st/serial"
	"golang.org/x/sys/unix"

	"outpost/drivers/crc16"
)

// rtuFrame builds an RTU frame: unit, function, payload, CRC (low byte
// first).
func rtuFrame(unit, fc byte, payload ...byte) []byte {
	f := append([]byte{unit, fc}, payload...)
	c := crc16.Modbus(f)
	return append(f, byte(c), byte(c>>8))
}

func TestCRC16(t *testing.T) {
	// The classic example: read 10 holding registers from 0 on unit 1.
	got := rtuFrame(1, 3, 0, 0, 0, 10)
	want := []byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD}
	if string(got) != string(want) {
		t.Fatalf("frame % x, want % x", got, want)
	}
	// And goburrow's packager agrees.
	h := modbus.NewRTUClientHandler("")
	h.SlaveId = 1
	adu, err := h.Encode(&modbus.ProtocolDataUnit{FunctionCode: 3, Data: []byte{0, 0, 0, 10}})
	if err != nil || string(adu) != string(want) {
		t.Fatalf("goburrow frame % x, %v", adu, err)
	}
}

// regValue is what the in-test responder holds at a register address.
func regValue(addr int) uint16 { return uint16(addr*3 + 1) }

// readAnswer is the normal answer of a register device to a read request.
func readAnswer(req []byte) []byte {
	start, n := int(req[2])<<8|int(req[3]), int(req[4])<<8|int(req[5])
	if req[1] == fcReadCoils || req[1] == fcReadDiscrete {
		data := make([]byte, (n+7)/8)
		for i := 0; i < n; i++ {
			if (start+i)%3 == 0 {
				data[i/8] |= 1 << (i % 8)
			}
		}
		return rtuFrame(req[0], req[1], append([]byte{byte(len(data))}, data...)...)
	}
	payload := []byte{byte(2 * n)}
	for i := 0; i < n; i++ {
		v := regValue(start + i)
		payload = append(payload, byte(v>>8), byte(v))
	}
	return rtuFrame(req[0], req[1], payload...)
}

// responder is an in-test device on the master side of a pty: it answers
// every 8-byte request with what handle returns; handle may also write
// later with write.
type responder struct {
	master *os.File
	tty    *os.File
	wg     sync.WaitGroup
}

func startResponder(t testing.TB, handle func(req []byte, write func([]byte)) []byte) *responder {
	t.Helper()
	m, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	// A non-blocking dup of the master, so that Close ends a pending Read.
	var fd int
	var derr error
	rc, err := m.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(f uintptr) { fd, derr = unix.Dup(int(f)) })
	if derr != nil {
		t.Fatal(derr)
	}
	m.Close()
	if err := unix.SetNonblock(fd, true); err != nil {
		t.Fatal(err)
	}
	r := &responder{master: os.NewFile(uintptr(fd), "ptmx"), tty: tty}
	write := func(b []byte) { r.master.Write(b) }
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		var acc []byte
		buf := make([]byte, 512)
		for {
			n, err := r.master.Read(buf)
			if err != nil {
				return
			}
			acc = append(acc, buf[:n]...)
			for len(acc) >= 8 {
				req := append([]byte(nil), acc[:8]...)
				acc = acc[8:]
				if out := handle(req, write); len(out) > 0 {
					if _, err := r.master.Write(out); err != nil {
						return
					}
				}
			}
		}
	}()
	t.Cleanup(func() {
		r.master.Close()
		r.wg.Wait()
		r.tty.Close()
	})
	return r
}

// path is the device path the driver opens.
func (r *responder) path() string { return r.tty.Name() }

// pending is how many bytes wait in the port's input queue.
func (r *responder) pending(t testing.TB) int {
	var n int
	var err error
	rc, _ := r.tty.SyscallConn()
	rc.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.TIOCINQ) })
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func openTransport(t testing.TB, path string, timeout, silence time.Duration) *rtuTransport {
	t.Helper()
	p, err := serial.Open(path, &serial.Mode{BaudRate: 115200, DataBits: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return &rtuTransport{port: p, timeout: timeout, silence: silence}
}

func rtuClient(unit byte, tr modbus.Transporter) modbus.Client {
	h := modbus.NewRTUClientHandler("")
	h.SlaveId = unit
	return modbus.NewClient2(h, tr)
}

// mode is what a test's responder does now, switched by the test.
type mode struct {
	mu  sync.Mutex
	now string
}

func (m *mode) set(s string) {
	m.mu.Lock()
	m.now = s
	m.mu.Unlock()
}

func (m *mode) get() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

func TestRTUTransport(t *testing.T) {
	m := mode{now: "ok"}
	set := m.set
	lateDone := make(chan struct{})
	resp := startResponder(t, func(req []byte, write func([]byte)) []byte {
		ans := readAnswer(req)
		switch m.get() {
		case "exception":
			return rtuFrame(req[0], req[1]|0x80, 2)
		case "crc":
			ans[len(ans)-1] ^= 0xFF
		case "other unit":
			return rtuFrame(req[0]+1, req[1], ans[2:len(ans)-2]...)
		case "other unit, then ours":
			write(rtuFrame(req[0]+1, req[1], ans[2:len(ans)-2]...))
			time.Sleep(10 * time.Millisecond) // a frame gap
			return ans
		case "unit":
			bad := rtuFrame(req[0]+1, req[1], ans[2:len(ans)-2]...)
			bad[3] ^= 0xFF
			return bad
		case "unit, in two pieces":
			// As a USB adapter hands a frame on: the rest comes after a
			// pause longer than the line's frame gap.
			bad := rtuFrame(req[0]+1, req[1], ans[2:len(ans)-2]...)
			bad[3] ^= 0xFF
			write(bad[:4])
			time.Sleep(10 * time.Millisecond)
			return bad[4:]
		case "trailing":
			return append(ans, 0xFF, 0x00, 0x12)
		case "silent":
			return nil
		case "late":
			go func() {
				time.Sleep(80 * time.Millisecond)
				// Still a well-formed answer: without the flush it
				// would pass for the next request's answer.
				write(ans)
				close(lateDone)
			}()
			return nil
		}
		return ans
	})
	tr := openTransport(t, resp.path(), 50*time.Millisecond, 0)
	c := rtuClient(7, tr)
	wantRegs := func(start, n int) string {
		var b []byte
		for i := 0; i < n; i++ {
			v := regValue(start + i)
			b = append(b, byte(v>>8), byte(v))
		}
		return string(b)
	}
	check := func(t *testing.T, start, n int) {
		t.Helper()
		got, err := c.ReadHoldingRegisters(uint16(start), uint16(n))
		if err != nil || string(got) != wantRegs(start, n) {
			t.Fatalf("read %d+%d: % x, %v; want % x", start, n, got, err, wantRegs(start, n))
		}
	}
	check(t, 0, 125)
	check(t, 1000, 1)
	got, err := c.ReadCoils(2, 10)
	if err != nil || string(got) != "\x92\x00" { // coils 3, 6, 9 of 2-11 are on: bits 1, 4, 7
		t.Fatalf("coils: % x, %v", got, err)
	}

	cases := []struct {
		mode    string
		counter string
		reason  string
	}{
		{"exception", "exceptions", "exception 2 (illegal data address)"},
		{"crc", "crc_errors", "bad frame (crc: got 132d, want ec2d), 9 bytes dropped"},
		{"unit", "frame_errors", "bad frame (unit id: got 8, want 7), 9 bytes dropped"},
		// Its rest comes after the drain: the next request waits for it.
		{"unit, in two pieces", "frame_errors", "bad frame (unit id: got 8, want 7), 4 bytes dropped"},
		// Another unit's whole frame is not this device's answer, nor a
		// damaged one: the device did not answer.
		{"other unit", "timeouts", "timeout after 50ms (a frame from unit 8 came instead: a late answer to an earlier request)"},
		{"silent", "timeouts", "timeout after 50ms"},
	}
	for _, cs := range cases {
		t.Run(cs.mode, func(t *testing.T) {
			set(cs.mode)
			_, err := c.ReadHoldingRegisters(10, 2)
			if err == nil {
				t.Fatal("no error")
			}
			counter, reason := errClass(err)
			if counter != cs.counter || reason != cs.reason {
				t.Errorf("errClass(%v) = %s, %q; want %s, %q", err, counter, reason, cs.counter, cs.reason)
			}
			set("ok")
			check(t, 10, 2) // resynchronised
		})
	}
	t.Run("another unit's frame is passed over", func(t *testing.T) {
		set("other unit, then ours")
		check(t, 60, 2)
		set("ok")
		check(t, 70, 2)
	})
	t.Run("trailing garbage is flushed", func(t *testing.T) {
		set("trailing")
		check(t, 20, 2)
		set("ok")
		check(t, 30, 2)
	})
	t.Run("a late answer is flushed", func(t *testing.T) {
		set("late")
		_, err := c.ReadHoldingRegisters(40, 2)
		var te *TimeoutError
		if !errors.As(err, &te) {
			t.Fatalf("err %v, want a timeout", err)
		}
		<-lateDone
		// The late answer waits in the input queue when the next request
		// starts.
		waitFor(t, time.Second, "late answer in the input queue", func() bool { return resp.pending(t) == 9 })
		set("ok")
		check(t, 50, 2)
	})
}

// BenchmarkRTUReads measures reads per second over a virtual serial port
// against an in-test responder: with the inter-frame silence of a 115200
// baud line (1.75 ms), and without it, which a pty allows and which shows
// what the transport itself costs.
func BenchmarkRTUReads(b *testing.B) {
	for _, bc := range []struct {
		name    string
		silence time.Duration
	}{{"silence=1.75ms", Silence((&tBus{Baud: 115200}).settings())}, {"silence=0", 0}} {
		b.Run(bc.name, func(b *testing.B) {
			resp := startResponder(b, func(req []byte, _ func([]byte)) []byte { return readAnswer(req) })
			c := rtuClient(1, openTransport(b, resp.path(), 500*time.Millisecond, bc.silence))
			for b.Loop() {
				if _, err := c.ReadInputRegisters(0, 10); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
		})
	}
}

func TestReadRequestIn(t *testing.T) {
	req := rtuFrame(9, fcReadHolding, 0, 100, 0, 2)
	for _, c := range []struct {
		name string
		line []byte
		want *Heard // nil: none
	}{
		{"a request", req, &Heard{Unit: 9, Function: fcReadHolding, Start: 100, Count: 2}},
		{"a request and its answer", append(slices.Clone(req), readAnswer(req)...), &Heard{Unit: 9, Function: fcReadHolding, Start: 100, Count: 2}},
		{"after noise", append([]byte{0x00, 0xFF, 0x13}, rtuFrame(5, fcReadCoils, 0, 0, 0, 16)...), &Heard{Unit: 5, Function: fcReadCoils, Start: 0, Count: 16}},
		{"the last of two", append(slices.Clone(req), rtuFrame(4, fcReadInput, 0, 1, 0, 1)...), &Heard{Unit: 4, Function: fcReadInput, Start: 1, Count: 1}},
		{"an answer alone", readAnswer(req), nil},
		{"an answer of 3 bytes of bits (8 bytes long)", readAnswer(rtuFrame(9, fcReadCoils, 0, 0, 0, 20)[:6]), nil},
		{"a damaged request", append(slices.Clone(req[:7]), req[7]^0x01), nil},
		{"a write", rtuFrame(9, fcWriteRegister, 0, 100, 0, 2), nil},
		{"unit 0 (broadcast)", rtuFrame(0, fcReadHolding, 0, 100, 0, 2), nil},
		{"126 registers", rtuFrame(9, fcReadHolding, 0, 100, 0, 126), nil},
		{"too short", req[:7], nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, ok := readRequestIn(c.line)
			switch {
			case c.want == nil && ok:
				t.Fatalf("found %+v in % x, want none", h, c.line)
			case c.want != nil && (!ok || h != *c.want):
				t.Fatalf("found %+v (%v) in % x, want %+v", h, ok, c.line, *c.want)
			}
		})
	}
}

// TestRTUTransportOtherMaster: another master's requests on the bus, heard
// between the gateway's own or instead of an answer, are named in the
// errors of the gateway's requests that fail, with what to do.
func TestRTUTransportOtherMaster(t *testing.T) {
	m := mode{now: "ok"}
	set := m.set
	other := rtuFrame(9, fcReadHolding, 0, 100, 0, 2)
	resp := startResponder(t, func(req []byte, write func([]byte)) []byte {
		switch m.get() {
		case "then another master":
			// After the answer, as a bus carries them: the other master's
			// request and its device's answer.
			write(readAnswer(req))
			time.Sleep(5 * time.Millisecond)
			return append(slices.Clone(other), readAnswer(other)...)
		case "another master instead":
			return rtuFrame(8, fcReadInput, 0, 0, 0, 4)
		case "silent":
			return nil
		}
		return readAnswer(req)
	})
	tr := openTransport(t, resp.path(), 50*time.Millisecond, 0)
	c := rtuClient(7, tr)
	read := func() error {
		_, err := c.ReadHoldingRegisters(10, 2)
		return err
	}
	const advice = ": two masters on one bus talk over each other; stop the other (an old controller, a display, a laptop with a Modbus tool) or give it a bus of its own"

	if err := read(); err != nil {
		t.Fatal(err)
	}
	set("silent")
	if err := read(); err == nil || err.Error() != "timeout after 50ms" {
		t.Fatalf("no other master yet: %v, want a plain timeout", err)
	}
	set("then another master")
	if err := read(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Second, "the other master's traffic in the input queue", func() bool { return resp.pending(t) == 17 })
	set("silent")
	want := "timeout after 50ms; another master polls this bus (unit 9 asked for 2 holding registers from 100 (0x0064))" + advice
	if err := read(); err == nil || err.Error() != want {
		t.Fatalf("after another master was heard: %v, want %q", err, want)
	}
	if !tr.news {
		t.Error("the bus was not told of the other master")
	}

	set("another master instead")
	want = "timeout after 50ms (a request of another master came instead); another master polls this bus (unit 8 asked for 4 input registers from 0 (0x0000))" + advice
	err := read()
	if err == nil || err.Error() != want {
		t.Fatalf("another master instead of the answer: %v, want %q", err, want)
	}
	// The poller puts the other master after what the request read.
	if counter, reason := errClass(err); counter != "timeouts" || reason != "timeout after 50ms (a request of another master came instead)" {
		t.Fatalf("errClass: %s, %q; want timeouts, the timeout without the other master", counter, reason)
	}
	if h := masterOf(err); h == nil || *h != (Heard{Unit: 8, Function: fcReadInput, Start: 0, Count: 4}) {
		t.Fatalf("masterOf: %v, want unit 8's read of 4 input registers from 0", h)
	}
	set("ok")
	if err := read(); err != nil {
		t.Fatalf("then the device answers: %v", err)
	}
}
