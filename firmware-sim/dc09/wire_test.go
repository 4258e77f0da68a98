package dc09

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"
	"time"
)

func TestChecksum(t *testing.T) {
	cases := []struct {
		text string
		want uint16
		src  string
	}{
		{"123456789", 0xBB3D, "reveng CRC catalogue, CRC-16/ARC check value"},
		{`"SIA-DCS"0001RF3L77#1234[#1234|NRR|Atest]`, 0xF4D2, "fioletoven/dc09 common/src/dc09/message.tests.rs to_string_test"},
		{`"NAK"0000R0L0A0[]_16:20:01,09-24-2025`, 0xE441, "fioletoven/dc09 common/src/dc09/message.tests.rs parse_nak_test"},
		{`"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9`, 0x76D8, "eavanvalkenburg/pysiaalarm tests/test_sia_package_cases.py case_null"},
	}
	for _, c := range cases {
		if got := checksum([]byte(c.text)); got != c.want {
			t.Errorf("checksum(%q) = %04X, want %04X (%s)", c.text, got, c.want, c.src)
		}
	}
}

// TestReadAnswer reads a published NAK, and the answers a receiver gives.
func TestReadAnswer(t *testing.T) {
	// fioletoven/dc09 message.tests.rs parse_nak_test.
	a, err := readAnswer(`E4410025"NAK"0000R0L0A0[]_16:20:01,09-24-2025`, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.kind != "NAK" || a.seq != 0 || !a.hasClock || !a.clock.Equal(time.Date(2025, 9, 24, 16, 20, 1, 0, time.UTC)) {
		t.Errorf("NAK read as %+v", a)
	}
	for _, bad := range []string{
		`E4420025"NAK"0000R0L0A0[]_16:20:01,09-24-2025`, // CRC
		`E4410026"NAK"0000R0L0A0[]_16:20:01,09-24-2025`, // length
		`"ACK"`, "",
	} {
		if a, err := readAnswer(bad, nil); err == nil {
			t.Errorf("%q read as %+v", bad, a)
		}
	}
}

// TestFrames: the panel's frames, in clear and encrypted, decode back to
// what it meant, and the published encrypted null message decrypts with
// its key.
func TestFrames(t *testing.T) {
	clock := time.Date(2026, 3, 1, 8, 30, 5, 0, time.UTC)
	plain, err := frameOf(header{account: "1234", receiver: "1", line: "1"}, message{token: "ADM-CID", data: "1120 01 005"}, 42, clock)
	if err != nil {
		t.Fatal(err)
	}
	text := `"ADM-CID"0042R1L1#1234[#1234|1120 01 005]_08:30:05,03-01-2026`
	// CRC and length computed apart (a Python CRC-16/ARC) for this test.
	if want := "\n38DC003D" + text + "\r"; string(plain) != want {
		t.Errorf("frame %q\nwant  %q", plain, want)
	}

	key := []byte("AAAAAAAAAAAAAAAA") // pysiaalarm tests/test_utils.py KEY
	ct, _ := hex.DecodeString("B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9")
	pt, err := decrypt(key, ct)
	if err != nil || !bytes.HasSuffix(pt, []byte("]_18:24:52,07-05-2020")) {
		t.Errorf("pysiaalarm case_null decrypts to %q (%v)", pt, err)
	}

	for _, size := range []int{16, 24, 32} {
		key := bytes.Repeat([]byte{7}, size)
		sealed, err := frameOf(header{account: "ABCD", line: "0", key: key}, message{token: "SIA-DCS", data: "Nri1/PA001"}, 7, clock)
		if err != nil {
			t.Fatal(err)
		}
		s := string(sealed[1 : len(sealed)-1])
		open := strings.IndexByte(s, '[')
		if !strings.Contains(s, `"*SIA-DCS"0007L0#ABCD[`) || open < 0 {
			t.Fatalf("header of %q", s)
		}
		ct, err := hex.DecodeString(s[open+1:])
		if err != nil {
			t.Fatal(err)
		}
		pt, err := decrypt(key, ct)
		if err != nil {
			t.Fatal(err)
		}
		body := "|#ABCD|Nri1/PA001]_08:30:05,03-01-2026"
		pad := len(pt) - len(body)
		if pad < 1 || pad > 16 || string(pt[pad:]) != body || bytes.ContainsAny(pt[:pad], "|[]") {
			t.Errorf("%d-byte key: decrypted %q", size, pt)
		}
	}
}
