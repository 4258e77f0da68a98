package queue

import (
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"outpost/gateway/durable"
	"outpost/testbench/testlog"
)

// These tests break a real file system: chattr +i makes the queue's files
// refuse writes (as a failing disk or a read-only remount does), and a
// small tmpfs fills up. Both need root; CI runs as root.

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files immutable or mount a small tmpfs")
	}
}

// immutable sets or clears the immutable attribute of dir and all in it.
func immutable(t *testing.T, dir string, on bool) {
	t.Helper()
	flag := "-i"
	if on {
		flag = "+i"
	}
	if out, err := exec.Command("chattr", "-R", flag, dir).CombinedOutput(); err != nil {
		t.Fatalf("chattr -R %s %s: %v: %s", flag, dir, err, out)
	}
}

// TestDiskRefusesWrites: while the disk refuses every write, what it
// refuses is held in memory and handed out after what is on disk, and
// when the disk takes writes again it goes to disk by itself, in order,
// and survives a restart.
func TestDiskRefusesWrites(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	q, err := Open(dir, Options{MaxBytes: 1 << 20, SyncEvery: -1}, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 3; i++ {
		if err := q.Append(LaneAlarm, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	immutable(t, dir, true)
	for i := 4; i <= 6; i++ {
		if err := q.Append(LaneAlarm, rec(i)); !errors.Is(err, ErrHeld) {
			t.Fatalf("alarm %d while the disk refuses writes: got %v, want ErrHeld (not durable)", i, err)
		}
	}
	if err := q.Append(LaneTelemetry, rec(100), rec(101)); err != nil {
		t.Fatalf("telemetry while the disk refuses writes: %v", err)
	}
	st := q.Stats()
	a, tl := st.Lanes[LaneAlarm], st.Lanes[LaneTelemetry]
	if !st.WriteFailing || st.WriteErrors == 0 || !strings.Contains(st.WriteError, "operation not permitted") {
		t.Errorf("stats say failing %v, %d errors, last %q", st.WriteFailing, st.WriteErrors, st.WriteError)
	}
	if a.Memory != 3 || a.Records != 6 || a.Lost != 0 {
		t.Errorf("alarm lane: %d in memory, %d queued, %d lost; want 3, 6, 0", a.Memory, a.Records, a.Lost)
	}
	if tl.Memory != 2 || tl.Records != 2 || tl.Readings != int64(rec(100).Readings+rec(101).Readings) || tl.Dropped != 0 {
		t.Errorf("telemetry: %d in memory, %d queued (%d readings), %d dropped; want 2, 2 (%d), 0", tl.Memory, tl.Records, tl.Readings, tl.Dropped, rec(100).Readings+rec(101).Readings)
	}
	// The forwarder gets every record, in order, the disk refusing or not.
	if got, tel := drain(t, q, 1000, true); len(got) != 6 || got[0] != 1 || got[5] != 6 || !slices.Equal(tel, []int{100, 101}) {
		t.Fatalf("handed out alarms %v and telemetry %v, want alarms 1 to 6 and telemetry 100 and 101", got, tel)
	}
	for i := 7; i <= 8; i++ {
		q.Append(LaneAlarm, rec(i))
	}
	q.Append(LaneTelemetry, rec(102))
	immutable(t, dir, false)
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().WriteFailing && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the queue retries every second
	}
	st = q.Stats()
	if st.WriteFailing || st.Lanes[LaneAlarm].Memory != 0 || st.Lanes[LaneTelemetry].Memory != 0 {
		t.Fatalf("after the disk recovered: failing %v, %d alarms and %d telemetry records in memory", st.WriteFailing, st.Lanes[LaneAlarm].Memory, st.Lanes[LaneTelemetry].Memory)
	}
	q.Close()
	q = open(t, dir, testOpts)
	if got, tel := drain(t, q, 1000, true); !slices.Equal(got, []int{7, 8}) || !slices.Equal(tel, []int{102}) {
		t.Fatalf("after a restart, handed out alarms %v and telemetry %v, want alarms 7 and 8 and telemetry 102 from disk", got, tel)
	}
}

// TestDiskRefusesWritesMemoryFull: the memory reserve holds MemoryBytes a
// lane of what the disk refuses; past it, an alarm is lost (ErrLost, and
// counted) and telemetry is dropped (counted as the size cap's drops are,
// for the hub's accounting), and what it holds is still delivered.
func TestDiskRefusesWritesMemoryFull(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	q, err := Open(dir, Options{MaxBytes: 1 << 20, SyncEvery: -1, MemoryBytes: 250}, testLog(t)) // two records of 100 bytes
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	immutable(t, dir, true)
	for i, want := range []error{ErrHeld, ErrHeld, ErrLost} {
		if err := q.Append(LaneAlarm, rec(1+i)); !errors.Is(err, want) {
			t.Fatalf("alarm %d while the disk refuses writes: got %v, want %v", 1+i, err, want)
		}
	}
	for i := 100; i < 103; i++ {
		if err := q.Append(LaneTelemetry, rec(i)); err != nil {
			t.Fatalf("telemetry %d while the disk refuses writes: %v", i, err)
		}
	}
	st := q.Stats()
	if a := st.Lanes[LaneAlarm]; a.Memory != 2 || a.Lost != 1 || a.LostReadings != int64(rec(3).Readings) {
		t.Errorf("alarms: %d in memory, %d lost (%d readings); want 2, 1 (%d)", a.Memory, a.Lost, a.LostReadings, rec(3).Readings)
	}
	if tl := st.Lanes[LaneTelemetry]; tl.Memory != 2 || tl.Dropped != 1 || tl.DroppedReadings != int64(rec(102).Readings) || tl.Lost != 0 {
		t.Errorf("telemetry: %d in memory, %d dropped (%d readings), %d lost; want 2, 1 (%d), 0", tl.Memory, tl.Dropped, tl.DroppedReadings, tl.Lost, rec(102).Readings)
	}
	if got, tel := drain(t, q, 1000, true); !slices.Equal(got, []int{1, 2}) || !slices.Equal(tel, []int{100, 101}) {
		t.Fatalf("handed out alarms %v and telemetry %v, want alarms 1 and 2 and telemetry 100 and 101", got, tel)
	}
}

// TestDiskRefusesWritesMany: a thousand records held in memory go to disk
// across many segments at once when it takes writes again, with their
// enqueue times, while one reader has acknowledged some of them and has
// batches of others in flight and the other has read none: each reader
// then gets the rest once, from disk, and nothing after a restart.
func TestDiskRefusesWritesMany(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	opt := Options{MaxBytes: 1 << 20, SyncEvery: -1, SegmentBytes: 4 << 10, Readers: []string{"mqtt", "influx"}}
	q, err := Open(dir, opt, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { q.Close() }()
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	immutable(t, dir, true)
	appendRange(t, q, LaneTelemetry, 0, 1000)
	held := time.Now()
	checkSeq(t, "mqtt, acknowledged from memory", takeN(t, mq, LaneTelemetry, 300, 100), 0, 300)
	var out []Batch
	for i := range 3 {
		b, got := take(t, mq, LaneTelemetry, 100, false)
		checkSeq(t, "mqtt, in flight from memory", got, 300+100*i, 400+100*i)
		out = append(out, b)
	}
	immutable(t, dir, false)
	if err := q.Append(LaneTelemetry, rec(1000)); err != nil {
		t.Fatal(err)
	}
	if tl := q.Stats().Lanes[LaneTelemetry]; tl.Memory != 0 {
		t.Fatalf("%d records still in memory once the disk takes writes", tl.Memory)
	}
	if n := len(segFiles(t, dir, LaneTelemetry)); n < 20 {
		t.Fatalf("the records held went to %d segments; the test wants them across many", n)
	}
	checkInvariants(t, q)
	for _, b := range out {
		if err := mq.Ack(b); err != nil {
			t.Fatalf("mqtt: ack of a batch taken from memory: %v", err)
		}
	}
	_, got := drain(t, mq, 100, true)
	checkSeq(t, "mqtt after the disk recovered", got, 600, 1001)
	b, _ := take(t, ix, LaneTelemetry, 1, false)
	if e := b.Entries[0].Enqueued; e.After(held) {
		t.Errorf("record 0 reads as enqueued at %v, after it was held in memory (%v): its time is that of its append", e, held)
	}
	ix.Rewind()
	_, got = drain(t, ix, 100, true)
	checkSeq(t, "influx after the disk recovered", got, 0, 1001)
	q.Close()
	q = open(t, dir, opt)
	for _, name := range opt.Readers {
		if alarms, tel := drain(t, q.Reader(name), 1000, true); len(alarms)+len(tel) > 0 {
			t.Fatalf("%s after a restart: %v %v, want nothing", name, short(alarms), short(tel))
		}
	}
}

// TestDiskFlaps: a disk that takes a write between two it refuses (a full
// one takes a small record into a block partly used) is one episode, not
// one a second: it ends once writes have worked for recoverCalm, at the
// time they began to, and the log says so once.
func TestDiskFlaps(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	var log testlog.Buffer
	q, err := Open(dir, Options{MaxBytes: 1 << 20, SyncEvery: -1}, slog.New(slog.NewTextHandler(&log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	q.Append(LaneAlarm, rec(1))
	refuse := func(i int) {
		immutable(t, dir, true)
		if err := q.Append(LaneAlarm, rec(i)); !errors.Is(err, ErrHeld) {
			t.Fatalf("alarm %d while the disk refuses writes: got %v, want ErrHeld", i, err)
		}
	}
	take := func(i int) {
		immutable(t, dir, false)
		if err := q.Append(LaneAlarm, rec(i)); err != nil {
			t.Fatalf("alarm %d once the disk takes writes: %v", i, err)
		}
	}
	refuse(2)
	began := q.Stats().WriteFailedAt
	take(3)
	if st := q.Stats(); !st.WriteFailing {
		t.Fatal("one write taken ended the episode")
	}
	refuse(4)
	take(5)
	works := time.Now()
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().WriteFailing && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the queue retries every second
	}
	st := q.Stats()
	if st.WriteFailing || !st.WriteFailedAt.Equal(began) || st.WriteRecoveredAt.After(works) || st.WriteRecoveredAt.Sub(began) < 0 {
		t.Fatalf("failing %v, from %v to %v; want one episode from %v, ended when writes began to work again (before %v)",
			st.WriteFailing, st.WriteFailedAt, st.WriteRecoveredAt, began, works)
	}
	if st.WriteErrors != 2 {
		t.Errorf("%d writes refused, want 2", st.WriteErrors)
	}
	text := log.String()
	if n, m := strings.Count(text, "the disk refuses writes"), strings.Count(text, "the disk takes writes again"); n != 1 || m != 1 {
		t.Errorf("logged the disk refusing %d times and taking writes again %d, want once each:\n%s", n, m, text)
	}
}

// smallVolume mounts a tmpfs with these options for the test, and returns
// its directory.
func smallVolume(t *testing.T, options string) string {
	t.Helper()
	needRoot(t)
	dir := filepath.Join(t.TempDir(), "vol")
	os.Mkdir(dir, 0o700)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, options); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// TestDiskFull fills a small tmpfs: the oldest telemetry makes room for
// new records, alarms are never dropped, and every telemetry record is
// either queued or counted dropped.
func TestDiskFull(t *testing.T) {
	dir := smallVolume(t, "size=512k")
	// The cap is far above the volume: only the disk limits the queue.
	q := open(t, filepath.Join(dir, "q"), Options{MaxBytes: 64 << 20, SyncEvery: -1, SegmentBytes: 32 << 10})
	appendedT := 0
	for i := 0; i < 10000; i++ { // 1.2 MB of records on a 512 KiB volume
		lane := LaneTelemetry
		if i%100 == 0 {
			lane = LaneAlarm
		} else {
			appendedT++
		}
		if err := q.Append(lane, rec(i)); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
	}
	st := q.Stats()
	a, tl := st.Lanes[LaneAlarm], st.Lanes[LaneTelemetry]
	if a.Records != 100 || a.Lost != 0 || a.Memory != 0 {
		t.Errorf("alarms: %d queued (%d in memory), %d lost; want all 100 on disk", a.Records, a.Memory, a.Lost)
	}
	if tl.Dropped == 0 {
		t.Errorf("no telemetry dropped on a full disk: the test did not fill it")
	}
	if int(tl.Records+tl.Dropped) != appendedT {
		t.Errorf("telemetry: %d queued + %d dropped, want %d appended", tl.Records, tl.Dropped, appendedT)
	}
	alarms, telemetry := drain(t, q, 1000, true)
	if len(alarms) != 100 || len(telemetry) != int(tl.Records) {
		t.Errorf("handed out %d alarms and %d telemetry, want 100 and %d", len(alarms), len(telemetry), tl.Records)
	}
	t.Logf("%d telemetry records on a 512 KiB volume: %d kept, %d dropped", appendedT, tl.Records, tl.Dropped)
}

// TestDiskFullHubUp: the disk fills (another program's file) while the
// hub takes everything, so the queue holds no backlog to drop, only its
// newest records: telemetry then waits in memory, and so does an alarm
// rather than drop telemetry not yet delivered; none is dropped, every
// record is handed out once and in order, and once the disk has room it
// goes there.
func TestDiskFullHubUp(t *testing.T) {
	dir := smallVolume(t, "size=256k")
	qdir := filepath.Join(dir, "q")
	q := open(t, qdir, Options{MaxBytes: 64 << 20, SyncEvery: -1, SegmentBytes: 32 << 10})
	defer func() { q.Close() }()
	appendRange(t, q, LaneTelemetry, 0, 10)
	_, tel := drain(t, q, 5, true)
	checkSeq(t, "before the disk filled", tel, 0, 10)
	appendRange(t, q, LaneTelemetry, 10, 15)
	b := next(t, q, 2) // in flight as the disk fills
	fill, err := os.Create(filepath.Join(dir, "fill"))
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := fill.Write(make([]byte, 4096)); err != nil {
			break
		}
	}
	appendRange(t, q, LaneTelemetry, 15, 40)
	st := q.Stats()
	if tl := st.Lanes[LaneTelemetry]; tl.Dropped != 0 || tl.Memory == 0 || tl.Records != 30 {
		t.Fatalf("full disk with the hub up: %d dropped, %d in memory, %d queued (full drops %d); want 0 dropped, some in memory, 30 queued", tl.Dropped, tl.Memory, tl.Records, st.FullDrops)
	}
	if err := q.Append(LaneAlarm, rec(1)); !errors.Is(err, ErrHeld) {
		t.Fatalf("alarm on the full disk: %v, want it held in memory (ErrHeld)", err)
	}
	if tl := q.Stats().Lanes[LaneTelemetry]; tl.Dropped != 0 {
		t.Fatalf("the alarm made room by dropping %d telemetry records not yet delivered", tl.Dropped)
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	alarms, tel := drain(t, q, 7, true)
	checkSeq(t, "alarms while the disk is full", alarms, 1, 2)
	checkSeq(t, "telemetry while the disk is full", tel, 12, 40)
	fill.Close()
	os.Remove(fill.Name())
	appendRange(t, q, LaneTelemetry, 40, 41)
	if tl := q.Stats().Lanes[LaneTelemetry]; tl.Memory != 0 {
		t.Fatalf("%d records in memory once the disk has room", tl.Memory)
	}
	q.Close()
	q = open(t, qdir, Options{MaxBytes: 64 << 20, SyncEvery: -1, SegmentBytes: 32 << 10})
	_, tel = drain(t, q, 100, true)
	checkSeq(t, "after a restart", tel, 40, 41)
}

// TestStateFilesKeepRoom: a queue filling its volume leaves room for the
// state directory's other files, in inodes (a tmpfs of 200, 4 KiB
// segments: the inodes run out first) and in bytes (512 KiB): they are
// written by atomic replace, which needs an inode and blocks of its own.
// The telemetry dropped for it is counted, as on a full disk.
func TestStateFilesKeepRoom(t *testing.T) {
	needRoot(t)
	for _, tc := range []struct{ name, mount string }{
		{"inodes", "size=8m,nr_inodes=200"},
		{"bytes", "size=512k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := smallVolume(t, tc.mount)
			q := open(t, filepath.Join(dir, "q"), Options{MaxBytes: 64 << 20, SyncEvery: -1, SegmentBytes: 4 << 10})
			const n = 20000 // 2.4 MB: 600 segments
			for i := range n {
				if err := q.Append(LaneTelemetry, rec(i)); err != nil {
					t.Fatalf("record %d: %v", i, err)
				}
			}
			st := q.Stats()
			tl := st.Lanes[LaneTelemetry]
			if st.FullDrops == 0 || tl.Dropped == 0 || tl.Records+tl.Dropped != n {
				t.Errorf("telemetry: %d queued + %d dropped (%d times), want %d appended and some dropped", tl.Records, tl.Dropped, st.FullDrops, n)
			}
			// The room kept.
			var fs syscall.Statfs_t
			if err := syscall.Statfs(dir, &fs); err != nil {
				t.Fatal(err)
			}
			bsize := uint64(fs.Bsize)
			if keep := min(reserveInodes, fs.Files/16); fs.Ffree < keep {
				t.Errorf("%d inodes free of %d, want at least %d kept", fs.Ffree, fs.Files, keep)
			}
			if keep := min(reserveBytes, fs.Blocks*bsize/16); fs.Bavail*bsize < keep {
				t.Errorf("%d bytes free of %d, want at least %d kept", fs.Bavail*bsize, fs.Blocks*bsize, keep)
			}
			// What the gateway keeps beside the queue, each written again.
			for round := range 3 {
				for _, name := range []string{"seq.json", "alarm-states.json", "status.json", "commands.jsonl", "dc09.json"} {
					if err := durable.WriteFile(filepath.Join(dir, name), make([]byte, 2000)); err != nil {
						t.Fatalf("round %d: %v", round, err)
					}
				}
				for i := range 200 { // the queue goes on taking what it is given
					if err := q.Append(LaneTelemetry, rec(n+round*200+i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			// Alarms may take the reserve.
			if err := q.Append(LaneAlarm, rec(1)); err != nil {
				t.Errorf("alarm: %v", err)
			}
		})
	}
}

// TestDeliveredSpaceIsReleased: delivered records leave the disk soon
// after they are acknowledged, not when a segment fills.
func TestDeliveredSpaceIsReleased(t *testing.T) {
	q := open(t, t.TempDir(), Options{MaxBytes: 256 << 20, SyncEvery: -1}) // 4 MiB segments
	for round := range 20 {
		for i := range 1000 {
			if err := q.Append(LaneTelemetry, rec(round*1000+i)); err != nil {
				t.Fatal(err)
			}
		}
		drain(t, q, 1000, true)
	}
	// 20,000 records of 124 bytes were written and delivered: 2.4 MB.
	if b := q.Stats().Lanes[LaneTelemetry].Bytes; b > q.retireBytes()+124*1000 {
		t.Errorf("%d bytes stay on disk after everything was delivered; want at most %d", b, q.retireBytes()+124*1000)
	}
}

// freezable mounts a small ext4 file system on a loop device and returns
// its root, and freeze, which freezes it (fsfreeze -f) or thaws it: frozen,
// every write to it hangs in the kernel until it thaws, as on a failing SD
// card. Needs root and loop devices.
func freezable(t *testing.T) (dir string, freeze func(on bool)) {
	t.Helper()
	needRoot(t)
	img := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 32<<20); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", img).Output()
	if err != nil {
		t.Fatalf("losetup (loop devices are needed to freeze a disk): %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	if out, err := exec.Command("mkfs.ext4", "-q", dev).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 %s: %v: %s", dev, err, out)
	}
	dir = filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(dir, 0o700)
	if out, err := exec.Command("mount", dev, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount %s: %v: %s", dev, err, out)
	}
	frozen := false
	freeze = func(on bool) {
		t.Helper()
		flag := map[bool]string{true: "-f", false: "-u"}[on]
		if out, err := exec.Command("fsfreeze", flag, dir).CombinedOutput(); err != nil {
			t.Fatalf("fsfreeze %s %s: %v: %s", flag, dir, err, out)
		}
		frozen = on
	}
	// Cleanups run last first: thaw, then unmount, then detach.
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	t.Cleanup(func() {
		if frozen {
			freeze(false)
		}
	})
	return dir, freeze
}

// TestDiskHangs freezes the queue's file system: the first Append after
// it waits durable.StallAfter for its write, then every Append returns at
// once; what the disk does not take is held in memory and handed out. Once the disk thaws, the write that hung is taken back
// (its alarm is in memory) and the alarms go to disk by themselves: after
// a restart, the reader that had not read them gets each exactly once.
func TestDiskHangs(t *testing.T) {
	dir, freeze := freezable(t)
	opt := Options{MaxBytes: 1 << 20, Readers: []string{"mqtt", "influx"}}
	q, err := Open(filepath.Join(dir, "q"), opt, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	for i := 1; i <= 3; i++ {
		if err := q.Append(LaneAlarm, rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	freeze(true)
	for i := 4; i <= 6; i++ {
		start := time.Now()
		err := q.Append(LaneAlarm, rec(i))
		took := time.Since(start)
		if !errors.Is(err, ErrHeld) {
			t.Fatalf("alarm %d while the disk hangs: got %v, want ErrHeld (not durable)", i, err)
		}
		if limit := map[bool]time.Duration{true: durable.StallAfter + time.Second, false: 100 * time.Millisecond}[i == 4]; took > limit {
			t.Errorf("alarm %d took %s to append while the disk hangs, want at most %s", i, took, limit)
		}
	}
	if err := q.Append(LaneTelemetry, rec(100)); err != nil {
		t.Fatalf("telemetry while the disk hangs: %v", err)
	}
	st := q.Reader("mqtt").Stats()
	if !st.WriteFailing || !strings.Contains(st.WriteError, "the disk does not answer") {
		t.Errorf("stats say failing %v, last error %q; want failing, the disk does not answer", st.WriteFailing, st.WriteError)
	}
	if a, tl := st.Lanes[LaneAlarm], st.Lanes[LaneTelemetry]; a.Memory != 3 || tl.Memory != 1 || tl.Dropped != 0 {
		t.Errorf("%d alarms and %d telemetry records in memory, %d telemetry dropped; want 3, 1 and 0", a.Memory, tl.Memory, tl.Dropped)
	}
	// The uplink whose hub is up gets everything while the disk hangs.
	if got, tel := drain(t, q.Reader("mqtt"), 1000, true); !slices.Equal(got, []int{1, 2, 3, 4, 5, 6}) || !slices.Equal(tel, []int{100}) {
		t.Fatalf("handed out alarms %v and telemetry %v while the disk hangs, want alarms 1 to 6 and telemetry 100", got, tel)
	}
	freeze(false)
	deadline := time.Now().Add(5 * time.Second)
	for q.Stats().WriteFailing && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // the queue retries every second
	}
	if st := q.Stats(); st.WriteFailing || st.Lanes[LaneAlarm].Memory != 0 || st.Lanes[LaneTelemetry].Memory != 0 {
		t.Fatalf("after the disk thawed: failing %v, %d alarms and %d telemetry records in memory", st.WriteFailing, st.Lanes[LaneAlarm].Memory, st.Lanes[LaneTelemetry].Memory)
	}
	q.Close()
	q = open(t, filepath.Join(dir, "q"), opt)
	if got, tel := drain(t, q.Reader("influx"), 1000, true); !slices.Equal(got, []int{1, 2, 3, 4, 5, 6}) || !slices.Equal(tel, []int{100}) {
		t.Errorf("after a restart, the other reader got alarms %v and telemetry %v, want alarms 1 to 6 and telemetry 100, once each", got, tel)
	}
	if got, tel := drain(t, q.Reader("mqtt"), 1000, true); len(got)+len(tel) != 0 {
		t.Errorf("after a restart, the reader that took everything got %v %v again", got, tel)
	}
}

// TestDirDeletedWhileOpen: the state directory is deleted under a running
// queue (an operator or a cleaner of /tmp removes it). The next alarm is
// durable all the same, in the directory made again; telemetry follows
// within a group commit; a reader tailing the deleted segments reads them
// to the end, one that had not opened them counts what it lost, and what
// came after the deletion survives a restart.
func TestDirDeletedWhileOpen(t *testing.T) {
	dir := t.TempDir()
	opt := twoReaders
	opt.SyncEvery = time.Millisecond
	q := open(t, dir, opt)
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneAlarm, 1, 3)
	appendRange(t, q, LaneTelemetry, 100, 110)
	// mqtt keeps up; influx is down and has read nothing.
	if _, got := take(t, mq, LaneAlarm, 100, true); len(got) != 2 {
		t.Fatalf("mqtt took alarms %v, want 1 and 2", got)
	}
	checkSeq(t, "mqtt telemetry", takeN(t, mq, LaneTelemetry, 10, 100), 100, 110)

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	// The alarm after the deletion is durable: Append says so, and its
	// segment is in the directory made again.
	if err := q.Append(LaneAlarm, rec(3)); err != nil {
		t.Fatalf("alarm after the state directory was deleted: %v, want it durable", err)
	}
	if files := segFiles(t, dir, LaneAlarm); len(files) != 1 {
		t.Fatalf("alarm segments after the deletion: %v, want the new one", files)
	}
	if _, err := os.Stat(filepath.Join(dir, "lock")); err != nil {
		t.Errorf("the queue's lock was not made again: %v", err)
	}
	// Telemetry: the first appends go to the deleted segment until its
	// group commit finds it deleted; the next starts a new one.
	i := 110
	for deadline := time.Now().Add(5 * time.Second); len(segFiles(t, dir, LaneTelemetry)) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("no telemetry segment 5s after the deletion (%d appended)", i-110)
		}
		appendRange(t, q, LaneTelemetry, i, i+1)
		time.Sleep(time.Millisecond) // a group commit's window, not a wait for a result
	}
	if st := q.Stats(); st.Deleted != 2 {
		t.Errorf("Stats.Deleted = %d, want 2 (the alarm and telemetry lanes)", st.Deleted)
	}

	// mqtt had the deleted telemetry segment open: it reads it to the end,
	// then the new one. Nothing lost, nothing twice.
	if _, got := take(t, mq, LaneAlarm, 100, true); !slices.Equal(got, []int{3}) {
		t.Fatalf("mqtt took alarms %v after the deletion, want [3]", got)
	}
	checkSeq(t, "mqtt telemetry after the deletion", takeN(t, mq, LaneTelemetry, i-110, 1000), 110, i)
	// influx never opened them: it gets what came after, and counts as
	// dropped what the deletion took from it.
	if _, got := take(t, ix, LaneAlarm, 100, true); !slices.Equal(got, []int{3}) {
		t.Fatalf("influx took alarms %v after the deletion, want [3]", got)
	}
	_, tel := take(t, ix, LaneTelemetry, 1000, true)
	if len(tel) == 0 || tel[len(tel)-1] != i-1 {
		t.Fatalf("influx took telemetry %v, want the last ones up to %d", short(tel), i-1)
	}
	st := ix.Stats()
	a, tl := st.Lanes[LaneAlarm], st.Lanes[LaneTelemetry]
	if a.Dropped != 2 || a.Records != 0 {
		t.Errorf("influx alarm lane: %d dropped, %d queued; want 2 (alarms 1 and 2 were deleted), 0", a.Dropped, a.Records)
	}
	if lost := i - 100 - len(tel); tl.Dropped != int64(lost) || tl.Records != 0 {
		t.Errorf("influx telemetry: %d dropped, %d queued; want %d (deleted before it read them), 0", tl.Dropped, tl.Records, lost)
	}

	// What came after the deletion is on disk: after a restart, a reader
	// that had not acknowledged it gets it again.
	appendRange(t, q, LaneAlarm, 4, 5)
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	q = open(t, dir, opt)
	if _, got := take(t, q.Reader("influx"), LaneAlarm, 100, false); !slices.Equal(got, []int{4}) {
		t.Fatalf("after a restart influx got alarms %v, want [4]", got)
	}
	if _, got := take(t, q.Reader("mqtt"), LaneAlarm, 100, false); !slices.Equal(got, []int{4}) {
		t.Fatalf("after a restart mqtt got alarms %v, want [4]", got)
	}
}

// TestAlarmFsyncFails: an alarm whose fsync fails (here the lane's
// directory was moved away before the new segment's name was made
// durable) may not be on disk: Append says it is held, it is delivered
// all the same, and it reaches a new segment in the lane's directory made
// again, where it survives a restart.
func TestAlarmFsyncFails(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, DefaultOptions())
	if err := os.Rename(filepath.Join(dir, "alarm"), filepath.Join(dir, "alarm.moved")); err != nil {
		t.Fatal(err)
	}
	if err := q.Append(LaneAlarm, rec(1)); !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), "fsync failed") {
		t.Fatalf("alarm whose fsync failed: got %v, want ErrHeld saying the fsync failed", err)
	}
	heldAlarmReachesDisk(t, q, dir)
}

// heldAlarmReachesDisk checks that alarm 1, held in memory, goes by itself
// to the one segment of the alarm lane's directory made again, and is
// there after a restart.
func heldAlarmReachesDisk(t *testing.T, q *Queue, dir string) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); q.Stats().Lanes[LaneAlarm].Memory > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the held alarm is still in memory after 5s: %+v", q.Stats())
		}
	}
	if files := segFiles(t, dir, LaneAlarm); len(files) != 1 {
		t.Fatalf("alarm segments in the lane's directory made again: %v, want one", files)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	q = open(t, dir, DefaultOptions())
	if got, _ := drain(t, q, 100, true); !slices.Equal(got, []int{1}) {
		t.Fatalf("after a restart: alarms %v, want [1]", got)
	}
}

// TestDirDeletedAndNotMadeAgain: the state directory is deleted and cannot
// be made again (its parent refuses: a read-only volume, or a directory
// the gateway's user may not write). Alarms are held in memory and
// delivered, and once the directory can be made the held alarms reach it
// by themselves.
func TestDirDeletedAndNotMadeAgain(t *testing.T) {
	needRoot(t)
	parent := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", parent).Run() })
	dir := filepath.Join(parent, "state")
	q := open(t, dir, DefaultOptions())
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	immutable(t, parent, true)
	err := q.Append(LaneAlarm, rec(1))
	if !errors.Is(err, ErrHeld) {
		t.Fatalf("alarm while the state directory cannot be made: got %v, want ErrHeld", err)
	}
	if st := q.Stats(); !st.WriteFailing || !strings.Contains(st.WriteError, "make the alarm lane again") {
		t.Errorf("stats: failing %v, last error %q; want failing, saying the lane cannot be made again", st.WriteFailing, st.WriteError)
	}
	if _, got := take(t, q.Reader(""), LaneAlarm, 100, false); !slices.Equal(got, []int{1}) {
		t.Fatalf("handed out alarms %v, want [1] from memory", got)
	}
	q.Rewind()
	immutable(t, parent, false)
	heldAlarmReachesDisk(t, q, dir)
}
