// Package durable makes file system changes survive a power cut: an fsync
// of a file makes its bytes durable, but a file's name lives in its
// directory, so a file just created or renamed into place can vanish (or
// the old file come back) unless the directory is fsynced too.
//
// The gateway's state (sequence numbers, queue segments and positions,
// remembered command ids) goes through here. Files are created 0600 and
// directories 0700: they hold what the station recorded, and sometimes
// secrets.
package durable

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
)

// Modes of the state the gateway keeps.
const (
	FileMode os.FileMode = 0o600
	DirMode  os.FileMode = 0o700
)

// observer, when set, is told of every fsync: a test's view of what was
// made durable, in order.
var observer atomic.Pointer[func(op, path string)]

// Observe calls f with ("fsync", path) or ("fsyncdir", path) after every
// fsync this package makes, until the returned stop is called. It is for
// tests; f must be safe for concurrent use.
func Observe(f func(op, path string)) (stop func()) {
	observer.Store(&f)
	return func() { observer.Store(nil) }
}

func observed(op, path string) {
	if f := observer.Load(); f != nil {
		(*f)(op, path)
	}
}

// Sync fsyncs an open file.
func Sync(f *os.File) error {
	if err := f.Sync(); err != nil {
		return err
	}
	observed("fsync", f.Name())
	return nil
}

// SyncDir fsyncs a directory, so that the entries created, renamed or
// removed in it survive a power cut.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	observed("fsyncdir", dir)
	return nil
}

// MkdirAll creates dir and its missing parents with DirMode, and fsyncs
// the parent of every directory it created, so that they survive a power
// cut.
func MkdirAll(dir string) error {
	dir = filepath.Clean(dir)
	if fi, err := os.Stat(dir); err == nil {
		if !fi.IsDir() {
			return fmt.Errorf("%s is not a directory", dir)
		}
		return nil
	}
	parent := filepath.Dir(dir)
	if parent != dir {
		if err := MkdirAll(parent); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, DirMode); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return SyncDir(parent)
}

// WriteFile replaces path with data atomically and durably: it writes a
// temporary file beside it, fsyncs it, renames it over path and fsyncs the
// directory. After a crash path holds either the old or the new data,
// whole. A directory deleted under it is made again.
//
// A disk that hangs makes it return ErrStalled (see Bounded); the write
// may still happen later.
func WriteFile(path string, data []byte) error {
	return Bounded(func() error { return writeFile(path, data) }, nil)
}

func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, FileMode)
	if errors.Is(err, fs.ErrNotExist) {
		// The directory was deleted (a state directory removed under the
		// gateway): the file is kept all the same.
		if err = MkdirAll(filepath.Dir(path)); err == nil {
			f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, FileMode)
		}
	}
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = Sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return SyncDir(filepath.Dir(path))
}
