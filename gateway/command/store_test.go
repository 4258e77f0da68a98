package command

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"outpost/gateway/model"
)

func TestStoreSurvivesATornLineAndForgetsOldCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.jsonl")
	t0 := time.Date(2026, 11, 29, 8, 0, 0, 0, time.UTC)
	s, _, err := OpenStore(path, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	entries := []Entry{
		{ID: "old", Device: "d", At: t0, Done: true, Status: model.ResultOK},
		{ID: "old-lasting", Device: "d", At: t0, Done: true, Status: model.ResultOK,
			Undo: &Undo{At: t0.Add(3 * time.Hour), Set: []Step{{"siren", model.Bool(false)}, {"volume", model.Number(2.5)}}}},
		{ID: "recent", Device: "d", At: t0.Add(90 * time.Minute), Done: true, Status: model.ResultRejected, Reason: "expired"},
	}
	for _, e := range entries {
		if err := s.Put(e, t0); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	// A power cut tore the last line.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"id":"torn","device":"d","at":"2026-11-`)
	f.Close()

	s, damaged, err := OpenStore(path, time.Hour, t0.Add(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if damaged != 1 {
		t.Errorf("%d damaged lines, want 1", damaged)
	}
	if _, ok := s.Get("old"); ok {
		t.Error("a command older than keep is still remembered")
	}
	if e, ok := s.Get("recent"); !ok || e.Reason != "expired" {
		t.Errorf("recent command: %+v, %v", e, ok)
	}
	e, ok := s.Get("old-lasting")
	if !ok || e.Undo == nil || len(e.Undo.Set) != 2 || !e.Undo.Set[1].Value.Equal(model.Number(2.5)) || !e.Undo.Set[0].Value.Equal(model.Bool(false)) {
		t.Errorf("a command with an undo still due must be kept whole: %+v", e)
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "torn") || strings.Count(string(b), "\n") != 2 {
		t.Errorf("file not compacted to the 2 live entries:\n%s", b)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", info.Mode().Perm())
	}
}
