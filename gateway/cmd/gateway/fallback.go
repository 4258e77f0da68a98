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

// inDir is a copy of st that keeps its state in dir.
func inDir(st *configs.Station, dir string) *configs.Station {
	fb := *st
	fb.StateDir = dir
	return &fb
}

// carried are the state files a fallback starts from, read from state_dir
// (which a read-only disk still lets read): the sequence numbers, so that
// none repeats, the alarms raised, the commands taken.
func carried(st *configs.Station) []string {
	return []string{st.SeqFile(), seq.CopyPath(st.SeqFile()), st.AlarmStatesFile(), st.CommandsFile()}
}

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
		fb := inDir(st, dir)
		fresh := !exists(fb.SeqFile())
		err := carry(st, fb)
		if err == nil && fresh {
			err = jumpSeq(fb, time.Now(), log)
		}
		if err != nil {
			tried = append(tried, fmt.Sprintf("%s: %v", dir, err))
			continue
		}
		small := *fb // a queue in memory: a smaller cap
		small.Queue.MaxBytes = min(st.Queue.MaxBytes, fallbackMaxBytes)
		q, err := pipeline.OpenQueue(&small, log)
		if errors.Is(err, queue.ErrInUse) {
			return fb, nil, nil, err // another gateway of the station runs there
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
		return fb, q, &ev, nil
	}
	return nil, nil, nil, fmt.Errorf("state directory: %w; and no directory to keep the state in instead (%s)", cause, strings.Join(tried, "; "))
}

// jumpSeq raises the sequence numbers of fb, a new fallback made at now,
// seqJump and now's microseconds since 1970 above those it carried from
// state_dir (none, when state_dir could not be read), for every device of
// the station and the gateway.
func jumpSeq(fb *configs.Station, now time.Time, log *slog.Logger) error {
	c, err := seq.Open(fb.SeqFile(), log)
	if err != nil {
		return err
	}
	floors := c.Leases()
	for _, d := range append(deviceIDs(fb), model.GatewayDevice) {
		if _, ok := floors[d]; !ok {
			floors[d] = 0
		}
	}
	for d := range floors {
		floors[d] += seqJump + uint64(max(now.UnixMicro(), 0))
	}
	return c.Raise(floors)
}

// carry makes fb's state directory and copies into it the carried files
// of st that it lacks: a fallback made by an earlier run keeps its own,
// newer ones.
func carry(st, fb *configs.Station) error {
	if err := durable.MkdirAll(fb.StateDir); err != nil {
		return err
	}
	to := carried(fb)
	for i, from := range carried(st) {
		if exists(to[i]) {
			continue
		}
		b, err := os.ReadFile(from)
		if err != nil {
			continue // none, or unreadable: the fallback starts without it
		}
		if err := durable.WriteFile(to[i], b); err != nil {
			return err
		}
	}
	return nil
}

// takeBack, on a state_dir that can be written, takes back what a gateway
// that ran on a fallback left there: its sequence numbers raise the
// counters (so that none repeats), and what its queue holds for any
// uplink is queued again, once, ahead of what comes now (an uplink that
// had it gets it twice; the hub knows it by its number). The fallback is
// then removed.
func takeBack(st *configs.Station, q *queue.Queue, counters *seq.Counters, log *slog.Logger) error {
	for _, dir := range fallbackDirs(st.Station.ID) {
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err := takeBackFrom(inDir(st, dir), q, counters, log); err != nil {
			return fmt.Errorf("the state kept in %s while state_dir could not be written: %w", dir, err)
		}
	}
	return nil
}

func takeBackFrom(fb *configs.Station, q *queue.Queue, counters *seq.Counters, log *slog.Logger) error {
	if exists(fb.SeqFile()) {
		c, err := seq.Open(fb.SeqFile(), log)
		if err != nil {
			return err
		}
		if err := counters.Raise(c.Leases()); err != nil {
			return err
		}
	}
	n := 0
	if exists(fb.QueueDir()) {
		var err error
		if n, err = requeue(fb, q, log); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(fb.StateDir); err != nil {
		return err
	}
	log.Warn("took back the state kept in memory while state_dir could not be written", "from", fb.StateDir, "messages", n)
	return nil
}

// requeue appends to q, once each, the messages fb's queue holds for any
// uplink, and returns how many.
func requeue(fb *configs.Station, q *queue.Queue, log *slog.Logger) (n int, err error) {
	old, err := queue.Open(fb.QueueDir(), queue.Options{MaxBytes: fallbackMaxBytes, Readers: fb.Uplinks()}, log.With("queue", "fallback"))
	if err != nil {
		return 0, err
	}
	defer func() { err = errors.Join(err, old.Close()) }()
	seen := map[string]bool{}
	var recs [queue.NumLanes][]queue.Record
	for _, u := range fb.Uplinks() {
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
			return 0, err
		}
	}
	for l := range recs {
		if err := q.Append(queue.Lane(l), recs[l]...); err != nil {
			return n, err
		}
		n += len(recs[l])
	}
	return n, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
