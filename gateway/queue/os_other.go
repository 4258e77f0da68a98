//go:build !unix

package queue

import (
	"fmt"
	"os"
	"path/filepath"
)

// lockDir opens dir/lock; without flock, it does not keep a second process
// out.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	return f, nil
}

// unlinked is never known here: a deleted queue file is found when it is
// opened again.
func unlinked(*os.File) bool { return false }

// room is never known here: the queue finds a full disk when a write
// fails.
func room(string) (bytes, inodes int64, ok bool) { return 0, 0, false }
