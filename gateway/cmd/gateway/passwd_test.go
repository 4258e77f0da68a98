package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"outpost/configs/mqtt"
)

// TestPasswd: a line per device, made, replaced and removed; the file is
// readable by its owner only and the gateway takes the passwords.
func TestPasswd(t *testing.T) {
	file := filepath.Join(t.TempDir(), "devices.passwd")
	run := func(in string, args ...string) (string, int) {
		t.Helper()
		stdin = strings.NewReader(in)
		var out, errs bytes.Buffer
		code := cli(append([]string{"passwd", "-file", file}, args...), &out, &errs)
		return out.String() + errs.String(), code
	}
	if out, code := run("kiosk-one-pw\n", "kiosk-1"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	out, code := run("", "-generate", "kiosk-2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	generated := strings.TrimSpace(strings.SplitN(strings.TrimPrefix(out, "kiosk-2: "), "\n", 2)[0])
	if out, code := run("kiosk-one-new\n", "kiosk-1"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if out, code := run("short\n", "kiosk-3"); code != 2 || !strings.Contains(out, "at least 8") {
		t.Errorf("a short password: exit %d %q", code, out)
	}
	info, err := os.Stat(file)
	if err != nil || info.Mode().Perm() != 0o600 {
		t.Fatalf("file mode %v (%v), want 0600", info.Mode().Perm(), err)
	}
	c, err := mqtt.ReadCredentials(file)
	if err != nil {
		t.Fatal(err)
	}
	if !c.Verify("kiosk-1", "kiosk-one-new") || c.Verify("kiosk-1", "kiosk-one-pw") || !c.Verify("kiosk-2", generated) || c.Has("kiosk-3") {
		t.Errorf("credentials after set, generate, replace: %v", c)
	}
	if out, code := run("", "-remove", "kiosk-1"); code != 0 {
		t.Fatalf("exit %d: %s", code, out)
	}
	if c, _ := mqtt.ReadCredentials(file); c.Has("kiosk-1") || !c.Has("kiosk-2") {
		t.Errorf("after removing kiosk-1: %v", c)
	}
}
