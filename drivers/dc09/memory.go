package dc09

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"outpost/gateway/durable"
)

// memory remembers the frames the receiver acknowledged, so that a frame
// sent again (its ACK was lost) is acknowledged again but raises no second
// event, also after a gateway restart. A frame is known by its account,
// sequence number, id and a hash of its data: the sequence number alone
// would confuse a panel that restarted its count with one that repeats,
// and the timestamp changes when a panel re-sends after a NAK. It is kept
// in a small file, replaced atomically after every event.
type memory struct {
	path   string
	window time.Duration
	max    int

	mu   sync.Mutex
	recs []record // oldest first
}

// record is one acknowledged frame.
type record struct {
	Account string    `json:"account"`
	Seq     string    `json:"seq"`
	Hash    string    `json:"hash"` // of the id and data: no alarm text on disk
	Seen    time.Time `json:"seen"`
	// PanelTime is the frame's timestamp, for people reading the file.
	PanelTime *time.Time `json:"panel_time,omitempty"`
}

// stateFile is the memory file's format.
type stateFile struct {
	Version int      `json:"version"`
	Records []record `json:"records"`
}

// maxRecords bounds the memory whatever the panels send: a station's
// panels send a few events an hour.
const maxRecords = 4096

func newMemory(path string, window time.Duration) *memory {
	return &memory{path: path, window: window, max: maxRecords}
}

// recordOf is the record of an acknowledged frame.
func recordOf(f *Frame, seen time.Time) record {
	h := sha256.New()
	h.Write([]byte(f.Token + "\x00" + f.Data + "\x00" + strings.Join(f.Extended, "\x00")))
	r := record{Account: strings.ToUpper(f.Account), Seq: f.Seq, Hash: hex.EncodeToString(h.Sum(nil)[:16]), Seen: seen.UTC()}
	if f.HasTime {
		t := f.Time
		r.PanelTime = &t
	}
	return r
}

// load reads the file, keeping what is within the window of now. A file
// that is not there is an empty memory; a damaged one is an error (the
// caller logs it and starts empty).
func (m *memory) load(now time.Time) error {
	b, err := os.ReadFile(m.path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var sf stateFile
	if err := json.Unmarshal(b, &sf); err != nil {
		return fmt.Errorf("%s: %w", m.path, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = sf.Records
	m.prune(now)
	return nil
}

// seen says whether the frame of r was acknowledged within the window.
func (m *memory) seen(r record, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := len(m.recs) - 1; i >= 0; i-- {
		o := &m.recs[i]
		if now.Sub(o.Seen) > m.window {
			break
		}
		if o.Account == r.Account && o.Seq == r.Seq && o.Hash == r.Hash {
			return true
		}
	}
	return false
}

// remember keeps r in memory only: a frame whose events will be delivered
// from the gateway's memory but are not durable (the disk fails) is not
// acknowledged, and the panel's next copy of it is a repeat.
func (m *memory) remember(r record, now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, r)
	m.prune(now)
}

// add remembers r and writes the file durably (temporary file, fsync,
// rename, fsync of the folder).
func (m *memory) add(r record, now time.Time) error {
	m.remember(r, now)
	m.mu.Lock()
	defer m.mu.Unlock()
	b, err := json.Marshal(stateFile{Version: 1, Records: m.recs})
	if err != nil {
		return err
	}
	if err := durable.MkdirAll(filepath.Dir(m.path)); err != nil {
		return err
	}
	return durable.WriteFile(m.path, b)
}

// prune drops records older than the window, and the oldest beyond max.
func (m *memory) prune(now time.Time) {
	i := 0
	for i < len(m.recs) && now.Sub(m.recs[i].Seen) > m.window {
		i++
	}
	if n := len(m.recs) - i; n > m.max {
		i += n - m.max
	}
	if i > 0 {
		m.recs = append(m.recs[:0:0], m.recs[i:]...)
	}
}
