package queue

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// testOpts never fsync (the tests that need fsync say so): durability
// against power loss is not what most tests look at.
var testOpts = Options{MaxBytes: 1 << 30, SyncEvery: -1, SegmentBytes: 1 << 20}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func open(t testing.TB, dir string, opt Options) *Queue {
	t.Helper()
	q, err := Open(dir, opt, testLog(t))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

// rec is record i of a test: its data names it and has a fixed size of 100
// bytes, and it carries i%5+1 readings.
func rec(i int) Record {
	d := fmt.Sprintf("rec-%08d-", i)
	d += strings.Repeat("x", 100-len(d))
	return Record{Data: []byte(d), Readings: i%5 + 1}
}

func recNo(t testing.TB, e Entry) int {
	t.Helper()
	s, ok := strings.CutPrefix(string(e.Data), "rec-")
	if !ok || len(s) < 8 {
		t.Fatalf("not a test record: %q", e.Data)
	}
	n, err := strconv.Atoi(s[:8])
	if err != nil {
		t.Fatalf("not a test record: %q", e.Data)
	}
	if e.Readings != n%5+1 {
		t.Fatalf("record %d has %d readings, want %d", n, e.Readings, n%5+1)
	}
	return n
}

func readingsOf(from, to int) int64 {
	var n int64
	for i := from; i < to; i++ {
		n += int64(i%5 + 1)
	}
	return n
}

func appendRange(t testing.TB, q *Queue, l Lane, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := q.Append(l, rec(i)); err != nil {
			t.Fatalf("Append %d: %v", i, err)
		}
	}
}

var done = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// consumer is a Queue (its first reader) or a Reader.
type consumer interface {
	Next(ctx context.Context, max int, lanes ...Lane) (Batch, error)
	Ack(b Batch) error
}

// queueOf is the queue of a consumer.
func queueOf(c consumer) *Queue {
	if r, ok := c.(*Reader); ok {
		return r.q
	}
	return c.(*Queue)
}

// next returns the next batch without waiting, or a batch with no entries.
func next(t testing.TB, q consumer, max int) Batch {
	t.Helper()
	b, err := q.Next(done, max)
	if err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("Next: %v", err)
	}
	return b
}

// drain hands out and acknowledges (if ack) everything there is and returns
// the record numbers per lane.
func drain(t testing.TB, q consumer, max int, ack bool) (alarms, telemetry []int) {
	t.Helper()
	for {
		b := next(t, q, max)
		if len(b.Entries) == 0 {
			checkInvariants(t, queueOf(q))
			return alarms, telemetry
		}
		for _, e := range b.Entries {
			if b.Lane == LaneAlarm {
				alarms = append(alarms, recNo(t, e))
			} else {
				telemetry = append(telemetry, recNo(t, e))
			}
		}
		if ack {
			if err := q.Ack(b); err != nil {
				t.Fatalf("Ack: %v", err)
			}
		}
	}
}

// checkInvariants checks the queue's bookkeeping against itself and the
// files on disk.
func checkInvariants(t testing.TB, q *Queue) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	var total int64
	for _, ln := range q.lanes {
		live, liveR := make([]int64, len(ln.cur)), make([]int64, len(ln.cur))
		for _, s := range ln.segs {
			total += s.size
			for i := range ln.cur {
				live[i] += s.live[i]
				liveR[i] += s.liveR[i]
			}
			fi, err := os.Stat(filepath.Join(ln.dir, segName(s.id)))
			if err != nil {
				t.Fatalf("%s segment %d: %v", ln.l, s.id, err)
			}
			if fi.Size() != s.size {
				t.Fatalf("%s segment %d holds %d bytes, the queue thinks %d", ln.l, s.id, fi.Size(), s.size)
			}
		}
		for i, c := range ln.cur {
			inMem := 0
			for _, o := range c.out {
				inMem += o.mem
			}
			if inMem != c.memOut-c.memAcked || c.memOut > len(ln.mem) {
				t.Fatalf("%s, reader %q: %d records of memory in its batches out, %d handed out and %d acknowledged of the %d in memory", ln.l, c.reader, inMem, c.memOut, c.memAcked, len(ln.mem))
			}
			if live[i] != c.st.Records || liveR[i] != c.st.Readings || live[i] < 0 || liveR[i] < 0 {
				t.Fatalf("%s, reader %q: segments hold %d records with %d readings, stats say %d with %d", ln.l, c.reader, live[i], liveR[i], c.st.Records, c.st.Readings)
			}
		}
		files, _ := filepath.Glob(filepath.Join(ln.dir, "*.seg"))
		if len(files) != len(ln.segs) {
			t.Fatalf("%s: %d segment files, the queue knows %d", ln.l, len(files), len(ln.segs))
		}
	}
	if total != q.bytes {
		t.Fatalf("segments hold %d bytes, the queue counts %d", total, q.bytes)
	}
}

func seq(from, to int) []int {
	var s []int
	for i := from; i < to; i++ {
		s = append(s, i)
	}
	return s
}

func checkSeq(t testing.TB, what string, got []int, from, to int) {
	t.Helper()
	if want := seq(from, to); !slices.Equal(got, want) {
		t.Fatalf("%s: got %d records %v, want %d records %d..%d", what, len(got), short(got), to-from, from, to-1)
	}
}

func short(s []int) string {
	if len(s) <= 12 {
		return fmt.Sprint(s)
	}
	return fmt.Sprintf("%v … %v", s[:6], s[len(s)-6:])
}

func segFiles(t testing.TB, dir string, l Lane) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, l.String(), "*.seg"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAppendNextAck(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, testOpts)
	appendRange(t, q, LaneTelemetry, 0, 10)
	if err := q.Append(LaneTelemetry, rec(10), rec(11), rec(12)); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	var got []int
	for _, max := range []int{1, 4, 0, 100} {
		b := next(t, q, max)
		if b.Lane != LaneTelemetry {
			t.Fatalf("lane %v", b.Lane)
		}
		if want := cmpOr(max, 1); len(b.Entries) != min(want, 13-len(got)) {
			t.Fatalf("Next(%d) gave %d entries", max, len(b.Entries))
		}
		for _, e := range b.Entries {
			got = append(got, recNo(t, e))
			if e.Enqueued.After(before) || before.Sub(e.Enqueued) > time.Minute {
				t.Errorf("enqueue time %v, test began before %v", e.Enqueued, before)
			}
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	checkSeq(t, "telemetry", got, 0, 13)
	if b := next(t, q, 10); len(b.Entries) != 0 {
		t.Fatalf("an empty queue gave %d entries", len(b.Entries))
	}
	st := q.Stats().Lanes[LaneTelemetry]
	want := LaneStats{Bytes: st.Bytes, Appended: 13, AppendedReadings: readingsOf(0, 13), Acked: 13, AckedReadings: readingsOf(0, 13)}
	if st != want {
		t.Fatalf("stats\n got  %+v\n want %+v", st, want)
	}
}

func cmpOr(a, b int) int {
	if a == 0 {
		return b
	}
	return a
}

func TestNextBlocksUntilAppend(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	got := make(chan Batch)
	go func() {
		b, err := q.Next(context.Background(), 10)
		if err != nil {
			t.Error(err)
		}
		got <- b
	}()
	appendRange(t, q, LaneAlarm, 7, 8)
	b := <-got
	if b.Lane != LaneAlarm || len(b.Entries) != 1 || recNo(t, b.Entries[0]) != 7 {
		t.Fatalf("got %+v", b)
	}

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() { _, err := q.Next(ctx, 1); errc <- err }()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Next after cancel: %v", err)
	}

	go func() { _, err := q.Next(context.Background(), 1); errc <- err }()
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	if err := q.Append(LaneAlarm, rec(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v", err)
	}
}

func TestAlarmsServedFirst(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	appendRange(t, q, LaneTelemetry, 0, 1000)
	b1 := next(t, q, 10) // telemetry 0..9, in flight
	appendRange(t, q, LaneAlarm, 5000, 5003)
	b2 := next(t, q, 10)
	if b2.Lane != LaneAlarm || len(b2.Entries) != 3 {
		t.Fatalf("after alarms were appended behind a telemetry backlog, Next gave %d %v records", len(b2.Entries), b2.Lane)
	}
	b3 := next(t, q, 10)
	if b3.Lane != LaneTelemetry || recNo(t, b3.Entries[0]) != 10 {
		t.Fatalf("then Next gave %v starting at %d, want telemetry from 10", b3.Lane, recNo(t, b3.Entries[0]))
	}
	// Acks are per lane: the alarm batch may be acknowledged first.
	for _, b := range []Batch{b2, b1, b3} {
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	alarms, tel := drain(t, q, 100, true)
	if len(alarms) != 0 {
		t.Fatalf("alarms delivered twice: %v", alarms)
	}
	checkSeq(t, "telemetry", tel, 20, 1000)
}

// TestLaneConsumers: one consumer per lane. A telemetry consumer never
// takes alarms, an alarm consumer gets them while a telemetry batch is in
// flight, and rewinding one lane leaves the other's batches alone.
func TestLaneConsumers(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	appendRange(t, q, LaneTelemetry, 0, 100)
	appendRange(t, q, LaneAlarm, 5000, 5002)
	ctx := context.Background()
	tb, err := q.Next(ctx, 10, LaneTelemetry)
	if err != nil || tb.Lane != LaneTelemetry || recNo(t, tb.Entries[0]) != 0 {
		t.Fatalf("telemetry consumer got %v %d records (%v), want telemetry from 0", tb.Lane, len(tb.Entries), err)
	}
	ab, err := q.Next(ctx, 10, LaneAlarm)
	if err != nil || ab.Lane != LaneAlarm || len(ab.Entries) != 2 {
		t.Fatalf("alarm consumer got %v %d records (%v), want the 2 alarms", ab.Lane, len(ab.Entries), err)
	}
	q.Rewind(LaneAlarm)
	if err := q.Ack(tb); err != nil {
		t.Fatalf("Ack of telemetry after an alarm Rewind: %v", err)
	}
	again, err := q.Next(ctx, 10, LaneAlarm)
	if err != nil || len(again.Entries) != 2 || recNo(t, again.Entries[0]) != 5000 {
		t.Fatalf("after Rewind(LaneAlarm) the alarms did not come again: %d records, %v", len(again.Entries), err)
	}
	// An alarm consumer waits for alarms, not telemetry.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := q.Ack(again); err != nil {
		t.Fatal(err)
	}
	if b, err := q.Next(short, 10, LaneAlarm); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("alarm consumer with only telemetry queued got %v %d records, %v", b.Lane, len(b.Entries), err)
	}
}

func TestRewindAndAckOrder(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	appendRange(t, q, LaneTelemetry, 0, 10)
	b1 := next(t, q, 3)
	b2 := next(t, q, 3)
	if err := q.Ack(b2); err == nil || err.Error() != "queue: ack of telemetry batch 1 before batch 0" {
		t.Fatalf("out-of-order Ack: %v", err)
	}
	if err := q.Ack(b1); err != nil {
		t.Fatal(err)
	}
	if err := q.Ack(b1); !errors.Is(err, ErrStaleBatch) {
		t.Fatalf("second Ack of a batch: %v", err)
	}
	q.Rewind()
	if err := q.Ack(b2); !errors.Is(err, ErrStaleBatch) {
		t.Fatalf("Ack of a rewound batch: %v", err)
	}
	_, tel := drain(t, q, 4, false)
	checkSeq(t, "after Rewind", tel, 3, 10)
	q.Rewind()
	_, tel = drain(t, q, 100, true)
	checkSeq(t, "after a second Rewind", tel, 3, 10)
	if st := q.Stats().Lanes[LaneTelemetry]; st.Records != 0 || st.Acked != 10 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestRestart(t *testing.T) {
	opt := testOpts
	opt.SegmentBytes = 1000 // 8 records of 124 bytes per segment
	cases := []struct {
		name      string
		appended  int
		acked     int // records acknowledged before Close
		handedOut int // handed out after those, not acknowledged
	}{
		{"nothing acknowledged", 30, 0, 0},
		{"handed out, not acknowledged", 30, 0, 30},
		{"part acknowledged, inside a segment", 30, 5, 7},
		{"acknowledged up to a segment boundary", 30, 16, 2},
		{"all acknowledged", 30, 30, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			q := open(t, dir, opt)
			appendRange(t, q, LaneTelemetry, 0, c.appended)
			appendRange(t, q, LaneAlarm, 100, 103)
			if b := next(t, q, 100); b.Lane != LaneAlarm || len(b.Entries) != 3 {
				t.Fatalf("first batch: %d %v records", len(b.Entries), b.Lane)
			}
			var got []int
			for len(got) < c.acked {
				b := next(t, q, c.acked-len(got))
				for _, e := range b.Entries {
					got = append(got, recNo(t, e))
				}
				if err := q.Ack(b); err != nil {
					t.Fatal(err)
				}
			}
			if c.handedOut > 0 {
				next(t, q, c.handedOut)
			}
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}

			q = open(t, dir, opt)
			st := q.Stats()
			if tl := st.Lanes[LaneTelemetry]; tl.Records != int64(c.appended-c.acked) || tl.Readings != readingsOf(c.acked, c.appended) {
				t.Errorf("after restart telemetry queued %d records %d readings, want %d %d", tl.Records, tl.Readings, c.appended-c.acked, readingsOf(c.acked, c.appended))
			}
			alarms, tel := drain(t, q, 5, true)
			checkSeq(t, "alarms after restart", alarms, 100, 103)
			checkSeq(t, "telemetry after restart", tel, c.acked, c.appended)
			if err := q.Close(); err != nil {
				t.Fatal(err)
			}
			q = open(t, dir, opt)
			if alarms, tel := drain(t, q, 5, true); len(alarms)+len(tel) != 0 {
				t.Fatalf("acknowledged records came back: %v %v", alarms, tel)
			}
			if n := len(segFiles(t, dir, LaneTelemetry)); n != 1 {
				t.Errorf("%d telemetry segment files when all is acknowledged, want 1 (the active one)", n)
			}
		})
	}
}

func TestAppendAcrossRestartsKeepsOrder(t *testing.T) {
	dir := t.TempDir()
	for round := range 5 {
		q := open(t, dir, testOpts)
		appendRange(t, q, LaneTelemetry, round*10, round*10+10)
		if round == 2 {
			drain(t, q, 7, false) // handed out, never acknowledged
		}
		q.Close()
	}
	q := open(t, dir, testOpts)
	_, tel := drain(t, q, 7, true)
	checkSeq(t, "telemetry", tel, 0, 50)
}

func TestSyncEveryAppend(t *testing.T) {
	opt := testOpts
	opt.SyncEvery = 0
	q := open(t, t.TempDir(), opt)
	errc := make(chan error)
	for g := range 4 {
		go func() {
			var err error
			for i := range 50 {
				if err = q.Append(LaneTelemetry, rec(g*1000+i)); err != nil {
					break
				}
			}
			errc <- err
		}()
	}
	for range 4 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	q.mu.Lock()
	ln := q.lanes[LaneTelemetry]
	synced, gen := ln.synced, ln.gen
	q.mu.Unlock()
	if synced != gen || gen == 0 {
		t.Fatalf("after 200 Appends returned: %d writes, %d fsynced", gen, synced)
	}
	_, tel := drain(t, q, 1000, true)
	if len(tel) != 200 {
		t.Fatalf("%d records", len(tel))
	}
}

func TestOpenTwiceFails(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, testOpts)
	if _, err := Open(dir, testOpts, testLog(t)); err == nil || err.Error() != "queue: "+dir+" is in use by another queue" {
		t.Fatalf("second Open: %v", err)
	}
	q.Close()
	q2 := open(t, dir, testOpts)
	q2.Close()
}

func TestOpenUnusableDir(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(filepath.Join(file, "q"), testOpts, testLog(t)); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Open under a file: %v", err)
	}
}

func TestBatchSizeLimits(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	big := make([]byte, 300<<10)
	for i := range 4 {
		big[0] = byte(i)
		if err := q.Append(LaneTelemetry, Record{Data: big, Readings: 1}); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Append(LaneTelemetry, Record{Data: make([]byte, MaxRecordBytes+1)}); err == nil || err.Error() != "queue: record of 1048577 bytes exceeds 1048576" {
		t.Fatalf("Append of a record over MaxRecordBytes: %v", err)
	}
	if err := q.Append(LaneTelemetry, Record{Data: make([]byte, MaxRecordBytes), Readings: 1}); err != nil {
		t.Fatalf("Append of a record of MaxRecordBytes: %v", err)
	}
	var sizes, order []int
	for {
		b := next(t, q, 100)
		if len(b.Entries) == 0 {
			break
		}
		sizes = append(sizes, len(b.Entries))
		for _, e := range b.Entries {
			if len(e.Data) == 300<<10 {
				order = append(order, int(e.Data[0]))
			}
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
	}
	// Three records of 300 KiB fit in MaxBatchBytes, the fourth starts the
	// next batch; the 1 MiB record goes alone.
	if want := []int{3, 1, 1}; !equalInts(sizes, want) {
		t.Fatalf("batch sizes %v, want %v", sizes, want)
	}
	checkSeq(t, "big records", order, 0, 4)
	checkInvariants(t, q)
}

// TestOldest: a lane's Oldest is the append time of its head record once a
// batch was taken from it, stays while the batch is handed out again after
// a failed send, and clears when the lane is empty.
func TestOldest(t *testing.T) {
	q := open(t, t.TempDir(), testOpts)
	defer q.Close()
	if err := q.Append(LaneTelemetry, rec(1), rec(2)); err != nil {
		t.Fatal(err)
	}
	if o := q.Stats().Lanes[LaneTelemetry].Oldest; !o.IsZero() {
		t.Fatalf("Oldest %v before anything was taken, want zero", o)
	}
	ctx := context.Background()
	b, err := q.Next(ctx, 1, LaneTelemetry)
	if err != nil {
		t.Fatal(err)
	}
	head := b.Entries[0].Enqueued
	if o := q.Stats().Lanes[LaneTelemetry].Oldest; !o.Equal(head) {
		t.Fatalf("Oldest %v, want the head's %v", o, head)
	}
	q.Rewind(LaneTelemetry) // the hub did not take it
	if b, err = q.Next(ctx, 10, LaneTelemetry); err != nil {
		t.Fatal(err)
	}
	if o := q.Stats().Lanes[LaneTelemetry].Oldest; !o.Equal(head) {
		t.Fatalf("Oldest %v after a rewind, want still %v", o, head)
	}
	if err := q.Ack(b); err != nil {
		t.Fatal(err)
	}
	if o := q.Stats().Lanes[LaneTelemetry].Oldest; !o.IsZero() {
		t.Fatalf("Oldest %v of an empty lane, want zero", o)
	}
}
