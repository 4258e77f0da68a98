package pipeline

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"outpost/gateway/model"
)

// TestDeadLetterFiles: dead letters go to DIR/UPLINK.jsonl, which becomes
// UPLINK.1.jsonl at MaxBytes; a file an operator moved away, or deleted
// with its directory, is not written to any more: the next dead letter
// starts a new one.
func TestDeadLetterFiles(t *testing.T) {
	msg := func(seq uint64) *model.Message {
		return &model.Message{Station: "s", StationType: model.SafetyPost, Device: "d", DeviceKind: "k", Seq: seq,
			Kind: model.KindTelemetry, Time: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)}
	}
	seqs := func(path string) []uint64 {
		t.Helper()
		if _, err := os.Stat(path); err != nil {
			return nil
		}
		var out []uint64
		for _, d := range readDeadLetters(t, path) {
			m, err := model.ParseJSON(d.Message)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, m.Seq)
		}
		return out
	}
	cases := []struct {
		name    string
		between func(t *testing.T, dir string) // after the first dead letter
		want    map[string][]uint64            // file (relative to dir's parent) -> seqs
	}{
		{"appended", func(*testing.T, string) {}, map[string][]uint64{"dl/mqtt.jsonl": {1, 2}}},
		{"moved away", func(t *testing.T, dir string) {
			if err := os.Rename(filepath.Join(dir, "mqtt.jsonl"), filepath.Join(dir, "..", "taken.jsonl")); err != nil {
				t.Fatal(err)
			}
		}, map[string][]uint64{"taken.jsonl": {1}, "dl/mqtt.jsonl": {2}}},
		{"directory deleted", func(t *testing.T, dir string) {
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
		}, map[string][]uint64{"dl/mqtt.jsonl": {2}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			root := t.TempDir()
			d := &DeadLetters{Dir: filepath.Join(root, "dl")}
			defer d.Close()
			if _, err := d.Put("mqtt", msg(1), "refused", nil); err != nil {
				t.Fatal(err)
			}
			c.between(t, d.Dir)
			if _, err := d.Put("mqtt", msg(2), "refused", nil); err != nil {
				t.Fatal(err)
			}
			for file, want := range c.want {
				if got := seqs(filepath.Join(root, file)); !slices.Equal(got, want) {
					t.Errorf("%s holds %v, want %v", file, got, want)
				}
			}
		})
	}

	t.Run("rotated at MaxBytes", func(t *testing.T) {
		dir := t.TempDir()
		d := &DeadLetters{Dir: dir, MaxBytes: 600} // two dead letters of about 270 bytes
		defer d.Close()
		for seq := uint64(1); seq <= 5; seq++ {
			if _, err := d.Put("influx", msg(seq), "refused", nil); err != nil {
				t.Fatal(err)
			}
		}
		if got, old := seqs(filepath.Join(dir, "influx.jsonl")), seqs(filepath.Join(dir, "influx.1.jsonl")); !slices.Equal(got, []uint64{5}) || !slices.Equal(old, []uint64{3, 4}) {
			t.Errorf("influx.jsonl %v and influx.1.jsonl %v, want [5] and [3 4]", got, old)
		}
	})
}
