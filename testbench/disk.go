package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// The gateway's state volume (state_volume): a tmpfs of its own, so that
// the disk fills (by the queue, or by another program: fill-disk), or, for
// a scenario that freezes the disk (freeze-disk),
// an ext4 file system on a loop device, which fsfreeze can make hang:
// frozen, every write to it and every fsync waits in the kernel until it
// thaws, as on a failing SD card. Both need root.

// freezesDisk says whether the scenario freezes the state disk.
func (sc *Scenario) freezesDisk() bool { return sc.plays("freeze-disk", "thaw-disk") }

// mountState mounts the scenario's state volume on dir.
func (r *runner) mountState(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !r.sc.freezesDisk() {
		if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+r.sc.StateVolume+",mode=0700"); err != nil {
			return fmt.Errorf("scenario %s: mounting a %s tmpfs as the state volume (needs root): %w", r.sc.Name, r.sc.StateVolume, err)
		}
		r.unmount = dir
		return nil
	}
	img := filepath.Join(r.work, "state.img")
	out, err := exec.Command("truncate", "-s", strings.ToUpper(r.sc.StateVolume), img).CombinedOutput()
	if err == nil {
		out, err = exec.Command("losetup", "-f", "--show", img).Output()
	}
	if err != nil {
		return fmt.Errorf("scenario %s: a %s loop device as the state volume (needs root and loop devices): %v %s", r.sc.Name, r.sc.StateVolume, err, out)
	}
	r.loop = strings.TrimSpace(string(out))
	if out, err := exec.Command("mkfs.ext4", "-q", r.loop).CombinedOutput(); err != nil {
		return fmt.Errorf("scenario %s: mkfs.ext4 %s: %v %s", r.sc.Name, r.loop, err, out)
	}
	if err := syscall.Mount(r.loop, dir, "ext4", 0, ""); err != nil {
		return fmt.Errorf("scenario %s: mounting %s as the state volume: %w", r.sc.Name, r.loop, err)
	}
	r.unmount = dir
	return os.Chmod(dir, 0o700)
}

// freezeDisk freezes the state volume (fsfreeze -f) or thaws it.
func (r *runner) freezeDisk(on bool) error {
	flag := map[bool]string{true: "-f", false: "-u"}[on]
	if out, err := exec.Command("fsfreeze", flag, r.unmount).CombinedOutput(); err != nil {
		return fmt.Errorf("fsfreeze %s %s: %v %s", flag, r.unmount, err, out)
	}
	r.frozen = on
	return nil
}

// fillDisk fills the state volume with a file of its own, as another
// program would (a log gone wild), until the volume refuses more, or
// removes that file.
func (r *runner) fillDisk(on bool) error {
	path := filepath.Join(r.unmount, "fill")
	if !on {
		return os.Remove(path)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("fill-disk: %w", err)
	}
	defer f.Close()
	block := make([]byte, 64<<10)
	for {
		if _, err := f.Write(block); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				return nil
			}
			return fmt.Errorf("fill-disk: %w", err)
		}
	}
}

// unmountState unmounts and detaches the state volume (shutdown thaws it
// first: a gateway waiting on a frozen disk cannot die).
func (r *runner) unmountState() {
	if r.unmount == "" {
		return
	}
	if err := syscall.Unmount(r.unmount, syscall.MNT_DETACH); err != nil {
		r.log.Warn("state volume not unmounted", "dir", r.unmount, "err", err)
	}
	if r.loop != "" {
		if out, err := exec.Command("losetup", "-d", r.loop).CombinedOutput(); err != nil {
			r.log.Warn("loop device not detached", "device", r.loop, "err", err, "out", string(out))
		}
	}
}
