package dcon

import (
	"errors"
	"fmt"
	"strings"
)

// The DCON protocol (Advantech ADAM-4000, ICP DAS I-7000/M-7000 and
// clones) is ASCII on RS-485. A command is a delimiter ($, #, %, @, ~), the
// module's address as two hex digits, the command and its data, an
// optional checksum and a CR; a module answers only commands to its own
// address, with ! or > for a valid command and ?AA for an invalid one, and
// says nothing at all to a command it cannot read (a damaged frame, a bad
// checksum, another address).
//
// The commands this driver sends (Advantech, ADAM-4000 Series User Manual,
// chapter 7; ICP DAS, I-7000 DIO Manual, chapter 2):
//
//	$AA6     read digital I/O   !(6 hex digits of data)   e.g. $016 -> !112200
//	$AAM     read module name   !AA(name)                 e.g. $01M -> !014050
//	#AA1cdd  set output c       >                         e.g. #011101 -> >
//	$AALS    read latched DI    !(6 hex digits, as $AA6)  e.g. $01L1 -> !000100
//	$AAC     clear the latch    !AA                       e.g. $01C -> !01
//
// The last two are ICP DAS's (I-7000 DIO Manual, sections 2.13 and 2.11),
// for a template whose module latches its inputs: $AAL1 says which inputs
// were high at some moment since the latch was cleared, $AAL0 which were
// low.
//
// With the checksum on, both directions end in two hex digits before the
// CR: the sum of every character before them, modulo 256 (Advantech's
// example: $07S1RH carries A9, as 24h+30h+37h+53h+31h+52h+48h = 1A9h).
//
// Every function here is pure: the transport reads a frame up to its CR,
// and these build commands and judge answers.

const cr = '\r'

// checksum is the DCON checksum of text: the sum of its bytes, mod 256.
func checksum(text string) byte {
	var s byte
	for i := 0; i < len(text); i++ {
		s += text[i]
	}
	return s
}

// Command is the frame of a command's text ("$016"), with its checksum
// when the module's is on, and the CR.
func Command(text string, withChecksum bool) []byte {
	if withChecksum {
		text += fmt.Sprintf("%02X", checksum(text))
	}
	return append([]byte(text), cr)
}

// Commands of the driver, for a module at addr.
func readIO(addr int) string     { return fmt.Sprintf("$%02X6", addr) }
func readName(addr int) string   { return fmt.Sprintf("$%02XM", addr) }
func clearLatch(addr int) string { return fmt.Sprintf("$%02XC", addr) }
func readLatch(addr int, high bool) string {
	if high {
		return fmt.Sprintf("$%02XL1", addr)
	}
	return fmt.Sprintf("$%02XL0", addr)
}
func setOutput(addr, ch int, on bool) string {
	dd := "00"
	if on {
		dd = "01"
	}
	return fmt.Sprintf("#%02X1%X%s", addr, ch, dd)
}

// What can be wrong with an answer (FrameError.Kind); each is counted in
// the module's health as bad_frames, but a bad checksum as
// checksum_errors.
const (
	badChecksum  = "checksum"
	badLength    = "length"
	badDelimiter = "delimiter"
	badHex       = "hex"
	badAddress   = "address"
	badZeros     = "zeros"
	badName      = "name"
)

// FrameError is an answer that could not be a module's valid answer to the
// command: damaged on the line, or from another module.
type FrameError struct {
	Kind   string
	Detail string
}

func (e *FrameError) Error() string { return fmt.Sprintf("bad answer (%s: %s)", e.Kind, e.Detail) }

// RefusedError is a module's ?AA: it read the command and found it
// invalid (a command its model does not have, an output it does not
// have). Asking again changes nothing.
type RefusedError struct{ Addr int }

func (e *RefusedError) Error() string {
	return fmt.Sprintf("module at address %02X refused the command as invalid (?%02X)", e.Addr, e.Addr)
}

// IgnoredError is a module's ! to an output command: its host watchdog
// has expired, its outputs are at their safe values and it ignores output
// commands until the watchdog is reset (ICP DAS I-7000 DIO manual, #AABBDD).
var IgnoredError = errors.New("module ignored the output command: its host watchdog expired (outputs at safe values)")

// Kinds of command, for the answer each expects.
type Kind uint8

const (
	KindReadIO Kind = iota // $AA6, $AALS
	KindName               // $AAM
	KindWrite              // #AA1cdd, #AA00dd
	KindClear              // $AAC
)

// Answer is what a valid answer said.
type Answer struct {
	Data  [3]byte // KindReadIO: the three data bytes
	State State   // KindReadIO: Data in the module's layout (the driver decodes it)
	Name  string  // KindName
}

// Parse judges the frame a module sent in answer to a command of kind k to
// address addr (the frame up to and including its CR), with the checksum
// on or off as the module's is. A ?AA answer is a RefusedError; anything
// that is not a valid answer is a FrameError.
func Parse(frame []byte, k Kind, addr int, withChecksum bool) (Answer, error) {
	n := len(frame)
	if n < 2 || frame[n-1] != cr {
		return Answer{}, &FrameError{Kind: badLength, Detail: fmt.Sprintf("%d bytes without a CR at the end", n)}
	}
	body := string(frame[:n-1])
	if withChecksum {
		if len(body) < 3 {
			return Answer{}, &FrameError{Kind: badLength, Detail: fmt.Sprintf("%q has no room for a checksum", body)}
		}
		text, sum := body[:len(body)-2], body[len(body)-2:]
		got, ok := hexByte(sum)
		if !ok {
			return Answer{}, &FrameError{Kind: badChecksum, Detail: fmt.Sprintf("%q is not a checksum", sum)}
		}
		if want := checksum(text); got != want {
			return Answer{}, &FrameError{Kind: badChecksum, Detail: fmt.Sprintf("got %02X, want %02X", got, want)}
		}
		body = text
	}
	if strings.HasPrefix(body, "?") {
		if err := wantAddress(body[1:], addr); err != nil {
			return Answer{}, err
		}
		if len(body) != 3 {
			return Answer{}, &FrameError{Kind: badLength, Detail: fmt.Sprintf("%q", body)}
		}
		return Answer{}, &RefusedError{Addr: addr}
	}
	switch k {
	case KindReadIO:
		if body[0] != '!' {
			return Answer{}, &FrameError{Kind: badDelimiter, Detail: fmt.Sprintf("%q, want !", body[0])}
		}
		if len(body) != 7 {
			return Answer{}, &FrameError{Kind: badLength, Detail: fmt.Sprintf("%d characters of data, want 6", len(body)-1)}
		}
		var a Answer
		for i := range a.Data {
			b, ok := hexByte(body[1+2*i : 3+2*i])
			if !ok {
				return Answer{}, &FrameError{Kind: badHex, Detail: fmt.Sprintf("%q", body[1:])}
			}
			a.Data[i] = b
		}
		return a, nil
	case KindName:
		if body[0] != '!' {
			return Answer{}, &FrameError{Kind: badDelimiter, Detail: fmt.Sprintf("%q, want !", body[0])}
		}
		if err := wantAddress(body[1:], addr); err != nil {
			return Answer{}, err
		}
		name := body[3:]
		if !validName(name) {
			return Answer{}, &FrameError{Kind: badName, Detail: fmt.Sprintf("%q", name)}
		}
		return Answer{Name: name}, nil
	case KindClear:
		if body[0] != '!' {
			return Answer{}, &FrameError{Kind: badDelimiter, Detail: fmt.Sprintf("%q, want !", body[0])}
		}
		if err := wantAddress(body[1:], addr); err != nil {
			return Answer{}, err
		}
		if len(body) != 3 {
			return Answer{}, &FrameError{Kind: badLength, Detail: fmt.Sprintf("%q, want !%02X", body, addr)}
		}
		return Answer{}, nil
	case KindWrite:
		switch body {
		case ">":
			return Answer{}, nil
		case "!":
			return Answer{}, IgnoredError
		}
		return Answer{}, &FrameError{Kind: badDelimiter, Detail: fmt.Sprintf("%q, want >", body)}
	}
	return Answer{}, fmt.Errorf("unknown kind of command %d", k)
}

// wantAddress checks that s starts with addr in two hex digits.
func wantAddress(s string, addr int) error {
	if len(s) < 2 {
		return &FrameError{Kind: badLength, Detail: fmt.Sprintf("%q has no address", s)}
	}
	got, ok := hexByte(s[:2])
	if !ok {
		return &FrameError{Kind: badHex, Detail: fmt.Sprintf("address %q", s[:2])}
	}
	if int(got) != addr {
		return &FrameError{Kind: badAddress, Detail: fmt.Sprintf("got %02X, want %02X", got, addr)}
	}
	return nil
}

// validName says whether s can be a module name: 1 to 16 upper-case
// letters, digits, '+' or '-' (4050, 7060D, 4018+), as modules send them.
func validName(s string) bool {
	if len(s) < 1 || len(s) > 16 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'A' <= c && c <= 'Z' || c == '+' || c == '-') {
			return false
		}
	}
	return true
}

// hexByte reads two hex digits. Modules send upper case: a lower-case
// digit is a bit the noise flipped (0x20 is the case bit), not a value.
func hexByte(s string) (byte, bool) {
	if len(s) != 2 {
		return 0, false
	}
	hi, ok1 := hexDigit(s[0])
	lo, ok2 := hexDigit(s[1])
	return hi<<4 | lo, ok1 && ok2
}

func hexDigit(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// answerLen is the length of a valid answer of kind k with the checksum on
// or off, CR included, when it is known in advance (0 for a name).
func answerLen(k Kind, withChecksum bool) int {
	n := 0
	switch k {
	case KindReadIO:
		n = 8 // !dddddd CR
	case KindWrite:
		n = 2 // > CR
	case KindClear:
		n = 4 // !AA CR
	default:
		return 0
	}
	if withChecksum {
		n += 2
	}
	return n
}

// State is a module's digital I/O as $AA6 reads it: a bit per channel.
type State struct {
	In, Out uint16
}

// Layout says where the channels sit in the three data bytes of $AA6's
// answer: the byte of inputs 0-7 and 8-15, of outputs 0-7 and 8-15 (-1
// where there are none), and the bytes that are always zero.
type Layout struct {
	In, Out [2]int
}

// Decode reads the channels out of $AA6's data. A byte that should be
// zero and is not is a FrameError: on a line without checksum it is the
// cheapest sign of a damaged answer, or of another model of module.
func (l Layout) Decode(data [3]byte) (State, error) {
	var s State
	used := [3]bool{}
	for g, i := range l.In {
		if i >= 0 {
			s.In |= uint16(data[i]) << (8 * g)
			used[i] = true
		}
	}
	for g, i := range l.Out {
		if i >= 0 {
			s.Out |= uint16(data[i]) << (8 * g)
			used[i] = true
		}
	}
	for i, u := range used {
		if !u && data[i] != 0 {
			return State{}, &FrameError{Kind: badZeros, Detail: fmt.Sprintf("data byte %d is %02X, want 00", i, data[i])}
		}
	}
	return s, nil
}
