package main

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/seq"
)

// prefill puts a backlog of at least n readings into the gateway's queues,
// as an outage of the hub would have left it: telemetry of the station's own
// devices, with sequence numbers from the gateway's own counters and
// timestamps of an hour ago, so that it reaches the hub as historical data.
// The gateway must not be running. It returns the number of readings queued
// per uplink, and the last message queued.
func prefill(st *configs.Station, n int, log *slog.Logger) (int, model.Message, error) {
	var m model.Message
	counters, err := seq.Open(st.SeqFile(), log)
	if err != nil {
		return 0, m, err
	}
	q, err := pipeline.OpenQueue(st, log)
	if err != nil {
		return 0, m, err
	}
	defer q.Close()
	counted := newTally(st)
	start := time.Now().Add(-time.Hour)
	type polledDevice struct {
		d       *configs.Device
		t       *configs.Template
		signals []configs.Signal
	}
	var polled []polledDevice // the devices with readings
	for i := range st.Devices {
		t := st.Templates[st.Devices[i].Template]
		if sigs := t.Body.Signals(); len(sigs) > 0 {
			polled = append(polled, polledDevice{&st.Devices[i], t, sigs})
		}
	}
	if len(polled) == 0 {
		return 0, m, fmt.Errorf("backlog: station %s has no device with readings", st.Station.ID)
	}
	// Appended a thousand records at a time, each a slice of one buffer.
	var buf []byte
	var recs []queue.Record
	var ends []int
	flush := func() error {
		from := 0
		for i, end := range ends {
			recs[i].Data, from = buf[from:end], end
		}
		err := q.Append(queue.LaneTelemetry, recs...)
		buf, recs, ends = buf[:0], recs[:0], ends[:0]
		if err != nil {
			return fmt.Errorf("prefilling the queue: %w", err)
		}
		return nil
	}
	total := 0
	for i := 0; total < n; i++ {
		p := polled[i%len(polled)]
		s, err := counters.Next(p.d.ID)
		if err != nil {
			return 0, m, err
		}
		m = model.Message{
			Station: st.Station.ID, StationType: st.Station.Type, Device: p.d.ID, DeviceKind: p.t.Kind,
			Seq: s, Time: start.Add(time.Duration(i) * time.Millisecond).UTC(), Kind: model.KindTelemetry,
		}
		for j, sg := range p.signals {
			m.Readings = append(m.Readings, model.Reading{Signal: sg.Name, Unit: sg.Unit, Quality: model.Good, Value: backlogValue(sg.Type, i+j)})
		}
		buf = model.AppendBinary(buf, &m)
		ends = append(ends, len(buf))
		recs = append(recs, queue.Record{Readings: m.Values()})
		total += counted.values(&m)
		if len(ends) == 1000 {
			if err := flush(); err != nil {
				return 0, m, err
			}
		}
	}
	if len(ends) > 0 {
		if err := flush(); err != nil {
			return 0, m, err
		}
	}
	return total, m, nil
}

func backlogValue(t configs.ValueType, i int) model.Value {
	switch t {
	case configs.Bool:
		return model.Bool(i%2 == 0)
	case configs.Text:
		return model.String(fmt.Sprintf("backlog-%d", i%10))
	}
	return model.Number(float64(i%1000) / 4)
}

// queuedMessages lists, per uplink, the messages waiting for it in the
// queue at dir, by id (station/device/seq) with their readings, reading a
// copy of it so that the gateway's files stay as they are.
func queuedMessages(dir string, uplinks []string, work string, t tally) (map[string]map[string]int, error) {
	cp, err := os.MkdirTemp(work, "queue-copy-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(cp)
	if err := os.CopyFS(cp, os.DirFS(dir)); err != nil {
		return nil, err
	}
	q, err := queue.Open(cp, queue.Options{MaxBytes: 1 << 40, SyncEvery: -1, Readers: uplinks}, slog.New(slog.DiscardHandler))
	if err != nil {
		return nil, err
	}
	defer q.Close()
	all := map[string]map[string]int{}
	for _, u := range uplinks {
		ids := map[string]int{}
		all[u] = ids
		r := q.Reader(u)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			b, err := r.Next(ctx, 1000)
			cancel()
			if err != nil {
				break // drained
			}
			for _, e := range b.Entries {
				m, err := model.DecodeBinary(e.Data)
				if err != nil {
					return nil, err
				}
				ids[m.ID()] = t.values(&m)
			}
			if err := r.Ack(b); err != nil {
				return nil, err
			}
		}
	}
	return all, nil
}

// damage truncates a file at a random byte and appends up to 512 bytes of
// garbage.
func damage(path string, rng *rand.Rand) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() > 0 {
		if err := os.Truncate(path, rng.Int64N(fi.Size())); err != nil {
			return err
		}
	}
	garbage := make([]byte, 1+rng.IntN(512))
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(garbage); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
