// Package crc16 is the CRC-16 of the protocols the gateway speaks, on
// polynomial 0x8005 reflected (0xA001): Modbus RTU's and that of
// ASCII-line devices (CRC-16/MODBUS, initial value 0xFFFF) and ANSI/SIA
// DC-09's (CRC-16/ARC, initial value 0). The simulators keep their own,
// written apart, so that each side checks the other.
package crc16

var table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i)
		for range 8 {
			if c&1 != 0 {
				c = c>>1 ^ 0xA001
			} else {
				c >>= 1
			}
		}
		t[i] = c
	}
	return t
}()

// Update adds b to crc.
func Update(crc uint16, b ...byte) uint16 {
	for _, c := range b {
		crc = crc>>8 ^ table[byte(crc)^c]
	}
	return crc
}

// Modbus is the CRC-16/MODBUS of b ("123456789" gives 0x4B37).
func Modbus(b []byte) uint16 { return Update(0xFFFF, b...) }

// ARC is the CRC-16/ARC of b ("123456789" gives 0xBB3D).
func ARC(b []byte) uint16 { return Update(0, b...) }
