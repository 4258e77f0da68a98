package command

import (
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model/schema"
)

func contractDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/hub-contract.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// block returns the fenced blocks of a language in a markdown text.
func blocks(doc, lang string) []string {
	var out []string
	for _, b := range strings.Split(doc, "```"+lang+"\n")[1:] {
		out = append(out, b[:strings.Index(b, "```")])
	}
	return out
}

// The command examples of the hub contract are valid commands, by the
// schema and by the gateway.
func TestContractCommandExamples(t *testing.T) {
	n := 0
	for _, ex := range blocks(contractDoc(t), "json") {
		ex = strings.TrimSpace(ex)
		if !strings.Contains(ex, `"action"`) || strings.Contains(ex, `"kind"`) {
			continue
		}
		n++
		if err := schema.ValidateCommand([]byte(ex)); err != nil {
			t.Errorf("schema rejects doc example %s: %v", ex, err)
		}
		if _, err := Decode("sp-0007", "siren-1", []byte(ex), nil, time.Hour); err != nil {
			t.Errorf("Decode(doc example %s): %v", ex, err)
		}
	}
	if n == 0 {
		t.Fatal("no command example in the hub contract")
	}
}

// The schema agrees with Decode on what is malformed.
func TestCommandSchemaRejectsWhatDecodeRejects(t *testing.T) {
	good := `{"v":1,"id":"c","action":"set","args":{"signal":"led","value":true},"ts":"2026-11-29T08:00:00Z"}`
	if err := schema.ValidateCommand([]byte(good)); err != nil {
		t.Fatalf("schema rejects a good command %s: %v", good, err)
	}
	for _, bad := range []string{
		`{"v":1,"id":"c\u0001","action":"a","ts":"2026-11-29T08:00:00Z"}`,
		`{"v":2,"id":"c","action":"a","ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"action":"a","ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","action":"a"}`,
		`{"v":1,"id":"c","action":"a","ts":"yesterday"}`,
		`{"v":1,"id":"c","action":"a","ts":"2026-11-29T08:00:00Z","ttl":0}`,
		`{"v":1,"id":"c","action":"set","args":{"signal":"led"},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","action":"set","args":{"signal":"led","value":"on"},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","action":"siren_on","args":{"value":true},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","action":"set","args":{"signal":"led","value":true,"volume":3},"ts":"2026-11-29T08:00:00Z"}`,
		`{"v":1,"id":"c","action":"siren_on","args":{"for":-1},"ts":"2026-11-29T08:00:00Z"}`,
	} {
		if err := schema.ValidateCommand([]byte(bad)); err == nil {
			t.Errorf("schema accepts %s", bad)
		}
		if _, err := Decode("s", "d", []byte(bad), nil, time.Hour); err == nil {
			t.Errorf("Decode accepts %s", bad)
		}
	}
}

// The hub contract's Python way of signing makes commands the gateway
// takes.
func TestContractPythonSigning(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed: the contract's Python example is not checked")
	}
	var snippet string
	for _, b := range blocks(contractDoc(t), "python") {
		if strings.Contains(b, "hmac.new") {
			snippet = b
		}
	}
	if snippet == "" {
		t.Fatal("no Python signing example in the hub contract")
	}
	key := "00112233445566778899aabbccddeeff"
	ts := time.Now().UTC().Format(time.RFC3339)
	prog := "key = bytes.fromhex('" + key + "')\nstation, device, cmd_id, ts = 'sp-0007', 'siren-1', 'c-py-1', '" + ts + "'\n" + snippet + "print(payload)\n"
	out, err := exec.Command(py, "-c", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	payload := []byte(strings.TrimSpace(string(out)))
	k := []byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	c, err := Decode("sp-0007", "siren-1", payload, k, time.Hour)
	if err != nil {
		t.Fatalf("gateway refuses the Python-signed command %s: %v", payload, err)
	}
	if c.ID != "c-py-1" || c.Action != "siren_on" || c.For != 120*time.Second {
		t.Errorf("decoded %+v", c)
	}
	if err := schema.ValidateCommand(payload); err != nil {
		t.Errorf("schema rejects the Python-signed command: %v", err)
	}
}
