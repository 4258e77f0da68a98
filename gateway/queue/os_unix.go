//go:build unix

package queue

import (
	"errors"
	"fmt"
	"math"
	"os"
	"syscall"
)

// lock takes an exclusive lock on f, dir's lock file. The kernel releases
// it when the process ends, also on kill -9.
func lock(f *os.File, dir string) error {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("queue: %s is %w", dir, ErrInUse)
		}
		return fmt.Errorf("queue: lock %s: %w", dir, err)
	}
	return nil
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

// room is what the volume of dir has free beyond the reserve the queue
// leaves on it (see reserveBytes): bytes and inodes, negative when it is
// short of it; ok is false when it cannot be known.
func room(dir string) (bytes, inodes int64, ok bool) {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return 0, 0, false // a real shortage shows at the next write
	}
	bsize := int64(st.Bsize)
	bytes = int64(st.Bavail)*bsize - min(reserveBytes, int64(st.Blocks)*bsize/16)
	inodes = math.MaxInt64 // Files 0: no inode limit
	if st.Files > 0 {
		inodes = int64(st.Ffree) - min(reserveInodes, int64(st.Files)/16)
	}
	return bytes, inodes, true
}
