package dc09

import (
	"fmt"
	"strconv"
	"strings"
)

// Report is one event in a frame's data, as the panel sent it.
type Report struct {
	Format string // TokenCID or TokenSIA
	// Code is the Contact ID event code ("120") or the SIA event code
	// ("PA").
	Code string
	// Qualifier is Contact ID's: 1 new event, 3 restore, 6 status; 0
	// for SIA.
	Qualifier int
	// Partition, Number and User are as sent, "" when absent: the
	// partition (group, area), the zone or user number that comes with
	// the code, and the user a SIA id modifier names.
	Partition, Number, User string
	// Text is a SIA report's text (^...^ or the |A block).
	Text string
}

// stripAccount removes the "#acct|" (or a bare "|") a panel's data starts
// with.
func stripAccount(data string) string {
	if rest, ok := strings.CutPrefix(data, "#"); ok {
		if i := strings.IndexByte(rest, '|'); i >= 0 {
			if _, tail := hexRun(rest[:i], 16); tail == "" {
				return rest[i+1:]
			}
		}
		return data
	}
	return strings.TrimPrefix(data, "|")
}

// ParseContactID parses Contact ID data, "#acct|QEEE GG ZZZ": qualifier,
// event code, partition, and zone or user. A space between qualifier and
// code is taken too.
func ParseContactID(data string) (Report, error) {
	s := strings.TrimRight(stripAccount(data), " ")
	r := Report{Format: TokenCID}
	if len(s) == 12 && s[1] == ' ' {
		s = s[:1] + s[2:]
	}
	if len(s) != 11 || s[4] != ' ' || s[7] != ' ' {
		return r, errf("bad_frames", "Contact ID data %q is not QEEE GG ZZZ", clip([]byte(data)))
	}
	q, code, part, num := s[:1], s[1:4], s[5:7], s[8:11]
	if !allDigits(q) || !allDigits(code) {
		return r, errf("bad_frames", "Contact ID data %q: qualifier and event code must be digits", clip([]byte(data)))
	}
	if !isHexString(part) || !isHexString(num) {
		return r, errf("bad_frames", "Contact ID data %q: partition and zone must be digits", clip([]byte(data)))
	}
	r.Qualifier, _ = strconv.Atoi(q)
	r.Code, r.Partition, r.Number = code, part, num
	return r, nil
}

// ParseSIA parses SIA-DCS data: "#acct|Nri1/PA501^text^/BA02|Atext": an
// optional N (new event), modifiers (ri partition, id user, ti time, pi
// peripheral) that hold for the events after them, and events (two
// capital letters and a zone or user number), separated by '/'. A frame
// may carry several events.
func ParseSIA(data string) ([]Report, error) {
	s := stripAccount(data)
	if len(s) > 1 && s[0] == 'N' && isLetter(s[1]) || s == "N" {
		s = s[1:]
	}
	var out []Report
	var part, user string
	bad := func(why string) ([]Report, error) {
		return nil, errf("bad_frames", "SIA data %q: %s", clip([]byte(data)), why)
	}
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '/' || c == ' ':
			i++
		case c == '|':
			// An ASCII block (|Atext) ends the events.
			if len(out) > 0 {
				out[len(out)-1].Text = strings.TrimPrefix(s[i+1:], "A")
			}
			i = len(s)
		case c == '^':
			end := strings.IndexByte(s[i+1:], '^')
			if end < 0 {
				return bad("text without its closing ^")
			}
			if len(out) > 0 {
				out[len(out)-1].Text = strings.TrimSpace(s[i+1 : i+1+end])
			}
			i += end + 2
		case i+1 < len(s) && isLower(c) && isLower(s[i+1]):
			mod := s[i : i+2]
			j := i + 2
			for j < len(s) && (isDigit(s[j]) || s[j] == ':') {
				j++
			}
			switch mod {
			case "ri":
				part = s[i+2 : j]
			case "id":
				user = s[i+2 : j]
			}
			i = j
		case i+1 < len(s) && isUpper(c) && isUpper(s[i+1]):
			j := i + 2
			for j < len(s) && isDigit(s[j]) {
				j++
			}
			out = append(out, Report{Format: TokenSIA, Code: s[i : i+2], Partition: part, Number: s[i+2 : j], User: user})
			i = j
		default:
			return bad(fmt.Sprintf("unexpected %q at %d", c, i))
		}
	}
	if len(out) == 0 {
		return bad("no event code")
	}
	return out, nil
}

// number writes a zone, user or partition number without leading zeros
// ("005" is "5"); what is not a decimal number stays as it is.
func number(s string) string {
	if n, err := strconv.Atoi(s); err == nil && allDigits(s) {
		return strconv.Itoa(n)
	}
	return s
}

func isHexString(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isLower(c byte) bool  { return c >= 'a' && c <= 'z' }
func isUpper(c byte) bool  { return c >= 'A' && c <= 'Z' }
func isLetter(c byte) bool { return isLower(c) || isUpper(c) }
