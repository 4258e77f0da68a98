package slave_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"outpost/configs"
	"outpost/configs/modbus"
	"outpost/firmware-sim/device"
	"outpost/firmware-sim/slave"
	"outpost/firmware-sim/vport"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newDevice(t testing.TB, id string, unit int) *device.Device {
	t.Helper()
	gaps := true
	tm := &configs.Template{Name: "t", Kind: "test", Protocol: "modbus", Body: &modbus.Template{ReadGaps: gaps, Registers: []modbus.Register{
		{Signal: "temp", Table: modbus.Input, Address: 0, Type: modbus.TypeInt16, Scale: 0.1, Sim: &configs.Sim{Wave: "constant", Value: 21.3}},
		{Signal: "hum", Table: modbus.Input, Address: 1, Type: modbus.TypeUint16, Scale: 0.1, Sim: &configs.Sim{Wave: "constant", Value: float64(unit)}},
		{Signal: "setpoint", Table: modbus.Holding, Address: 0, Type: modbus.TypeUint16, Scale: 1, Sim: &configs.Sim{Wave: "constant", Value: 5}},
	}}}
	d, err := device.New(configs.Device{ID: id, Template: "t", Settings: &modbus.Device{UnitID: unit}}, tm, device.Options{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// rtuBench runs an RTU server on a fresh virtual port and opens the master
// end, as a gateway would.
type rtuBench struct {
	srv    *slave.RTU
	port   *vport.Port
	master *os.File
	link   string
}

func startRTU(t testing.TB, line slave.Line, turnaround time.Duration, sensing bool, units ...*device.Device) *rtuBench {
	t.Helper()
	link := filepath.Join(t.TempDir(), "dev", "ttyRS485")
	p, err := vport.Open(link)
	if err != nil {
		t.Fatal(err)
	}
	um := map[byte]slave.Unit{}
	for _, u := range units {
		um[u.Unit()] = u
	}
	var port slave.Port = p
	if !sensing {
		port = struct{ slave.Port }{p}
	}
	b := &rtuBench{port: p, link: link, srv: &slave.RTU{Port: port, Line: line, Turnaround: turnaround, Units: um, Log: quiet()}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.srv.Serve(ctx) }()
	m, err := os.OpenFile(link, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b.master = m
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		m.Close()
		p.Close()
		if _, err := os.Lstat(link); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("link %s left behind: %v", link, err)
		}
	})
	return b
}

// readN reads n bytes, returning when the first and the last arrived.
func (b *rtuBench) readN(t testing.TB, n int) (got []byte, first, last time.Time) {
	t.Helper()
	b.master.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	for len(got) < n {
		k, err := b.master.Read(buf)
		if k > 0 && first.IsZero() {
			first = time.Now()
		}
		got = append(got, buf[:k]...)
		if err != nil {
			t.Fatalf("read after % x: %v", got, err)
		}
	}
	return got, first, time.Now()
}

var l9600 = slave.Line{Baud: 9600, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}

// TestRTUPacing measures that an answer arrives no sooner than the wire would
// carry it: an 8-byte request and a 9-byte answer at 9600 baud 8N1.
func TestRTUPacing(t *testing.T) {
	const turn = 3 * time.Millisecond
	b := startRTU(t, l9600, turn, false, newDevice(t, "th", 1))
	req := slave.AppendCRC([]byte{0x01, 0x04, 0x00, 0x00, 0x00, 0x02})
	want := slave.AppendCRC([]byte{0x01, 0x04, 0x04, 0x00, 0xD5, 0x00, 0x0A})
	char := l9600.Char()
	for i := range 3 {
		sent := time.Now()
		if _, err := b.master.Write(req); err != nil {
			t.Fatal(err)
		}
		got, first, last := b.readN(t, len(want))
		if !bytes.Equal(got, want) {
			t.Fatalf("answer % x, want % x", got, want)
		}
		firstAt, lastAt := first.Sub(sent), last.Sub(sent)
		minFirst := l9600.Wire(len(req)) + turn + char
		minLast := l9600.Wire(len(req)) + turn + l9600.Wire(len(want))
		t.Logf("round %d: first byte after %v (at least %v), last after %v (at least %v)", i, firstAt, minFirst, lastAt, minLast)
		if firstAt < minFirst {
			t.Errorf("first byte after %v, before its wire time %v", firstAt, minFirst)
		}
		if lastAt < minLast {
			t.Errorf("last byte after %v, before its wire time %v", lastAt, minLast)
		}
		if lastAt > minLast+500*time.Millisecond {
			t.Errorf("last byte after %v, far beyond its wire time %v", lastAt, minLast)
		}
	}
}

// TestRTUBus: garbage is skipped and counted, other unit ids get no answer,
// broadcasts write without answer, several units share the line.
func TestRTUBus(t *testing.T) {
	d1, d2 := newDevice(t, "a", 1), newDevice(t, "b", 2)
	b := startRTU(t, slave.Line{Baud: 115200, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}, 0, false, d1, d2)
	w := func(p []byte) {
		t.Helper()
		if _, err := b.master.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(want []byte) {
		t.Helper()
		if got, _, _ := b.readN(t, len(want)); !bytes.Equal(got, want) {
			t.Fatalf("answer % x, want % x", got, want)
		}
	}
	read2 := slave.AppendCRC([]byte{0x02, 0x04, 0x00, 0x01, 0x00, 0x01})
	ans2 := slave.AppendCRC([]byte{0x02, 0x04, 0x02, 0x00, 0x14})

	// Line noise, then a good request.
	w(append([]byte{0x00, 0xFF, 0x02, 0x04, 0x13}, read2...))
	expect(ans2)
	// A damaged request for unit 2 (no answer), then a good one.
	bad := append([]byte(nil), read2...)
	bad[5] ^= 0x40
	w(append(bad, read2...))
	expect(ans2)
	// A request for unit 9 gets no answer: the next answer is unit 1's.
	w(slave.AppendCRC([]byte{0x09, 0x04, 0x00, 0x00, 0x00, 0x01}))
	w(slave.AppendCRC([]byte{0x01, 0x04, 0x00, 0x01, 0x00, 0x01}))
	expect(slave.AppendCRC([]byte{0x01, 0x04, 0x02, 0x00, 0x0A}))
	// A broadcast write reaches both units, unanswered.
	w(slave.AppendCRC([]byte{0x00, 0x06, 0x00, 0x00, 0x01, 0x02}))
	w(slave.AppendCRC([]byte{0x02, 0x03, 0x00, 0x00, 0x00, 0x01}))
	expect(slave.AppendCRC([]byte{0x02, 0x03, 0x02, 0x01, 0x02}))
	w(slave.AppendCRC([]byte{0x01, 0x03, 0x00, 0x00, 0x00, 0x01}))
	expect(slave.AppendCRC([]byte{0x01, 0x03, 0x02, 0x01, 0x02}))
	// An unsupported function is answered with exception 01.
	w(slave.AppendCRC([]byte{0x01, 0x11}))
	expect(slave.AppendCRC([]byte{0x01, 0x91, 0x01}))
	// A partial frame followed by silence is dropped.
	w(read2[:5])
	time.Sleep(60 * time.Millisecond) // the silence itself is what is tested
	w(read2)
	expect(ans2)

	st := b.srv.Stats()
	if st.CRCErrors != 3 || st.Frames != 9 || st.DroppedBytes != 5+8+5 {
		t.Errorf("bus stats %+v, want 3 CRC errors, 9 frames, 18 dropped bytes", st)
	}
	// A reading counts as served once its answer has left in full, just
	// after the master could read it: wait for the last count.
	deadline := time.Now().Add(2 * time.Second)
	for d2.Stats().ReadingsServed < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if s := d2.Stats(); s.CRCErrors != 2 || s.Polls != 5 || s.ReadingsServed != 4 {
		t.Errorf("unit 2 stats %+v, want 2 CRC errors, 5 polls, 4 readings", s)
	}
}

// TestRTULineMismatch: a master at another baud hears garbage.
func TestRTULineMismatch(t *testing.T) {
	b := startRTU(t, l9600, 0, true, newDevice(t, "th", 1))
	setBaud := func(code uint32) {
		t.Helper()
		rc, err := b.master.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		var serr error
		rc.Control(func(fd uintptr) {
			tio, err := unix.IoctlGetTermios(int(fd), unix.TCGETS)
			if err != nil {
				serr = err
				return
			}
			tio.Cflag = tio.Cflag&^unix.CBAUD | code
			serr = unix.IoctlSetTermios(int(fd), unix.TCSETS, tio)
		})
		if serr != nil {
			t.Fatal(serr)
		}
	}
	req := slave.AppendCRC([]byte{0x01, 0x04, 0x00, 0x00, 0x00, 0x01})
	want := slave.AppendCRC([]byte{0x01, 0x04, 0x02, 0x00, 0xD5})

	setBaud(unix.B9600)
	b.master.Write(req)
	if got, _, _ := b.readN(t, len(want)); !bytes.Equal(got, want) {
		t.Fatalf("at 9600: % x, want % x", got, want)
	}
	setBaud(unix.B19200)
	b.master.Write(req)
	garbled := slave.Garble(want, l9600, slave.Line{Baud: 19200, DataBits: 8, Parity: configs.ParityNone, StopBits: 1})
	if got, _, _ := b.readN(t, len(garbled)); !bytes.Equal(got, garbled) {
		t.Fatalf("at 19200: % x, want % x", got, garbled)
	}
	if bytes.Equal(garbled, want) {
		t.Fatal("garbled answer is the answer")
	}
	if st := b.srv.Stats(); st.Mismatched != 1 {
		t.Errorf("stats %+v, want 1 line mismatch", st)
	}
}

// mbap builds a Modbus TCP request.
func mbap(tid uint16, unit byte, pdu ...byte) []byte { return slave.AppendMBAP(nil, tid, unit, pdu) }

func startTCP(t testing.TB, units ...*device.Device) string {
	t.Helper()
	return startTCPSilent(t, nil, units...)
}

// startTCPSilent serves units, and no answer for the silent unit ids.
func startTCPSilent(t testing.TB, silent map[byte]bool, units ...*device.Device) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	um := map[byte]slave.Unit{}
	for _, u := range units {
		um[u.Unit()] = u
	}
	srv := &slave.TCP{Units: um, Log: quiet(), Faults: slave.Faults{Silent: func(u byte) bool { return silent[u] }}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String()
}

func roundTrip(t testing.TB, c net.Conn, req []byte) []byte {
	t.Helper()
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	hdr := make([]byte, 7)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatal(err)
	}
	body := make([]byte, int(binary.BigEndian.Uint16(hdr[4:]))-1)
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatal(err)
	}
	return append(hdr, body...)
}

func TestTCP(t *testing.T) {
	addr := startTCP(t, newDevice(t, "a", 1), newDevice(t, "b", 2))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cases := []struct {
		name      string
		req, resp []byte
	}{
		{"unit 1", mbap(0x1234, 1, 4, 0, 0, 0, 2), mbap(0x1234, 1, 4, 4, 0x00, 0xD5, 0x00, 0x0A)},
		{"unit 2", mbap(0xFFFF, 2, 4, 0, 1, 0, 1), mbap(0xFFFF, 2, 4, 2, 0x00, 0x14)},
		{"unknown unit", mbap(7, 9, 4, 0, 0, 0, 1), mbap(7, 9, 0x84, 0x0B)},
		{"bad address", mbap(8, 1, 4, 0, 9, 0, 1), mbap(8, 1, 0x84, 0x02)},
		{"write", mbap(9, 2, 6, 0, 0, 0, 42), mbap(9, 2, 6, 0, 0, 0, 42)},
		{"read back", mbap(10, 2, 3, 0, 0, 0, 1), mbap(10, 2, 3, 2, 0, 42)},
	}
	for _, cs := range cases {
		if got := roundTrip(t, c, cs.req); !bytes.Equal(got, cs.resp) {
			t.Errorf("%s: % x, want % x", cs.name, got, cs.resp)
		}
	}
	// Something that is not MBAP closes the connection.
	c.Write([]byte{0, 1, 0, 9, 0, 6, 1, 4, 0, 0, 0, 1})
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 16)); err != io.EOF {
		t.Errorf("after a bad protocol id: read %d, %v; want EOF", n, err)
	}
}

// TestTCPSilentUnit: a silent unit gets no answer, not even the exception
// an unknown unit gets, and the others on the connection are answered.
func TestTCPSilentUnit(t *testing.T) {
	addr := startTCPSilent(t, map[byte]bool{9: true}, newDevice(t, "a", 1), newDevice(t, "ghost", 9))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write(mbap(1, 9, 4, 0, 0, 0, 1)); err != nil {
		t.Fatal(err)
	}
	// Unit 1's answer is the next frame on the connection: nothing came
	// for unit 9 before it.
	want := mbap(2, 1, 4, 2, 0x00, 0xD5)
	if got := roundTrip(t, c, mbap(2, 1, 4, 0, 0, 0, 1)); !bytes.Equal(got, want) {
		t.Errorf("after a request to the silent unit, unit 1 got % x, want % x", got, want)
	}
}

// TestTCPConcurrent: many connections at once, each gets its own
// transaction ids back.
func TestTCPConcurrent(t *testing.T) {
	addr := startTCP(t, newDevice(t, "a", 1), newDevice(t, "b", 2))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			for i := range 100 {
				tid := uint16(g<<8 | i)
				unit := byte(1 + i%2)
				want := mbap(tid, unit, 4, 2, 0, 0x14-byte(10*(2-int(unit))))
				if got := roundTrip(t, c, mbap(tid, unit, 4, 0, 1, 0, 1)); !bytes.Equal(got, want) {
					t.Errorf("conn %d req %d: % x, want % x", g, i, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkTCPRoundTrip: one connection, one request at a time.
func BenchmarkTCPRoundTrip(b *testing.B) {
	addr := startTCP(b, newDevice(b, "a", 1))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := mbap(1, 1, 4, 0, 0, 0, 2)
	b.ReportAllocs()
	for b.Loop() {
		roundTrip(b, c, req)
	}
}

// BenchmarkRTURoundTrip115200: a 2-register read over a virtual port at
// 115200 baud without turnaround; the pacing sets the pace.
func BenchmarkRTURoundTrip115200(b *testing.B) {
	br := startRTU(b, slave.Line{Baud: 115200, DataBits: 8, Parity: configs.ParityNone, StopBits: 1}, 0, false, newDevice(b, "a", 1))
	req := slave.AppendCRC([]byte{0x01, 0x04, 0x00, 0x00, 0x00, 0x02})
	for b.Loop() {
		if _, err := br.master.Write(req); err != nil {
			b.Fatal(err)
		}
		br.readN(b, 9)
	}
}

func BenchmarkParseRequest(b *testing.B) {
	frame := slave.AppendCRC([]byte{0x01, 0x10, 0x00, 0x05, 0x00, 0x02, 0x04, 0x00, 0x0A, 0x01, 0x02})
	for b.Loop() {
		slave.ParseRequest(frame)
	}
}
