package slave

import "outpost/configs"

// Garble is what a master whose UART is set to line m reads when a device
// set to line d sends out: the device's bit stream (start bit, data bits LSB
// first, parity, stop bits) sampled in the middle of each of the master's bit
// times after every falling edge. Parity and framing errors are not flagged,
// as a port with default settings delivers such bytes anyway.
func Garble(out []byte, d, m Line) []byte {
	if d.Baud <= 0 || m.Baud <= 0 {
		return nil
	}
	var bits []bool // line level per device bit time; true is mark (idle)
	for _, c := range out {
		bits = append(bits, false)
		ones := 0
		for k := range d.DataBits {
			b := c>>k&1 == 1
			if b {
				ones++
			}
			bits = append(bits, b)
		}
		switch d.Parity {
		case configs.ParityEven:
			bits = append(bits, ones%2 == 1)
		case configs.ParityOdd:
			bits = append(bits, ones%2 == 0)
		}
		for range d.StopBits {
			bits = append(bits, true)
		}
	}
	td := 1 / float64(d.Baud) // device bit time
	tm := 1 / float64(m.Baud) // master bit time
	level := func(t float64) bool {
		i := int(t / td)
		if i < 0 || i >= len(bits) {
			return true
		}
		return bits[i]
	}
	var res []byte
	t := 0.0
	for {
		// Next falling edge: the first space bit at or after t.
		j := int(t / td)
		for j < len(bits) && bits[j] {
			j++
		}
		if j >= len(bits) {
			return res
		}
		edge := max(t, float64(j)*td)
		var c byte
		for k := range m.DataBits {
			if level(edge + (1.5+float64(k))*tm) {
				c |= 1 << k
			}
		}
		res = append(res, c)
		// Resume looking for a start bit in the middle of the first stop bit.
		t = edge + (float64(m.Bits()-m.StopBits)+0.5)*tm
	}
}
