package modbus

import (
	"bytes"
	"encoding/binary"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/goburrow/modbus"

	"outpost/drivers/crc16"
)

// memPort is an in-memory serial port for fuzzing the RTU transport: it
// hands out its bytes in chunks, then reads time out.
type memPort struct {
	data    []byte
	chunk   int
	written bool // a request was written: the answer may be read
}

func (p *memPort) Read(b []byte) (int, error) {
	if len(p.data) == 0 || !p.written {
		return 0, nil // the answer comes after the request
	}
	n := copy(b[:min(len(b), p.chunk)], p.data)
	p.data = p.data[n:]
	return n, nil
}
func (p *memPort) Write(b []byte) (int, error) {
	p.written = true
	return len(b), nil
}
func (p *memPort) Close() error                       { return nil }
func (p *memPort) SetReadTimeout(time.Duration) error { return nil }
func (p *memPort) ResetInputBuffer() error            { return nil }

func FuzzRTUResponse(f *testing.F) {
	ok := readAnswer([]byte{1, 3, 0, 0, 0, 2})
	f.Add(uint8(3), uint16(0), uint16(2), uint8(8), ok)
	f.Add(uint8(3), uint16(0), uint16(2), uint8(1), ok)
	f.Add(uint8(4), uint16(0), uint16(2), uint8(3), rtuFrame(1, 0x84, 2))
	f.Add(uint8(1), uint16(0), uint16(10), uint8(2), readAnswer([]byte{1, 1, 0, 0, 0, 10}))
	f.Add(uint8(3), uint16(0), uint16(2), uint8(8), []byte{2, 3, 4, 0, 1, 0, 2, 0, 0})
	f.Add(uint8(3), uint16(0), uint16(2), uint8(8), []byte{1, 3, 200, 0, 1, 0, 2, 0, 0})
	f.Add(uint8(2), uint16(0), uint16(2000), uint8(64), []byte{1, 2, 250})
	f.Fuzz(func(t *testing.T, fc uint8, start, qty uint16, chunk uint8, resp []byte) {
		fc = fc%4 + 1
		port := &memPort{data: resp, chunk: int(chunk%16) + 1}
		tr := &rtuTransport{port: port, timeout: time.Millisecond}
		c := rtuClient(1, tr)
		var data []byte
		var err error
		switch fc {
		case fcReadCoils:
			data, err = c.ReadCoils(start, qty)
		case fcReadDiscrete:
			data, err = c.ReadDiscreteInputs(start, qty)
		case fcReadHolding:
			data, err = c.ReadHoldingRegisters(start, qty)
		case fcReadInput:
			data, err = c.ReadInputRegisters(start, qty)
		}
		if err != nil {
			return
		}
		want := 2 * int(qty)
		if fc <= fcReadDiscrete {
			want = (int(qty) + 7) / 8
		}
		if len(data) != want {
			t.Fatalf("fc %d qty %d: %d data bytes, want %d", fc, qty, len(data), want)
		}
	})
}

func FuzzTCPResponse(f *testing.F) {
	req := []byte{0, 1, 0, 0, 0, 6, 1, 3, 0, 0, 0, 2}
	f.Add(tcpAnswer(req))
	f.Add([]byte{0, 0, 0, 0, 0, 7, 1, 3, 4, 0, 1, 0, 2})
	f.Add(append([]byte{0, 0, 0, 0, 0, 7, 1, 3, 4, 0, 1, 0, 2}, tcpAnswer(req)...))
	f.Add([]byte{0, 1, 0, 0, 0, 3, 1, 0x83, 2})
	f.Add([]byte{0, 1, 0, 0, 0, 2, 1, 3})
	f.Add([]byte{0, 1, 0, 0, 0, 4, 1, 3, 200, 0})
	f.Fuzz(func(t *testing.T, resp []byte) {
		a, b := net.Pipe()
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer b.Close()
			buf := make([]byte, 12)
			if _, err := b.Read(buf); err != nil {
				return
			}
			b.Write(resp)
		}()
		tr := &tcpTransport{timeout: 50 * time.Millisecond, log: slog.New(slog.DiscardHandler)}
		tr.use(a)
		p := modbus.NewTCPClientHandler("")
		p.SlaveId = 1
		data, err := modbus.NewClient2(p, tr).ReadHoldingRegisters(0, 2)
		tr.close()
		<-done
		if err == nil && len(data) != 4 {
			t.Fatalf("%d data bytes for 2 registers", len(data))
		}
	})
}

func FuzzCheckRTU(f *testing.F) {
	f.Add([]byte{1, 3, 0, 0, 0, 2}, readAnswer([]byte{1, 3, 0, 0, 0, 2}))
	f.Add([]byte{1, 3, 0, 0, 0, 2}, []byte{1})
	f.Fuzz(func(t *testing.T, req, resp []byte) {
		if len(req) < 2 {
			return
		}
		if err := checkRTU(req, resp); err == nil {
			if crc16.Modbus(resp[:len(resp)-2]) != binary.LittleEndian.Uint16(resp[len(resp)-2:]) {
				t.Fatal("accepted a bad CRC")
			}
		}
		rtuResponseLength(req)
	})
}

func FuzzReadRequestIn(f *testing.F) {
	f.Add(rtuFrame(9, 3, 0, 100, 0, 2))
	f.Add(append([]byte{0xFF, 0x00}, rtuFrame(5, 1, 0, 0, 0, 16)...))
	f.Add(readAnswer([]byte{1, 1, 0, 0, 0, 20}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, ok := readRequestIn(b)
		if !ok {
			return
		}
		// The frame it names is in b, whole, with its CRC.
		want := rtuFrame(h.Unit, h.Function, byte(h.Start>>8), byte(h.Start), byte(h.Count>>8), byte(h.Count))
		if !bytes.Contains(b, want) {
			t.Fatalf("found %+v, whose frame % x is not in % x", h, want, b)
		}
		if h.Unit < 1 || h.Unit > 247 || !isRead(h.Function) || h.Count < 1 || h.Count > 2000 {
			t.Fatalf("found %+v", h)
		}
	})
}
