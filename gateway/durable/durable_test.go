package durable

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFileDirDeleted: a state file whose directory was deleted under
// the gateway is written all the same, in the directory made again.
func TestWriteFileDirDeleted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state", "dc09")
	path := filepath.Join(dir, "panel.json")
	if err := WriteFile(path, []byte("one")); err != nil {
		t.Fatalf("first write: %v", err)
	}
	if err := os.RemoveAll(filepath.Dir(dir)); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(path, []byte("two")); err != nil {
		t.Fatalf("write after its directory was deleted: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "two" {
		t.Fatalf("the file holds %q (%v), want \"two\"", b, err)
	}
}
