package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"outpost/configs"
	"outpost/gateway/durable"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/seq"
)

// A state directory the gateway cannot write at start (its SD card
// remounted read-only after errors, a disk that fails, a directory the
// service's user may not write) does not keep the station from running:
// alarms matter more. The gateway keeps its state in memory instead, in
// the first of fallbackDirs it can make, and raises state_dir_unusable.
// At its next start on a state_dir it can write, it takes the state back
// (see takeBack).

// fallbackMaxBytes caps the queue kept in memory.
const fallbackMaxBytes = 32 << 20

// seqJump is how far above state_dir's leases a new fallback's sequence
// numbers start, at the least. The disk is mended most often with a
// reboot, which loses the fallback: the gateway then goes on from the
// disk's leases, below every number the fallback used, and never reaches
// them (2^40 messages of one device), so that no number comes twice. A
// consumer that drops duplicates by id (the hub contract) loses nothing;
// it sees the numbers jump up at the fallback and come down after such a
// reboot. A fallback also starts the microseconds since 1970 higher: a
// flaky disk that fails again after such a reboot starts its next
// fallback above the last one's numbers, unless a device sent more than a
// message a microsecond (or the clock went back).
const seqJump = 1 << 40

// fallbackDirs are where the gateway of station id keeps its state when
// state_dir cannot be written, in the order it tries them: systemd's
// runtime directory (the packaged service's /run/outpost), /run/outpost,
// the system's temporary directory.
func fallbackDirs(id string) []string {
	var dirs []string
	if d, _, _ := strings.Cut(os.Getenv("RUNTIME_DIRECTORY"), ":"); d != "" {
		dirs = append(dirs, filepath.Join(d, id))
	}
	return append(dirs, filepath.Join("/run/outpost", id), filepath.Join(os.TempDir(), "outpost-"+id))
}

// carried are the state files a fallback starts from, read from state_dir
// (which a read-only disk still lets read): the sequence numbers, so that
// none repeats, the alarms raised, the commands taken.
var carried = []string{"seq.json", seq.CopyPath("seq.json"), "alarm-states.json", "commands.jsonl"}

// openState opens the station's queue in its state_dir or, when that
// cannot be written, in a fallback: then st is a copy whose StateDir is
// the fallback, and unusable is the gateway event that says so.
func openState(st *configs.Station, log *slog.Logger) (_ *configs.Station, _ *queue.Queue, unusable *model.Message, _ error) {
	cause := durable.MkdirAll(st.StateDir)
	if cause == nil {
		q, err := pipeline.OpenQueue(st, log)
		if err == nil || errors.Is(err, queue.ErrInUse) {
			return st, q, nil, err
		}
		cause = err
	}
	var tried []string
	for _, dir := range fallbackDirs(st.Station.ID) {
		fresh := !exists(filepath.Join(dir, "seq.json"))
		if err := carry(st.StateDir, dir); err != nil {
			tried = append(tried, err.Error())
			continue
		}
		if fresh {
			if err := jumpSeq(st, dir, time.Now(), log); err != nil {
				tried = append(tried, fmt.Sprintf("%s: %v", dir, err))
				continue
			}
		}
		fb := *st
		fb.StateDir = dir
		small := fb // a queue in memory: a smaller cap
		small.Queue.MaxBytes = min(st.Queue.MaxBytes, fallbackMaxBytes)
		q, err := pipeline.OpenQueue(&small, log)
		if errors.Is(err, queue.ErrInUse) {
			return &fb, nil, nil, err // another gateway of the station runs there
		}
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", dir, err))
			continue
		}
		log.Error("state_dir cannot be written: the gateway keeps its state in memory instead; a power cut loses what is queued there. Mend the disk (or the directory's owner) and restart the gateway: it then takes the state back",
			"state_dir", st.StateDir, "err", cause, "instead", dir)
		ev := model.GatewayEvent(model.EventStateDirUnusable, model.Critical, map[string]string{
			"state_dir": st.StateDir,
			"error":     cause.Error(),
			"instead":   dir,
		})
		return &fb, q, &ev, nil
	}
	return nil, nil, nil, fmt.Errorf("state directory: %w; and no directory to keep the state in instead (%s)", cause, strings.Join(tried, "; "))
}

// jumpSeq raises the sequence numbers of a new fallback in dir, made at
// now, seqJump and now's microseconds since 1970 above those it carried
// from state_dir (none, when state_dir could not be read), for every
// device of the station and the gateway.
func jumpSeq(st *configs.Station, dir string, now time.Time, log *slog.Logger) error {
	c, err := seq.Open(filepath.Join(dir, "seq.json"), log)
	if err != nil {
		return err
	}
	floors := c.Leases()
	for _, d := range append(deviceIDs(st), model.GatewayDevice) {
		floors[d] += 0 // known, at 0 when the file lacks it
	}
	for d := range floors {
		floors[d] += seqJump + uint64(max(now.UnixMicro(), 0))
	}
	return c.Raise(floors)
}

// carry makes dir and copies into it the carried files of from that it
// lacks: a fallback made by an earlier run keeps its own, newer ones.
func carry(from, dir string) error {
	if err := durable.MkdirAll(dir); err != nil {
		return err
	}
	for _, name := range carried {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			continue // none, or unreadable: the fallback starts without it
		}
		if err := durable.WriteFile(filepath.Join(dir, name), b); err != nil {
			return fmt.Errorf("%s: %w", dir, err)
		}
	}
	return nil
}

// takeBack, on a state_dir that can be written, takes back what a gateway
// that ran on a fallback left there: its sequence numbers raise the
// counters (so that none repeats), and what its queue holds for any
// uplink is queued again, once, ahead of what comes now (an uplink that
// had it gets it twice; the hub knows it by its number). The fallback is
// then removed. It returns how many messages came back.
func takeBack(st *configs.Station, q *queue.Queue, counters *seq.Counters, log *slog.Logger) (int, error) {
	n := 0
	for _, dir := range fallbackDirs(st.Station.ID) {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		got, err := takeBackFrom(dir, st, q, counters, log)
		if err != nil {
			return n, fmt.Errorf("the state kept in %s while state_dir could not be written: %w", dir, err)
		}
		n += got
	}
	return n, nil
}

func takeBackFrom(dir string, st *configs.Station, q *queue.Queue, counters *seq.Counters, log *slog.Logger) (int, error) {
	if _, err := os.Stat(filepath.Join(dir, "seq.json")); err == nil {
		fb, err := seq.Open(filepath.Join(dir, "seq.json"), log)
		if err != nil {
			return 0, err
		}
		if err := counters.Raise(fb.Leases()); err != nil {
			return 0, err
		}
	}
	n := 0
	if qdir := filepath.Join(dir, "queue"); exists(qdir) {
		old, err := queue.Open(qdir, queue.Options{MaxBytes: fallbackMaxBytes, Readers: st.Uplinks()}, log.With("queue", "fallback"))
		if err != nil {
			return 0, err
		}
		seen := map[string]bool{}
		var recs [queue.NumLanes][]queue.Record
		for _, u := range st.Uplinks() {
			err := old.Reader(u).Scan(func(data []byte) {
				m, err := model.DecodeBinary(data)
				if err != nil || seen[m.ID()] {
					return
				}
				seen[m.ID()] = true
				l := pipeline.LaneOf(m.Kind)
				recs[l] = append(recs[l], queue.Record{Data: append([]byte(nil), data...), Readings: m.Values()})
			})
			if err != nil {
				old.Close()
				return 0, err
			}
		}
		for l := range recs {
			if err := q.Append(queue.Lane(l), recs[l]...); err != nil {
				old.Close()
				return 0, err
			}
			n += len(recs[l])
		}
		if err := old.Close(); err != nil {
			return 0, err
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return n, err
	}
	log.Warn("took back the state kept in memory while state_dir could not be written", "from", dir, "messages", n)
	return n, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
