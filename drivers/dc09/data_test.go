package dc09

import (
	"reflect"
	"testing"
)

func TestParseContactID(t *testing.T) {
	cases := []struct {
		name, data string
		want       Report
	}{
		// pysiaalarm tests/test_sia_package_cases.py case_adm_cid.
		{"fire, account prefix", "#12345A|1110 00 129", Report{Format: TokenCID, Qualifier: 1, Code: "110", Partition: "00", Number: "129"}},
		// pysiaalarm case_adm_cid2: a closing (arm) by user 57.
		{"closing", "#4F39|3401 01 057", Report{Format: TokenCID, Qualifier: 3, Code: "401", Partition: "01", Number: "057"}},
		// pysiaalarm's test line builder (tests/test_utils.py) for an
		// encrypted ADM-CID: "|" then the event.
		{"bare bar", "|1602 00 000", Report{Format: TokenCID, Qualifier: 1, Code: "602", Partition: "00", Number: "000"}},
		{"space after qualifier", "#1234|1 120 01 005", Report{Format: TokenCID, Qualifier: 1, Code: "120", Partition: "01", Number: "005"}},
		{"status", "6137 02 010", Report{Format: TokenCID, Qualifier: 6, Code: "137", Partition: "02", Number: "010"}},
	}
	for _, c := range cases {
		got, err := ParseContactID(c.data)
		if err != nil {
			t.Errorf("%s: %q: %v", c.name, c.data, err)
			continue
		}
		if got != c.want {
			t.Errorf("%s: %q: %+v\nwant %+v", c.name, c.data, got, c.want)
		}
	}
	for _, bad := range []string{"", "#1234|", "1120 01", "1120-01-005", "X120 01 005", "11A0 01 005", "1120 01 005 7", "#1234|1120 01 00G"} {
		if r, err := ParseContactID(bad); err == nil || Counter(err) != "bad_frames" {
			t.Errorf("%q: %+v, %v; want a bad frame", bad, r, err)
		}
	}
}

func TestParseSIA(t *testing.T) {
	cases := []struct {
		name, data string
		want       []Report
	}{
		// pysiaalarm tests/test_sia_package_cases.py case_xdata_X_and_Y.
		{"panic", "#1111|Nri1/PA501", []Report{{Format: TokenSIA, Code: "PA", Partition: "1", Number: "501"}}},
		// pysiaalarm case_bug (issue 11): text between carets, no '/'.
		{"closing with text", "#123456|Nri1CL0^VX FRONTE ^", []Report{{Format: TokenSIA, Code: "CL", Partition: "1", Number: "0", Text: "VX FRONTE"}}},
		// pysiaalarm case_wa: no account, no bar.
		{"water", "Nri1/WA000", []Report{{Format: TokenSIA, Code: "WA", Partition: "1", Number: "000"}}},
		// pysiaalarm case_op: an opening, then a code without a number.
		{"opening", "#006969|Nri04/OP001NM", []Report{
			{Format: TokenSIA, Code: "OP", Partition: "04", Number: "001"},
			{Format: TokenSIA, Code: "NM", Partition: "04"}}},
		// fioletoven/dc09 message.tests.rs: an ASCII block after the code.
		{"power up with ASCII", "#1234|NRR|Atest", []Report{{Format: TokenSIA, Code: "RR", Text: "test"}}},
		// The DC-09 layout without N (D6500 manual style "NFA129").
		{"no N", "NFA129", []Report{{Format: TokenSIA, Code: "FA", Number: "129"}}},
		{"two events, user", "Nri2/id7/BA01/BA02", []Report{
			{Format: TokenSIA, Code: "BA", Partition: "2", Number: "01", User: "7"},
			{Format: TokenSIA, Code: "BA", Partition: "2", Number: "02", User: "7"}}},
		{"time modifier", "Nti12:30/ri1/TA3", []Report{{Format: TokenSIA, Code: "TA", Partition: "1", Number: "3"}}},
	}
	for _, c := range cases {
		got, err := ParseSIA(c.data)
		if err != nil {
			t.Errorf("%s: %q: %v", c.name, c.data, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %q:\n got %+v\nwant %+v", c.name, c.data, got, c.want)
		}
	}
	for _, bad := range []string{"", "N", "#1234|", "Nri1/", "Nri1/P", "Nri1/PA1^open", "Nri1/pa1", "N#1/PA1", "Nri1/PA1*"} {
		if r, err := ParseSIA(bad); err == nil || Counter(err) != "bad_frames" {
			t.Errorf("%q: %+v, %v; want a bad frame", bad, r, err)
		}
	}
}
