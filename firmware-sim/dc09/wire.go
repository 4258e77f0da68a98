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
)

// The panel's side of the wire, written apart from the receiver's
// (drivers/dc09) so that a mistake cannot hide on both sides: a table-driven
// CRC instead of the receiver's bitwise one, and its own framing, padding
// and parsing of answers.

// crcTable is CRC-16/ARC (polynomial 0x8005, reflected: 0xA001) by byte.
var crcTable = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i)
		for range 8 {
			c = c>>1 ^ 0xA001*(c&1)
		}
		t[i] = c
	}
	return t
}()

func checksum(s []byte) uint16 {
	var c uint16
	for _, b := range s {
		c = c>>8 ^ crcTable[byte(c)^b]
	}
	return c
}

// stampLayout writes a DC-09 timestamp: HH:MM:SS,MM-DD-YYYY in UTC.
const stampLayout = "15:04:05,01-02-2006"

// message is what a panel sends: a Contact ID or SIA event, or a link
// test.
type message struct {
	token string // ADM-CID, SIA-DCS or NULL
	data  string // after "#acct|": "1120 01 005", "Nri1/PA001"; "" for NULL
}

// header is the frame fields a panel is programmed with.
type header struct {
	account, receiver, line string
	key                     []byte
}

// frameOf encodes a message with a sequence number and the panel's clock:
// <LF><crc><0LLL>"<id>"<seq>R<rcvr>L<line>#<acct>[<data>]_<time><CR>; with a
// key, what follows '[' is pad|data]_time, AES-CBC encrypted, in hex.
func frameOf(h header, m message, seq int, clock time.Time) ([]byte, error) {
	id := m.token
	if h.key != nil {
		id = "*" + id
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%q%04d", id, seq)
	if h.receiver != "" {
		b.WriteString("R" + h.receiver)
	}
	b.WriteString("L" + h.line)
	b.WriteString("#" + h.account + "[")
	data := ""
	if m.token != "NULL" {
		data = "#" + h.account + "|" + m.data
	}
	tail := data + "]_" + clock.UTC().Format(stampLayout)
	if h.key == nil {
		b.WriteString(tail)
	} else {
		sealed, err := encrypt(h.key, "|"+tail)
		if err != nil {
			return nil, err
		}
		b.WriteString(strings.ToUpper(hex.EncodeToString(sealed)))
	}
	text := b.String()
	if len(text) > 0xFFF {
		return nil, fmt.Errorf("message of %d bytes, more than a DC-09 frame holds", len(text))
	}
	return fmt.Appendf(nil, "\n%04X%04X%s\r", checksum([]byte(text)), len(text), text), nil
}

// encrypt pads text at the front to whole AES blocks (a whole block more
// when it fills them already) with random bytes, none of them '|', '['
// or ']', and encrypts it with a zero IV.
func encrypt(key []byte, text string) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	pad := make([]byte, 16-len(text)%16)
	rand.Read(pad)
	for i := range pad {
		if pad[i] == '|' || pad[i] == '[' || pad[i] == ']' {
			pad[i] ^= 0x40 // '<', ESC or GS: none of the three
		}
	}
	buf := append(pad, text...)
	cipher.NewCBCEncrypter(block, make([]byte, 16)).CryptBlocks(buf, buf)
	return buf, nil
}

func decrypt(key, sealed []byte) ([]byte, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) == 0 || len(sealed)%16 != 0 {
		return nil, errors.New("not whole blocks")
	}
	out := make([]byte, len(sealed))
	cipher.NewCBCDecrypter(block, make([]byte, 16)).CryptBlocks(out, sealed)
	return out, nil
}

// answer is the receiver's answer to a frame.
type answer struct {
	kind string // ACK, NAK or DUH
	seq  int
	acct string
	// clock is the receiver's time, when it sent one (NAK always).
	clock    time.Time
	hasClock bool
}

// readAnswer parses an answer, raw without its LF and CR. An encrypted
// ACK must decrypt with the panel's key.
func readAnswer(raw string, key []byte) (answer, error) {
	var a answer
	if len(raw) < 8 {
		return a, errors.New("answer too short")
	}
	text := raw[8:]
	if n, err := strconv.ParseUint(raw[4:8], 16, 16); err != nil || int(n) != len(text) {
		return a, fmt.Errorf("answer length %q, has %d", raw[4:8], len(text))
	}
	if c, err := strconv.ParseUint(raw[:4], 16, 16); err != nil || uint16(c) != checksum([]byte(text)) {
		return a, fmt.Errorf("answer CRC %q, computed %04X", raw[:4], checksum([]byte(text)))
	}
	q := strings.Index(text[1:], `"`)
	if !strings.HasPrefix(text, `"`) || q < 0 {
		return a, fmt.Errorf("answer %q has no id", text)
	}
	id, rest := text[1:q+1], text[q+2:]
	sealed := strings.HasPrefix(id, "*")
	a.kind = strings.TrimPrefix(id, "*")
	if a.kind != "ACK" && a.kind != "NAK" && a.kind != "DUH" {
		return a, fmt.Errorf("answer %q is not ACK, NAK or DUH", id)
	}
	if len(rest) < 4 {
		return a, fmt.Errorf("answer %q has no sequence number", text)
	}
	seq, err := strconv.Atoi(rest[:4])
	if err != nil {
		return a, fmt.Errorf("answer %q has no sequence number", text)
	}
	a.seq = seq
	if i := strings.IndexByte(rest, '#'); i >= 0 {
		if j := strings.IndexByte(rest[i:], '['); j > 0 {
			a.acct = rest[i+1 : i+j]
		}
	}
	open := strings.IndexByte(rest, '[')
	if open < 0 {
		return a, fmt.Errorf("answer %q has no data", text)
	}
	body := rest[open+1:]
	if sealed {
		if key == nil {
			return a, errors.New("encrypted answer, and no key")
		}
		ct, err := hex.DecodeString(body)
		if err != nil {
			return a, fmt.Errorf("encrypted answer is not hex: %w", err)
		}
		plain, err := decrypt(key, ct)
		if err != nil {
			return a, fmt.Errorf("encrypted answer: %w", err)
		}
		i := strings.IndexByte(string(plain), ']')
		if i < 0 {
			return a, errors.New("encrypted answer does not decrypt with the panel's key")
		}
		body = string(plain[i:])
	} else if i := strings.IndexByte(body, ']'); i >= 0 {
		body = body[i:]
	} else {
		return a, fmt.Errorf("answer %q has no ']'", text)
	}
	// body is "]" and maybe "_HH:MM:SS,MM-DD-YYYY".
	if ts, ok := strings.CutPrefix(body, "]_"); ok {
		t, err := stampOf(ts)
		if err != nil {
			return a, err
		}
		a.clock, a.hasClock = t, true
	}
	if sealed && !a.hasClock {
		return a, errors.New("encrypted answer without its timestamp")
	}
	if a.kind == "NAK" && !a.hasClock {
		return a, errors.New("NAK without the receiver's time")
	}
	return a, nil
}

// stampOf reads HH:MM:SS,MM-DD-YYYY by its fields.
func stampOf(s string) (time.Time, error) {
	var hh, mi, ss, mo, dd, yy int
	if n, err := fmt.Sscanf(s, "%2d:%2d:%2d,%2d-%2d-%4d", &hh, &mi, &ss, &mo, &dd, &yy); n != 6 || err != nil || len(s) != 19 {
		return time.Time{}, fmt.Errorf("timestamp %q is not HH:MM:SS,MM-DD-YYYY", s)
	}
	return time.Date(yy, time.Month(mo), dd, hh, mi, ss, 0, time.UTC), nil
}
