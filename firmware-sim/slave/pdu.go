// Package slave speaks the slave side of Modbus: the PDU (function codes 1–6,
// 15 and 16), RTU framing on a serial line paced to its baud rate, and MBAP
// over TCP. What a unit holds is behind the Unit interface.
package slave

import (
	"encoding/binary"

	"outpost/configs/modbus"
)

// Exception is a Modbus exception code; 0 means none.
type Exception byte

// Exception codes.
const (
	IllegalFunction   Exception = 0x01
	IllegalAddress    Exception = 0x02
	IllegalValue      Exception = 0x03
	DeviceFailure     Exception = 0x04
	GatewayNoResponse Exception = 0x0B
	maxReadBits                 = 2000
	maxReadWords                = 125
	maxWriteBits                = 1968
	maxWriteWords               = 123
)

// Unit is one slave's data model as the protocol sees it. Reads return a
// commit func, called once the response carrying the data has been sent in
// full (it may be nil).
type Unit interface {
	ReadBits(t modbus.Table, addr, qty int) (bits []bool, commit func(), exc Exception)
	ReadWords(t modbus.Table, addr, qty int) (words []uint16, commit func(), exc Exception)
	WriteBits(addr int, bits []bool) Exception
	WriteWords(addr int, words []uint16) Exception
}

// Recorder is an optional interface of a Unit that counts what it answered.
type Recorder interface {
	// Answered is called for every request answered, with its exception or 0.
	Answered(exc Exception)
	// BadFrame is called for a damaged frame that seems addressed to the unit.
	BadFrame()
}

// Process answers one request PDU (function code and data) for u. It returns
// the response PDU and the commit func of a read.
func Process(u Unit, pdu []byte) (resp []byte, commit func()) {
	resp, commit, exc := process(u, pdu)
	if exc != 0 {
		var fc byte
		if len(pdu) > 0 {
			fc = pdu[0]
		}
		resp, commit = ExceptionPDU(fc, exc), nil
	}
	if r, ok := u.(Recorder); ok {
		r.Answered(exc)
	}
	return resp, commit
}

// ExceptionPDU is the exception response to function fc.
func ExceptionPDU(fc byte, exc Exception) []byte {
	return []byte{fc | 0x80, byte(exc)}
}

func process(u Unit, pdu []byte) ([]byte, func(), Exception) {
	if len(pdu) == 0 {
		return nil, nil, IllegalFunction
	}
	fc := pdu[0]
	switch fc {
	case 1, 2, 3, 4:
		if len(pdu) != 5 {
			return nil, nil, IllegalValue
		}
		addr := int(binary.BigEndian.Uint16(pdu[1:]))
		qty := int(binary.BigEndian.Uint16(pdu[3:]))
		if fc <= 2 {
			if qty < 1 || qty > maxReadBits {
				return nil, nil, IllegalValue
			}
			if addr+qty > 0x10000 {
				return nil, nil, IllegalAddress
			}
			t := modbus.Coil
			if fc == 2 {
				t = modbus.Discrete
			}
			bits, commit, exc := u.ReadBits(t, addr, qty)
			if exc != 0 {
				return nil, nil, exc
			}
			packed := PackBits(bits)
			return append([]byte{fc, byte(len(packed))}, packed...), commit, 0
		}
		if qty < 1 || qty > maxReadWords {
			return nil, nil, IllegalValue
		}
		if addr+qty > 0x10000 {
			return nil, nil, IllegalAddress
		}
		t := modbus.Holding
		if fc == 4 {
			t = modbus.Input
		}
		words, commit, exc := u.ReadWords(t, addr, qty)
		if exc != 0 {
			return nil, nil, exc
		}
		out := make([]byte, 2+2*len(words))
		out[0], out[1] = fc, byte(2*len(words))
		for i, w := range words {
			binary.BigEndian.PutUint16(out[2+2*i:], w)
		}
		return out, commit, 0
	case 5:
		if len(pdu) != 5 {
			return nil, nil, IllegalValue
		}
		addr := int(binary.BigEndian.Uint16(pdu[1:]))
		var on bool
		switch binary.BigEndian.Uint16(pdu[3:]) {
		case 0xFF00:
			on = true
		case 0x0000:
		default:
			return nil, nil, IllegalValue
		}
		if exc := u.WriteBits(addr, []bool{on}); exc != 0 {
			return nil, nil, exc
		}
		return append([]byte(nil), pdu...), nil, 0
	case 6:
		if len(pdu) != 5 {
			return nil, nil, IllegalValue
		}
		addr := int(binary.BigEndian.Uint16(pdu[1:]))
		if exc := u.WriteWords(addr, []uint16{binary.BigEndian.Uint16(pdu[3:])}); exc != 0 {
			return nil, nil, exc
		}
		return append([]byte(nil), pdu...), nil, 0
	case 15, 16:
		if len(pdu) < 6 {
			return nil, nil, IllegalValue
		}
		addr := int(binary.BigEndian.Uint16(pdu[1:]))
		qty := int(binary.BigEndian.Uint16(pdu[3:]))
		n := int(pdu[5])
		data := pdu[6:]
		if fc == 15 {
			if qty < 1 || qty > maxWriteBits || n != (qty+7)/8 || len(data) != n {
				return nil, nil, IllegalValue
			}
			if addr+qty > 0x10000 {
				return nil, nil, IllegalAddress
			}
			bits := make([]bool, qty)
			for i := range bits {
				bits[i] = data[i/8]>>(i%8)&1 == 1
			}
			if exc := u.WriteBits(addr, bits); exc != 0 {
				return nil, nil, exc
			}
		} else {
			if qty < 1 || qty > maxWriteWords || n != 2*qty || len(data) != n {
				return nil, nil, IllegalValue
			}
			if addr+qty > 0x10000 {
				return nil, nil, IllegalAddress
			}
			words := make([]uint16, qty)
			for i := range words {
				words[i] = binary.BigEndian.Uint16(data[2*i:])
			}
			if exc := u.WriteWords(addr, words); exc != 0 {
				return nil, nil, exc
			}
		}
		return append([]byte(nil), pdu[:5]...), nil, 0
	}
	return nil, nil, IllegalFunction
}

// PackBits packs bits LSB first, as Modbus sends coils and discrete inputs.
func PackBits(bits []bool) []byte {
	out := make([]byte, (len(bits)+7)/8)
	for i, b := range bits {
		if b {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}
