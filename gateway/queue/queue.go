// Package queue is the gateway's durable store-and-forward queue: every
// message is appended to it before anything depends on it, and a forwarder
// per uplink takes batches out through its Reader, sends them, and
// acknowledges them; a record is removed once every reader acknowledged it.
//
// # One copy, a reader per uplink
//
// The gateway keeps one Queue with one Reader per uplink (MQTT, InfluxDB):
// a message is written once, whatever the number of uplinks, and each
// reader keeps its own read and acknowledged positions in each lane, its
// own cap and its own counters. An uplink that is down or slow holds back
// no other: the others read on, and it reads from where it stopped. The
// earlier layout wrote every message once per uplink, into a queue of its
// own, which doubled the bytes written and fsynced with InfluxDB
// configured; Reader.Drain delivers what such a queue holds (see Layout).
//
// # Why a log of our own
//
// The queue is a small segmented append-only log per lane, with CRC-framed
// records, not a storage library. The access pattern is a FIFO: append at the
// tail, read and delete at the head. A log does exactly that with one
// write(2) per Append and sequential reads; deleting acknowledged data is
// unlinking a file. A B+tree store (bbolt) would copy pages and keep a
// free list to do the same, fsync twice per transaction, and its file does
// not shrink; an LSM store (pebble) writes everything twice (WAL, then
// sstables) and brings compaction and a large dependency. Neither knows how to
// drop the oldest telemetry in whole segments, which a log gets for free.
// Crash recovery of a log is short and testable: scan from the acknowledged
// position, check each record's CRC, cut the torn tail.
//
// # Layout
//
// dir/lock is locked (flock) while a Queue is open, so that a second
// process cannot open the same queue. dir/alarm, dir/health and
// dir/telemetry each hold segment files named by a 16-digit hexadecimal
// number (increasing) with the suffix .seg, shared by the readers, and one
// ack file per reader: ack.NAME (ack for a reader named "", as a queue of
// one reader). A segment is a sequence of records (see segment.go for the framing); every
// record carries a magic marker, its length, a CRC-32C, the number of readings
// it carries and its enqueue time. Appends go to the newest segment of the
// lane; a new segment starts when one reaches Options.SegmentBytes and at
// every Open (an existing segment is never appended to again). A reader's
// ack file holds its acknowledged position in the lane (segment, offset) in
// two CRC-protected slots written in turn, so a torn write of one slot
// leaves the other. A segment is deleted when every reader acknowledged it
// whole (or dropped it, see Size cap); a reader that Options.Readers no
// longer names holds nothing back, and a new one starts at the oldest
// record on disk.
//
// The earlier layout had one queue per uplink, each in a directory of its
// own with a single ack file per lane: exactly a queue of one reader named
// "". Opened as such and given to Reader.Drain, it is drained, not
// migrated: the reader hands out its records, lane by lane, before those
// of the shared queue (they are older), with the same at-least-once
// delivery across restarts, and removes the directory once every one of
// them is acknowledged. Nothing is copied, so nothing is written twice or
// lost on a crash during the upgrade.
//
// # Lanes and order
//
// LaneAlarm (events, command results), LaneHealth and LaneTelemetry are
// separate logs. A reader's Next serves them in that order, so an alarm
// never waits behind health changes or a telemetry backlog. Within a lane,
// each reader gets the records in the order they were appended, across
// restarts and replays.
//
// # Delivery
//
// Delivery is at least once, per reader: a reader's acknowledged position
// moves only on its Ack, after the send succeeded, and a record stays on
// disk until every reader acknowledged it. A crash between the send and the
// Ack, or a lost write of an ack file at power loss, hands the record out
// again to that reader after the restart, not to the others. Ack writes the
// ack file at once (a process kill loses nothing of it); it is fsynced
// together with the segments, at most every ackSyncEvery, and Ack does not
// wait for it: losing its last updates costs duplicates, never data (an
// fsync of its own per second was a third of an idle station's fsyncs).
// A reader whose ack file is
// unreadable gets again every record on disk.
//
// # Durability
//
// Append writes its records with one write(2) before it returns. What happens
// then depends on Options.SyncEvery:
//
//   - SyncEvery == 0: Append returns only after an fsync covering its records.
//     Appends from several goroutines that arrive while an fsync runs share
//     the next one (group commit). Nothing that Append returned for is lost,
//     neither on a process kill nor on power loss.
//   - SyncEvery == d > 0 (DefaultSyncEvery is 100 ms): a background goroutine
//     fsyncs the written segments d after the first append since its last
//     fsync, covering every append since (the group commit), unless every
//     reader acknowledged all of them by then: what the hub has needs no
//     fsync, so a station at rest, whose hub takes each poll within
//     milliseconds, fsyncs none of its readings (an fsync a second was most
//     of an idle gateway's disk writes).
//     A process kill (kill -9, a panic, the OOM killer) loses nothing that
//     Append returned for: the records are in the kernel's page cache after
//     write(2) and reach the disk without the process. A power loss or
//     kernel crash can lose the appends of the last d (plus the duration of
//     the fsync in progress), and those the hub took; what it leaves
//     half-written is a torn tail that the next Open cuts off. Alarms are
//     the exception: their Append waits for its fsync as with SyncEvery 0,
//     so an alarm whose Append returned survives a power loss too.
//   - SyncEvery < 0: the queue never fsyncs; the kernel writes the pages
//     back when it likes (usually within 30 s). A process kill loses
//     nothing; a power loss can lose whatever was not written back. Meant
//     for tests and for queues on a RAM disk.
//
// # Size cap
//
// Options.MaxBytes caps each reader's backlog: the bytes of the segment
// files of all lanes from the oldest one it has not acknowledged whole
// (acknowledged records count until their segment is deleted). Before an
// Append that would take a reader over it, that reader drops its oldest
// telemetry segments whole, the newest one too if needed: it skips them,
// and every record and reading in them it had not acknowledged is counted
// in its Stats as dropped; a reader that keeps up drops nothing and still
// gets them, and the segment leaves the disk once no reader needs it. The
// disk holds the backlog of the reader furthest behind, so it stays under
// MaxBytes too. Records of a dropped segment that are handed out and not
// yet acknowledged are counted as dropped only if they are handed back by
// Rewind instead of acknowledged. Alarms are never dropped: if the alarm
// lane alone fills the cap, alarm Appends are still written (the queue then
// exceeds MaxBytes by the alarms' size, until the disk itself is full and
// Append returns the error), and telemetry Appends are dropped whole and
// counted, as there is no older telemetry left to make room (when alarms
// fill only some readers' caps, the telemetry is written for the others,
// and those readers drop it with the segment at the next Append). On a
// full disk the oldest telemetry segment is dropped for every reader.
//
// # Damage on disk
//
// Open never fails because of what is inside the files: a segment that
// cannot be read is logged and skipped; an ack file without an intact slot is
// logged and the lane is delivered again from its oldest record; a corrupt record between
// intact ones is skipped (the reader resynchronizes on the next magic marker
// with a valid CRC) and counted in Stats.Corrupt; bytes after the last intact
// record of a segment (a torn tail, or garbage) are cut off and counted in
// Stats.TornBytes. Open fails only when the directory itself is unusable.
//
// Files deleted while the queue runs (its directory removed by an
// operator or a cleaner) are made again: an alarm's Append checks that its
// segment still has a name, a group commit that its telemetry's does, and
// a deleted lane starts a new segment, with its ack files, in its
// directory made again (Stats.Deleted). A reader reads to the end the
// deleted segments it has open and counts the rest as dropped.
//
// # Memory
//
// The backlog stays on disk. The queue holds a few words per segment and
// reader, one read window per lane and reader (64 KiB, more only for a
// record larger than that), the batches handed out and not yet
// acknowledged (at most MaxBatchBytes of data each) and up to two spare
// batch buffers per lane and reader. Records held in memory while the disk
// refuses them (up to MemoryBytes a lane) are held once, until every reader
// acknowledged them or the disk took them.
package queue

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"outpost/gateway/durable"
)

// Lane is a priority class of records.
type Lane uint8

const (
	LaneAlarm     Lane = iota // events and command results: served first, never dropped, fsynced at once
	LaneHealth                // health changes: served next, never dropped
	LaneTelemetry             // readings: dropped oldest first at the size cap
	NumLanes                  // the number of lanes
)

func (l Lane) String() string {
	switch l {
	case LaneAlarm:
		return "alarm"
	case LaneHealth:
		return "health"
	case LaneTelemetry:
		return "telemetry"
	}
	return "lane(" + strconv.Itoa(int(l)) + ")"
}

// Kept says whether the lane's records are never dropped: they stay under
// the size cap at the cost of telemetry. (One the disk refuses while the
// memory reserve is full is lost, and counted as such.)
func (l Lane) Kept() bool { return l != LaneTelemetry }

// Defaults of Options.
const (
	DefaultMaxBytes     = 256 << 20
	DefaultSegmentBytes = 4 << 20
	// DefaultSyncEvery is the group-commit window the gateway uses.
	DefaultSyncEvery = 100 * time.Millisecond
	// MaxBatchBytes bounds the data of one batch (a batch holds at least
	// one record, whatever its size).
	MaxBatchBytes = 1 << 20
	// DefaultMemoryBytes a lane are held in memory while the disk
	// refuses them: tens of thousands of events, minutes of a station's
	// telemetry.
	DefaultMemoryBytes = 8 << 20
)

// ackSyncEvery is how often, at most, a reader's ack file is fsynced
// (with the lane's segments; Close fsyncs it too): a power cut can hand
// out again what the hub took in the last ackSyncEvery, as duplicates.
const ackSyncEvery = 10 * time.Second

// Options configure a Queue. The zero Options fsync before every Append
// returns; DefaultOptions match the station file's defaults.
type Options struct {
	// MaxBytes caps the bytes on disk; 0 means DefaultMaxBytes.
	MaxBytes int64
	// SyncEvery is the group-commit window: 0 fsyncs before every Append
	// returns, a negative value never fsyncs; see the package
	// documentation.
	SyncEvery time.Duration
	// SegmentBytes is the size at which a new segment starts; 0 means
	// DefaultSegmentBytes. It is lowered to MaxBytes/8 (at least 4 KiB) so
	// that dropping a segment never drops more than an eighth of the cap.
	SegmentBytes int64
	// MemoryBytes bounds the records of each lane held in memory while
	// the disk refuses them; 0 means DefaultMemoryBytes.
	MemoryBytes int64
	// Readers name the consumers of the queue (the gateway's uplinks),
	// each with its own read and acknowledged positions, cap and
	// counters (see Queue.Reader); none means one reader named "".
	Readers []string
}

// DefaultOptions match the defaults of a station file's queue section.
func DefaultOptions() Options {
	return Options{MaxBytes: DefaultMaxBytes, SyncEvery: DefaultSyncEvery, SegmentBytes: DefaultSegmentBytes}
}

// Record is what Append stores.
type Record struct {
	Data     []byte
	Readings int   // how many readings Data carries, for the drop counts
	enq      int64 // when it was appended, if before it is written (held in memory)
}

// Entry is a record handed out in a Batch.
type Entry struct {
	Data     []byte // valid until the batch is acknowledged, or Rewind or Close
	Readings int
	Enqueued time.Time // when Append wrote it, by the gateway's clock
}

// Batch is a run of records of one lane, oldest first. Its entries' Data
// share a buffer that the queue reuses: it is valid until the batch is
// acknowledged, Rewind is called, or the queue is closed; copy what must
// live longer.
type Batch struct {
	Lane    Lane
	Entries []Entry
	id      uint64
	epoch   uint64
	r       *Reader // the reader that handed it out
}

// Readings is the sum of the batch's entries' readings.
func (b Batch) Readings() int {
	n := 0
	for i := range b.Entries {
		n += b.Entries[i].Readings
	}
	return n
}

// LaneStats are the counters of one lane.
type LaneStats struct {
	Bytes    int64 // segment bytes on disk
	Records  int64 // queued: neither acknowledged nor dropped
	Readings int64

	Appended, AppendedReadings int64 // since Open
	Acked, AckedReadings       int64 // since Open
	// Dropped since Open: telemetry, to stay under MaxBytes or because
	// the disk refused it; and records of any lane in a segment that
	// could not be read (deleted under the queue, say).
	Dropped, DroppedReadings int64
	// Memory is how many of the queued records are held in memory
	// because the disk refused them.
	Memory int64
	// Lost since Open: records of a kept lane the disk refused when
	// memory was full too.
	Lost, LostReadings int64
	// Oldest is when the oldest queued record was appended, as of the
	// last batch taken from the head of the lane; zero when the lane is
	// empty or nothing was taken yet.
	Oldest time.Time
}

// Kept sums the counters of the lanes whose records are never dropped
// (alarms and health changes).
func (s *Stats) Kept() LaneStats {
	var k LaneStats
	for l, ls := range s.Lanes {
		if Lane(l).Kept() {
			k.add(ls)
		}
	}
	return k
}

// add adds o's counts to ls; Oldest is the older of the two.
func (ls *LaneStats) add(o LaneStats) {
	ls.Bytes += o.Bytes
	ls.Records += o.Records
	ls.Readings += o.Readings
	ls.Appended += o.Appended
	ls.AppendedReadings += o.AppendedReadings
	ls.Acked += o.Acked
	ls.AckedReadings += o.AckedReadings
	ls.Dropped += o.Dropped
	ls.DroppedReadings += o.DroppedReadings
	ls.Memory += o.Memory
	ls.Lost += o.Lost
	ls.LostReadings += o.LostReadings
	if !o.Oldest.IsZero() && (ls.Oldest.IsZero() || o.Oldest.Before(ls.Oldest)) {
		ls.Oldest = o.Oldest
	}
}

// Stats are the queue's counters. Counts "since Open" start at zero at
// every Open; the queued counts include what an earlier run left.
type Stats struct {
	Lanes [NumLanes]LaneStats
	// Corrupt counts corrupt regions skipped (each holds one or more
	// records), CorruptBytes their size; TornBytes counts bytes cut off
	// after the last intact record of a segment at Open.
	Corrupt, CorruptBytes, TornBytes int64
	// Syncs counts group commits (fsyncs of what was written since the
	// last one), SyncErrors those that failed.
	Syncs, SyncErrors int64
	// WriteErrors counts writes the disk refused, WriteError is the last
	// one's error, and WriteFailing is set from the first until the disk
	// takes every write again, for recoverCalm, and no record is left in
	// memory.
	WriteErrors  int64
	WriteError   string
	WriteFailing bool
	// WriteFailedAt is when the last such episode began (the first write
	// refused after writes worked), WriteRecoveredAt when it ended: when
	// the writes that ended it began to work (zero while it lasts).
	WriteFailedAt, WriteRecoveredAt time.Time
	// FullDrops counts the times a full disk made the queue drop its
	// oldest telemetry to write what came (the write then succeeded).
	// MemoryDrops counts the telemetry records the disk refused while the
	// memory reserve was full, which were dropped.
	FullDrops, MemoryDrops int64
	// FullDrop is the disk's error that made the last of them.
	FullDrop string
	// Deleted counts the lanes found deleted under the queue (its
	// directory removed while it ran) and made again; Unreadable the
	// segments a reader could not open and skipped, counting their
	// records as dropped.
	Deleted, Unreadable int64
}

// Errors.
var (
	ErrClosed = errors.New("queue closed")
	// ErrHeld is returned by an Append of alarms that the disk refused or
	// did not make durable in time (it hangs): they will be delivered,
	// from memory, but are not durable.
	ErrHeld = errors.New("queue: the disk fails: held in memory, not durable")
	// ErrLost is returned by an Append of alarms that neither the disk nor
	// the memory reserve took.
	ErrLost = errors.New("queue: the disk refuses writes and the memory reserve is full: lost")
	// ErrStaleBatch is returned by Ack for a batch that Rewind invalidated
	// or that was already acknowledged.
	ErrStaleBatch = errors.New("stale batch")
	// ErrInUse is returned by Open for a directory another queue holds
	// (another process, or another Open in this one).
	ErrInUse = errors.New("in use by another queue")
)

type pos struct {
	seg uint64
	off int64
}

func (p pos) less(q pos) bool { return p.seg < q.seg || p.seg == q.seg && p.off < q.off }

type segment struct {
	id   uint64
	size int64 // bytes on disk
	end  int64 // readable: after the last intact record
	// live and liveR count, per reader, the records neither acknowledged
	// nor dropped by it, and their readings.
	live, liveR []int64
	fresh       bool // written by this process
	// skipped are the offsets of the corrupt regions a reader skipped in
	// it, so that each is counted once, whichever reader meets it first.
	skipped []int64
}

// inflight is a batch handed out and not yet acknowledged.
type inflight struct {
	id   uint64
	end  pos
	buf  []byte
	segs []segCount
	mem  int // records from memory, after those from segments
}

// memRecord is a record the disk refused, held in memory.
type memRecord struct {
	data     []byte
	readings int
	enq      int64
}

// segCount is how many records and readings of a batch come from a segment.
type segCount struct {
	seg            uint64
	recs, readings int64
}

// lane is the log of one lane, shared by the readers.
type lane struct {
	l    Lane
	dir  string
	segs []*segment // oldest first; the last is the active one when w != nil
	w    *os.File   // active segment
	next uint64     // id of the next segment
	// dirDirty is set when a segment or an ack file was created after the
	// last fsync of the directory.
	dirDirty bool
	// stale is set when the active segment was deleted under the queue
	// or its fsync failed: the next write starts a new segment, in the
	// lane's directory made again (see remake).
	stale bool

	// Each lane has its own syncer (syncLoop), so that an alarm's fsync
	// never waits for telemetry's: gen counts the writes to the lane's
	// segments, synced those its syncer fsynced, syncErr is the error of
	// its last fsync; pending are its rotated segments to fsync and close.
	gen, synced uint64
	syncErr     error
	syncing     time.Time // when its fsync under way began; zero when none
	pending     []*os.File
	kick        chan struct{}
	acked       chan struct{} // an Ack left every reader with all that was written
	wrote       pos           // the end of the last record this process wrote

	wbuf []byte
	st   LaneStats // Appended, Lost: the counters the readers share

	cur []*cursor // one per reader, in the order of Options.Readers

	// mem holds, oldest first, the records the disk refused, until every
	// reader acknowledged them.
	mem      []memRecord
	memBytes int64
}

// cursor is a reader's place in a lane: what it acknowledged (kept in its
// ack file), what it handed out, and its counters.
type cursor struct {
	i      int // the reader's index: segment.live[i]
	reader string

	ack    pos
	ackF   *os.File
	ackGen uint64
	// ackDirty is set when the ack file was written after the last fsync,
	// ackFailed when the last write of the ack file failed.
	ackDirty, ackFailed bool
	ackSynced           time.Time // the ack file's last fsync

	read   pos
	rf     *os.File // segment being read
	rfSeg  uint64
	rd     segReader
	out    []inflight // batches handed out, in order
	nextID uint64
	epoch  uint64
	free   [][]byte

	st     LaneStats // Records, Readings, Acked, Dropped
	oldest int64     // see LaneStats.Oldest, Unix ns

	// Of the lane's records in memory, the first memAcked are
	// acknowledged by this reader and the first memOut handed out.
	memAcked, memOut int
}

// Queue is a durable store-and-forward queue with one log per lane, read
// by one or more Readers. Its methods are safe for concurrent use. Next,
// Ack, Rewind, Stats and Scan of a Queue are those of its first reader.
type Queue struct {
	opt Options
	log *slog.Logger
	dir string

	mu      sync.Mutex
	lanes   [NumLanes]*lane
	readers []*Reader
	bytes   int64
	syncedC *sync.Cond // on mu: a lane's synced or syncErr changed, or closed
	wake    chan struct{}
	closed  bool
	// alarmsFull is set while alarms alone fill the cap, so that dropping
	// new telemetry is logged once, not per Append.
	alarmsFull bool
	st         Stats // Corrupt, CorruptBytes, TornBytes, SyncErrors
	// room is the volume's free bytes beyond the reserve, as last seen
	// (see roomFor).
	room int64

	lock   *os.File // holds the directory's lock while open
	done   chan struct{}
	retryC chan struct{} // a write failed: see retryLoop
	// changed is sent on when a count of trouble changes: see Changed.
	changed chan struct{}
	// worksSince is when the disk began to take writes again, while
	// st.WriteFailing (zero until it does): see settle.
	worksSince time.Time
	wg         sync.WaitGroup
}

// Reader is one consumer's view of the queue (an uplink's): it hands out
// every record appended, in order, and keeps its own read and acknowledged
// positions, cap and counters. It is what a forwarder drains.
type Reader struct {
	q    *Queue
	i    int
	name string
	// old is a queue of the earlier layout whose records this reader
	// hands out before its own (see Drain); guarded by q.mu.
	old *Queue
}

// Reader returns the reader of that name, or nil if Options.Readers did
// not name it.
func (q *Queue) Reader(name string) *Reader {
	for _, r := range q.readers {
		if r.name == name {
			return r
		}
	}
	return nil
}

// Next is Next of the queue's first reader.
func (q *Queue) Next(ctx context.Context, max int, lanes ...Lane) (Batch, error) {
	return q.readers[0].Next(ctx, max, lanes...)
}

// Ack is Ack of the queue's first reader.
func (q *Queue) Ack(b Batch) error { return q.readers[0].Ack(b) }

// Rewind is Rewind of the queue's first reader.
func (q *Queue) Rewind(lanes ...Lane) { q.readers[0].Rewind(lanes...) }

// Stats is Stats of the queue's first reader.
func (q *Queue) Stats() Stats { return q.readers[0].Stats() }

// Scan is Scan of the queue's first reader.
func (q *Queue) Scan(fn func(data []byte)) error { return q.readers[0].Scan(fn) }

// ackName is the name of a reader's ack file in each lane directory: "ack"
// for the reader named "", as in the layout of one queue per uplink.
func ackName(reader string) string {
	if reader == "" {
		return "ack"
	}
	return "ack." + reader
}

// openAck opens (or creates) a reader's ack file in a lane directory.
func openAck(dir, reader string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, ackName(reader)), os.O_RDWR|os.O_CREATE, durable.FileMode)
}

// lockDir opens dir/lock and locks it (see lock): two processes never run
// the same queue.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		// A queue that cannot be written (its disk remounted read-only)
		// may still be another gateway's: that says more than the disk's
		// error, and must stop a second gateway all the same.
		if ro, rerr := os.Open(path); rerr == nil {
			lerr := lock(ro, dir)
			ro.Close()
			if errors.Is(lerr, ErrInUse) {
				return nil, lerr
			}
		}
		return nil, fmt.Errorf("queue: %w", err)
	}
	if err := lock(f, dir); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// checkReaders validates Options.Readers.
func checkReaders(names []string) error {
	for i, n := range names {
		if n == "" && len(names) > 1 {
			return fmt.Errorf("queue: reader %d: a name is needed when there are several readers", i+1)
		}
		if strings.ContainsAny(n, `/\.`) || strings.TrimSpace(n) != n {
			return fmt.Errorf("queue: reader %q: a name without dots, slashes or spaces around it is needed", n)
		}
		if slices.Contains(names[:i], n) {
			return fmt.Errorf("queue: reader %q named twice", n)
		}
	}
	return nil
}

// Open opens or creates the queue in dir.
func Open(dir string, opt Options, log *slog.Logger) (*Queue, error) {
	if opt.MaxBytes <= 0 {
		opt.MaxBytes = DefaultMaxBytes
	}
	if opt.SegmentBytes <= 0 {
		opt.SegmentBytes = DefaultSegmentBytes
	}
	if opt.MemoryBytes <= 0 {
		opt.MemoryBytes = DefaultMemoryBytes
	}
	if len(opt.Readers) == 0 {
		opt.Readers = []string{""}
	}
	if err := checkReaders(opt.Readers); err != nil {
		return nil, err
	}
	opt.SegmentBytes = max(min(opt.SegmentBytes, opt.MaxBytes/8), 4<<10)
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	q := &Queue{opt: opt, log: log, dir: dir, done: make(chan struct{}), retryC: make(chan struct{}, 1), changed: make(chan struct{}, 1)}
	q.syncedC = sync.NewCond(&q.mu)
	for i, n := range opt.Readers {
		q.readers = append(q.readers, &Reader{q: q, i: i, name: n})
	}
	if err := durable.MkdirAll(dir); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	q.lock = lock
	for l := range NumLanes {
		ln, err := q.openLane(l)
		if err != nil {
			for _, o := range q.lanes[:l] {
				o.close()
			}
			lock.Close()
			return nil, err
		}
		q.lanes[l] = ln
	}
	q.wg.Add(int(NumLanes) + 1)
	for _, ln := range q.lanes {
		go q.syncLoop(ln)
	}
	go q.retryLoop()
	return q, nil
}

func segName(id uint64) string { return fmt.Sprintf("%016x.seg", id) }

func (q *Queue) openLane(l Lane) (*lane, error) {
	ln := &lane{l: l, dir: filepath.Join(q.dir, l.String()), kick: make(chan struct{}, 1), acked: make(chan struct{}, 1)}
	if err := durable.MkdirAll(ln.dir); err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	des, err := os.ReadDir(ln.dir)
	if err != nil {
		return nil, fmt.Errorf("queue: %w", err)
	}
	for i, r := range q.readers {
		f, err := openAck(ln.dir, r.name)
		if err != nil {
			ln.close()
			return nil, fmt.Errorf("queue: %w", err)
		}
		c := &cursor{i: i, reader: r.name, ackF: f}
		ln.cur = append(ln.cur, c)
	}
	// The ack files may be new: their names must survive a power cut
	// before any position is trusted to them.
	if err := durable.SyncDir(ln.dir); err != nil {
		ln.close()
		return nil, fmt.Errorf("queue: %w", err)
	}
	for _, c := range ln.cur {
		c.ack, c.ackGen = q.readAck(ln, c)
	}

	var ids []uint64
	for _, de := range des {
		name := de.Name()
		hex, ok := strings.CutSuffix(name, ".seg")
		if !ok || len(hex) != 16 || !de.Type().IsRegular() {
			continue
		}
		id, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			continue
		}
		ids = append(ids, id)
	}
	slices.Sort(ids)
	// Every reader needs the segments from the one of its acknowledged
	// position; those before the earliest of them are delivered to all.
	first, last := ln.cur[0].ack.seg, ln.cur[0].ack.seg
	for _, c := range ln.cur {
		first, last = min(first, c.ack.seg), max(last, c.ack.seg)
	}
	ln.next = last + 1
	if len(ids) > 0 {
		ln.next = max(ln.next, ids[len(ids)-1]+1)
	}
	for _, id := range ids {
		path := filepath.Join(ln.dir, segName(id))
		if id < first {
			q.remove(path)
			continue
		}
		s, ok := q.recoverSegment(ln, path, id)
		if !ok {
			continue
		}
		if !slices.ContainsFunc(s.live, func(n int64) bool { return n > 0 }) {
			q.remove(path)
			continue
		}
		ln.segs = append(ln.segs, s)
		q.bytes += s.size
	}
	for _, c := range ln.cur {
		if len(ln.segs) > 0 && c.ack.less(pos{ln.segs[0].id, 0}) {
			c.ack = pos{ln.segs[0].id, 0}
		}
	}
	if err := q.newSegment(ln); err != nil {
		ln.close()
		return nil, err
	}
	for _, c := range ln.cur {
		c.read = c.ack
	}
	return ln, nil
}

// startIn is where reader c starts reading segment id: -1 if it
// acknowledged the whole segment.
func (c *cursor) startIn(id uint64) int64 {
	switch {
	case id < c.ack.seg:
		return -1
	case id == c.ack.seg:
		return c.ack.off
	}
	return 0
}

// recoverSegment scans a segment left by an earlier run from where the
// first reader to need it starts, cuts its torn tail and returns what is
// left to deliver to each reader.
func (q *Queue) recoverSegment(ln *lane, path string, id uint64) (*segment, bool) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		q.log.Error("queue: cannot open segment, skipping it", "lane", ln.l, "file", path, "err", err)
		return nil, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		q.log.Error("queue: cannot stat segment, skipping it", "lane", ln.l, "file", path, "err", err)
		return nil, false
	}
	size := fi.Size()
	start := int64(-1)
	for _, c := range ln.cur {
		if s := c.startIn(id); s >= 0 && (start < 0 || s < start) {
			start = s
		}
	}
	start = min(start, size)
	var r segReader
	r.reset(f, size)
	res := r.scan(start)
	if res.corrupt > 0 {
		q.st.Corrupt += res.corrupt
		q.st.CorruptBytes += res.corruptBytes
		q.log.Warn("queue: skipped corrupt records", "lane", ln.l, "file", path, "regions", res.corrupt, "bytes", res.corruptBytes)
	}
	if res.tail > 0 {
		q.st.TornBytes += res.tail
		q.log.Warn("queue: cut torn tail", "lane", ln.l, "file", path, "offset", res.end, "bytes", res.tail)
		if err := f.Truncate(res.end); err != nil {
			q.log.Error("queue: cannot cut torn tail, ignoring it", "lane", ln.l, "file", path, "err", err)
		} else {
			size = res.end
		}
	}
	s := &segment{id: id, size: size, end: res.end, live: make([]int64, len(ln.cur)), liveR: make([]int64, len(ln.cur))}
	for _, c := range ln.cur {
		switch from := c.startIn(id); {
		case from < 0:
			continue
		case from == start:
			s.live[c.i], s.liveR[c.i] = res.records, res.readings
		default: // a reader further on in this segment
			r.reset(f, res.end)
			more := r.scan(min(from, res.end))
			s.live[c.i], s.liveR[c.i] = more.records, more.readings
		}
		c.st.Records += s.live[c.i]
		c.st.Readings += s.liveR[c.i]
	}
	return s, true
}

func (q *Queue) remove(path string) {
	if err := durable.Bounded(func() error { return os.Remove(path) }, nil); err != nil && !errors.Is(err, os.ErrNotExist) {
		q.log.Error("queue: cannot delete segment", "file", path, "err", err)
	}
}

// readAck returns the reader's acknowledged position in the newer intact
// slot of its ack file.
func (q *Queue) readAck(ln *lane, c *cursor) (pos, uint64) {
	var b [64]byte
	n, _ := c.ackF.ReadAt(b[:], 0)
	var best pos
	var gen uint64
	found := false
	for i := 0; i+32 <= n; i += 32 {
		s := b[i : i+32]
		if crc32.Checksum(s[:24], castagno) != binary.LittleEndian.Uint32(s[24:]) {
			continue
		}
		g := binary.LittleEndian.Uint64(s)
		p := pos{binary.LittleEndian.Uint64(s[8:]), int64(binary.LittleEndian.Uint64(s[16:]))}
		if p.off < 0 {
			continue
		}
		if !found || g > gen {
			best, gen, found = p, g, true
		}
	}
	if !found && n > 0 {
		q.log.Warn("queue: ack file unreadable, delivering from the oldest record", "lane", ln.l, "reader", c.reader)
	}
	return best, gen
}

func (q *Queue) writeAck(ln *lane, c *cursor) {
	c.ackGen++
	var b [32]byte
	binary.LittleEndian.PutUint64(b[:], c.ackGen)
	binary.LittleEndian.PutUint64(b[8:], c.ack.seg)
	binary.LittleEndian.PutUint64(b[16:], uint64(c.ack.off))
	binary.LittleEndian.PutUint32(b[24:], crc32.Checksum(b[:24], castagno))
	c.ackDirty = true
	f, at := c.ackF, int64(c.ackGen%2)*32
	if err := durable.Bounded(func() error { _, err := f.WriteAt(b[:], at); return err }, nil); err != nil {
		// Losing an ack write costs duplicates after a restart, not data;
		// it is written again once the disk takes writes.
		if !c.ackFailed {
			q.log.Error("queue: cannot write ack file", "lane", ln.l, "reader", c.reader, "err", err)
		}
		c.ackFailed = true
		q.retrySoon()
		return
	}
	c.ackFailed = false
}

// newSegment starts a new active segment; the old one is left to the
// syncer to fsync and close.
func (q *Queue) newSegment(ln *lane) error {
	id := ln.next
	var f *os.File
	err := durable.Bounded(func() (err error) {
		f, err = os.OpenFile(filepath.Join(ln.dir, segName(id)), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, durable.FileMode)
		for tries := 0; errors.Is(err, os.ErrExist) && tries < 8; tries++ {
			// Something that is not a segment took the name.
			id++
			f, err = os.OpenFile(filepath.Join(ln.dir, segName(id)), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, durable.FileMode)
		}
		return err
	}, func(err error) {
		// Created after the queue gave up on it: an empty file, not a
		// segment of the queue.
		if err == nil {
			f.Close()
			os.Remove(f.Name())
		}
	})
	if err != nil {
		return fmt.Errorf("queue: new %s segment: %w", ln.l, err)
	}
	ln.next = id + 1
	if ln.w != nil {
		if q.opt.SyncEvery < 0 {
			ln.w.Close()
		} else {
			ln.pending = append(ln.pending, ln.w)
		}
	}
	ln.w = f
	ln.segs = append(ln.segs, &segment{id: id, fresh: true, live: make([]int64, len(ln.cur)), liveR: make([]int64, len(ln.cur))})
	// The segment's name is durable only once the directory is fsynced,
	// with the next group commit.
	ln.dirDirty = true
	return nil
}

func (ln *lane) active() *segment { return ln.segs[len(ln.segs)-1] }

// seg returns the live segment with the id, or nil.
func (ln *lane) seg(id uint64) *segment {
	i, ok := slices.BinarySearchFunc(ln.segs, id, func(s *segment, id uint64) int { return cmp.Compare(s.id, id) })
	if !ok {
		return nil
	}
	return ln.segs[i]
}

// done says whether reader c acknowledged the whole of segment s.
func (c *cursor) done(s *segment) bool {
	return s.id < c.ack.seg || s.id == c.ack.seg && c.ack.off >= s.end
}

// firstNeeded is the index of the oldest segment reader c has not
// acknowledged whole, or of the active one.
func (ln *lane) firstNeeded(c *cursor) int {
	for i, s := range ln.segs[:len(ln.segs)-1] {
		if !c.done(s) {
			return i
		}
	}
	return len(ln.segs) - 1
}

// bytesOf is the size of the segments of the lane that reader c needs:
// from its oldest not acknowledged whole, the active one at least.
func (ln *lane) bytesOf(c *cursor) int64 {
	n := int64(0)
	for _, s := range ln.segs[ln.firstNeeded(c):] {
		n += s.size
	}
	return n
}

// backlog is the size of the segments reader i needs, in all lanes: what
// MaxBytes caps.
func (q *Queue) backlog(i int) int64 {
	n := int64(0)
	for _, ln := range q.lanes {
		n += ln.bytesOf(ln.cur[i])
	}
	return n
}

// removeDone deletes the oldest segments of the lane that every reader
// acknowledged whole (never the active one). Called with q.mu held.
func (q *Queue) removeDone(ln *lane) {
	for len(ln.segs) > 1 {
		s := ln.segs[0]
		for _, c := range ln.cur {
			if !c.done(s) {
				return
			}
		}
		for _, c := range ln.cur {
			c.closeReader(s.id)
		}
		q.remove(filepath.Join(ln.dir, segName(s.id)))
		q.bytes -= s.size
		ln.segs = ln.segs[1:]
	}
}

// Append writes records to the lane, once for every reader. When it
// returns nil they are durable as Options.SyncEvery says, or (when the
// disk fails) held or counted as below.
//
// Telemetry that cannot fit under MaxBytes for any reader even after every
// older telemetry segment is dropped is dropped itself, counted, and
// Append returns nil. When the disk refuses a write: if it is full, the
// oldest telemetry is dropped to make room and the write tried again;
// records the disk still refuses are held in memory (up to
// Options.MemoryBytes a lane; beyond it alarms are lost and telemetry is
// dropped, counted), served by Next after those on disk, and written to
// disk as soon as it takes them again, even those a reader has in flight.
// Stats say so (WriteErrors, WriteFailing, Lanes[].Memory), and Append
// returns ErrHeld (or ErrLost) for alarms it could not make durable; for
// telemetry, nil.
//
// Alarms never wait for the group commit: an Append to LaneAlarm returns
// after an fsync that covers it unless SyncEvery is negative. A failed
// fsync of an Append that waits for one is returned: the records may not
// be durable, and appending them again may duplicate them.
func (q *Queue) Append(l Lane, recs ...Record) error {
	if l >= NumLanes {
		return fmt.Errorf("queue: unknown lane %d", l)
	}
	need := int64(0)
	readings := int64(0)
	for _, r := range recs {
		if len(r.Data) > MaxRecordBytes {
			return fmt.Errorf("queue: record of %d bytes exceeds %d", len(r.Data), MaxRecordBytes)
		}
		if r.Readings < 0 || int64(r.Readings) > 1<<32-1 {
			return fmt.Errorf("queue: record readings %d out of range", r.Readings)
		}
		need += headerSize + int64(len(r.Data))
		readings += int64(r.Readings)
	}
	if len(recs) == 0 {
		return nil
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	ln := q.lanes[l]
	if l.Kept() && unlinked(ln.w) {
		// One fstat per alarm: an alarm must not go to a file that was
		// deleted, to be found by no reader. Telemetry's syncer checks.
		ln.stale = true
	}
	if !q.makeRoom(need) && !l.Kept() {
		for _, c := range ln.cur {
			c.st.Dropped += int64(len(recs))
			c.st.DroppedReadings += readings
		}
		q.counted()
		first := !q.alarmsFull
		q.alarmsFull = true
		q.mu.Unlock()
		if first {
			q.log.Warn("queue: alarms fill the queue, dropping new telemetry", "records", len(recs), "readings", readings)
		}
		return nil
	}
	if !l.Kept() {
		q.alarmsFull = false
	}
	now := time.Now().UnixNano()
	ln.st.Appended += int64(len(recs))
	ln.st.AppendedReadings += readings
	// Records held in memory go to disk first: a record never overtakes
	// an older one of its lane.
	var notDurable error
	if !q.flushMemory(ln) {
		notDurable = q.hold(ln, recs, now)
	} else if n, err := q.writeFreeing(ln, recs, now, nil); err != nil {
		q.writeFailed(err)
		notDurable = q.hold(ln, recs[n:], now)
	} else {
		q.writeWorks()
	}
	gen := ln.gen
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
	// Alarms do not wait for the group commit: their Append returns
	// after their fsync, whatever SyncEvery says (unless it is negative).
	if q.opt.SyncEvery >= 0 {
		kick(ln)
	}
	if notDurable != nil || !q.syncsAtOnce(ln) {
		q.mu.Unlock()
		if !l.Kept() {
			return nil // telemetry is not durable at once anyway: Stats say what the disk refused
		}
		return notDurable
	}
	if !q.waitSynced(ln, gen) {
		q.mu.Unlock()
		return fmt.Errorf("%w: its fsync did not return in %s", ErrHeld, durable.StallAfter)
	}
	err := ln.syncErr
	if err != nil && l.Kept() {
		// The records may not be on disk, or be in a file deleted under
		// the queue: they are held in memory too, and written again to a
		// new segment (a reader may get them twice, never not at all).
		q.writeFailed(err)
		err = fmt.Errorf("%w: its fsync failed: %v", q.hold(ln, recs, now), err)
		q.mu.Unlock()
		return err
	}
	q.mu.Unlock()
	if err != nil {
		return fmt.Errorf("queue: fsync: %w", err)
	}
	return nil
}

// waitSynced waits until the lane's fsyncs cover gen, and reports whether
// they do: it gives up once its syncer has been in one fsync for
// durable.StallAfter (the disk hangs; what was written is delivered all
// the same, from the page cache). Called with q.mu held.
func (q *Queue) waitSynced(ln *lane, gen uint64) bool {
	if ln.synced >= gen {
		return true
	}
	deadline := time.Now().Add(durable.StallAfter)
	if !ln.syncing.IsZero() {
		deadline = ln.syncing.Add(durable.StallAfter)
	}
	t := time.AfterFunc(time.Until(deadline), func() {
		q.mu.Lock()
		q.syncedC.Broadcast()
		q.mu.Unlock()
	})
	defer t.Stop()
	for ln.synced < gen {
		if !time.Now().Before(deadline) {
			return false
		}
		q.syncedC.Wait() // Close syncs too, and wakes us
	}
	return true
}

// reserveBytes and reserveInodes are what telemetry must leave free on
// the queue's volume (at most a sixteenth of it), or the oldest telemetry
// goes first, as on a full disk. The state directory's other files (the
// sequence leases, the alarm states, the status file) are written by
// atomic replace, which takes an inode and blocks of its own each time. A
// queue that took the last of them would keep them, as each segment it
// drops frees an inode the next segment takes: the leases would go
// unsaved and gateway status would find no gateway. Alarms and health
// changes may use the reserve.
const (
	reserveBytes  = 256 << 10
	reserveInodes = 64
)

// roomFor says whether n more bytes of telemetry, and a new segment's
// inode when inode is set, leave the volume's reserve free. It asks the
// volume (statfs) only when a new segment starts or its estimate says no:
// the room it saw last, less what the queue wrote since (segments deleted
// since only add room). Called with q.mu held.
func (q *Queue) roomFor(n int64, inode bool) bool {
	if !inode && q.room >= n {
		return true
	}
	bytes, inodes, ok := room(q.dir)
	if !ok {
		return true
	}
	q.room = bytes
	return bytes >= n && (!inode || inodes >= 1)
}

// errReserve is telemetry the reserve refuses: as a full disk, it makes
// the oldest telemetry go.
var errReserve = fmt.Errorf("queue: the volume is down to the room kept for the state files: %w", syscall.ENOSPC)

// writeFreeing writes recs, and when the disk is full drops the oldest
// telemetry to make room and tries again. It returns how many of recs were
// written (and, when ends is not nil, appends where each of them ends).
// Called with q.mu held.
func (q *Queue) writeFreeing(ln *lane, recs []Record, now int64, ends *[]pos) (int, error) {
	done := 0
	for {
		n, err := q.write(ln, recs[done:], now, ends)
		done += n
		if err == nil || !errors.Is(err, syscall.ENOSPC) || !q.freeTelemetry(ln.l) {
			return done, err
		}
		q.st.FullDrops++
		q.counted()
		q.st.FullDrop = err.Error()
		q.log.Warn("queue: disk full, dropped the oldest telemetry to make room", "lane", ln.l, "err", err)
	}
}

// writeFailed notes a write the disk refused. Called with q.mu held.
func (q *Queue) writeFailed(err error) {
	q.retrySoon()
	q.counted()
	q.st.WriteErrors++
	q.st.WriteError = err.Error()
	q.worksSince = time.Time{}
	if !q.st.WriteFailing {
		q.st.WriteFailing = true
		q.st.WriteFailedAt, q.st.WriteRecoveredAt = time.Now(), time.Time{}
		q.log.Error("queue: the disk refuses writes or does not answer; holding what it refuses in memory", "err", err)
	}
}

// writeWorks notes a write that succeeded, and writes again the ack
// positions and the records in memory the disk refused. Called with q.mu
// held.
func (q *Queue) writeWorks() {
	for _, ln := range q.lanes {
		for _, c := range ln.cur {
			if c.ackFailed {
				if q.writeAck(ln, c); c.ackFailed {
					return
				}
			}
		}
	}
	// The disk takes writes: what every lane holds in memory goes to it
	// now, not at the next append to that lane or retry.
	for _, ln := range q.lanes {
		if !q.flushMemory(ln) {
			return
		}
	}
	if q.st.WriteFailing && q.worksSince.IsZero() {
		q.worksSince = time.Now()
	}
	q.settle()
}

// recoverCalm is how long the disk must take writes, without refusing
// one, for an episode of refused writes to end. A full disk takes a small
// record into a block partly used and refuses the next one: without it,
// the log and the hub would hear of the disk failing and recovering every
// second.
const recoverCalm = time.Second

// settle ends an episode of refused writes once writes have worked for
// recoverCalm. Called with q.mu held.
func (q *Queue) settle() {
	if !q.st.WriteFailing || q.worksSince.IsZero() || time.Since(q.worksSince) < recoverCalm {
		return
	}
	q.st.WriteFailing = false
	q.st.WriteRecoveredAt, q.worksSince = q.worksSince, time.Time{}
	q.counted()
	q.log.Info("queue: the disk takes writes again", "after", q.st.WriteRecoveredAt.Sub(q.st.WriteFailedAt))
}

// hold keeps records in memory while the disk refuses them, up to
// MemoryBytes a lane; beyond that alarms and health changes are lost and
// telemetry is dropped, counted. Called with q.mu held.
// It returns ErrLost if it lost any, or else ErrHeld.
func (q *Queue) hold(ln *lane, recs []Record, now int64) error {
	err := ErrHeld
	for _, r := range recs {
		if ln.memBytes+int64(len(r.Data)) > q.opt.MemoryBytes {
			if !ln.l.Kept() {
				for _, c := range ln.cur {
					c.st.Dropped++
					c.st.DroppedReadings += int64(r.Readings)
				}
				q.st.MemoryDrops++
				q.counted()
				continue
			}
			ln.st.Lost++
			ln.st.LostReadings += int64(r.Readings)
			q.counted()
			q.log.Error("queue: disk failing and memory full: alarm lost", "lane", ln.l)
			err = ErrLost
			continue
		}
		ln.mem = append(ln.mem, memRecord{data: slices.Clone(r.Data), readings: r.Readings, enq: now})
		ln.memBytes += int64(len(r.Data))
	}
	return err
}

// flushMemory writes the records held in memory to disk, in order. A
// reader that acknowledged some already finds its acknowledged position
// after them on disk; one that has some handed out has them acknowledged
// on disk when it acknowledges their batch (see onDisk). It reports
// whether none is left in memory. Called with q.mu held.
func (q *Queue) flushMemory(ln *lane) bool {
	if len(ln.mem) == 0 {
		return true
	}
	// The first record alone: while the disk refuses writes, each append
	// tries it, and framing a chunk each time would cost the station.
	for size := 1; len(ln.mem) > 0; size = flushChunk {
		chunk := ln.mem[:min(len(ln.mem), size)]
		recs := make([]Record, len(chunk))
		for i, m := range chunk {
			recs[i] = Record{Data: m.data, Readings: m.readings, enq: m.enq}
		}
		ends := make([]pos, 0, len(chunk))
		n, err := q.writeFreeing(ln, recs, 0, &ends)
		acked := make([]bool, len(ln.cur))
		for k, m := range chunk[:n] {
			s := ln.seg(ends[k].seg) // nil if a full disk dropped it at once
			for _, c := range ln.cur {
				if c.memAcked == 0 {
					if c.memOut > 0 {
						c.onDisk(ends[k], m.readings)
					}
					continue
				}
				// Acknowledged in memory: acknowledged on disk. The
				// reader read every record on disk before those in
				// memory.
				c.memAcked--
				c.memOut--
				c.ack, c.read = ends[k], ends[k]
				acked[c.i] = true
				if s != nil {
					s.live[c.i]--
					s.liveR[c.i] -= int64(m.readings)
					c.st.Records--
					c.st.Readings -= int64(m.readings)
				}
			}
			ln.memBytes -= int64(len(m.data))
		}
		for _, c := range ln.cur {
			if acked[c.i] {
				q.writeAck(ln, c)
			}
		}
		clear(ln.mem[:n])
		ln.mem = ln.mem[n:]
		if err != nil {
			q.writeFailed(err)
			return false
		}
	}
	ln.mem = nil
	q.writeWorks()
	return true
}

// flushChunk is how many records held in memory flushMemory hands write at
// once, which writes them a MiB at a time: a station's minutes of telemetry
// go back to disk in tens of milliseconds, not a system call each.
const flushChunk = 4096

// onDisk is flushMemory's for a reader that has the oldest record in
// memory handed out, not acknowledged, now that it was written to disk,
// ending at end: its batch acknowledges it there. The reader had read
// every record on disk before it (memory holds the newest), so it reads on
// after it. Called with q.mu held.
func (c *cursor) onDisk(end pos, readings int) {
	i := slices.IndexFunc(c.out, func(o inflight) bool { return o.mem > 0 })
	o := &c.out[i]
	o.mem--
	if n := len(o.segs); n > 0 && o.segs[n-1].seg == end.seg {
		o.segs[n-1].recs++
		o.segs[n-1].readings += int64(readings)
	} else {
		o.segs = append(o.segs, segCount{end.seg, 1, int64(readings)})
	}
	o.end = end
	c.memOut--
	c.read = end
}

// remake starts a new segment in the lane's directory, made again if it
// was deleted under the queue (an operator or a cleaner removed the state
// directory), and writes again each reader's ack file and the queue's
// lock that went with it. What readers had not read of the deleted
// segments is lost: those they have open they read to the end, the
// others they skip (see Next). Called with q.mu held.
func (q *Queue) remake(ln *lane) error {
	deleted := unlinked(ln.w)
	err := durable.Bounded(func() error { return durable.MkdirAll(ln.dir) }, nil)
	if err == nil {
		err = q.newSegment(ln)
	}
	for _, c := range ln.cur {
		if err == nil && unlinked(c.ackF) {
			var f *os.File
			if f, err = openAck(ln.dir, c.reader); err == nil {
				c.ackF.Close()
				c.ackF, c.ackGen = f, 0
				q.writeAck(ln, c)
			}
		}
	}
	if err == nil && unlinked(q.lock) {
		var lock *os.File
		if lock, err = lockDir(q.dir); err == nil {
			q.lock.Close()
			q.lock = lock
		}
	}
	if err != nil {
		return fmt.Errorf("queue: make the %s lane again: %w", ln.l, err)
	}
	ln.stale = false
	if deleted {
		q.st.Deleted++
		q.counted()
		q.log.Error("queue: its files were deleted while the gateway ran; made them again: what was not yet sent from them is lost", "lane", ln.l, "dir", ln.dir)
	}
	return nil
}

// write frames recs into the active segment, starting new segments at
// SegmentBytes, and returns how many it wrote whole (and, when ends is not
// nil, appends where each of them ends). A record is stamped with now
// unless it carries the time of its first append. Called with q.mu held.
func (q *Queue) write(ln *lane, recs []Record, now int64, ends *[]pos) (written int, err error) {
	if ln.stale {
		if err := q.remake(ln); err != nil {
			return 0, err
		}
	}
	ln.wbuf = ln.wbuf[:0]
	s := ln.active()
	var n, nr int64
	flush := func() error {
		if len(ln.wbuf) == 0 {
			return nil
		}
		if !ln.l.Kept() && !q.roomFor(int64(len(ln.wbuf)), false) {
			return errReserve
		}
		m, err := q.writeActive(ln, s)
		if err != nil {
			// Take back a partial record (the file is O_APPEND, so the
			// next write follows what is left); if that fails, it is left
			// as a torn region that readers skip, and we move on.
			if m > 0 {
				if terr := ln.w.Truncate(s.size); terr != nil {
					s.size += int64(m)
					q.bytes += int64(m)
					if nerr := q.newSegment(ln); nerr != nil {
						q.log.Error("queue: cannot start a segment", "lane", ln.l, "err", nerr)
					}
				}
			}
			return fmt.Errorf("queue: append to %s: %w", ln.l, err)
		}
		ln.gen++
		if ends != nil {
			off := s.size
			for _, r := range recs[written : written+int(n)] {
				off += headerSize + int64(len(r.Data))
				*ends = append(*ends, pos{s.id, off})
			}
		}
		s.size += int64(m)
		s.end = s.size
		ln.wrote = pos{s.id, s.end}
		q.bytes += int64(m)
		q.room -= int64(m)
		for _, c := range ln.cur {
			s.live[c.i] += n
			s.liveR[c.i] += nr
			c.st.Records += n
			c.st.Readings += nr
		}
		written += int(n)
		ln.wbuf, n, nr = ln.wbuf[:0], 0, 0
		return nil
	}
	for _, r := range recs {
		size := headerSize + int64(len(r.Data))
		if s.size+int64(len(ln.wbuf)) > 0 && s.size+int64(len(ln.wbuf))+size > q.opt.SegmentBytes {
			if err := flush(); err != nil {
				return written, err
			}
			if !ln.l.Kept() && !q.roomFor(0, true) {
				return written, errReserve
			}
			if err := q.newSegment(ln); err != nil {
				return written, err
			}
			s = ln.active()
		}
		if len(ln.wbuf) >= MaxBatchBytes { // bound the write buffer
			if err := flush(); err != nil {
				return written, err
			}
		}
		ln.wbuf = appendRecord(ln.wbuf, r.Data, r.Readings, cmp.Or(r.enq, now))
		n++
		nr += int64(r.Readings)
	}
	return written, flush()
}

// writeActive writes ln.wbuf to the active segment s, bounded (see
// durable.Bounded): a write that hangs is left to finish on its own, and
// then taken back, so that the segment ends where the queue knows it does;
// the records are held in memory meanwhile, as for a write the disk
// refused. Called with q.mu held.
func (q *Queue) writeActive(ln *lane, s *segment) (int, error) {
	f, buf, size := ln.w, ln.wbuf, s.size
	var m int
	err := durable.Bounded(func() (err error) {
		m, err = f.Write(buf)
		return err
	}, func(error) {
		if err := f.Truncate(size); err != nil {
			q.log.Error("queue: a write that hung is left in its segment: its records may be delivered twice", "lane", ln.l, "err", err)
		}
	})
	if errors.Is(err, durable.ErrStalled) {
		ln.wbuf = nil // the write that hangs still reads it
		return 0, err
	}
	return m, err
}

// makeRoom drops, for every reader whose backlog would exceed MaxBytes
// with need more bytes, its oldest telemetry until they fit; it reports
// whether they fit for at least one reader (for the others the records
// are written all the same and they drop them at the next makeRoom).
// Called with q.mu held.
func (q *Queue) makeRoom(need int64) bool {
	if q.bytes+need <= q.opt.MaxBytes {
		return true // no reader's backlog is larger than the disk's
	}
	fits := false
	for i := range q.readers {
		ok := true
		for q.backlog(i)+need > q.opt.MaxBytes {
			if !q.dropOldest(i) {
				ok = false
				break
			}
		}
		fits = fits || ok
	}
	return fits
}

// dropOldest drops, for reader i only, the oldest telemetry segment it
// needs, starting a new active one if it is that one; it reports whether
// there was any to drop. Called with q.mu held.
func (q *Queue) dropOldest(i int) bool {
	t := q.lanes[LaneTelemetry]
	c := t.cur[i]
	k := t.firstNeeded(c)
	if k == len(t.segs)-1 {
		if t.active().size == 0 {
			return false
		}
		if err := q.newSegment(t); err != nil {
			q.log.Error("queue: cannot start a segment", "lane", t.l, "err", err)
			return false
		}
	}
	q.dropFor(t, c, k)
	q.removeDone(t)
	return true
}

// freeTelemetry drops the oldest telemetry segment for every reader, to
// free the disk for a write to lane l; it reports whether there was any to
// drop. The active segment, the newest telemetry, goes only for an alarm
// or a health change, and only once every reader took all of it (a new
// one is started): what the disk refuses then waits in memory instead (see
// hold), so that a full disk loses nothing while the hub takes it, and
// only a backlog makes room. (Dropping undelivered telemetry for an alarm
// would lose some at each event the gateway raises about the full disk.)
// Called with q.mu held.
func (q *Queue) freeTelemetry(l Lane) bool {
	t := q.lanes[LaneTelemetry]
	if len(t.segs) == 1 {
		if a := t.active(); !l.Kept() || a.size == 0 || !t.deliveredAll(a) {
			return false
		}
		if err := q.newSegment(t); err != nil {
			q.log.Error("queue: cannot start a segment", "lane", t.l, "err", err)
			return false
		}
	}
	for _, c := range t.cur {
		q.dropFor(t, c, 0)
	}
	q.removeDone(t)
	return true
}

// dropFor moves reader c past the segment at index k of the lane (not the
// active one) and counts what it lost with it; the segment is deleted by
// removeDone once no reader needs it. Called with q.mu held.
func (q *Queue) dropFor(ln *lane, c *cursor, k int) {
	s := ln.segs[k]
	next := pos{ln.segs[k+1].id, 0}
	if !c.ack.less(next) {
		return // acknowledged already
	}
	if s.live[c.i] > 0 {
		q.log.Warn("queue: dropped the oldest telemetry", "reader", c.reader, "records", s.live[c.i], "readings", s.liveR[c.i], "bytes", s.size)
	}
	c.dropUnsent(s)
	q.counted()
	// The batches handed out from it are acknowledged with it.
	c.st.Records -= s.live[c.i]
	c.st.Readings -= s.liveR[c.i]
	s.live[c.i], s.liveR[c.i] = 0, 0
	c.closeReader(s.id)
	if c.read.less(next) {
		c.read = next
	}
	c.ack = next
	q.writeAck(ln, c)
}

// dropUnsent counts the records of segment s that reader c has neither
// acknowledged nor handed out as dropped: it will not read them. Those
// handed out are acknowledged or handed back as usual.
func (c *cursor) dropUnsent(s *segment) {
	inRecs, inReadings := c.handedOutIn(s.id)
	recs, readings := s.live[c.i]-inRecs, s.liveR[c.i]-inReadings
	c.st.Dropped += recs
	c.st.DroppedReadings += readings
	c.st.Records -= recs
	c.st.Readings -= readings
	s.live[c.i], s.liveR[c.i] = inRecs, inReadings
}

// recycle keeps a batch buffer for the next batch; two per lane at most.
func (c *cursor) recycle(buf []byte) {
	if len(c.free) < 2 && cap(buf) <= 2*MaxBatchBytes {
		c.free = append(c.free, buf)
	}
}

// handedOutIn counts the records of segment id in batches handed out and
// not acknowledged. If they are acknowledged they were delivered; if Rewind
// takes them back after their segment was dropped, they are counted as
// dropped then.
func (c *cursor) handedOutIn(id uint64) (recs, readings int64) {
	for _, o := range c.out {
		for _, sc := range o.segs {
			if sc.seg == id {
				recs += sc.recs
				readings += sc.readings
			}
		}
	}
	return recs, readings
}

// closeReader closes the read file if it is segment id.
func (c *cursor) closeReader(id uint64) {
	if c.rf != nil && c.rfSeg == id {
		c.rf.Close()
		c.rf = nil
	}
}

// Next returns the oldest records not yet handed out to this reader, at
// most max of them (and at most MaxBatchBytes of data, but at least one
// record), all of one lane, alarms first. With lanes given it takes from
// those only, so that one consumer per lane can run at once (an alarm then
// never waits for a telemetry batch in flight). It blocks until there are
// some, ctx is done (it returns ctx.Err()) or the queue is closed
// (ErrClosed); with a ctx that is already done it returns the records
// there are without waiting. Next may be called again before the batches
// it returned are acknowledged (pipelining); each call hands out the
// records after the previous batch.
func (r *Reader) Next(ctx context.Context, max int, lanes ...Lane) (Batch, error) {
	if max < 1 {
		max = 1
	}
	q := r.q
	for {
		q.mu.Lock()
		if q.closed {
			q.mu.Unlock()
			return Batch{}, ErrClosed
		}
		for l, ln := range q.lanes {
			if !picked(lanes, Lane(l)) {
				continue
			}
			if r.old != nil {
				// The earlier layout's records are older than every one
				// of this queue.
				if b := r.old.takeFirst(ln.l, max); len(b.Entries) > 0 {
					q.mu.Unlock()
					return b, nil
				}
			}
			if b := q.take(ln, ln.cur[r.i], r, max); len(b.Entries) > 0 {
				q.mu.Unlock()
				return b, nil
			}
		}
		if q.wake == nil {
			q.wake = make(chan struct{})
		}
		wake := q.wake
		q.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return Batch{}, ctx.Err()
		}
	}
}

// takeFirst takes up to max records of lane l for the first reader,
// without waiting.
func (q *Queue) takeFirst(l Lane, max int) Batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return Batch{}
	}
	return q.take(q.lanes[l], q.lanes[l].cur[0], q.readers[0], max)
}

// take reads up to max records of the lane from reader c's read position.
// Called with q.mu held.
func (q *Queue) take(ln *lane, c *cursor, r *Reader, max int) Batch {
	var buf []byte
	if n := len(c.free); n > 0 {
		buf, c.free = c.free[n-1][:0], c.free[:n-1]
	}
	type span struct {
		start, end int
		readings   int
		enq        int64
	}
	var spans []span
	var counts []segCount
	diskDone := false // every record on disk is handed out
	for len(spans) < max {
		if c.read.less(pos{ln.segs[0].id, 0}) {
			c.read = pos{ln.segs[0].id, 0}
		}
		s := ln.seg(c.read.seg)
		if s == nil {
			// The segment is gone (it was empty at Open, or unreadable):
			// the reader goes on with the next one (read is never past
			// the active segment).
			i, _ := slices.BinarySearchFunc(ln.segs, c.read.seg, func(s *segment, id uint64) int { return cmp.Compare(s.id, id) })
			c.read = pos{ln.segs[min(i, len(ln.segs)-1)].id, 0}
			continue
		}
		if c.read.off >= s.end {
			if s == ln.active() {
				diskDone = true
				break
			}
			i, _ := slices.BinarySearchFunc(ln.segs, s.id, func(s *segment, id uint64) int { return cmp.Compare(s.id, id) })
			c.read = pos{ln.segs[i+1].id, 0}
			continue
		}
		if c.rf == nil || c.rfSeg != s.id {
			c.closeReader(c.rfSeg)
			f, err := os.Open(filepath.Join(ln.dir, segName(s.id)))
			if err != nil {
				// The segment is unreadable (deleted under the queue, say):
				// skip it rather than stall, and count what it held.
				q.log.Error("queue: cannot read segment, skipping it", "lane", ln.l, "reader", c.reader, "segment", s.id, "err", err)
				c.dropUnsent(s)
				q.st.Unreadable++
				q.counted()
				c.read = pos{s.id, s.end}
				continue
			}
			c.rf, c.rfSeg = f, s.id
			c.rd.reset(f, s.end)
		}
		c.rd.end = s.end
		h, data, ok := c.rd.record(c.read.off)
		if !ok {
			next := c.rd.resync(c.read.off)
			if s.fresh && !slices.Contains(s.skipped, c.read.off) {
				s.skipped = append(s.skipped, c.read.off)
				q.st.Corrupt++
				q.st.CorruptBytes += next - c.read.off
				q.counted()
				q.log.Error("queue: skipped corrupt records", "lane", ln.l, "reader", c.reader, "segment", s.id, "offset", c.read.off, "bytes", next-c.read.off)
			}
			c.read.off = next
			continue
		}
		if len(spans) > 0 && len(buf)+len(data) > MaxBatchBytes {
			break
		}
		start := len(buf)
		buf = append(buf, data...)
		spans = append(spans, span{start, len(buf), h.readings, h.enqueued})
		if n := len(counts); n > 0 && counts[n-1].seg == s.id {
			counts[n-1].recs++
			counts[n-1].readings += int64(h.readings)
		} else {
			counts = append(counts, segCount{s.id, 1, int64(h.readings)})
		}
		c.read.off += h.size()
	}
	// Then the records the disk refused, newer than every one on it.
	memN := 0
	for diskDone && len(spans) < max && c.memOut < len(ln.mem) {
		m := ln.mem[c.memOut]
		if len(spans) > 0 && len(buf)+len(m.data) > MaxBatchBytes {
			break
		}
		start := len(buf)
		buf = append(buf, m.data...)
		spans = append(spans, span{start, len(buf), m.readings, m.enq})
		c.memOut++
		memN++
	}
	if len(spans) == 0 {
		if buf != nil {
			c.free = append(c.free, buf)
		}
		return Batch{}
	}
	b := Batch{Lane: ln.l, Entries: make([]Entry, len(spans)), id: c.nextID, epoch: c.epoch, r: r}
	c.nextID++
	for i, sp := range spans {
		b.Entries[i] = Entry{Data: buf[sp.start:sp.end:sp.end], Readings: sp.readings, Enqueued: time.Unix(0, sp.enq)}
	}
	if len(c.out) == 0 {
		c.oldest = spans[0].enq // the head of the lane
	}
	c.out = append(c.out, inflight{id: b.id, end: c.read, buf: buf, segs: counts, mem: memN})
	return b
}

// Ack removes the batch's records from the reader's backlog; a segment is
// deleted once every reader acknowledged it whole. Batches of a lane must
// be acknowledged in the order Next returned them; a batch that Rewind
// took back gives ErrStaleBatch.
func (r *Reader) Ack(b Batch) error {
	if b.Lane >= NumLanes {
		return fmt.Errorf("queue: ack: unknown lane %d", b.Lane)
	}
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if b.r != r {
		if r.old != nil && b.r == r.old.readers[0] {
			err := r.old.Ack(b)
			r.closeDrained()
			return err
		}
		return ErrStaleBatch
	}
	ln := q.lanes[b.Lane]
	c := ln.cur[r.i]
	if b.epoch != c.epoch || len(c.out) == 0 || b.id < c.out[0].id {
		return ErrStaleBatch
	}
	if b.id != c.out[0].id {
		return fmt.Errorf("queue: ack of %s batch %d before batch %d", ln.l, b.id, c.out[0].id)
	}
	o := c.out[0]
	c.out = c.out[1:]
	for _, m := range ln.mem[c.memAcked : c.memAcked+o.mem] {
		c.st.Acked++
		c.st.AckedReadings += int64(m.readings)
	}
	c.memAcked += o.mem
	if k := ln.memAckedByAll(); k > 0 {
		for _, m := range ln.mem[:k] {
			ln.memBytes -= int64(len(m.data))
		}
		ln.mem = ln.mem[k:]
		for _, c := range ln.cur {
			c.memAcked -= k
			c.memOut -= k
		}
	}
	for _, sc := range o.segs {
		c.st.Acked += sc.recs
		c.st.AckedReadings += sc.readings
		if s := ln.seg(sc.seg); s != nil && !c.done(s) {
			s.live[c.i] -= sc.recs
			s.liveR[c.i] -= sc.readings
			c.st.Records -= sc.recs
			c.st.Readings -= sc.readings
		}
	}
	c.recycle(o.buf)
	if c.ack.less(o.end) {
		c.ack = o.end
	}
	// A delivered active segment is retired once it holds retireBytes, so
	// that what was delivered leaves the disk soon, not when SegmentBytes
	// fill up: a small state volume keeps working.
	if a := ln.active(); a.size >= q.retireBytes() && ln.deliveredAll(a) {
		if err := q.newSegment(ln); err != nil {
			q.log.Error("queue: cannot start a segment", "lane", ln.l, "err", err)
		}
	}
	q.removeDone(ln)
	if ln.gen != ln.synced && ln.deliveredWritten() {
		poke(ln.acked) // its syncer waits for this, or for the window's end
	}
	// The ack file is fsynced with the lane's next write, at most every
	// ackSyncEvery: an ack lost to a power cut costs duplicates, not data,
	// and syncing it on its own would wake the syncer for every batch the
	// hub took.
	q.writeAck(ln, c)
	return nil
}

// memAckedByAll is how many records in memory every reader acknowledged.
func (ln *lane) memAckedByAll() int {
	k := len(ln.mem)
	for _, c := range ln.cur {
		k = min(k, c.memAcked)
	}
	return k
}

// deliveredAll says whether every reader acknowledged segment s whole and
// has no batch out.
func (ln *lane) deliveredAll(s *segment) bool {
	for _, c := range ln.cur {
		if !c.done(s) || len(c.out) > 0 {
			return false
		}
	}
	return true
}

// retireBytes is the size from which a fully delivered active segment is
// replaced by a new one and deleted.
func (q *Queue) retireBytes() int64 { return max(q.opt.SegmentBytes/16, 4<<10) }

// picked says whether lane l is among lanes; no lanes means all of them.
func picked(lanes []Lane, l Lane) bool { return len(lanes) == 0 || slices.Contains(lanes, l) }

// Rewind takes back every batch of the lanes given (of all lanes when none
// is) handed out to this reader and not acknowledged: Next hands their
// records out again, in order. Use it when an uplink failed.
func (r *Reader) Rewind(lanes ...Lane) {
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if r.old != nil {
		r.old.Rewind(lanes...)
	}
	for l, ln := range q.lanes {
		if !picked(lanes, Lane(l)) {
			continue
		}
		c := ln.cur[r.i]
		for _, o := range c.out {
			for _, sc := range o.segs {
				if sc.seg < c.ack.seg { // dropped for this reader meanwhile
					c.st.Dropped += sc.recs
					c.st.DroppedReadings += sc.readings
					q.counted()
				}
			}
			c.recycle(o.buf)
		}
		c.out = nil
		c.epoch++
		c.read = c.ack
		c.memOut = c.memAcked
	}
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
}

// Drain has the reader hand out the records of old, a queue of the layout
// with one queue per uplink (or any queue's first reader), before its own,
// lane by lane: a gateway started on a state directory of that layout
// delivers what it left, in order, then the new records. Once old holds
// nothing more, it is closed and its directory removed. The reader takes
// old over: closing the queue closes it.
func (r *Reader) Drain(old *Queue) {
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	r.old = old
	r.closeDrained()
}

// closeDrained closes and removes the reader's old queue once every one of
// its records is acknowledged. Called with q.mu held.
func (r *Reader) closeDrained() {
	old := r.old
	if old == nil {
		return
	}
	old.mu.Lock()
	for _, ln := range old.lanes {
		c := ln.cur[0]
		if c.st.Records > 0 || len(c.out) > 0 || len(ln.mem) > 0 {
			old.mu.Unlock()
			return
		}
	}
	old.mu.Unlock()
	r.old = nil
	if err := old.Close(); err != nil {
		r.q.log.Error("queue: closing a drained queue", "dir", old.dir, "err", err)
	}
	if err := os.RemoveAll(old.dir); err != nil {
		r.q.log.Error("queue: cannot remove a drained queue", "dir", old.dir, "err", err)
		return
	}
	r.q.log.Info("queue: delivered what the queue of the earlier layout held, and removed it", "reader", r.name, "dir", old.dir)
}

// Scan calls fn with the data of every record queued for this reader
// (neither acknowledged nor dropped), lane by lane, oldest first, without
// changing what Next hands out. The data is valid during the call only. It
// reads the whole backlog: it is meant for recovery at start, not for the
// hot path.
func (r *Reader) Scan(fn func(data []byte)) error {
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if r.old != nil {
		if err := r.old.Scan(fn); err != nil {
			return err
		}
	}
	for _, ln := range q.lanes {
		c := ln.cur[r.i]
		for _, s := range ln.segs {
			from := c.startIn(s.id)
			if from < 0 {
				continue
			}
			f, err := os.Open(filepath.Join(ln.dir, segName(s.id)))
			if err != nil {
				return fmt.Errorf("queue: scan: %w", err)
			}
			var sr segReader
			sr.reset(f, s.end)
			for off := from; off < s.end; {
				h, data, ok := sr.record(off)
				if !ok {
					off = sr.resync(off)
					continue
				}
				fn(data)
				off += h.size()
			}
			f.Close()
		}
	}
	return nil
}

// Stats returns the reader's counters: its backlog, acknowledgements and
// drops, with the counters the readers share (appends, the disk's).
func (r *Reader) Stats() Stats {
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	st := q.st
	for l, ln := range q.lanes {
		c := ln.cur[r.i]
		ls := &st.Lanes[l]
		*ls = c.st
		ls.Appended, ls.AppendedReadings = ln.st.Appended, ln.st.AppendedReadings
		ls.Lost, ls.LostReadings = ln.st.Lost, ln.st.LostReadings
		ls.Bytes = ln.bytesOf(c)
		ls.Memory = int64(len(ln.mem) - c.memAcked)
		ls.Records += ls.Memory
		for _, m := range ln.mem[c.memAcked:] {
			ls.Readings += int64(m.readings)
		}
		if c.oldest != 0 && ls.Records > 0 {
			ls.Oldest = time.Unix(0, c.oldest)
		}
	}
	if r.old != nil {
		st.add(r.old.Stats())
	}
	return st
}

// add adds the counters of o, a queue this one drains (nothing is
// appended to it), to st.
func (st *Stats) add(o Stats) {
	for l := range st.Lanes {
		st.Lanes[l].add(o.Lanes[l])
	}
	st.Corrupt += o.Corrupt
	st.CorruptBytes += o.CorruptBytes
	st.TornBytes += o.TornBytes
}

// syncsAtOnce says whether appends to the lane are fsynced at once, not
// at the group commit: alarms always (unless SyncEvery is negative), every
// lane when SyncEvery is 0.
func (q *Queue) syncsAtOnce(ln *lane) bool {
	return q.opt.SyncEvery == 0 || q.opt.SyncEvery > 0 && ln.l == LaneAlarm
}

// kick asks the lane's syncer for an fsync now.
func kick(ln *lane) { poke(ln.kick) }

// poke sends on c, a channel of one, unless a send is pending.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// syncLoop fsyncs the lane's written segments and ack file once kicked (a
// write): at once when the lane syncs at once, or else SyncEvery after the
// first write since its last fsync, covering everything written meanwhile
// (the group commit), or as soon as every reader acknowledged all of it:
// what the hub has needs no fsync (see delivered), so that a station at
// rest, whose hub takes each poll within milliseconds, does not fsync its
// readings at all. An idle queue wakes nobody. It ends when Close closes
// q.done.
func (q *Queue) syncLoop(ln *lane) {
	defer q.wg.Done()
	var window *time.Timer
	if !q.syncsAtOnce(ln) && q.opt.SyncEvery > 0 {
		window = time.NewTimer(q.opt.SyncEvery)
		window.Stop()
		defer window.Stop()
	}
	for {
		select {
		case <-q.done:
			return
		case <-ln.kick:
		}
		if window != nil {
			window.Reset(q.opt.SyncEvery)
		wait:
			for !q.delivered(ln) {
				select {
				case <-q.done:
					return
				case <-window.C:
					break wait
				case <-ln.acked:
				}
			}
			window.Stop()
		}
		q.syncOnce(ln)
	}
}

// delivered says whether every reader acknowledged all the lane wrote, so
// that its group commit has nothing to make durable: a power cut can lose
// only what the hub already has (the next Open starts a new segment, and
// an acknowledged position past what survived delivers nothing of it).
func (q *Queue) delivered(ln *lane) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return ln.deliveredWritten()
}

// deliveredWritten is delivered, called with q.mu held.
func (ln *lane) deliveredWritten() bool {
	return !slices.ContainsFunc(ln.cur, func(c *cursor) bool { return c.ack.less(ln.wrote) })
}

// retryEvery is how often records held in memory are offered to the disk
// again when no append comes.
const retryEvery = time.Second

// retryLoop offers the records held in memory, and the ack positions not
// written, to the disk every retryEvery from a failed write until nothing
// is held and the episode of refused writes ended (see settle), and until
// Close closes q.done. A queue whose disk works wakes nobody.
func (q *Queue) retryLoop() {
	defer q.wg.Done()
	t := time.NewTimer(retryEvery)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-q.done:
			return
		case <-q.retryC:
		}
		for held := true; held; held = q.retryMemory() {
			t.Reset(retryEvery)
			select {
			case <-q.done:
				return
			case <-t.C:
			}
		}
	}
}

// retrySoon has retryLoop offer what is held to the disk again.
func (q *Queue) retrySoon() { poke(q.retryC) }

// Changed is sent on when a count of trouble changes, for one watcher (see
// pipeline.WatchQueues) to read Stats then rather than every second: the
// disk refusing writes and taking them again (WriteErrors, WriteFailing),
// records dropped or lost (Dropped, DroppedReadings, FullDrops,
// MemoryDrops, Lost), damage (Corrupt, Unreadable, Deleted). Damage found
// by Open is in the first Stats. The channel holds one signal.
func (q *Queue) Changed() <-chan struct{} { return q.changed }

// counted signals Changed. Called with q.mu held, where a count of trouble
// changes.
func (q *Queue) counted() { poke(q.changed) }

// retryMemory writes the records held in memory to disk if it takes them,
// and says whether anything is still held or the episode of refused
// writes goes on.
func (q *Queue) retryMemory() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return false
	}
	if !q.holds() {
		q.settle()
		return q.st.WriteFailing
	}
	flushed := true
	for _, ln := range q.lanes {
		flushed = q.flushMemory(ln) && flushed
	}
	if flushed {
		q.writeWorks()
		for _, ln := range q.lanes {
			if ln.gen != ln.synced && q.opt.SyncEvery >= 0 {
				kick(ln)
			}
		}
	}
	return q.holds() || q.st.WriteFailing
}

// holds says whether a lane holds records in memory or an ack position
// the disk refused. Called with q.mu held.
func (q *Queue) holds() bool {
	return slices.ContainsFunc(q.lanes[:], func(ln *lane) bool {
		return len(ln.mem) > 0 || slices.ContainsFunc(ln.cur, func(c *cursor) bool { return c.ackFailed })
	})
}

// syncOnce fsyncs what was written to the lane since the last time and
// wakes the Appends it covers.
func (q *Queue) syncOnce(ln *lane) {
	q.mu.Lock()
	gen := ln.gen
	files := ln.pending
	ln.pending = nil
	closeN := len(files)
	var w *os.File // the active segment, when written since
	if gen != ln.synced {
		w = ln.w
	}
	if ln.deliveredWritten() {
		// What every reader acknowledged needs no fsync: the rotated
		// segments are closed without one, the active one only checked
		// for a name.
		for _, f := range files {
			f.Close()
		}
		files, closeN = nil, 0
	} else if w != nil {
		files = append(files, w)
	}
	now := time.Now()
	for _, c := range ln.cur {
		if c.ackDirty && now.Sub(c.ackSynced) >= ackSyncEvery {
			files = append(files, c.ackF)
			c.ackDirty, c.ackSynced = false, now
		}
	}
	dir := ln.dirDirty
	ln.dirDirty = false
	if len(files) > 0 || dir {
		ln.syncing = now
	}
	q.mu.Unlock()
	if len(files) == 0 && !dir && w == nil {
		return
	}

	var err error
	for i, f := range files {
		if e := durable.Sync(f); e != nil && err == nil {
			err = e
		}
		if i < closeN {
			f.Close()
		}
	}
	if dir {
		if e := durable.SyncDir(ln.dir); e != nil && err == nil {
			err = e
		}
	}
	if err == nil && w != nil && unlinked(w) {
		err = fmt.Errorf("segment %s was deleted while the queue ran", w.Name())
	}

	q.mu.Lock()
	ln.synced, ln.syncing = gen, time.Time{}
	ln.syncErr = err
	if err != nil {
		// What the failed fsync covered may not be on disk: nothing more
		// goes to that segment.
		ln.stale = true
	}
	if len(files) > 0 || dir {
		q.st.Syncs++
	}
	if err != nil {
		q.st.SyncErrors++
		q.log.Error("queue: fsync failed", "lane", ln.l, "err", err)
	}
	q.syncedC.Broadcast()
	q.mu.Unlock()
}

// Close fsyncs what was written and closes the queue. Batches handed out
// and not acknowledged are handed out again after the next Open.
func (q *Queue) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	if q.wake != nil {
		close(q.wake)
		q.wake = nil
	}
	var old []*Queue
	for _, r := range q.readers {
		if r.old != nil {
			old = append(old, r.old)
			r.old = nil
		}
	}
	q.mu.Unlock()
	close(q.done)
	q.wg.Wait()
	var errs []error
	for _, o := range old {
		errs = append(errs, o.Close())
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	for _, ln := range q.lanes {
		if len(ln.mem) == 0 {
			continue
		}
		for _, c := range ln.cur {
			c.memOut = c.memAcked // nothing is in flight any more
		}
		if !q.flushMemory(ln) {
			q.log.Error("queue: closing with records the disk refused; they are lost", "lane", ln.l, "records", len(ln.mem), "err", q.st.WriteError)
		}
	}
	for _, ln := range q.lanes {
		var lerrs []error
		for _, f := range ln.pending {
			lerrs = append(lerrs, f.Sync(), f.Close())
		}
		ln.pending = nil
		if q.opt.SyncEvery >= 0 {
			lerrs = append(lerrs, ln.w.Sync())
			for _, c := range ln.cur {
				if c.ackDirty {
					lerrs = append(lerrs, c.ackF.Sync())
				}
			}
			// A lane deleted under the queue, with nothing written to it
			// since, has no name to make durable.
			if ln.dirDirty {
				if err := durable.SyncDir(ln.dir); !errors.Is(err, fs.ErrNotExist) {
					lerrs = append(lerrs, err)
				}
			}
		}
		ln.synced, ln.syncErr = ln.gen, errors.Join(lerrs...)
		errs = append(errs, ln.syncErr)
	}
	q.syncedC.Broadcast()
	for _, ln := range q.lanes {
		errs = append(errs, ln.close())
	}
	errs = append(errs, q.lock.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("queue: close: %w", err)
	}
	return nil
}

func (ln *lane) close() error {
	var errs []error
	if ln.w != nil {
		errs = append(errs, ln.w.Close())
		ln.w = nil
	}
	for _, c := range ln.cur {
		if c.rf != nil {
			c.rf.Close()
			c.rf = nil
		}
		if c.ackF != nil {
			errs = append(errs, c.ackF.Close())
			c.ackF = nil
		}
	}
	return errors.Join(errs...)
}
