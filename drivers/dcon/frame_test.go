package dcon

import (
	"errors"
	"fmt"
	"testing"
)

func TestChecksum(t *testing.T) {
	cases := []struct{ text, want string }{
		// Advantech ADAM-5000 manual, appendix D, example 2.
		{"$07S1RH", "$07S1RHA9\r"},
		{"!07+2.0500", "!07+2.0500D8\r"},
		// ADLINK NuDAM manual, 1.10: $012 carries B7.
		{"$012", "$012B7\r"},
	}
	for _, c := range cases {
		if got := string(Command(c.text, true)); got != c.want {
			t.Errorf("Command(%q) = %q, want %q", c.text, got, c.want)
		}
	}
	if got := string(Command("$016", false)); got != "$016\r" {
		t.Errorf("without checksum: %q", got)
	}
	if got := setOutput(0x1A, 1, true); got != "#1A1101" {
		t.Errorf("setOutput = %q", got)
	}
	if got := setOutput(1, 0xB, false); got != "#011B00" {
		t.Errorf("setOutput = %q", got)
	}
	for got, want := range map[string]string{readLatch(1, true): "$01L1", readLatch(0x1A, false): "$1AL0", clearLatch(1): "$01C"} {
		if got != want {
			t.Errorf("latch command %q, want %q", got, want)
		}
	}
}

// withSum appends the checksum and CR to an answer's text.
func withSum(s string) string { return string(Command(s, true)) }

func TestParse(t *testing.T) {
	refused := &RefusedError{Addr: 1}
	cases := []struct {
		name  string
		frame string
		kind  Kind
		sum   bool
		want  Answer
		err   error // the error, or one of its kind (FrameError: same Kind)
	}{
		// ADAM-4000 manual, $AA6: $336 answers !112200 on an ADAM-4050.
		{"read io", "!112200\r", KindReadIO, false, Answer{Data: [3]byte{0x11, 0x22, 0}}, nil},
		{"read io", "!BEDE00\r", KindReadIO, false, Answer{Data: [3]byte{0xBE, 0xDE, 0}}, nil},
		{"lower case is a flipped bit", "!bEDE00\r", KindReadIO, false, Answer{}, &FrameError{Kind: badHex}},
		{"read io with checksum", withSum("!112200"), KindReadIO, true, Answer{Data: [3]byte{0x11, 0x22, 0}}, nil},
		{"name", "!014050\r", KindName, false, Answer{Name: "4050"}, nil},
		{"name with checksum", withSum("!017060D"), KindName, true, Answer{Name: "7060D"}, nil},
		// I-7000 DIO manual, $AALS and $AAC: $01L1 answers !012300, $01C !01.
		{"read latch", "!012300\r", KindReadIO, false, Answer{Data: [3]byte{0x01, 0x23, 0}}, nil},
		{"latch cleared", withSum("!01"), KindClear, true, Answer{}, nil},
		{"latch of another address cleared", withSum("!02"), KindClear, true, Answer{}, &FrameError{Kind: badAddress}},
		{"latch cleared, long", withSum("!0100"), KindClear, true, Answer{}, &FrameError{Kind: badLength}},
		{"latch clear refused", withSum("?01"), KindClear, true, Answer{}, refused},
		{"write done", ">\r", KindWrite, false, Answer{}, nil},
		{"write done with checksum", withSum(">"), KindWrite, true, Answer{}, nil},
		{"write ignored", "!\r", KindWrite, false, Answer{}, IgnoredError},
		{"invalid command", "?01\r", KindReadIO, false, Answer{}, refused},
		{"invalid command with checksum", withSum("?01"), KindWrite, true, Answer{}, refused},

		{"no CR", "!112200", KindReadIO, false, Answer{}, &FrameError{Kind: badLength}},
		{"empty", "", KindReadIO, false, Answer{}, &FrameError{Kind: badLength}},
		{"short", "!1122\r", KindReadIO, false, Answer{}, &FrameError{Kind: badLength}},
		{"long", "!11220000\r", KindReadIO, false, Answer{}, &FrameError{Kind: badLength}},
		{"not hex", "!11G200\r", KindReadIO, false, Answer{}, &FrameError{Kind: badHex}},
		{"wrong delimiter", ">112200\r", KindReadIO, false, Answer{}, &FrameError{Kind: badDelimiter}},
		{"bad checksum", "!11220000\r", KindReadIO, true, Answer{}, &FrameError{Kind: badChecksum}},
		{"checksum not hex", "!112200XY\r", KindReadIO, true, Answer{}, &FrameError{Kind: badChecksum}},
		{"checksum missing", "!1\r", KindReadIO, true, Answer{}, &FrameError{Kind: badLength}},
		{"name of another address", "!024050\r", KindName, false, Answer{}, &FrameError{Kind: badAddress}},
		{"invalid from another address", "?02\r", KindName, false, Answer{}, &FrameError{Kind: badAddress}},
		{"name not a name", "!0140 50\r", KindName, false, Answer{}, &FrameError{Kind: badName}},
		{"name empty", "!01\r", KindName, false, Answer{}, &FrameError{Kind: badName}},
		{"write answered otherwise", "?\r", KindWrite, false, Answer{}, &FrameError{Kind: badLength}},
		{"write garbage", ">>\r", KindWrite, false, Answer{}, &FrameError{Kind: badDelimiter}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse([]byte(c.frame), c.kind, 1, c.sum)
			var want, have *FrameError
			switch {
			case errors.As(c.err, &want):
				if !errors.As(err, &have) || have.Kind != want.Kind {
					t.Fatalf("Parse(%q) = %v, want a bad answer (%s)", c.frame, err, want.Kind)
				}
			case c.err != nil:
				if fmt.Sprint(err) != fmt.Sprint(c.err) {
					t.Fatalf("Parse(%q) = %v, want %v", c.frame, err, c.err)
				}
			case err != nil:
				t.Fatalf("Parse(%q): %v", c.frame, err)
			}
			if got != c.want {
				t.Errorf("Parse(%q) = %+v, want %+v", c.frame, got, c.want)
			}
		})
	}
}

func TestLayoutDecode(t *testing.T) {
	cases := []struct {
		name   string
		layout Layout
		data   [3]byte
		want   State
		bad    bool
	}{
		// ADAM-4050 !(dataOutput)(dataInput)00: $336 -> !112200, outputs 0 and 4,
		// inputs 1 and 5.
		{"4050", Layout{In: [2]int{1, -1}, Out: [2]int{0, -1}}, [3]byte{0x11, 0x22, 0}, State{In: 0x22, Out: 0x11}, false},
		// ADAM-4053 !(dataInput 8-15)(dataInput 0-7)00: !BEDE00.
		{"4053", Layout{In: [2]int{1, 0}, Out: [2]int{-1, -1}}, [3]byte{0xBE, 0xDE, 0}, State{In: 0xBEDE}, false},
		// ADAM-4060 !(dataOutput)0000.
		{"4060", Layout{In: [2]int{-1, -1}, Out: [2]int{0, -1}}, [3]byte{0x05, 0, 0}, State{Out: 5}, false},
		{"a zero byte is not", Layout{In: [2]int{1, -1}, Out: [2]int{0, -1}}, [3]byte{0x11, 0x22, 0x01}, State{}, true},
		{"4060 with its input bytes set", Layout{In: [2]int{-1, -1}, Out: [2]int{0, -1}}, [3]byte{0x05, 0x10, 0}, State{}, true},
	}
	for _, c := range cases {
		got, err := c.layout.Decode(c.data)
		if (err != nil) != c.bad || got != c.want {
			t.Errorf("%s: Decode(% x) = %+v, %v; want %+v, bad %v", c.name, c.data, got, err, c.want, c.bad)
		}
	}
}
