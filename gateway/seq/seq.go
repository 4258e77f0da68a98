// Package seq hands out per-device sequence numbers that survive restarts.
//
// Numbers are leased in blocks: before the first number of a block is
// handed out, the end of the block is written to disk (temp file, fsync,
// rename). After a crash the next process starts at the end of the last
// leased block, so a number is never handed out twice, at the cost of a gap
// of at most one block per device. Writes happen once per Block numbers.
package seq

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Block is how many numbers one disk write leases.
const Block = 4096

// Counters hands out sequence numbers for devices. It is safe for concurrent use.
type Counters struct {
	path   string
	mu     sync.Mutex
	next   map[string]uint64
	leased map[string]uint64
	floor  uint64 // numbers of devices not in the file start above it
}

// Open reads the counters file at path, or starts empty if there is none.
func Open(path string, log *slog.Logger) (*Counters, error) {
	c := &Counters{path: path, next: map[string]uint64{}, leased: map[string]uint64{}}
	b, err := os.ReadFile(path)
	switch {
	case os.IsNotExist(err):
	case err != nil:
		return nil, fmt.Errorf("sequence numbers: %w", err)
	default:
		if err := json.Unmarshal(b, &c.leased); err != nil {
			// Never refuse to start over it: jump every device's numbers to
			// the current time in microseconds, far above any count handed
			// out before, so numbers still only increase.
			floor := uint64(time.Now().UnixMicro())
			log.Warn("sequence numbers file is damaged; numbers of every device jump ahead", "file", path, "err", err, "next", floor)
			c.leased = map[string]uint64{}
			c.floor = floor
		}
	}
	for dev, end := range c.leased {
		if end == 0 {
			continue
		}
		c.next[dev] = end + 1
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("sequence numbers: %w", err)
	}
	return c, nil
}

// Next returns the device's next sequence number, starting at 1.
func (c *Counters) Next(device string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.next[device]
	if n == 0 {
		n = c.floor + 1
	}
	if n > c.leased[device] {
		old := c.leased[device]
		c.leased[device] = n + Block - 1
		if err := c.save(); err != nil {
			c.leased[device] = old
			return 0, err
		}
	}
	c.next[device] = n + 1
	return n, nil
}

func (c *Counters) save() error {
	b, err := json.Marshal(c.leased)
	if err != nil {
		return err
	}
	tmp := c.path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return fmt.Errorf("sequence numbers: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("sequence numbers: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sequence numbers: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("sequence numbers: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		return fmt.Errorf("sequence numbers: %w", err)
	}
	return nil
}
