package queue

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"outpost/gateway/model"
)

// telemetryRecord is a realistic record: the binary form of a telemetry
// message of a power meter with 8 readings.
func telemetryRecord(seq uint64) Record {
	m := model.Message{
		Station: "ws-0042", StationType: model.Workstation, Device: "pm-1", DeviceKind: "power_meter",
		Seq: seq, Time: time.Unix(1795000000, int64(seq)).UTC(), Kind: model.KindTelemetry,
	}
	for i, name := range []string{"voltage_l1", "voltage_l2", "voltage_l3", "current_l1", "current_l2", "current_l3", "power_total", "energy_total"} {
		m.Readings = append(m.Readings, model.Reading{Signal: name, Value: model.Number(230 + float64(i) + float64(seq%100)/10), Unit: "V", Quality: model.Good})
	}
	return Record{Data: model.AppendBinary(nil, &m), Readings: len(m.Readings)}
}

// BenchmarkQueue appends telemetry records one per Append from one
// goroutine while another takes batches of 500 and acknowledges them; it
// reports readings per second through the whole queue.
func BenchmarkQueue(b *testing.B) {
	cases := []struct {
		name string
		opt  Options
	}{
		{"default", DefaultOptions()},
		{"fsync-every-append", Options{SyncEvery: 0}},
	}
	recs := make([]Record, 1000)
	for i := range recs {
		recs[i] = telemetryRecord(uint64(i))
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			q, err := Open(b.TempDir(), c.opt, testLog(b))
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			b.SetBytes(int64(len(recs[0].Data)))
			b.ResetTimer()
			start := time.Now()
			errc := make(chan error, 1)
			go func() {
				for i := range b.N {
					if err := q.Append(LaneTelemetry, recs[i%len(recs)]); err != nil {
						errc <- err
						return
					}
				}
				errc <- nil
			}()
			readings := 0
			for got := 0; got < b.N; {
				batch, err := q.Next(context.Background(), 500)
				if err != nil {
					b.Fatal(err)
				}
				got += len(batch.Entries)
				readings += batch.Readings()
				if err := q.Ack(batch); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(readings)/time.Since(start).Seconds(), "readings/s")
		})
	}
}

// TestBacklogMemory queues 2,000,000 readings (250,000 records), then
// drains them, and checks that the heap stays small throughout: the
// backlog lives on disk.
func TestBacklogMemory(t *testing.T) {
	const records = 250_000
	q := open(t, t.TempDir(), Options{MaxBytes: 1 << 30, SyncEvery: DefaultSyncEvery})
	const limit = 16 << 20
	var peak uint64
	sample := func(when string) {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		peak = max(peak, ms.HeapInuse)
		if ms.HeapInuse > limit {
			t.Fatalf("%s: %d bytes of heap in use, over %d", when, ms.HeapInuse, limit)
		}
	}
	sample("before")
	batch := make([]Record, 500)
	for i := 0; i < records; i += len(batch) {
		for j := range batch {
			batch[j] = telemetryRecord(uint64(i + j))
		}
		if err := q.Append(LaneTelemetry, batch...); err != nil {
			t.Fatal(err)
		}
		if i%50_000 == 0 {
			sample(fmt.Sprintf("after appending %d records", i))
		}
	}
	st := q.Stats().Lanes[LaneTelemetry]
	if st.Readings != int64(records)*8 {
		t.Fatalf("%d readings queued, want %d", st.Readings, records*8)
	}
	sample("queued")
	t.Logf("queued %d readings in %d bytes", st.Readings, st.Bytes)
	got := 0
	for n := 0; got < records; n++ {
		b, err := q.Next(context.Background(), 500)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range b.Entries {
			m, err := model.DecodeBinary(e.Data)
			if err != nil {
				t.Fatal(err)
			}
			if m.Seq != uint64(got) {
				t.Fatalf("record %d has seq %d", got, m.Seq)
			}
			got++
		}
		if err := q.Ack(b); err != nil {
			t.Fatal(err)
		}
		if n%100 == 0 {
			sample(fmt.Sprintf("after draining %d records", got))
		}
	}
	sample("drained")
	t.Logf("peak heap in use: %.1f MiB", float64(peak)/(1<<20))
	if st := q.Stats().Lanes[LaneTelemetry]; st.Records != 0 || st.Bytes > DefaultSegmentBytes {
		t.Fatalf("after draining: %+v", st)
	}
}
