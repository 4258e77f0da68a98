//go:build unix

package status

import "syscall"

// DiskOf says how much space is left on the file system of dir, for the
// gateway's user.
func DiskOf(dir string) Disk {
	var fs syscall.Statfs_t
	if err := syscall.Statfs(dir, &fs); err != nil {
		return Disk{Dir: dir, Error: err.Error()}
	}
	return Disk{Dir: dir, FreeBytes: fs.Bavail * uint64(fs.Bsize)}
}
