package queue

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// Two readers, as the gateway has with InfluxDB configured; segments of 8
// KiB hold 66 test records of 124 bytes.
var twoReaders = Options{MaxBytes: 1 << 30, SyncEvery: -1, SegmentBytes: 8 << 10, Readers: []string{"mqtt", "influx"}}

// take hands out up to max records of one lane to r, without waiting, and
// acknowledges them if ack; it returns the batch and their numbers.
func take(t testing.TB, r *Reader, l Lane, max int, ack bool) (Batch, []int) {
	t.Helper()
	b, err := r.Next(done, max, l)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("%s: Next: %v", r.name, err)
	}
	var got []int
	for _, e := range b.Entries {
		got = append(got, recNo(t, e))
	}
	if ack && len(b.Entries) > 0 {
		if err := r.Ack(b); err != nil {
			t.Fatalf("%s: Ack: %v", r.name, err)
		}
	}
	return b, got
}

// takeN acknowledges n records of a lane in batches of max.
func takeN(t testing.TB, r *Reader, l Lane, n, max int) []int {
	t.Helper()
	var got []int
	for len(got) < n {
		_, b := take(t, r, l, min(max, n-len(got)), true)
		if len(b) == 0 {
			t.Fatalf("%s: %d records of %s, want %d", r.name, len(got), l, n)
		}
		got = append(got, b...)
	}
	return got
}

// diskBytes sums the sizes of the segment files under dir.
func diskBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var n int64
	for l := range NumLanes {
		for _, f := range segFiles(t, dir, l) {
			fi, err := os.Stat(f)
			if err != nil {
				t.Fatal(err)
			}
			n += fi.Size()
		}
	}
	return n
}

func TestReadersAtDifferentSpeeds(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, twoReaders)
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneTelemetry, 0, 1000)
	appendRange(t, q, LaneAlarm, 5000, 5010)
	// Written once for both readers.
	if got, want := diskBytes(t, dir), int64(1010*124); got != want {
		t.Fatalf("segments hold %d bytes, want %d (one copy)", got, want)
	}
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 16 { // 15 of 66 records, and 10
		t.Fatalf("%d telemetry segments, want 16", n)
	}
	// mqtt takes everything in small batches; influx 300 telemetry records.
	alarms, tel := drain(t, mq, 7, true)
	checkSeq(t, "mqtt alarms", alarms, 5000, 5010)
	checkSeq(t, "mqtt telemetry", tel, 0, 1000)
	checkSeq(t, "influx telemetry", takeN(t, ix, LaneTelemetry, 300, 100), 0, 300)
	checkInvariants(t, q)
	// Records 0..263 fill the first four segments, which both readers
	// acknowledged: deleted. The others wait for influx.
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 12 {
		t.Fatalf("%d telemetry segments, want 12", n)
	}
	ms, is := mq.Stats(), ix.Stats()
	want := LaneStats{Bytes: 1240, Appended: 1000, AppendedReadings: readingsOf(0, 1000), Acked: 1000, AckedReadings: readingsOf(0, 1000)}
	if got := ms.Lanes[LaneTelemetry]; got != want {
		t.Fatalf("mqtt telemetry stats\n got  %+v\n want %+v", got, want)
	}
	got := is.Lanes[LaneTelemetry]
	got.Oldest = got.Oldest.UTC()
	want = LaneStats{Bytes: (11*66 + 10) * 124, Records: 700, Readings: readingsOf(300, 1000), Appended: 1000, AppendedReadings: readingsOf(0, 1000),
		Acked: 300, AckedReadings: readingsOf(0, 300), Oldest: got.Oldest}
	if got != want || got.Oldest.IsZero() {
		t.Fatalf("influx telemetry stats\n got  %+v\n want %+v", got, want)
	}
	if a := is.Lanes[LaneAlarm]; a.Records != 10 || a.Acked != 0 {
		t.Fatalf("influx alarm stats %+v", a)
	}
	// influx catches up: it gets the rest, in order, and the delivered
	// segments leave the disk.
	alarms, tel = drain(t, ix, 100, true)
	checkSeq(t, "influx alarms", alarms, 5000, 5010)
	checkSeq(t, "influx telemetry", tel, 300, 1000)
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 1 {
		t.Fatalf("%d telemetry segments after both caught up, want the active one", n)
	}
}

func TestReaderDownLongDropsOnlyItsOwn(t *testing.T) {
	dir := t.TempDir()
	opt := capOpts
	opt.Readers = []string{"mqtt", "influx"}
	q := open(t, dir, opt)
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneAlarm, 10000, 10010)
	var alarms, tel []int
	for i := range 2000 {
		appendRange(t, q, LaneTelemetry, i, i+1)
		a, tl := drain(t, mq, 50, true) // mqtt keeps up; influx is down
		alarms, tel = append(alarms, a...), append(tel, tl...)
		if n := diskBytes(t, dir); n > opt.MaxBytes {
			t.Fatalf("after append %d the disk holds %d bytes, over the cap", i, n)
		}
	}
	checkSeq(t, "mqtt alarms", alarms, 10000, 10010)
	checkSeq(t, "mqtt telemetry", tel, 0, 2000)
	if tl := mq.Stats().Lanes[LaneTelemetry]; tl.Dropped != 0 || tl.Acked != 2000 || tl.Records != 0 {
		t.Fatalf("mqtt telemetry stats %+v, want all 2000 acknowledged, none dropped", tl)
	}
	// influx's backlog reached the cap as one queue's would: the same
	// drops as TestCapDropsOldestTelemetry, counted for influx only.
	const dropped = 23 * perSeg
	tl := ix.Stats().Lanes[LaneTelemetry]
	want := LaneStats{
		Bytes:    (2000 - dropped) * 124,
		Records:  2000 - dropped,
		Readings: readingsOf(dropped, 2000),
		Appended: 2000, AppendedReadings: readingsOf(0, 2000),
		Dropped: dropped, DroppedReadings: readingsOf(0, dropped),
	}
	if tl != want {
		t.Fatalf("influx telemetry stats\n got  %+v\n want %+v", tl, want)
	}
	alarms, tel = drain(t, ix, 50, true)
	checkSeq(t, "influx alarms", alarms, 10000, 10010)
	checkSeq(t, "influx telemetry", tel, dropped, 2000)
}

func TestSegmentRemovedOnlyWhenEveryReaderAcked(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, twoReaders)
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneTelemetry, 0, 200) // segments of 66, 66, 66 and 2
	checkSeq(t, "mqtt", takeN(t, mq, LaneTelemetry, 200, 50), 0, 200)
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 4 {
		t.Fatalf("%d telemetry segments after mqtt acknowledged all, want 4: influx has not", n)
	}
	checkSeq(t, "influx", takeN(t, ix, LaneTelemetry, 66, 66), 0, 66)
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 3 {
		t.Fatalf("%d telemetry segments after influx acknowledged the first, want 3", n)
	}
	checkSeq(t, "influx", takeN(t, ix, LaneTelemetry, 134, 50), 66, 200)
	if n := len(segFiles(t, dir, LaneTelemetry)); n != 1 {
		t.Fatalf("%d telemetry segments after both acknowledged all, want the active one", n)
	}
	for _, f := range []string{"ack.mqtt", "ack.influx"} {
		if _, err := os.Stat(filepath.Join(dir, "telemetry", f)); err != nil {
			t.Fatalf("ack file of a reader: %v", err)
		}
	}
	checkInvariants(t, q)
}

// TestCrashWithReadersApart stops a queue as a kill -9 would (the files as
// they are, nothing closed) with each reader at its own position and a
// batch of each handed out, then as a power cut could leave it (a torn
// tail, a reader's ack file lost).
func TestCrashWithReadersApart(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, twoReaders)
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneTelemetry, 0, 1000)
	appendRange(t, q, LaneAlarm, 5000, 5020)
	takeN(t, mq, LaneTelemetry, 700, 50)
	takeN(t, mq, LaneAlarm, 20, 50)
	take(t, mq, LaneTelemetry, 50, false) // 700..749 handed out
	takeN(t, ix, LaneTelemetry, 300, 50)
	take(t, ix, LaneTelemetry, 50, false) // 300..349
	take(t, ix, LaneAlarm, 10, false)     // 5000..5009
	killed := snapshot(t, dir)

	t.Run("kill", func(t *testing.T) {
		dir := t.TempDir()
		restore(t, dir, killed)
		q := open(t, dir, twoReaders)
		mq, ix := q.Reader("mqtt"), q.Reader("influx")
		if m, i := mq.Stats().Lanes[LaneTelemetry].Records, ix.Stats().Lanes[LaneTelemetry].Records; m != 300 || i != 700 {
			t.Fatalf("queued telemetry after the restart: mqtt %d, influx %d; want 300 and 700", m, i)
		}
		alarms, tel := drain(t, mq, 100, true)
		checkSeq(t, "mqtt alarms", alarms, 0, 0)
		checkSeq(t, "mqtt telemetry", tel, 700, 1000)
		alarms, tel = drain(t, ix, 100, true)
		checkSeq(t, "influx alarms", alarms, 5000, 5020)
		checkSeq(t, "influx telemetry", tel, 300, 1000)
	})

	t.Run("power cut", func(t *testing.T) {
		dir := t.TempDir()
		restore(t, dir, killed)
		// The newest telemetry segment (records 990..999) is cut inside
		// record 995 and garbage follows; influx's ack file is lost.
		segs := segFiles(t, dir, LaneTelemetry)
		last := segs[len(segs)-1]
		if err := os.Truncate(last, 5*124+60); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(last, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(garbage(300, 7))
		f.Close()
		if err := os.WriteFile(filepath.Join(dir, "telemetry", "ack.influx"), garbage(64, 8), 0o600); err != nil {
			t.Fatal(err)
		}
		q := open(t, dir, twoReaders)
		mq, ix := q.Reader("mqtt"), q.Reader("influx")
		if st := mq.Stats(); st.TornBytes != 60+300 {
			t.Fatalf("torn bytes %d, want %d", st.TornBytes, 60+300)
		}
		_, tel := drain(t, mq, 100, true)
		checkSeq(t, "mqtt telemetry", tel, 700, 995)
		// influx lost its position: it gets again every segment both
		// readers had not acknowledged whole (from record 264, the first
		// of the fifth segment), at least once, nothing lost.
		alarms, tel := drain(t, ix, 100, true)
		checkSeq(t, "influx alarms", alarms, 5000, 5020)
		checkSeq(t, "influx telemetry", tel, 264, 995)
	})
}

// TestUpgradeDrainsEarlierLayout opens a queue on a directory written by
// the gateway's earlier layout (one queue per uplink in a directory of its
// name, each with one ack file per lane): each reader delivers what its
// uplink's queue held, in order, before the new records, across a restart,
// and the old directories go once delivered.
func TestUpgradeDrainsEarlierLayout(t *testing.T) {
	dir := t.TempDir()
	oldOpts := Options{MaxBytes: 1 << 30, SyncEvery: -1, SegmentBytes: 8 << 10}
	for _, u := range twoReaders.Readers {
		old, err := Open(filepath.Join(dir, u), oldOpts, testLog(t))
		if err != nil {
			t.Fatal(err)
		}
		appendRange(t, old, LaneTelemetry, 0, 200)
		appendRange(t, old, LaneAlarm, 900, 906)
		if u == "mqtt" { // mqtt had delivered the alarms and 120 readings
			drainLane(t, old, LaneAlarm, 6)
			drainLane(t, old, LaneTelemetry, 120)
		}
		if err := old.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "mqtt", "telemetry", "ack")); err != nil {
		t.Fatalf("the earlier layout: %v", err)
	}
	start := func() *Queue {
		t.Helper()
		q := open(t, dir, twoReaders)
		for _, u := range twoReaders.Readers {
			old, err := Open(filepath.Join(dir, u), oldOpts, testLog(t))
			if err != nil {
				t.Fatal(err)
			}
			q.Reader(u).Drain(old)
		}
		return q
	}
	q := start()
	appendRange(t, q, LaneTelemetry, 200, 230)
	appendRange(t, q, LaneAlarm, 906, 909)
	if n := q.Reader("mqtt").Stats().Lanes[LaneTelemetry].Records; n != 80+30 {
		t.Fatalf("mqtt telemetry queued %d, want 110 (80 of the earlier queue, 30 new)", n)
	}
	// mqtt delivers 40 of its old records, then the gateway restarts.
	checkSeq(t, "mqtt before the restart", takeN(t, q.Reader("mqtt"), LaneTelemetry, 40, 25), 120, 160)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	q = start()
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	if m, i := mq.Stats().Lanes[LaneTelemetry].Records, ix.Stats().Lanes[LaneTelemetry].Records; m != 70 || i != 230 {
		t.Fatalf("telemetry queued after the restart: mqtt %d, influx %d; want 70 and 230", m, i)
	}
	alarms, tel := drain(t, mq, 25, true)
	checkSeq(t, "mqtt alarms", alarms, 906, 909)
	checkSeq(t, "mqtt telemetry", tel, 160, 230)
	if _, err := os.Stat(filepath.Join(dir, "mqtt")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("mqtt's earlier queue is still there once delivered: %v", err)
	}
	alarms, tel = drain(t, ix, 64, true)
	checkSeq(t, "influx alarms", alarms, 900, 909)
	checkSeq(t, "influx telemetry", tel, 0, 230)
	if _, err := os.Stat(filepath.Join(dir, "influx")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("influx's earlier queue is still there once delivered: %v", err)
	}
	if st := ix.Stats(); st.Lanes[LaneTelemetry].Records != 0 || st.Lanes[LaneAlarm].Records != 0 {
		t.Fatalf("influx stats after the drain: %+v", st.Lanes)
	}
}

// drainLane acknowledges n records of a lane of q's first reader.
func drainLane(t testing.TB, q *Queue, l Lane, n int) {
	t.Helper()
	takeN(t, q.readers[0], l, n, 50)
}

func TestReaderNames(t *testing.T) {
	for _, c := range []struct {
		names []string
		err   string
	}{
		{[]string{"mqtt", ""}, `queue: reader 2: a name is needed when there are several readers`},
		{[]string{"mqtt", "mqtt"}, `queue: reader "mqtt" named twice`},
		{[]string{"a/b"}, `queue: reader "a/b": a name without dots, slashes or spaces around it is needed`},
	} {
		_, err := Open(t.TempDir(), Options{Readers: c.names}, nil)
		if err == nil || err.Error() != c.err {
			t.Errorf("readers %q: got %v, want %s", c.names, err, c.err)
		}
	}
	q := open(t, t.TempDir(), twoReaders)
	if q.Reader("kafka") != nil {
		t.Fatal("a reader that was not named")
	}
}

// TestDiskRefusesWritesTwoReaders: what the disk refused is held once in
// memory; a reader that acknowledged it there does not get it again when
// it goes to disk, one that has it in flight acknowledges it on disk, the
// other gets each record once, and neither after a restart.
func TestDiskRefusesWritesTwoReaders(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	t.Cleanup(func() { exec.Command("chattr", "-R", "-i", dir).Run() })
	opt := twoReaders
	opt.MaxBytes = 1 << 20
	q, err := Open(dir, opt, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { q.Close() }()
	mq, ix := q.Reader("mqtt"), q.Reader("influx")
	appendRange(t, q, LaneAlarm, 1, 4)
	immutable(t, dir, true)
	for i := 4; i <= 6; i++ {
		if err := q.Append(LaneAlarm, rec(i)); !errors.Is(err, ErrHeld) {
			t.Fatalf("alarm %d while the disk refuses writes: got %v, want ErrHeld", i, err)
		}
	}
	if err := q.Append(LaneTelemetry, rec(100), rec(101)); err != nil {
		t.Fatalf("telemetry while the disk refuses writes: %v", err)
	}
	for _, r := range []*Reader{mq, ix} {
		if tl := r.Stats().Lanes[LaneTelemetry]; tl.Memory != 2 || tl.Dropped != 0 {
			t.Fatalf("%s: %d telemetry records in memory, %d dropped; want 2, 0", r.name, tl.Memory, tl.Dropped)
		}
	}
	// Telemetry flows without a pause: when the disk takes writes again,
	// each reader has some of what memory holds in flight. mqtt took both
	// records; influx acknowledged the first and took the second.
	mqTel, got := take(t, mq, LaneTelemetry, 100, false)
	checkSeq(t, "mqtt telemetry from memory", got, 100, 102)
	checkSeq(t, "influx telemetry from memory", takeN(t, ix, LaneTelemetry, 1, 1), 100, 101)
	_, got = take(t, ix, LaneTelemetry, 100, false)
	checkSeq(t, "influx telemetry from memory, in flight", got, 101, 102)
	alarms, _ := drain(t, mq, 1000, true)
	checkSeq(t, "mqtt alarms", alarms, 1, 7)
	if a := mq.Stats().Lanes[LaneAlarm]; a.Memory != 0 || a.Records != 0 {
		t.Fatalf("mqtt alarm lane after its acks: %d in memory, %d queued; want 0, 0", a.Memory, a.Records)
	}
	if a := ix.Stats().Lanes[LaneAlarm]; a.Memory != 3 || a.Records != 6 {
		t.Fatalf("influx alarm lane: %d in memory, %d queued; want 3, 6", a.Memory, a.Records)
	}
	q.Append(LaneAlarm, rec(7))
	immutable(t, dir, false)
	// The next telemetry takes the disk, after what memory held: at once,
	// though both readers have some of it in flight.
	if err := q.Append(LaneTelemetry, rec(102)); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Reader{mq, ix} {
		if tl := r.Stats().Lanes[LaneTelemetry]; tl.Memory != 0 {
			t.Fatalf("%s: %d telemetry records still in memory once the disk takes writes", r.name, tl.Memory)
		}
	}
	checkInvariants(t, q)
	// mqtt's batch from memory is acknowledged on disk; influx's hub failed
	// meanwhile, and its batch comes again, from disk.
	if err := mq.Ack(mqTel); err != nil {
		t.Fatalf("mqtt: ack of the batch taken from memory: %v", err)
	}
	ix.Rewind(LaneTelemetry)
	deadline := time.Now().Add(5 * time.Second)
	for st := ix.Stats(); (st.WriteFailing || st.Lanes[LaneAlarm].Memory != 0) && time.Now().Before(deadline); st = ix.Stats() {
		time.Sleep(10 * time.Millisecond) // the queue retries every second
	}
	if st := ix.Stats(); st.WriteFailing || st.Lanes[LaneAlarm].Memory != 0 {
		t.Fatalf("after the disk recovered: failing %v, %d alarms in memory", st.WriteFailing, st.Lanes[LaneAlarm].Memory)
	}
	alarms, got = drain(t, mq, 1000, true)
	checkSeq(t, "mqtt alarms after the disk recovered", alarms, 7, 8)
	checkSeq(t, "mqtt telemetry after the disk recovered", got, 102, 103)
	alarms, got = drain(t, ix, 2, true)
	checkSeq(t, "influx alarms", alarms, 1, 8)
	checkSeq(t, "influx telemetry after the disk recovered", got, 101, 103)
	q.Close()
	q = open(t, dir, opt)
	for _, name := range opt.Readers {
		if alarms, tel := drain(t, q.Reader(name), 1000, true); len(alarms)+len(tel) > 0 {
			t.Fatalf("%s after a restart: %v %v, want nothing", name, alarms, tel)
		}
	}
}

// TestReaderPastAnEmptySegment: a reader that acknowledged everything up to
// the start of an empty active segment, which the next Open deletes, goes
// on after it, not from the oldest segment the other reader still needs.
func TestReaderPastAnEmptySegment(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, twoReaders)
	appendRange(t, q, LaneTelemetry, 0, 100)
	q.Close()
	q = open(t, dir, twoReaders) // a new, empty active segment
	_, tel := drain(t, q.Reader("mqtt"), 1000, true)
	checkSeq(t, "mqtt", tel, 0, 100)
	q.Close()
	q = open(t, dir, twoReaders)
	_, tel = drain(t, q.Reader("mqtt"), 1000, true)
	checkSeq(t, "mqtt after the restart", tel, 0, 0)
	_, tel = drain(t, q.Reader("influx"), 1000, true)
	checkSeq(t, "influx", tel, 0, 100)
}
