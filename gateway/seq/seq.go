// Package seq hands out per-device sequence numbers that survive restarts
// and power cuts.
//
// Numbers are leased in blocks: before the first number of a block is
// handed out, the end of the block is written to disk, in two copies, each
// replaced atomically and durably (temporary file, fsync, rename, fsync of
// the directory). After a crash the next process starts at the end of the
// last leased block, so a number is never handed out twice, at the cost of
// a gap of at most one block per device. Writes happen once per Block
// numbers.
//
// If one copy is damaged the other has every lease (both are written
// before any number of a block is used). If both are, the numbers already
// used cannot be read back from the counters: Open says so (Lost), and
// the gateway raises each device above the highest number still in its
// queues (Raise). The clock is never used: a station box without a
// real-time clock boots in 1970.
package seq

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"

	"outpost/gateway/durable"
)

// Block is how many numbers one disk write leases.
const Block = 4096

// Counters hands out sequence numbers for devices. It is safe for concurrent use.
type Counters struct {
	paths  [2]string // the counters and their copy
	log    *slog.Logger
	mu     sync.Mutex
	next   map[string]uint64
	leased map[string]uint64
	floor  uint64 // numbers of devices in neither copy start above it
	lost   bool

	unsaved, failing bool      // leases in use are not on disk; the last write failed
	lastTry          time.Time // of a write of leases
}

// CopyPath is where the second copy of the counters at path is kept.
func CopyPath(path string) string { return path + ".copy" }

// Open reads the counters at path and its copy, or starts empty if there
// are none. Damage never stops it: see Lost.
func Open(path string, log *slog.Logger) (*Counters, error) {
	c := &Counters{paths: [2]string{path, CopyPath(path)}, log: log, next: map[string]uint64{}, leased: map[string]uint64{}}
	if err := durable.MkdirAll(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("sequence numbers: %w", err)
	}
	read, damaged := 0, 0
	for _, p := range c.paths {
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		var leased map[string]uint64
		if err == nil {
			err = json.Unmarshal(b, &leased)
		}
		if err != nil {
			damaged++
			log.Warn("sequence numbers: a copy of the counters is damaged", "file", p, "err", err)
			continue
		}
		read++
		for dev, end := range leased {
			c.leased[dev] = max(c.leased[dev], end)
		}
	}
	c.lost = read == 0 && damaged > 0
	for dev, end := range c.leased {
		if end > 0 {
			c.next[dev] = end + 1
		}
	}
	return c, nil
}

// Lost reports whether counters existed but neither copy could be read:
// the numbers handed out before are unknown, and the caller must Raise
// every device above what it can still find on disk.
func (c *Counters) Lost() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lost
}

// Raise makes each device's numbers continue above the highest number
// known to be used (floors, e.g. the highest in the queues) plus a block,
// for the numbers used and no longer on disk. A device not in floors
// continues above the highest of all of them plus a block: numbers of a
// station's devices grow at similar rates, and it is the best there is.
// The new leases are written before Raise returns.
func (c *Counters) Raise(floors map[string]uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var top uint64
	for dev, f := range floors {
		top = max(top, f)
		if n := f + Block + 1; n > c.next[dev] {
			c.next[dev] = n
			c.leased[dev] = n - 1
		}
	}
	c.floor = max(c.floor, top+Block)
	if err := c.save(); err != nil {
		return err
	}
	c.lost = false
	return nil
}

// Leases returns each device's highest number leased: no number above it
// has been handed out.
func (c *Counters) Leases() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.leased)
}

// Next returns the device's next sequence number, starting at 1.
//
// When the disk refuses the lease of a new block, Next hands the number out
// all the same (an alarm must not wait for a disk) and writes the leases
// as soon as the disk takes them: until then a crash could make numbers
// repeat. Unsaved says so.
func (c *Counters) Next(device string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.next[device]
	if n == 0 {
		n = c.floor + 1
	}
	if n > c.leased[device] {
		c.leased[device] = n + Block - 1
		c.unsaved = true
	}
	if c.unsaved && time.Since(c.lastTry) >= retryEvery {
		c.lastTry = time.Now()
		if err := c.save(); err != nil {
			if !c.failing {
				c.log.Error("sequence numbers: the disk refuses the leases; numbers go on, but could repeat after a crash until it takes them", "err", err)
			}
			c.failing = true
		} else {
			if c.failing {
				c.log.Info("sequence numbers: leases written again")
			}
			c.unsaved, c.failing, c.lastTry = false, false, time.Time{}
		}
	}
	c.next[device] = n + 1
	return n, nil
}

// retryEvery paces the writes of leases the disk refused.
const retryEvery = time.Second

// Unsaved reports whether leases in use are not on disk because the disk
// refused them.
func (c *Counters) Unsaved() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.unsaved
}

// Rewrite writes the leases again, as when their files were deleted under
// the gateway: a restart then goes on above them.
func (c *Counters) Rewrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.save(); err != nil {
		return err
	}
	c.unsaved, c.failing = false, false
	return nil
}

// save writes the leases to both copies, one after the other, so that a
// power cut leaves at least one whole.
func (c *Counters) save() error {
	b, err := json.Marshal(c.leased)
	if err != nil {
		return err
	}
	for _, p := range c.paths {
		if err := durable.WriteFile(p, b); err != nil {
			return fmt.Errorf("sequence numbers: %w", err)
		}
	}
	return nil
}
