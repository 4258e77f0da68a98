package dc09

import (
	"bytes"
	"encoding/hex"
	"reflect"
	"strings"
	"testing"
	"time"
)

// pysiaKey is the key of pysiaalarm's encrypted test vectors: the ASCII
// text "AAAAAAAAAAAAAAAA" (tests/test_utils.py, KEY), as hex.
const pysiaKey = "41414141414141414141414141414141"

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// frame strips a vector's LF and CR, if it has them.
func frame(s string) []byte {
	return []byte(strings.TrimSuffix(strings.TrimPrefix(s, "\n"), "\r"))
}

// TestParseFrame parses published frames. Each vector names its source.
func TestParseFrame(t *testing.T) {
	cases := []struct {
		name, src, raw string
		want           Frame
	}{
		{
			name: "SIA-DCS with receiver and line",
			src:  "fioletoven/dc09 common/src/dc09/message.tests.rs to_string_test",
			raw:  "\nF4D20029\"SIA-DCS\"0001RF3L77#1234[#1234|NRR|Atest]\r",
			want: Frame{Token: "SIA-DCS", Seq: "0001", Receiver: "F3", Line: "77", Account: "1234", Data: "#1234|NRR|Atest"},
		},
		{
			name: "SIA-DCS without data",
			src:  "fioletoven/dc09 common/src/dc09/message.tests.rs parse_message_test",
			raw:  "\n96ED0016\"SIA-DCS\"0001L0#1234[]\r",
			want: Frame{Token: "SIA-DCS", Seq: "0001", Line: "0", Account: "1234"},
		},
		{
			name: "ADM-CID, length written in decimal",
			src:  "eavanvalkenburg/pysiaalarm tests/test_sia_package_cases.py case_adm_cid2",
			raw:  `57150047"ADM-CID"0247R4F39L4F39#4F39[#4F39|3401 01 057]`,
			want: Frame{Token: "ADM-CID", Seq: "0247", Receiver: "4F39", Line: "4F39", Account: "4F39", Data: "#4F39|3401 01 057"},
		},
		{
			name: "SIA-DCS with extended data and timestamp (length recomputed)",
			src:  "eavanvalkenburg/pysiaalarm tests/test_sia_package_cases.py case_xdata_M: its CRC 8757 is right, its length 0078 is not (0043)",
			raw:  `87570043"SIA-DCS"6002L0#AAA[|Nri1/CL501][M0026B9E4268B]_14:12:04,09-25-2019`,
			want: Frame{Token: "SIA-DCS", Seq: "6002", Line: "0", Account: "AAA", Data: "|Nri1/CL501", Extended: []string{"M0026B9E4268B"},
				Time: time.Date(2019, 9, 25, 14, 12, 4, 0, time.UTC), HasTime: true},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := ParseFrame(frame(c.raw))
			if err != nil {
				t.Fatalf("%v (vector from %s)", err, c.src)
			}
			if !reflect.DeepEqual(*f, c.want) {
				t.Errorf("parsed %+v\nwant   %+v\n(vector from %s)", *f, c.want, c.src)
			}
		})
	}
}

// TestDecryptPublished decrypts pysiaalarm's encrypted null message
// (tests/test_sia_package_cases.py case_null) with its key: a pad of 11
// 'p', then "]_18:24:52,07-05-2020" (this panel puts no '|' after the pad
// of a null message).
func TestDecryptPublished(t *testing.T) {
	raw := `76D80055"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9`
	f, err := ParseFrame(frame(raw))
	if err != nil {
		t.Fatal(err)
	}
	if f.Token != "NULL" || !f.Encrypted || f.Account != "AAAB" || f.Receiver != "0" || f.Line != "0" {
		t.Errorf("header %+v", f)
	}
	if err := f.Decrypt(mustHex(t, pysiaKey)); err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2020, 7, 5, 18, 24, 52, 0, time.UTC); !f.HasTime || !f.Time.Equal(want) || f.Data != "" {
		t.Errorf("decrypted data %q time %v (has %v), want empty data at %v", f.Data, f.Time, f.HasTime, want)
	}

	// pysiaalarm's encrypted ADM-CID vector (case_encrypted_adm) is of a
	// key it does not publish: with another key it is a decrypt error,
	// never a panic or an event.
	f, err = ParseFrame(frame(`D0850078"*ADM-CID"6879R0L0#123F[64F7ADD9BA9377DBF2C014BC709329BEEE345B5F20C60B7EB9D2C6B8C222666B13D0B4A114B448B0AC555FCC658DB6EE`))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Decrypt(mustHex(t, pysiaKey)); Counter(err) != "decrypt_errors" || err == nil {
		t.Errorf("decrypting with the wrong key: %v, want a decrypt error", err)
	}
}

// TestRefused: frames that are refused, and the counter each goes to.
func TestRefused(t *testing.T) {
	cases := []struct {
		name, raw, counter string
		header             bool // the header was read: the frame can be answered
	}{
		// pysiaalarm case_adm_cid: its CRC and length (87CD, 0037) do not
		// fit its text.
		{"pysiaalarm case_adm_cid", `87CD0037"ADM-CID"9876R579BDFL789ABC#12345A[#12345A|1110 00 129]_14:12:04,09-25-2011`, "length_errors", false},
		{"CRC off by one", "F4D30029\"SIA-DCS\"0001RF3L77#1234[#1234|NRR|Atest]", "crc_errors", false},
		{"a byte changed", "F4D20029\"SIA-DCS\"0001RF3L77#1234[#1234|NRR|Btest]", "crc_errors", false},
		{"short", "F4D2", "length_errors", false},
		{"no length", "F4D2XYZW\"SIA-DCS\"", "bad_frames", false},
		{"length over 0FFF", "F4D21029\"SIA-DCS\"", "bad_frames", false},
		{"no quotes", withCRC(`SIA-DCS0001L0#1234[]`), "bad_frames", false},
		{"no sequence", withCRC(`"SIA-DCS"01L0#1234[]`), "bad_frames", false},
		{"account too short", withCRC(`"SIA-DCS"0001L0#12[]`), "bad_frames", true},
		{"account not hex", withCRC(`"SIA-DCS"0001L0#12G4[]`), "bad_frames", true},
		{"no closing bracket", withCRC(`"ADM-CID"0001L0#1234[#1234|1120 01 005`), "bad_frames", true},
		{"bad timestamp", withCRC(`"ADM-CID"0001L0#1234[#1234|1120 01 005]_25:00:00,01-01-2026`), "bad_frames", true},
		{"garbage after data", withCRC(`"ADM-CID"0001L0#1234[#1234|1120 01 005]xyz`), "bad_frames", true},
		{"encrypted part not blocks", withCRC(`"*ADM-CID"0001L0#1234[0011`), "decrypt_errors", true},
		{"encrypted part not hex", withCRC(`"*ADM-CID"0001L0#1234[` + strings.Repeat("ZZ", 16)), "decrypt_errors", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f, err := ParseFrame([]byte(c.raw))
			if err == nil {
				t.Fatalf("parsed %+v", f)
			}
			if got := Counter(err); got != c.counter {
				t.Errorf("counter %s, want %s (%v)", got, c.counter, err)
			}
			if (f != nil) != c.header {
				t.Errorf("header read: %v, want %v", f != nil, c.header)
			}
		})
	}
}

// withCRC prefixes a text with its CRC and length.
func withCRC(text string) string {
	return string(frame(string(encode(text))))
}

// TestAnswers: the receiver's answers, byte for byte.
func TestAnswers(t *testing.T) {
	now := time.Date(2025, 9, 24, 16, 20, 1, 0, time.UTC)
	f := &Frame{Token: "ADM-CID", Seq: "0042", Receiver: "0", Line: "0", Account: "1234"}
	// fioletoven/dc09 common/src/dc09/message.tests.rs parse_nak_test:
	// a NAK at 16:20:01 on 2025-09-24.
	nak, _ := Answer(NAK, f, nil, now)
	if want := "\nE4410025\"NAK\"0000R0L0A0[]_16:20:01,09-24-2025\r"; string(nak) != want {
		t.Errorf("NAK %q\nwant %q", nak, want)
	}
	ack, _ := Answer(ACK, f, nil, now)
	if want := encode(`"ACK"0042R0L0#1234[]`); !bytes.Equal(ack, want) {
		t.Errorf("ACK %q, want %q", ack, want)
	}
	duh, _ := Answer(DUH, &Frame{Token: "XYZ", Seq: "0007", Account: "ABC"}, nil, now)
	if want := encode(`"DUH"0007L0#ABC[]`); !bytes.Equal(duh, want) {
		t.Errorf("DUH %q, want %q", duh, want)
	}

	// The ACK of an encrypted frame is encrypted, with its timestamp, and
	// decrypts with the same key.
	key := mustHex(t, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
	f.Encrypted = true
	sealed, err := Answer(ACK, f, key, now)
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseFrame(frame(string(sealed)))
	if err != nil {
		t.Fatal(err)
	}
	if got.Token != "ACK" || !got.Encrypted || got.Seq != "0042" || got.Account != "1234" {
		t.Errorf("encrypted ACK header %+v", got)
	}
	if err := got.Decrypt(key); err != nil {
		t.Fatal(err)
	}
	if !got.HasTime || !got.Time.Equal(now) || got.Data != "" {
		t.Errorf("encrypted ACK body: data %q time %v", got.Data, got.Time)
	}
	// The pad is random: two ACKs differ.
	again, _ := Answer(ACK, f, key, now)
	if bytes.Equal(again, sealed) {
		t.Error("two encrypted ACKs are the same: the pad is not random")
	}
}

// TestSeal: every message length pads to whole blocks, with 1 to 16 pad
// bytes none of which is '|', '[' or ']'.
func TestSeal(t *testing.T) {
	key := mustHex(t, pysiaKey)
	for n := range 40 {
		text := "|" + strings.Repeat("x", n) + "]"
		sealed, err := seal(key, text)
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := crypt(key, sealed, false)
		pad := len(plain) - len(text)
		if len(plain)%16 != 0 || pad < 1 || pad > 16 || string(plain[pad:]) != text || bytes.ContainsAny(plain[:pad], "|[]") {
			t.Errorf("text of %d: %d bytes, pad %d: %q", len(text), len(plain), pad, plain)
		}
	}
}
