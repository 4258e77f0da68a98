package command

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"sync"
	"time"

	"outpost/drivers"
	"outpost/gateway/durable"
	"outpost/gateway/model"
)

// Entry is what the gateway remembers of a command: enough to answer a
// redelivery with the first result, to report a command a restart
// interrupted, and to set back a lasting action's signals on time.
type Entry struct {
	ID     string    `json:"id"`
	Device string    `json:"device"`
	Action string    `json:"action,omitempty"`
	At     time.Time `json:"at"` // when it arrived
	// Done says the result is known; until then the command was taken
	// and is being carried out.
	Done   bool               `json:"done,omitempty"`
	Status model.ResultStatus `json:"status,omitempty"`
	Reason string             `json:"reason,omitempty"`
	// Undo is what a lasting action sets back, and when; nil once done.
	Undo *Undo `json:"undo,omitempty"`
	// Send is the command as sent to a device that takes actions as
	// messages, until it answers: a restart sends it again.
	Send *drivers.Outgoing `json:"send,omitempty"`
}

// Undo sets signals back when a lasting action ends.
type Undo struct {
	At  time.Time `json:"at"`
	Set []Step    `json:"set"`
}

// Step sets one signal.
type Step struct {
	Signal string      `json:"signal"`
	Value  model.Value `json:"-"`
}

type wireStep struct {
	Signal string `json:"signal"`
	Value  any    `json:"value"` // bool or float64
}

func (s Step) MarshalJSON() ([]byte, error) {
	return json.Marshal(wireStep{s.Signal, s.Value.Interface()})
}

func (s *Step) UnmarshalJSON(b []byte) error {
	var w wireStep
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	s.Signal = w.Signal
	switch v := w.Value.(type) {
	case bool:
		s.Value = model.Bool(v)
	case float64:
		s.Value = model.Number(v)
	default:
		return fmt.Errorf("step %s: value %v is not a bool or a number", w.Signal, w.Value)
	}
	return nil
}

// Store remembers commands durably, in a file of JSON lines (one per
// change of an entry, fsynced before Put returns), so that a command acts
// at most once across redeliveries and restarts. Entries older than keep
// are forgotten, unless they still have an undo to run; the file is
// rewritten without them when it has grown.
type Store struct {
	path string
	keep time.Duration

	mu      sync.Mutex
	f       *os.File
	entries map[string]*Entry
	lines   int // lines in the file
}

// OpenStore opens (or creates) the store at path. Damaged lines (a torn
// last line after a power cut) are skipped and counted in the returned
// number.
func OpenStore(path string, keep time.Duration, now time.Time) (*Store, int, error) {
	s := &Store{path: path, keep: keep, entries: map[string]*Entry{}}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("commands: %w", err)
	}
	damaged := 0
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var e Entry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.ID == "" {
			damaged++
			continue
		}
		s.entries[e.ID] = &e
	}
	if err := sc.Err(); err != nil {
		damaged++
	}
	if err := s.compact(now); err != nil {
		return nil, damaged, err
	}
	return s, damaged, nil
}

// live says whether an entry is still remembered at now.
func (s *Store) live(e *Entry, now time.Time) bool {
	return e.Undo != nil || !e.Done || now.Sub(e.At) < s.keep
}

// compact rewrites the file with the live entries only. Called with s.mu
// held, or before s is shared.
func (s *Store) compact(now time.Time) error {
	var buf []byte
	ids := make([]string, 0, len(s.entries))
	for id, e := range s.entries {
		if !s.live(e, now) {
			delete(s.entries, id)
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		b, err := json.Marshal(s.entries[id])
		if err != nil {
			return fmt.Errorf("commands: %w", err)
		}
		buf = append(append(buf, b...), '\n')
	}
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
	if err := durable.WriteFile(s.path, buf); err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, durable.FileMode)
	if err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	s.f, s.lines = f, len(ids)
	return nil
}

// Rewrite writes the file again, as when the state directory was deleted
// under the gateway.
func (s *Store) Rewrite(now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("commands: store closed")
	}
	return s.compact(now)
}

// Get returns the entry of a command id.
func (s *Store) Get(id string) (Entry, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return Entry{}, false
	}
	return *e, true
}

// Put records an entry (a new command, or a change of one) durably.
func (s *Store) Put(e Entry, now time.Time) error {
	b, err := json.Marshal(&e)
	if err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("commands: store closed")
	}
	if _, err := s.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	if err := durable.Sync(s.f); err != nil {
		return fmt.Errorf("commands: %w", err)
	}
	s.entries[e.ID] = &e
	s.lines++
	if s.lines > 2*len(s.entries)+256 {
		return s.compact(now)
	}
	return nil
}

// Pending returns the entries that are not done, or have an undo to run,
// oldest first.
func (s *Store) Pending() []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for _, e := range s.entries {
		if !e.Done || e.Undo != nil {
			out = append(out, *e)
		}
	}
	slices.SortFunc(out, func(a, b Entry) int { return a.At.Compare(b.At) })
	return out
}

// Close closes the file.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}
