//go:build unix

package queue

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// lockDir takes an exclusive lock on dir/lock, so that two processes never
// run the same queue. The kernel releases it when the process ends, also
// on kill -9.
func lockDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("queue: %s is in use by another queue", dir)
		}
		return nil, fmt.Errorf("queue: lock %s: %w", dir, err)
	}
	return f, nil
}

// unlinked says whether f's file was deleted (its last name removed) while
// open: what is written to it reaches no file a reader or the next Open
// finds.
func unlinked(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 0
}

// spaceLow says whether the volume of dir lacks room for need bytes and
// an inode beyond the reserve the queue leaves on it (see reserveBytes).
func spaceLow(dir string, need int64) bool {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return false // a real shortage shows at the next write
	}
	bsize := uint64(st.Bsize)
	if st.Bavail*bsize < min(reserveBytes, st.Blocks*bsize/16)+uint64(need) {
		return true
	}
	return st.Files > 0 && st.Ffree < min(reserveInodes, st.Files/16)+1 // Files 0: no inode limit
}
