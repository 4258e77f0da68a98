package dc09

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"outpost/drivers/crc16"
)

// A DC-09 frame on the wire is
//
//	<LF><crc><0LLL>"<id>"<seq>R<rcvr>L<pref>#<acct>[<data>]<timestamp><CR>
//
// where crc is the CRC-16/ARC (polynomial 0x8005 reflected, initial 0) of
// the text from the opening quote to the end of the timestamp, and LLL that
// text's length, both in upper-case hexadecimal. An id starting with '*'
// says that what follows '[' is encrypted (AES-CBC, zero IV) and written
// in hexadecimal: pad, '|', data, ']', extended data and timestamp, padded
// at the front to a multiple of 16 bytes with bytes other than '|', '['
// and ']'.

// Limits of a frame: LLL has three hexadecimal digits.
const (
	maxText  = 0x0FFF
	maxFrame = 1 + 8 + maxText + 1 // LF, crc and length, text, CR
)

// timeLayout is the DC-09 timestamp, in UTC: _HH:MM:SS,MM-DD-YYYY. Only
// Format may use it (see parseTime).
const timeLayout = "15:04:05,01-02-2006"

// Tokens the receiver handles.
const (
	TokenCID  = "ADM-CID"
	TokenSIA  = "SIA-DCS"
	TokenNull = "NULL"
)

// Frame is a DC-09 message whose CRC and length are right.
type Frame struct {
	// Token is the id without its '*': ADM-CID, SIA-DCS, NULL or one the
	// receiver does not know.
	Token     string
	Encrypted bool
	// Seq, Receiver, Line and Account are as the panel sent them (the
	// receiver and line without their R and L, "" when absent), for the
	// answer to echo.
	Seq, Receiver, Line, Account string
	// Data is what stands between '[' and ']' ("#1234|1110 00 129"),
	// Extended the blocks after it ("X006E07.77"), Time the panel's
	// timestamp if it sent one. For an encrypted frame they are there
	// once Decrypt succeeded.
	Data     string
	Extended []string
	Time     time.Time
	HasTime  bool

	sealed []byte // the encrypted part, until Decrypt
}

// FrameError is a frame the receiver cannot take; Counter names the health
// counter it goes to.
type FrameError struct {
	Counter string
	Msg     string
}

func (e *FrameError) Error() string { return e.Msg }

func errf(counter, format string, args ...any) error {
	return &FrameError{Counter: counter, Msg: fmt.Sprintf(format, args...)}
}

// Counter is the health counter of a frame error: crc_errors,
// length_errors, decrypt_errors or bad_frames.
func Counter(err error) string {
	var fe *FrameError
	if errors.As(err, &fe) {
		return fe.Counter
	}
	return "bad_frames"
}

// ParseFrame checks and parses a frame: raw is what stands between LF and
// CR. A frame whose CRC or length is wrong is refused whole (its account
// cannot be trusted). A frame whose header is fine but whose body is not
// comes back with its header fields set, so that it can be answered.
func ParseFrame(raw []byte) (*Frame, error) {
	if len(raw) < 8 {
		return nil, errf("length_errors", "frame of %d bytes, shorter than its CRC and length", len(raw))
	}
	crc, err1 := strconv.ParseUint(string(raw[:4]), 16, 16)
	n, err2 := strconv.ParseUint(string(raw[4:8]), 16, 16)
	if err1 != nil || err2 != nil || raw[4] != '0' {
		return nil, errf("bad_frames", "frame does not start with a CRC and a length (%q)", clip(raw[:8]))
	}
	text := raw[8:]
	if int(n) != len(text) && !decimalLength(raw[4:8], len(text)) {
		return nil, errf("length_errors", "frame says %d bytes of text, has %d", n, len(text))
	}
	if got := crc16.ARC(text); got != uint16(crc) {
		return nil, errf("crc_errors", "frame CRC %04X, computed %04X", crc, got)
	}
	f, rest, err := parseHeader(string(text))
	if err != nil {
		return f, err
	}
	if f.Encrypted {
		if len(rest) == 0 || len(rest)%32 != 0 {
			return f, errf("decrypt_errors", "encrypted part of %d hex digits, not a whole number of 16-byte blocks", len(rest))
		}
		if f.sealed, err = hex.DecodeString(rest); err != nil {
			return f, errf("decrypt_errors", "encrypted part is not hexadecimal")
		}
		return f, nil
	}
	if err := f.parseBody(rest); err != nil {
		return f, err
	}
	return f, nil
}

// parseHeader reads "<id>"<seq>R<rcvr>L<pref>#<acct>[ and returns what
// follows the '['. The fields read so far are set even on error.
func parseHeader(s string) (*Frame, string, error) {
	f := &Frame{}
	if len(s) == 0 || s[0] != '"' {
		return nil, "", errf("bad_frames", "text does not start with a quoted id")
	}
	end := strings.IndexByte(s[1:], '"')
	if end < 1 || end > 16 {
		return nil, "", errf("bad_frames", "no quoted id")
	}
	f.Token, s = s[1:end+1], s[end+2:]
	f.Token, f.Encrypted = strings.CutPrefix(f.Token, "*")
	if len(s) < 4 || !allDigits(s[:4]) {
		return nil, "", errf("bad_frames", "%s frame without a 4-digit sequence number", f.Token)
	}
	f.Seq, s = s[:4], s[4:]
	if strings.HasPrefix(s, "R") {
		f.Receiver, s = hexRun(s[1:], 6)
		if f.Receiver == "" {
			return f, "", errf("bad_frames", "receiver number is not 1 to 6 hexadecimal digits")
		}
	}
	if strings.HasPrefix(s, "L") {
		f.Line, s = hexRun(s[1:], 6)
		if f.Line == "" {
			return f, "", errf("bad_frames", "line prefix is not 1 to 6 hexadecimal digits")
		}
	}
	if !strings.HasPrefix(s, "#") {
		return f, "", errf("bad_frames", "no account (#acct) after the sequence number")
	}
	acct, rest := hexRun(s[1:], 16)
	f.Account = acct
	if len(acct) < 3 || !strings.HasPrefix(rest, "[") {
		return f, "", errf("bad_frames", "account is not 3 to 16 hexadecimal digits followed by '['")
	}
	return f, rest[1:], nil
}

// parseBody reads data]{[extended]}[_timestamp].
func (f *Frame) parseBody(s string) error {
	end := strings.IndexAny(s, "[]")
	if end < 0 || s[end] != ']' {
		return errf("bad_frames", "data does not end with ']'")
	}
	f.Data, s = s[:end], s[end+1:]
	f.Extended = nil
	for strings.HasPrefix(s, "[") {
		end := strings.IndexAny(s[1:], "[]")
		if end < 0 || s[1+end] != ']' {
			return errf("bad_frames", "extended data does not end with ']'")
		}
		f.Extended, s = append(f.Extended, s[1:1+end]), s[end+2:]
	}
	if s == "" {
		return nil
	}
	ts, ok := strings.CutPrefix(s, "_")
	if !ok {
		return errf("bad_frames", "%q after the data, where a timestamp (_HH:MM:SS,MM-DD-YYYY) may stand", clip([]byte(s)))
	}
	t, ok := parseTime(ts)
	if !ok {
		return errf("bad_frames", "timestamp %q is not HH:MM:SS,MM-DD-YYYY", clip([]byte(ts)))
	}
	f.Time, f.HasTime = t, true
	return nil
}

// parseTime reads HH:MM:SS,MM-DD-YYYY (UTC). time.Parse cannot: it takes
// ",0" after the seconds for a fraction.
func parseTime(s string) (time.Time, bool) {
	t, err := time.Parse("15:04:05 01-02-2006", strings.Replace(s, ",", " ", 1))
	if err != nil || len(s) != len(timeLayout) || s[8] != ',' {
		return time.Time{}, false
	}
	return t, true
}

// Decrypt decrypts an encrypted frame's body with the panel's key and
// parses it. Any failure is a decrypt error: with a wrong key the body is
// noise.
func (f *Frame) Decrypt(key []byte) error {
	if !f.Encrypted || f.sealed == nil {
		return errf("decrypt_errors", "frame is not encrypted")
	}
	plain, err := crypt(key, f.sealed, false)
	if err != nil {
		return err
	}
	// The pad holds no '|', '[' or ']': the first of them ends it. The
	// standard puts a '|' after the pad; some panels send a null
	// message's pad straight before its ']'.
	i := strings.IndexAny(string(plain), "|[]")
	if i < 0 || plain[i] == '[' {
		return errf("decrypt_errors", "decrypted text has no data (wrong key?)")
	}
	if plain[i] == '|' {
		i++
	}
	body := plain[i:]
	for _, c := range body {
		if c < 0x20 || c > 0x7e {
			return errf("decrypt_errors", "decrypted text is not printable (wrong key?)")
		}
	}
	if err := f.parseBody(string(body)); err != nil {
		return errf("decrypt_errors", "decrypted text: %v (wrong key?)", err)
	}
	return nil
}

// crypt runs AES-CBC with a zero IV over whole blocks.
func crypt(key, in []byte, encrypt bool) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, errf("decrypt_errors", "key: %v", err)
	}
	if len(in)%aes.BlockSize != 0 || len(in) == 0 {
		return nil, errf("decrypt_errors", "%d bytes, not a whole number of blocks", len(in))
	}
	out := make([]byte, len(in))
	iv := make([]byte, aes.BlockSize)
	if encrypt {
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(out, in)
	} else {
		cipher.NewCBCDecrypter(block, iv).CryptBlocks(out, in)
	}
	return out, nil
}

// Answers.
const (
	ACK = "ACK"
	NAK = "NAK"
	DUH = "DUH"
)

// Answer builds the receiver's answer to a frame. ACK echoes the frame's
// sequence number, receiver, line and account, and is encrypted (with its
// timestamp) when the frame was, with key. NAK carries the receiver's time
// for the panel to adopt, and is never encrypted, nor is DUH: the panel
// may not share the receiver's key or clock. now is the receiver's clock.
func Answer(kind string, f *Frame, key []byte, now time.Time) ([]byte, error) {
	var b strings.Builder
	rl := func() {
		if f.Receiver != "" {
			b.WriteString("R" + f.Receiver)
		}
		line := f.Line
		if line == "" {
			line = "0"
		}
		b.WriteString("L" + line)
	}
	stamp := "_" + now.UTC().Format(timeLayout)
	switch {
	case kind == NAK:
		b.WriteString(`"NAK"0000`)
		rl()
		b.WriteString("A0[]" + stamp)
	case kind == ACK && f.Encrypted:
		fmt.Fprintf(&b, `"*ACK"%s`, f.Seq)
		rl()
		b.WriteString("#" + f.Account + "[")
		sealed, err := seal(key, "|]"+stamp)
		if err != nil {
			return nil, err
		}
		b.WriteString(strings.ToUpper(hex.EncodeToString(sealed)))
	default:
		seq := f.Seq
		if seq == "" {
			seq = "0000"
		}
		fmt.Fprintf(&b, `"%s"%s`, kind, seq)
		rl()
		b.WriteString("#" + f.Account + "[]")
	}
	return encode(b.String()), nil
}

// encode frames a text: LF, CRC, length, text, CR.
func encode(text string) []byte {
	return fmt.Appendf(nil, "\n%04X0%03X%s\r", crc16.ARC([]byte(text)), len(text), text)
}

// seal pads text at the front with random bytes other than '|', '[' and
// ']' to a multiple of 16 bytes (16 more when it is one already) and
// encrypts it.
func seal(key []byte, text string) ([]byte, error) {
	n := aes.BlockSize - len(text)%aes.BlockSize
	pad := make([]byte, n)
	if _, err := rand.Read(pad); err != nil {
		return nil, err
	}
	for i, c := range pad {
		if c == '|' || c == '[' || c == ']' {
			pad[i] = c ^ 0x80
		}
	}
	return crypt(key, append(pad, text...), true)
}

// decimalLength says whether a length field read as decimal digits is n:
// some panels write it so (pysiaalarm's ADM-CID test vector
// "57150047\"ADM-CID\"0247R4F39..." has 47 bytes of text). The CRC still
// guards the frame.
func decimalLength(field []byte, n int) bool {
	d, err := strconv.Atoi(string(field))
	return err == nil && allDigits(string(field)) && d == n
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// hexRun splits the leading hexadecimal digits of s (at most max, or ""
// when there are more) from the rest.
func hexRun(s string, max int) (string, string) {
	i := 0
	for i < len(s) && isHex(s[i]) {
		i++
	}
	if i > max {
		return "", s
	}
	return s[:i], s[i:]
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'A' && c <= 'F' || c >= 'a' && c <= 'f'
}

// clip quotes at most 40 bytes of what a panel sent, for a message.
func clip(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}
