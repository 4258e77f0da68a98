//go:build linux

package queue

import (
	"bytes"
	"context"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTwoUplinks is the gateway's shape with InfluxDB configured: one
// goroutine appends telemetry records one per Append, and two readers (the
// uplinks) each take batches of 500 and acknowledge them. It reports the
// bytes the process wrote (write(2) and the like, segments and ack files)
// and its CPU time, both per message.
func BenchmarkTwoUplinks(b *testing.B) {
	recs := make([]Record, 1000)
	for i := range recs {
		recs[i] = telemetryRecord(uint64(i))
	}
	opt := DefaultOptions()
	opt.Readers = []string{"mqtt", "influx"}
	q, err := Open(b.TempDir(), opt, testLog(b))
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	b.SetBytes(int64(len(recs[0].Data)))
	w0, cpu0 := wchar(b), cpuTime()
	b.ResetTimer()
	var wg sync.WaitGroup
	for _, name := range opt.Readers {
		r := q.Reader(name)
		wg.Go(func() {
			for got := 0; got < b.N; {
				batch, err := r.Next(context.Background(), 500)
				if err != nil {
					b.Error(err)
					return
				}
				got += len(batch.Entries)
				if err := r.Ack(batch); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	for i := range b.N {
		if err := q.Append(LaneTelemetry, recs[i%len(recs)]); err != nil {
			b.Fatal(err)
		}
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(wchar(b)-w0)/float64(b.N), "written-B/msg")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/msg")
}

// wchar is how many bytes the process asked to write so far
// (/proc/self/io).
func wchar(b *testing.B) int64 {
	io, err := os.ReadFile("/proc/self/io")
	if err != nil {
		b.Skip("no /proc/self/io:", err)
	}
	_, rest, _ := bytes.Cut(io, []byte("wchar: "))
	n, _, _ := bytes.Cut(rest, []byte("\n"))
	v, err := strconv.ParseInt(string(n), 10, 64)
	if err != nil {
		b.Fatalf("/proc/self/io: %q", io)
	}
	return v
}

// cpuTime is the process's user and system time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
