package uplink

import "testing"

// TestEmptied: a batch's array is kept for its next use unless it is large
// and the last use took under a quarter of it.
func TestEmptied(t *testing.T) {
	for _, c := range []struct {
		name     string
		len, cap int
		kept     bool
	}{
		{"small, little used", 1, shrinkOver, true},
		{"large, a quarter used", shrinkOver, 4 * shrinkOver, true},
		{"large, under a quarter used", shrinkOver - 1, 4 * shrinkOver, false},
		{"large, unused", 0, 2 * shrinkOver, false},
	} {
		buf := make([]byte, c.len, c.cap)
		got := Emptied(buf)
		if len(got) != 0 || (cap(got) == c.cap) != c.kept {
			t.Errorf("%s (len %d, cap %d): got len %d, cap %d; want it kept: %v", c.name, c.len, c.cap, len(got), cap(got), c.kept)
		}
	}
}
