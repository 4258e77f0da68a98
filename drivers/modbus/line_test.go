package modbus

import (
	"testing"

	mb "outpost/configs/modbus"
)

func TestDescribe(t *testing.T) {
	cases := []struct {
		r    Request
		want string
	}{
		{Request{Table: mb.Input, Start: 0, Count: 2}, "input registers 0-1 (0x0000-0x0001)"},
		{Request{Table: mb.Holding, Start: 40, Count: 1}, "holding register 40 (0x0028)"},
		{Request{Table: mb.Coil, Start: 0, Count: 16}, "coils 0-15 (0x0000-0x000F)"},
		{Request{Table: mb.Discrete, Start: 256, Count: 2}, "discrete inputs 256-257 (0x0100-0x0101)"},
		{Request{Table: mb.Holding, Start: 65534, Count: 2}, "holding registers 65534-65535 (0xFFFE-0xFFFF)"},
	}
	for _, c := range cases {
		if got := describe(c.r); got != c.want {
			t.Errorf("describe(%s) = %q, want %q", c.r, got, c.want)
		}
	}
}
