package crc16

import "testing"

// The check values of the CRC catalogue (reveng): CRC-16/MODBUS and
// CRC-16/ARC of "123456789"; and a Modbus RTU frame from the XY-MD02
// manual, whose last two bytes are its CRC, low byte first.
func TestCheckValues(t *testing.T) {
	if got := Modbus([]byte("123456789")); got != 0x4B37 {
		t.Errorf("Modbus(123456789) = %04X, want 4B37", got)
	}
	if got := ARC([]byte("123456789")); got != 0xBB3D {
		t.Errorf("ARC(123456789) = %04X, want BB3D", got)
	}
	if got := Modbus([]byte{0x01, 0x04, 0x00, 0x01, 0x00, 0x02}); got != 0x0B20 {
		t.Errorf("Modbus(01 04 00 01 00 02) = %04X, want 0B20 (sent 20 0B)", got)
	}
	if got := Update(Update(0xFFFF, '1', '2', '3'), []byte("456789")...); got != 0x4B37 {
		t.Errorf("in two parts: %04X, want 4B37", got)
	}
}
