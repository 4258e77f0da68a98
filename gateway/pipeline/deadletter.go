package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"outpost/gateway/durable"
	"outpost/gateway/model"
)

// DeadLetters keeps the messages a hub refused for good, so that one
// message the hub will never take does not stop every other one, and is not
// lost either: an operator can read them, fix the cause (a template, the
// broker's limits) and send them again. Each uplink has a file of JSON
// lines in Dir, UPLINK.jsonl; when it reaches MaxBytes it becomes
// UPLINK.1.jsonl (replacing an older one) and a new file starts, so the
// dead letters of an uplink take at most twice MaxBytes. See
// docs/operations.md for the format.
type DeadLetters struct {
	Dir      string
	MaxBytes int64

	mu    sync.Mutex
	kept  map[string]int64 // uplink -> messages written since start
	files map[string]*os.File
}

// DefaultDeadLetterBytes caps each uplink's dead-letter file.
const DefaultDeadLetterBytes = 16 << 20

// deadLetter is one line of a dead-letter file.
type deadLetter struct {
	At      time.Time       `json:"at"`
	Uplink  string          `json:"uplink"`
	Reason  string          `json:"reason"`
	Message json.RawMessage `json:"message"`           // the hub contract's payload
	Payload string          `json:"payload,omitempty"` // what the uplink sent, when it is not that (InfluxDB line protocol)
}

// Put writes one refused message, and fsyncs it: the message leaves the
// queue for good once it is here.
func (d *DeadLetters) Put(uplink string, m *model.Message, reason string, payload []byte) (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	line, err := json.Marshal(deadLetter{At: time.Now().UTC(), Uplink: uplink, Reason: reason,
		Message: model.AppendJSON(nil, m), Payload: string(payload)})
	if err != nil {
		return "", err
	}
	path := filepath.Join(d.Dir, uplink+".jsonl")
	f, err := d.file(uplink, path, int64(len(line))+1)
	if err != nil {
		return path, fmt.Errorf("dead letters: %w", err)
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		return path, fmt.Errorf("dead letters: %w", err)
	}
	if err := durable.Sync(f); err != nil {
		return path, fmt.Errorf("dead letters: %w", err)
	}
	if d.kept == nil {
		d.kept = map[string]int64{}
	}
	d.kept[uplink]++
	return path, nil
}

// file returns the open file of an uplink with room for n more bytes,
// rotating it at MaxBytes. Called with d.mu held.
func (d *DeadLetters) file(uplink, path string, n int64) (*os.File, error) {
	if d.files == nil {
		d.files = map[string]*os.File{}
	}
	f := d.files[uplink]
	if f == nil {
		if err := durable.MkdirAll(d.Dir); err != nil {
			return nil, err
		}
		var err error
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, durable.FileMode); err != nil {
			return nil, err
		}
		if err := durable.SyncDir(d.Dir); err != nil {
			f.Close()
			return nil, err
		}
		d.files[uplink] = f
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if at, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) || err == nil && !os.SameFile(fi, at) {
		// Moved away (an operator took it to send its messages again), or
		// deleted with its directory: the next ones go to a new file.
		f.Close()
		delete(d.files, uplink)
		return d.file(uplink, path, n)
	}
	max := d.MaxBytes
	if max <= 0 {
		max = DefaultDeadLetterBytes
	}
	if fi.Size() > 0 && fi.Size()+n > max {
		f.Close()
		delete(d.files, uplink)
		if err := os.Rename(path, filepath.Join(d.Dir, uplink+".1.jsonl")); err != nil {
			return nil, err
		}
		return d.file(uplink, path, 0)
	}
	return f, nil
}

// Kept is how many messages of an uplink were set aside since start.
func (d *DeadLetters) Kept(uplink string) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.kept[uplink]
}

// Close closes the files.
func (d *DeadLetters) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, f := range d.files {
		f.Close()
	}
	d.files = nil
}
