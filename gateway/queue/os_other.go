//go:build !unix

package queue

import "os"

// lock does nothing here: without flock, a second process is not kept
// out.
func lock(*os.File, string) error { return nil }

// unlinked is never known here: a deleted queue file is found when it is
// opened again.
func unlinked(*os.File) bool { return false }

// room is never known here: the queue finds a full disk when a write
// fails.
func room(string) (bytes, inodes int64, ok bool) { return 0, 0, false }
