//go:build !unix

package status

// DiskOf cannot tell the space left on this system.
func DiskOf(dir string) Disk { return Disk{Dir: dir, Error: "not measured on this system"} }
