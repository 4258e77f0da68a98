package pipeline

import (
	"context"
	"strconv"
	"strings"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
)

// StatsSource is a queue whose counters can be read.
type StatsSource interface {
	Stats() queue.Stats
}

// WatchQueues reports to the hub, as events of the gateway itself, every
// reading a queue dropped to stay under its cap and every damaged region it
// skipped on disk, until ctx ends. Each event carries the increase since
// the last one and the total, so the hub can account for every reading
// recorded at the station. It checks when changed says a count changed
// (see queue.Queue.Changed), with every between two checks at least (a
// storm of drops is one event a second), and every recheck regardless, so
// that a station at rest is not woken every second for nothing.
func WatchQueues[Q StatsSource](ctx context.Context, in *Ingest, queues map[string]Q, changed <-chan struct{}, every, recheck time.Duration) {
	last := map[string]queue.Stats{}
	failedAt := map[string]queue.Stats{} // when the disk started refusing writes
	// When the first write was refused, of the failure reported: on a full
	// disk the queue's own episodes may end and begin again between two
	// checks, as it makes room and fills it.
	began := map[string]time.Time{}
	check := func() {
		for name, q := range queues {
			s, prev := q.Stats(), last[name]
			last[name] = s
			t, pt := s.Lanes[queue.LaneTelemetry], prev.Lanes[queue.LaneTelemetry]
			a := s.Kept()
			// A disk that refused writes and took them again between two
			// checks is reported as failed and recovered, all the same.
			blip := !s.WriteFailing && !prev.WriteFailing && s.WriteErrors > prev.WriteErrors
			if s.WriteFailing && !prev.WriteFailing || blip {
				failedAt[name], began[name] = prev, s.WriteFailedAt
				in.Emit(model.GatewayEvent(model.EventQueueWriteFailed, model.Critical, map[string]string{
					"uplink":         name,
					"error":          s.WriteError,
					"alarms_held":    strconv.FormatInt(a.Memory, 10),
					"telemetry_held": strconv.FormatInt(t.Memory, 10),
					"alarms_lost":    strconv.FormatInt(a.Lost, 10),
					"readings_lost":  strconv.FormatInt(t.DroppedReadings-pt.DroppedReadings, 10),
					"reason":         "the disk refuses the queue's writes or does not answer: what it refuses is held in memory and still sent; telemetry beyond the memory reserve is dropped",
				}))
			}
			if !s.WriteFailing && prev.WriteFailing || blip {
				f := failedAt[name]
				in.Emit(model.GatewayEvent(model.EventQueueWriteRecovered, model.Info, map[string]string{
					"uplink":        name,
					"outage":        outage(s.WriteRecoveredAt.Sub(began[name])),
					"alarms_lost":   strconv.FormatInt(a.Lost-f.Kept().Lost, 10),
					"readings_lost": strconv.FormatInt(t.DroppedReadings-f.Lanes[queue.LaneTelemetry].DroppedReadings, 10),
					"reason":        "the disk takes the queue's writes again",
				}))
			}
			if d := t.DroppedReadings - pt.DroppedReadings; d > 0 {
				var why []string
				if s.Unreadable > prev.Unreadable {
					why = append(why, "queue files were deleted or could not be read: the telemetry in them was lost")
				}
				if s.FullDrops > prev.FullDrops {
					why = append(why, "the disk is full: the oldest telemetry was dropped to make room ("+s.FullDrop+")")
				}
				if s.MemoryDrops > prev.MemoryDrops {
					why = append(why, "the disk refuses writes and the memory reserve is full: telemetry was dropped ("+s.WriteError+")")
				}
				reason := strings.Join(why, "; ")
				if reason == "" {
					reason = "queue size cap reached: the oldest telemetry was dropped"
				}
				in.Emit(model.GatewayEvent(model.EventQueueDrops, model.Warning, map[string]string{
					"uplink":                 name,
					"dropped_readings":       strconv.FormatInt(d, 10),
					"dropped_records":        strconv.FormatInt(t.Dropped-pt.Dropped, 10),
					"dropped_readings_total": strconv.FormatInt(t.DroppedReadings, 10),
					"reason":                 reason,
				}))
			}
			if pa := prev.Kept(); s.Deleted > prev.Deleted || a.Dropped > pa.Dropped {
				sev := model.Warning
				if a.Dropped > pa.Dropped {
					sev = model.Critical
				}
				in.Emit(model.GatewayEvent(model.EventQueueDamage, sev, map[string]string{
					"uplink":        name,
					"lanes_deleted": strconv.FormatInt(s.Deleted-prev.Deleted, 10),
					"alarms_lost":   strconv.FormatInt(a.Dropped-pa.Dropped, 10),
					"reason":        "the queue's files were deleted while the gateway ran, or could not be read: it made them again; alarms and health changes not yet sent from them are lost",
				}))
			}
			if s.Corrupt > prev.Corrupt || s.TornBytes > prev.TornBytes {
				in.Emit(model.GatewayEvent(model.EventQueueDamage, model.Warning, map[string]string{
					"uplink":        name,
					"corrupt":       strconv.FormatInt(s.Corrupt-prev.Corrupt, 10),
					"corrupt_bytes": strconv.FormatInt(s.CorruptBytes-prev.CorruptBytes, 10),
					"torn_bytes":    strconv.FormatInt(s.TornBytes-prev.TornBytes, 10),
					"reason":        "damaged queue data on disk was skipped",
				}))
			}
		}
	}
	t := time.NewTicker(recheck)
	defer t.Stop()
	for {
		check()
		checked := time.Now()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-changed:
			if wait := time.Until(checked.Add(every)); wait > 0 {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
			}
		}
	}
}

// outage writes how long the disk refused writes, to the second, or to
// the millisecond or microsecond when shorter (a full disk the queue made
// room on at once): "0s" would read as no outage at all.
func outage(d time.Duration) string {
	for _, unit := range []time.Duration{time.Second, time.Millisecond, time.Microsecond} {
		if d >= unit {
			return d.Round(unit).String()
		}
	}
	return d.String()
}
