package dc09_test

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"outpost/configs/dc09"
)

// TestCodeTables: the tables of built-in codes in docs/alarms.md, for
// installers, are made from the tables the gateway uses, so they cannot
// drift from them:
//
//	go test ./configs/dc09 -run TestCodeTables -update
func TestCodeTables(t *testing.T) {
	var b strings.Builder
	b.WriteString("#### Contact ID (ADM-CID)\n\n")
	b.WriteString("Qualifier 1 (new event) raises the kind with its severity, state `active`; 3 (restore) raises the same kind, state `cleared`, severity info — or, where a restore kind is given, that kind instead (open/close: 1 disarms, 3 arms); 6 (status) raises the kind, state `status`.\n\n")
	b.WriteString("| code | meaning | kind | severity | restore (3) | number is |\n|---|---|---|---|---|---|\n")
	tb := dc09.NewTable(nil)
	for _, c := range tb.ContactIDCodes() {
		restore := "cleared"
		if c.Restore != "" {
			restore = "`" + c.Restore + "`"
		}
		sev := string(c.Severity)
		if c.Test {
			sev, restore = "— (test: supervision only, not sent)", "—"
		}
		fmt.Fprintf(&b, "| %03d | %s | `%s` | %s | %s | %s |\n", c.Code, c.Name, c.Kind, sev, restore, numberIs(c.User))
	}
	b.WriteString("\nAny other code still reaches the hub: kind `contact_id_<code>` (e.g. `contact_id_999`), severity warning.\n\n")
	b.WriteString("#### SIA (SIA-DCS)\n\n")
	b.WriteString("| code | meaning | kind | severity | state | number is |\n|---|---|---|---|---|---|\n")
	for _, c := range tb.SIACodes() {
		sev, state := string(c.Severity), string(c.State)
		if c.Test {
			sev, state = "— (test: supervision only, not sent)", "—"
		}
		fmt.Fprintf(&b, "| %s | %s | `%s` | %s | %s | %s |\n", c.Code, c.Name, c.Kind, sev, state, numberIs(c.User))
	}
	b.WriteString("\nAny other code still reaches the hub: kind `sia_<code>` in lower case (e.g. `sia_zz`), severity warning.\n")
	const (
		doc   = "../../docs/alarms.md"
		begin = "<!-- codes begin: made by go test ./configs/dc09 -run TestCodeTables -update from configs/dc09/codes.go -->\n"
		end   = "<!-- codes end -->"
	)
	text, err := os.ReadFile(doc)
	if err != nil {
		t.Fatal(err)
	}
	head, rest, ok1 := strings.Cut(string(text), begin)
	have, tail, ok2 := strings.Cut(rest, end)
	if !ok1 || !ok2 {
		t.Fatalf("%s has no code tables between %q and %q", doc, begin, end)
	}
	got := b.String()
	if *update {
		if err := os.WriteFile(doc, []byte(head+begin+got+end+tail), 0o644); err != nil {
			t.Fatal(err)
		}
		have = got
	}
	if have != got {
		t.Errorf("the code tables of %s differ from those the gateway uses; run go test ./configs/dc09 -run TestCodeTables -update", doc)
	}
}

func numberIs(user bool) string {
	if user {
		return "user"
	}
	return "zone"
}
