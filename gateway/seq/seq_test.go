package seq

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestNumbersIncreaseAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	c, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 10; want++ {
		got, err := c.Next("th-1")
		if err != nil || got != want {
			t.Fatalf("Next = %d, %v; want %d", got, err, want)
		}
	}
	if got, _ := c.Next("smoke-1"); got != 1 {
		t.Fatalf("second device starts at %d, want 1", got)
	}
	// A restart without any clean shutdown (the process was killed): the
	// numbers go on after the leased block, never repeating one.
	c2, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := c2.Next("th-1"); got != Block+1 {
		t.Errorf("after restart th-1 = %d, want %d", got, Block+1)
	}
	if got, _ := c2.Next("smoke-1"); got != Block+1 {
		t.Errorf("after restart smoke-1 = %d, want %d", got, Block+1)
	}
	if got, _ := c2.Next("new-1"); got != 1 {
		t.Errorf("new device = %d, want 1", got)
	}
}

func TestBlockBoundary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	c, _ := Open(path, slog.New(slog.DiscardHandler))
	var last uint64
	for i := 0; i < Block+5; i++ {
		last, _ = c.Next("d")
	}
	if last != Block+5 {
		t.Fatalf("last = %d", last)
	}
	c2, _ := Open(path, slog.New(slog.DiscardHandler))
	if got, _ := c2.Next("d"); got != 2*Block+1 {
		t.Errorf("after restart = %d, want %d", got, 2*Block+1)
	}
}

func TestDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	os.WriteFile(path, []byte("{not json"), 0o644)
	before := uint64(time.Now().UnixMicro())
	c, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("a damaged counters file stopped the gateway: %v", err)
	}
	if got, _ := c.Next("d"); got <= before {
		t.Errorf("after damage Next = %d, want above %d", got, before)
	}
}
