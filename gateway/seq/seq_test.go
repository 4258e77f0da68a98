package seq

import (
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/gateway/durable"
)

func open(t *testing.T, path string) *Counters {
	t.Helper()
	c, err := Open(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func next(t *testing.T, c *Counters, dev string) uint64 {
	t.Helper()
	n, err := c.Next(dev)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestNumbersIncreaseAcrossRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	c := open(t, path)
	for want := uint64(1); want <= 10; want++ {
		if got := next(t, c, "th-1"); got != want {
			t.Fatalf("Next = %d; want %d", got, want)
		}
	}
	if got := next(t, c, "smoke-1"); got != 1 {
		t.Fatalf("second device starts at %d, want 1", got)
	}
	// A restart without any clean shutdown (the process was killed): the
	// numbers go on after the leased block, never repeating one.
	c2 := open(t, path)
	if got := next(t, c2, "th-1"); got != Block+1 {
		t.Errorf("after restart th-1 = %d, want %d", got, Block+1)
	}
	if got := next(t, c2, "smoke-1"); got != Block+1 {
		t.Errorf("after restart smoke-1 = %d, want %d", got, Block+1)
	}
	if got := next(t, c2, "new-1"); got != 1 {
		t.Errorf("new device = %d, want 1", got)
	}
}

func TestBlockBoundary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "seq.json")
	c := open(t, path)
	var last uint64
	for i := 0; i < Block+5; i++ {
		last = next(t, c, "d")
	}
	if last != Block+5 {
		t.Fatalf("last = %d", last)
	}
	if got := next(t, open(t, path), "d"); got != 2*Block+1 {
		t.Errorf("after restart = %d, want %d", got, 2*Block+1)
	}
}

// TestLeaseIsDurableBeforeUse holds the order of what reaches the disk
// before the first number of a block is handed out: each copy is written,
// fsynced, renamed into place and its directory fsynced. Without the
// directory's fsync a power cut can undo the rename, and numbers already
// used come again (the hub then discards real readings as duplicates).
func TestLeaseIsDurableBeforeUse(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "seq.json")
	c := open(t, path)
	var mu sync.Mutex
	var ops []string
	stop := durable.Observe(func(op, p string) {
		mu.Lock()
		defer mu.Unlock()
		ops = append(ops, op+" "+filepath.Base(p))
	})
	defer stop()
	next(t, c, "d")
	stop()
	want := []string{
		"fsync seq.json.tmp", "fsyncdir " + filepath.Base(dir),
		"fsync seq.json.copy.tmp", "fsyncdir " + filepath.Base(dir),
	}
	if !slices.Equal(ops, want) {
		t.Errorf("durable operations before the first number:\n got %q\nwant %q", ops, want)
	}
}

func TestFilesArePrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	c := open(t, filepath.Join(dir, "seq.json"))
	next(t, c, "d")
	for _, p := range []string{dir, filepath.Join(dir, "seq.json"), filepath.Join(dir, "seq.json.copy")} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v: readable by others", p, fi.Mode().Perm())
		}
	}
}

// TestDamage damages the counters in every way and wants numbers that
// never repeat; the clock is not involved (a box without a real-time clock
// boots in 1970).
func TestDamage(t *testing.T) {
	cases := []struct {
		name        string
		damage      []string // of "main", "copy"
		lost        bool
		floors      map[string]uint64
		wantD, want uint64 // next of device d, and of device other
	}{
		{"main damaged", []string{"main"}, false, nil, 2*Block + 1, Block + 1},
		{"copy damaged", []string{"copy"}, false, nil, 2*Block + 1, Block + 1},
		{"main missing", []string{"rm main"}, false, nil, 2*Block + 1, Block + 1},
		// Both gone: the floors found in the queues decide, plus a block
		// for numbers delivered and deleted since; a device the queues do
		// not know starts above the highest of them.
		{"both damaged", []string{"main", "copy"}, true, map[string]uint64{"d": 5000}, 5000 + Block + 1, 5000 + Block + 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "seq.json")
			ctr := open(t, path)
			for range Block + 10 { // d is in its second block
				next(t, ctr, "d")
			}
			next(t, ctr, "other")
			for _, d := range c.damage {
				switch d {
				case "main":
					os.WriteFile(path, []byte("{not json"), 0o600)
				case "copy":
					os.WriteFile(CopyPath(path), []byte{0, 0, 0}, 0o600)
				case "rm main":
					os.Remove(path)
				}
			}
			ctr = open(t, path)
			if ctr.Lost() != c.lost {
				t.Fatalf("Lost = %v, want %v", ctr.Lost(), c.lost)
			}
			if c.lost {
				if err := ctr.Raise(c.floors); err != nil {
					t.Fatal(err)
				}
			}
			if got := next(t, ctr, "d"); got != c.wantD {
				t.Errorf("d continues at %d, want %d", got, c.wantD)
			}
			if got := next(t, ctr, "other"); got != c.want {
				t.Errorf("other continues at %d, want %d", got, c.want)
			}
			// And the raised numbers are leased on disk.
			again := open(t, path)
			if got := next(t, again, "d"); got <= c.wantD {
				t.Errorf("after another restart d = %d, want above %d", got, c.wantD)
			}
		})
	}
}

func TestConcurrentDevices(t *testing.T) {
	c := open(t, filepath.Join(t.TempDir(), "seq.json"))
	var wg sync.WaitGroup
	got := make([][]uint64, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				n, _ := c.Next(fmt.Sprint("dev-", i))
				got[i] = append(got[i], n)
			}
		}()
	}
	wg.Wait()
	for i, ns := range got {
		for j, n := range ns {
			if n != uint64(j+1) {
				t.Fatalf("device %d number %d = %d", i, j, n)
			}
		}
	}
}

// TestDiskRefusesLeases: a disk that refuses the lease of a new block does
// not hold up the numbers (an alarm must not wait for a disk); the leases
// reach the disk once it takes them again.
func TestDiskRefusesLeases(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make the directory immutable")
	}
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	path := filepath.Join(dir, "seq.json")
	c := open(t, path)
	next(t, c, "d")
	if out, err := exec.Command("chattr", "-R", "+i", dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr: %v %s", err, out)
	}
	for want := uint64(1); want <= Block+5; want++ { // crosses into a new block
		if got := next(t, c, "new-device"); got != want {
			t.Fatalf("while the disk refuses writes, Next = %d, want %d", got, want)
		}
	}
	if !c.Unsaved() {
		t.Fatal("Unsaved is false while the leases are not on disk")
	}
	exec.Command("chattr", "-R", "-i", dir).Run()
	deadline := time.Now().Add(5 * time.Second)
	for c.Unsaved() && time.Now().Before(deadline) {
		next(t, c, "d")
		time.Sleep(50 * time.Millisecond)
	}
	if c.Unsaved() {
		t.Fatal("the leases never reached the disk after it recovered")
	}
	if got := next(t, open(t, path), "new-device"); got <= Block+5 {
		t.Errorf("after a restart new-device = %d, want above %d", got, Block+5)
	}
}
