package queue

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// snapshot returns every file under dir by its path relative to dir.
func snapshot(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		rel, _ := filepath.Rel(dir, path)
		files[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func restore(t testing.TB, dir string, files map[string][]byte) {
	t.Helper()
	for rel, b := range files {
		path := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// smallQueue is a closed queue with telemetry records 0..5 and alarms
// 100..102, each lane in one segment file; it returns the files and the
// name of the telemetry segment.
func smallQueue(t testing.TB) (map[string][]byte, string) {
	t.Helper()
	dir := t.TempDir()
	q, err := Open(dir, testOpts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	appendRange(t, q, LaneTelemetry, 0, 6)
	appendRange(t, q, LaneAlarm, 100, 103)
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	files := snapshot(t, dir)
	seg := filepath.Join("telemetry", segName(1))
	if len(files[seg]) != 6*124 {
		t.Fatalf("telemetry segment %s holds %d bytes, want %d", seg, len(files[seg]), 6*124)
	}
	return files, seg
}

// garbage is random bytes without the record magic in them.
func garbage(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return bytes.ReplaceAll(b, magic[:1], []byte{0})
}

func TestTruncatedAtEveryOffsetPlusGarbage(t *testing.T) {
	files, seg := smallQueue(t)
	orig := files[seg]
	root := t.TempDir()
	for off := 0; off <= len(orig); off++ {
		g := garbage(37, uint64(off))
		damaged := map[string][]byte{}
		for k, v := range files {
			damaged[k] = v
		}
		damaged[seg] = append(orig[:off:off], g...)
		dir := filepath.Join(root, "q", segName(uint64(off)))
		restore(t, dir, damaged)

		q, err := Open(dir, testOpts, testLog(t))
		if err != nil {
			t.Fatalf("offset %d: Open: %v", off, err)
		}
		intact := off / 124
		st := q.Stats()
		if st.TornBytes != int64(off-intact*124+len(g)) || st.Corrupt != 0 {
			t.Fatalf("offset %d: %d torn bytes, %d corrupt regions, want %d and 0", off, st.TornBytes, st.Corrupt, off-intact*124+len(g))
		}
		if tl := st.Lanes[LaneTelemetry]; tl.Records != int64(intact) || tl.Readings != readingsOf(0, intact) {
			t.Fatalf("offset %d: %d records with %d readings queued, want %d with %d", off, tl.Records, tl.Readings, intact, readingsOf(0, intact))
		}
		alarms, tel := drain(t, q, 4, false)
		checkSeq(t, "alarms", alarms, 100, 103)
		checkSeq(t, "telemetry", tel, 0, intact)
		q.Close()

		// The tail was cut: a second Open finds nothing to cut.
		q, err = Open(dir, testOpts, testLog(t))
		if err != nil {
			t.Fatalf("offset %d: second Open: %v", off, err)
		}
		if st := q.Stats(); st.TornBytes != 0 {
			t.Fatalf("offset %d: second Open cut %d bytes", off, st.TornBytes)
		}
		_, tel = drain(t, q, 4, true)
		checkSeq(t, "telemetry after the second Open", tel, 0, intact)
		q.Close()
		os.RemoveAll(dir)
	}
}

func TestCorruptRecords(t *testing.T) {
	files, seg := smallQueue(t)
	at := func(i int) int { return i * 124 }
	cases := []struct {
		name    string
		damage  func(b []byte) []byte
		want    []int
		corrupt int64 // regions
		bytes   int64
		torn    int64
	}{
		{"flipped data byte", func(b []byte) []byte { b[at(2)+60] ^= 1; return b }, []int{0, 1, 3, 4, 5}, 1, 124, 0},
		{"flipped magic", func(b []byte) []byte { b[at(2)] ^= 0x80; return b }, []int{0, 1, 3, 4, 5}, 1, 124, 0},
		{"flipped crc", func(b []byte) []byte { b[at(2)+5] ^= 0x10; return b }, []int{0, 1, 3, 4, 5}, 1, 124, 0},
		{"huge length", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[at(2)+8:], 0xffffffff)
			return b
		}, []int{0, 1, 3, 4, 5}, 1, 124, 0},
		{"length pointing into the next record", func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[at(2)+8:], 150)
			return b
		}, []int{0, 1, 3, 4, 5}, 1, 124, 0},
		{"two records zeroed", func(b []byte) []byte { clear(b[at(2):at(4)]); return b }, []int{0, 1, 4, 5}, 1, 248, 0},
		{"first record damaged", func(b []byte) []byte { b[at(0)+30] ^= 4; return b }, []int{1, 2, 3, 4, 5}, 1, 124, 0},
		{"last record damaged is a torn tail", func(b []byte) []byte { b[at(5)+30] ^= 4; return b }, []int{0, 1, 2, 3, 4}, 0, 0, 124},
		{"garbage between records", func(b []byte) []byte {
			return append(append(append([]byte{}, b[:at(3)]...), garbage(50, 9)...), b[at(3):]...)
		}, []int{0, 1, 2, 3, 4, 5}, 1, 50, 0},
		{"a magic in the garbage", func(b []byte) []byte {
			g := append(append(garbage(20, 1), magic[:]...), garbage(20, 2)...)
			return append(append(append([]byte{}, b[:at(3)]...), g...), b[at(3):]...)
		}, []int{0, 1, 2, 3, 4, 5}, 1, 44, 0},
		{"all garbage", func(b []byte) []byte { return garbage(len(b), 3) }, nil, 0, 0, 744},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			damaged := map[string][]byte{}
			for k, v := range files {
				damaged[k] = v
			}
			damaged[seg] = c.damage(bytes.Clone(files[seg]))
			dir := t.TempDir()
			restore(t, dir, damaged)
			q := open(t, dir, testOpts)
			st := q.Stats()
			if st.Corrupt != c.corrupt || st.CorruptBytes != c.bytes || st.TornBytes != c.torn {
				t.Errorf("corrupt %d regions of %d bytes, torn %d; want %d, %d, %d", st.Corrupt, st.CorruptBytes, st.TornBytes, c.corrupt, c.bytes, c.torn)
			}
			if tl := st.Lanes[LaneTelemetry]; tl.Records != int64(len(c.want)) {
				t.Errorf("%d records queued, want %d", tl.Records, len(c.want))
			}
			alarms, tel := drain(t, q, 2, true)
			checkSeq(t, "alarms", alarms, 100, 103)
			if !equalInts(tel, c.want) {
				t.Fatalf("telemetry %v, want %v", tel, c.want)
			}
			// Skipped regions were counted at Open, not again by Next.
			if st2 := q.Stats(); st2.Corrupt != c.corrupt {
				t.Fatalf("Next counted corruption again: %d", st2.Corrupt)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// damageFourth damages the fourth record (of 124 bytes each) of the first
// telemetry segment under dir, on disk.
func damageFourth(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, "telemetry", segName(1)), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("XX"), 3*124+50); err != nil {
		t.Fatal(err)
	}
}

// A record damaged on disk while the queue runs is skipped by Next and
// counted.
func TestCorruptionWhileRunning(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, testOpts)
	appendRange(t, q, LaneTelemetry, 0, 6)
	damageFourth(t, dir)
	_, tel := drain(t, q, 10, true)
	if want := []int{0, 1, 2, 4, 5}; !equalInts(tel, want) {
		t.Fatalf("telemetry %v, want %v", tel, want)
	}
	if st := q.Stats(); st.Corrupt != 1 || st.CorruptBytes != 124 {
		t.Fatalf("corrupt %d regions of %d bytes, want 1 of 124", st.Corrupt, st.CorruptBytes)
	}
}

func TestAckFileDamage(t *testing.T) {
	dir := t.TempDir()
	q := open(t, dir, testOpts)
	appendRange(t, q, LaneTelemetry, 0, 10)
	for range 3 { // acknowledged positions 2 (slot 1), 4 (slot 0), 6 (slot 1)
		if err := q.Ack(next(t, q, 2)); err != nil {
			t.Fatal(err)
		}
	}
	q.Close()
	files := snapshot(t, dir)
	ack := filepath.Join("telemetry", "ack")
	if len(files[ack]) != 64 {
		t.Fatalf("ack file of %d bytes", len(files[ack]))
	}
	cases := []struct {
		name   string
		damage func(b []byte) []byte
		from   int
	}{
		{"intact", func(b []byte) []byte { return b }, 6},
		{"newer slot damaged", func(b []byte) []byte { b[40] ^= 1; return b }, 4},
		{"older slot damaged", func(b []byte) []byte { b[8] ^= 1; return b }, 6},
		{"both damaged", func(b []byte) []byte { b[8] ^= 1; b[40] ^= 1; return b }, 0},
		{"torn in the newer slot", func(b []byte) []byte { return b[:40] }, 4},
		{"empty", func(b []byte) []byte { return nil }, 0},
		{"garbage", func(b []byte) []byte { return garbage(100, 5) }, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			damaged := map[string][]byte{}
			for k, v := range files {
				damaged[k] = v
			}
			damaged[ack] = c.damage(bytes.Clone(files[ack]))
			d := t.TempDir()
			restore(t, d, damaged)
			q := open(t, d, testOpts)
			_, tel := drain(t, q, 3, true)
			checkSeq(t, "telemetry", tel, c.from, 10)
		})
	}
}

func FuzzOpen(f *testing.F) {
	files, seg := smallQueue(f)
	ackName := filepath.Join("telemetry", "ack")
	f.Add(files[seg], []byte(nil))
	f.Add(files[seg][:300], []byte(nil))
	f.Add(append(bytes.Clone(files[seg]), garbage(40, 1)...), []byte(nil))
	f.Add(garbage(200, 2), garbage(64, 3))
	var ack [32]byte
	binary.LittleEndian.PutUint64(ack[:], 1)
	binary.LittleEndian.PutUint64(ack[8:], 1)
	binary.LittleEndian.PutUint64(ack[16:], 248)
	f.Add(files[seg], bytes.Clone(ack[:])) // the CRC is wrong: ignored
	binary.LittleEndian.PutUint32(ack[24:], crc32.Checksum(ack[:24], castagno))
	f.Add(files[seg], ack[:]) // acknowledged up to record 2
	f.Fuzz(func(t *testing.T, segData, ackData []byte) {
		dir := t.TempDir()
		restore(t, dir, map[string][]byte{seg: segData, ackName: ackData})
		q, err := Open(dir, testOpts, nil)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		st := q.Stats()
		var n, readings, size int64
		for {
			b := next(t, q, 3)
			if len(b.Entries) == 0 {
				break
			}
			for _, e := range b.Entries {
				n++
				readings += int64(e.Readings)
				size += headerSize + int64(len(e.Data))
			}
		}
		tl := st.Lanes[LaneTelemetry]
		if tl.Records != n || tl.Readings != readings {
			t.Fatalf("Stats said %d records with %d readings, Next gave %d with %d", tl.Records, tl.Readings, n, readings)
		}
		if size+st.CorruptBytes+st.TornBytes > int64(len(segData)) {
			t.Fatalf("%d bytes of records + %d corrupt + %d torn from a file of %d", size, st.CorruptBytes, st.TornBytes, len(segData))
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
		q, err = Open(dir, testOpts, nil)
		if err != nil {
			t.Fatalf("second Open: %v", err)
		}
		defer q.Close()
		if st2 := q.Stats(); st2.TornBytes != 0 || st2.Lanes[LaneTelemetry].Records != n {
			t.Fatalf("second Open: %d torn bytes, %d records, want 0 and %d", st2.TornBytes, st2.Lanes[LaneTelemetry].Records, n)
		}
	})
}

// A record damaged on disk while the queue runs is counted once, whichever
// reader meets it: by both, or by the second alone, after the first read
// it whole.
func TestCorruptionWhileRunningTwoReaders(t *testing.T) {
	for _, tc := range []struct {
		name       string
		firstAfter bool // the first reader takes the records before the damage
	}{
		{"both meet it", false},
		{"the second alone", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			q := open(t, dir, twoReaders)
			appendRange(t, q, LaneTelemetry, 0, 6)
			mqtt, influx := q.Reader("mqtt"), q.Reader("influx")
			var first []int
			if tc.firstAfter {
				first = takeN(t, mqtt, LaneTelemetry, 6, 10)
			}
			damageFourth(t, dir)
			if !tc.firstAfter {
				_, first = drain(t, mqtt, 10, true)
			}
			_, second := drain(t, influx, 10, true)
			wantFirst := []int{0, 1, 2, 4, 5}
			if tc.firstAfter {
				wantFirst = []int{0, 1, 2, 3, 4, 5}
			}
			if !equalInts(first, wantFirst) || !equalInts(second, []int{0, 1, 2, 4, 5}) {
				t.Fatalf("mqtt took %v, influx %v; want %v and [0 1 2 4 5]", first, second, wantFirst)
			}
			if st := q.Stats(); st.Corrupt != 1 || st.CorruptBytes != 124 {
				t.Fatalf("corrupt %d regions of %d bytes, want 1 of 124", st.Corrupt, st.CorruptBytes)
			}
		})
	}
}
