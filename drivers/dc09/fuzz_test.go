package dc09

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	cfg "outpost/configs/dc09"
)

// fuzzKey is the key encrypted fuzz inputs are sealed with.
var fuzzKey = []byte("0123456789abcdef")

// FuzzFrame: whatever arrives, parsing and decrypting a frame gives a
// frame or a counted error, never a panic; the answer to a frame that
// parsed is a frame that parses, with its sequence number and account.
// With sealed, data is what follows '[' before encryption (pad, '|',
// data, ']', timestamp): it is encrypted and framed, so that the fuzzer
// reaches what follows decryption.
func FuzzFrame(f *testing.F) {
	for _, s := range []string{
		"F4D20029\"SIA-DCS\"0001RF3L77#1234[#1234|NRR|Atest]",
		"96ED0016\"SIA-DCS\"0001L0#1234[]",
		`57150047"ADM-CID"0247R4F39L4F39#4F39[#4F39|3401 01 057]`,
		`87570043"SIA-DCS"6002L0#AAA[|Nri1/CL501][M0026B9E4268B]_14:12:04,09-25-2019`,
		`76D80055"*NULL"0000R0L0#AAAB[B4BC8B40D0E6D959D6BEA78E88CC0B2155741A3C44FBB96D476A3E557CAD64D9`,
		`D0850078"*ADM-CID"6879R0L0#123F[64F7ADD9BA9377DBF2C014BC709329BEEE345B5F20C60B7EB9D2C6B8C222666B13D0B4A114B448B0AC555FCC658DB6EE`,
	} {
		f.Add([]byte(s), false)
	}
	for _, s := range []string{
		"ppp|#1234|1120 01 005]_12:00:00,01-02-2026",
		"pppppppppppp]_18:24:52,07-05-2020",
		"\x00\xff|Nri1/PA001^desk^/BA02][X1][Y2]_23:59:59,12-31-2025",
	} {
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, sealed bool) {
		if sealed {
			data = sealFrame(t, data)
		}
		fr, err := ParseFrame(data)
		if err != nil {
			checkCounter(t, err)
			return
		}
		if fr.Encrypted {
			if err := fr.Decrypt(fuzzKey); err != nil {
				checkCounter(t, err)
				return
			}
		}
		if fr.Token == TokenCID || fr.Token == TokenSIA {
			if reports, err := parseData(fr); err == nil {
				p := &panel{id: "p", kind: "alarm_panel", set: &cfg.Device{Account: fr.Account}, table: cfg.NewTable(nil)}
				for _, r := range reports {
					m := meaning(p.table, r)
					if ev := p.event(fr, r, m, time.Now()); ev.Event.Kind == "" {
						t.Fatalf("event without a kind for %+v", r)
					}
				}
			} else {
				checkCounter(t, err)
			}
		}
		for _, kind := range []string{ACK, DUH} {
			b, err := Answer(kind, fr, fuzzKey, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			a, err := ParseFrame(b[1 : len(b)-1])
			if err != nil {
				t.Fatalf("%s to %q is no frame: %q: %v", kind, data, b, err)
			}
			if a.Token != kind || a.Seq != fr.Seq || a.Account != fr.Account {
				t.Fatalf("%s to %q: %+v", kind, data, a)
			}
		}
	})
}

// sealFrame encrypts a body (padded at the front to whole blocks) into
// an encrypted ADM-CID frame.
func sealFrame(t *testing.T, body []byte) []byte {
	if len(body) > 1500 {
		body = body[:1500]
	}
	padded := append(bytes.Repeat([]byte{'p'}, 16-len(body)%16), body...)
	sealed, err := crypt(fuzzKey, padded, true)
	if err != nil {
		t.Fatal(err)
	}
	b := encode(`"*ADM-CID"0001L0#1234[` + strings.ToUpper(hex.EncodeToString(sealed)))
	return b[1 : len(b)-1]
}

func checkCounter(t *testing.T, err error) {
	switch c := Counter(err); c {
	case "crc_errors", "length_errors", "bad_frames", "decrypt_errors":
	default:
		t.Fatalf("error %v counts as %q", err, c)
	}
}

// FuzzContactID: the data parsers never panic, and Contact ID data that
// parses is written back the same.
func FuzzContactID(f *testing.F) {
	for _, s := range []string{
		"#12345A|1110 00 129", "#4F39|3401 01 057", "|1602 00 000", "#1234|1 120 01 005",
		"#1111|Nri1/PA501", "#123456|Nri1CL0^VX FRONTE ^", "Nri1/WA000", "#006969|Nri04/OP001NM",
		"#1234|NRR|Atest", "NFA129", "Nri2/id7/BA01/BA02", "Nti12:30/ri1/TA3",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		if r, err := ParseContactID(data); err == nil {
			again, err := ParseContactID(fmt.Sprintf("%d%s %s %s", r.Qualifier, r.Code, r.Partition, r.Number))
			if err != nil || again != r {
				t.Fatalf("%q parsed to %+v, written back to %+v (%v)", data, r, again, err)
			}
		} else {
			checkCounter(t, err)
		}
		rs, err := ParseSIA(data)
		if err != nil {
			checkCounter(t, err)
			return
		}
		for _, r := range rs {
			if len(r.Code) != 2 || r.Format != TokenSIA {
				t.Fatalf("%q: report %+v", data, r)
			}
		}
	})
}
