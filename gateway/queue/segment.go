package queue

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
)

// Record framing on disk (little endian):
//
//	0  magic    4 bytes  b5 7a 1e 9c
//	4  crc      uint32   CRC-32C of bytes 8 .. end of data
//	8  length   uint32   length of data
//	12 readings uint32
//	16 enqueued int64    Unix nanoseconds
//	24 data
//
// The magic lets a reader find the next record after a corrupt one; the CRC
// covers the length, so a torn or overwritten length is caught.

const (
	headerSize = 24
	// MaxRecordBytes is the largest Record.Data that Append accepts. A
	// length above it on disk marks a corrupt record.
	MaxRecordBytes = 1 << 20
)

var (
	magic    = [4]byte{0xb5, 0x7a, 0x1e, 0x9c}
	castagno = crc32.MakeTable(crc32.Castagnoli)
)

// appendRecord appends the framed record to dst.
func appendRecord(dst []byte, data []byte, readings int, enqueued int64) []byte {
	start := len(dst)
	dst = append(dst, magic[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(data)))
	dst = binary.LittleEndian.AppendUint32(dst, uint32(readings))
	dst = binary.LittleEndian.AppendUint64(dst, uint64(enqueued))
	dst = append(dst, data...)
	crc := crc32.Checksum(dst[start+8:], castagno)
	binary.LittleEndian.PutUint32(dst[start+4:], crc)
	return dst
}

// header is a record's parsed header.
type header struct {
	length   int
	readings int
	enqueued int64
}

func (h header) size() int64 { return headerSize + int64(h.length) }

// segReader reads records of one segment file through a bounded window:
// its memory is the window (64 KiB, growing to hold one record of at most
// MaxRecordBytes), whatever the size of the file.
type segReader struct {
	f    *os.File
	end  int64  // bytes of the file that may be read
	buf  []byte // window: file bytes [off, off+len(buf))
	off  int64
	back []byte // backing array of buf
}

const window = 64 << 10

func (r *segReader) reset(f *os.File, end int64) {
	r.f, r.end = f, end
	r.buf = r.buf[:0]
	r.off = 0
}

// at returns the file bytes [off, off+n), or ok false if they lie beyond
// end or cannot be read.
func (r *segReader) at(off int64, n int) (b []byte, ok bool) {
	if off < 0 || off+int64(n) > r.end {
		return nil, false
	}
	if off >= r.off && off+int64(n) <= r.off+int64(len(r.buf)) {
		i := off - r.off
		return r.buf[i : i+int64(n)], true
	}
	size := max(window, n)
	if cap(r.back) < size {
		r.back = make([]byte, size)
	}
	want := min(int64(cap(r.back)), r.end-off)
	m, err := r.f.ReadAt(r.back[:want], off)
	if m < n && err != nil && !errors.Is(err, io.EOF) {
		return nil, false
	}
	r.buf, r.off = r.back[:m], off
	if m < n {
		return nil, false
	}
	return r.buf[:n], true
}

// record parses the record at off: its header and data (valid until the
// next call), or ok false if there is no intact record there.
func (r *segReader) record(off int64) (h header, data []byte, ok bool) {
	b, ok := r.at(off, headerSize)
	if !ok || [4]byte(b[:4]) != magic {
		return h, nil, false
	}
	h.length = int(binary.LittleEndian.Uint32(b[8:]))
	if h.length > MaxRecordBytes {
		return h, nil, false
	}
	h.readings = int(binary.LittleEndian.Uint32(b[12:]))
	h.enqueued = int64(binary.LittleEndian.Uint64(b[16:]))
	crc := binary.LittleEndian.Uint32(b[4:])
	b, ok = r.at(off, headerSize+h.length)
	if !ok || crc32.Checksum(b[8:], castagno) != crc {
		return h, nil, false
	}
	return h, b[headerSize:], true
}

// resync finds the first intact record after off, or returns end.
func (r *segReader) resync(off int64) int64 {
	for pos := off + 1; pos+headerSize <= r.end; {
		n := int(min(int64(window), r.end-pos))
		b, ok := r.at(pos, n)
		if !ok {
			return r.end
		}
		i := bytes.Index(b, magic[:])
		if i < 0 {
			// The magic may straddle the window's end.
			pos += int64(max(1, n-len(magic)+1))
			continue
		}
		cand := pos + int64(i)
		if _, _, ok := r.record(cand); ok {
			return cand
		}
		pos = cand + 1
	}
	return r.end
}

// scanResult is what a scan of a segment found.
type scanResult struct {
	records, readings int64
	end               int64 // just after the last intact record (or start)
	corrupt           int64 // corrupt regions skipped between intact records
	corruptBytes      int64
	tail              int64 // bytes after the last intact record
}

// scan reads the records of a segment from start to r.end.
func (r *segReader) scan(start int64) scanResult {
	s := scanResult{end: start}
	off := start
	for off < r.end {
		h, _, ok := r.record(off)
		if ok {
			s.records++
			s.readings += int64(h.readings)
			off += h.size()
			s.end = off
			continue
		}
		next := r.resync(off)
		if next >= r.end {
			break
		}
		s.corrupt++
		s.corruptBytes += next - off
		off = next
	}
	s.tail = r.end - s.end
	return s
}
