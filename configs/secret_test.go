package configs_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"outpost/configs"
)

func TestReadKey(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key16 := "000102030405060708090a0b0c0d0e0f"
	tests := []struct {
		name    string
		path    string
		sizes   []int
		wantLen int
		wantErr string
	}{
		{"hex with newline", write("ok.key", key16+"\n", 0o600), nil, 16, ""},
		{"spaces ignored, size allowed", write("spaced.key", "0001 0203 0405 0607 0809 0a0b 0c0d 0e0f 1011 1213 1415 1617\n", 0o400), []int{16, 24, 32}, 24, ""},
		{"readable by others", write("open.key", key16, 0o644), nil, 0, "can be read by group or others (mode 0644): a key must be readable by the gateway's user only; run chmod 600"},
		{"not hex", write("text.key", "correct horse battery staple", 0o600), nil, 0, "does not hold a key in hex"},
		{"empty", write("empty.key", "\n", 0o600), nil, 0, "does not hold a key in hex"},
		{"wrong size", write("short.key", "00010203", 0o600), []int{16, 24, 32}, 0, "holds a key of 4 bytes (expected 16, 24 or 32 bytes: 32, 48 or 64 hex digits)"},
		{"too short for any", write("short2.key", "00010203", 0o600), nil, 0, "holds a key of 4 bytes (expected 16 to 64 bytes"},
		{"missing", filepath.Join(dir, "nope.key"), nil, 0, "nope.key"},
		{"a directory", dir, nil, 0, "is not a file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key, err := configs.ReadKey(tt.path, tt.sizes...)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "0001020304") {
					t.Errorf("the error shows the key: %v", err)
				}
				return
			}
			if err != nil || len(key) != tt.wantLen {
				t.Fatalf("key of %d bytes, err %v; want %d bytes", len(key), err, tt.wantLen)
			}
		})
	}
}
