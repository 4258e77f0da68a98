package slave

import (
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
)

// CRC16 is the Modbus RTU CRC (polynomial 0xA001 reflected, initial 0xFFFF).
// On the wire its low byte goes first.
func CRC16(b []byte) uint16 { return crcUpdate(0xFFFF, b) }

// crcUpdate continues a CRC over b.
func crcUpdate(crc uint16, b []byte) uint16 {
	for _, c := range b {
		crc ^= uint16(c)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0xA001
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

// AppendCRC appends the CRC of b to b, low byte first.
func AppendCRC(b []byte) []byte {
	c := CRC16(b)
	return append(b, byte(c), byte(c>>8))
}

// crcOK reports whether frame ends in the CRC of the rest.
func crcOK(frame []byte) bool {
	n := len(frame)
	if n < 4 {
		return false
	}
	c := CRC16(frame[:n-2])
	return frame[n-2] == byte(c) && frame[n-1] == byte(c>>8)
}

// Status is the outcome of looking for a frame at the start of a buffer.
type Status uint8

const (
	// Incomplete: the buffer may be the start of a frame; wait for more.
	Incomplete Status = iota
	// Complete: buf[:n] is a frame with a good CRC.
	Complete
	// Bad: the buffer does not start with a frame; drop a byte and retry.
	Bad
)

// MaxFrame is the longest RTU frame.
const MaxFrame = 256

// ParseRequest looks for a request frame at the start of buf. The length
// comes from the function code (1–6: 8 bytes; 15, 16: 9 + byte count); for
// other function codes it is the shortest prefix of at least 4 bytes whose
// CRC checks, so they can be answered with an exception.
func ParseRequest(buf []byte) (n int, st Status) {
	if len(buf) < 2 {
		return 0, Incomplete
	}
	switch fc := buf[1]; {
	case fc >= 1 && fc <= 6:
		n = 8
	case fc == 15 || fc == 16:
		if len(buf) < 7 {
			return 0, Incomplete
		}
		n = 9 + int(buf[6])
		if n > MaxFrame {
			return 0, Bad
		}
	default:
		crc := crcUpdate(0xFFFF, buf[:1])
		for n = 4; n <= len(buf) && n <= MaxFrame; n++ {
			crc = crcUpdate(crc, buf[n-3:n-2])
			if buf[n-2] == byte(crc) && buf[n-1] == byte(crc>>8) {
				return n, Complete
			}
		}
		if len(buf) >= MaxFrame {
			return 0, Bad
		}
		return 0, Incomplete
	}
	if len(buf) < n {
		return 0, Incomplete
	}
	if !crcOK(buf[:n]) {
		return 0, Bad
	}
	return n, Complete
}

// Line is a serial line's framing, for wire times.
type Line struct {
	Baud     int
	DataBits int
	Parity   configs.Parity
	StopBits int
}

// LineOf is the line of a bus, with the usual defaults for unset fields.
func LineOf(b modbus.RTU) Line {
	l := Line{Baud: b.Baud, DataBits: b.DataBits, Parity: b.Parity, StopBits: b.StopBits}
	if l.DataBits == 0 {
		l.DataBits = 8
	}
	if l.StopBits == 0 {
		l.StopBits = 1
	}
	if l.Parity == "" {
		l.Parity = configs.ParityNone
	}
	return l
}

// Bits is how many bits one character takes: start, data, parity, stop.
func (l Line) Bits() int {
	n := 1 + l.DataBits + l.StopBits
	if l.Parity == configs.ParityEven || l.Parity == configs.ParityOdd {
		n++
	}
	return n
}

// Char is the wire time of one character.
func (l Line) Char() time.Duration { return l.Wire(1) }

// Wire is the wire time of n characters.
func (l Line) Wire(n int) time.Duration {
	if l.Baud <= 0 {
		return 0
	}
	return time.Duration(int64(n) * int64(l.Bits()) * int64(time.Second) / int64(l.Baud))
}

// Gap is the silence that ends a frame: 3.5 characters, and at least 1.75 ms
// as the standard fixes it above 19200 baud.
func (l Line) Gap() time.Duration {
	g := l.Char() * 7 / 2
	return max(g, 1750*time.Microsecond)
}
