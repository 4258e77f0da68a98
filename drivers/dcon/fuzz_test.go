package dcon

import (
	"errors"
	"testing"
)

// FuzzResponse: whatever a module (or the noise) sends, Parse never
// panics; an answer it takes as valid re-encodes to exactly the frame it
// came from (so no damaged frame passes as another valid one), and every
// failure is one of the errors the driver counts.
func FuzzResponse(f *testing.F) {
	for _, s := range []string{"!112200\r", "!BEDE00\r", "!014050\r", ">\r", "!\r", "?01\r", withSum("!112200"), withSum("!014050"), withSum(">"), withSum("!01"), "!11G200\r", ""} {
		for k := KindReadIO; k <= KindClear; k++ {
			f.Add([]byte(s), uint8(k), uint8(1), false)
			f.Add([]byte(s), uint8(k), uint8(1), true)
		}
	}
	f.Fuzz(func(t *testing.T, frame []byte, kind, addr uint8, sum bool) {
		k := Kind(kind % 4)
		a, err := Parse(frame, k, int(addr), sum)
		var fe *FrameError
		var re *RefusedError
		switch {
		case err == nil:
		case errors.As(err, &fe), errors.As(err, &re), errors.Is(err, IgnoredError):
			return
		default:
			t.Fatalf("Parse(%q) = %v: not an error the driver counts", frame, err)
		}
		var text string
		switch k {
		case KindReadIO:
			text = "!" + hexString(a.Data[:])
		case KindName:
			text = "!" + hexString([]byte{addr}) + a.Name
		case KindWrite:
			text = ">"
		case KindClear:
			text = "!" + hexString([]byte{addr})
		}
		if got := string(Command(text, sum)); got != string(frame) {
			t.Fatalf("Parse(%q) = %+v, which is the frame %q", frame, a, got)
		}
	})
}

func hexString(b []byte) string {
	const digits = "0123456789ABCDEF"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}
