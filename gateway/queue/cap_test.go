package queue

import (
	"testing"
)

// With MaxBytes 64 KiB, segments are 8 KiB: 66 test records of 124 bytes
// each (100 of data, 24 of header).
var capOpts = Options{MaxBytes: 64 << 10, SyncEvery: testOpts.SyncEvery}

const perSeg = 66

func TestCapDropsOldestTelemetry(t *testing.T) {
	q := open(t, t.TempDir(), capOpts)
	appendRange(t, q, LaneAlarm, 10000, 10010) // 1,240 bytes
	for i := range 2000 {
		appendRange(t, q, LaneTelemetry, i, i+1)
		checkInvariants(t, q)
		if st := q.Stats(); st.Lanes[LaneAlarm].Bytes+st.Lanes[LaneTelemetry].Bytes > capOpts.MaxBytes {
			t.Fatalf("after append %d the queue holds %d+%d bytes, over the cap", i, st.Lanes[LaneAlarm].Bytes, st.Lanes[LaneTelemetry].Bytes)
		}
	}
	// 518 records fit beside the alarms (1240 + 519*124 > 65536); the
	// 519th drops the oldest segment of 66, and so on every 66 appends:
	// drops at appends 518, 584, …, 1970: 23 segments.
	const dropped = 23 * perSeg
	st := q.Stats()
	tl := st.Lanes[LaneTelemetry]
	want := LaneStats{
		Bytes:    (2000 - dropped) * 124,
		Records:  2000 - dropped,
		Readings: readingsOf(dropped, 2000),
		Appended: 2000, AppendedReadings: readingsOf(0, 2000),
		Dropped: dropped, DroppedReadings: readingsOf(0, dropped),
	}
	if tl != want {
		t.Fatalf("telemetry stats\n got  %+v\n want %+v", tl, want)
	}
	if al := st.Lanes[LaneAlarm]; al.Records != 10 || al.Dropped != 0 || al.Bytes != 1240 {
		t.Fatalf("alarm stats %+v", al)
	}
	alarms, tel := drain(t, q, 50, true)
	checkSeq(t, "alarms", alarms, 10000, 10010)
	checkSeq(t, "telemetry", tel, dropped, 2000)
}

func TestCapDropWhileHandedOut(t *testing.T) {
	for _, ack := range []bool{true, false} {
		name := "acknowledged later"
		if !ack {
			name = "rewound later"
		}
		t.Run(name, func(t *testing.T) {
			q := open(t, t.TempDir(), capOpts)
			appendRange(t, q, LaneAlarm, 10000, 10010)
			if a, _ := drain(t, q, 100, true); len(a) != 10 {
				t.Fatalf("alarms %v", a)
			}
			appendRange(t, q, LaneTelemetry, 0, 518)
			b := next(t, q, 10) // records 0..9 of the oldest segment
			if b.Lane != LaneTelemetry || len(b.Entries) != 10 {
				t.Fatalf("got %d %v records", len(b.Entries), b.Lane)
			}
			appendRange(t, q, LaneTelemetry, 518, 519) // drops records 0..65
			tl := q.Stats().Lanes[LaneTelemetry]
			if tl.Dropped != perSeg-10 || tl.DroppedReadings != readingsOf(10, perSeg) || tl.Records != 519-perSeg {
				t.Fatalf("after the drop: %+v, want the 56 records not handed out counted", tl)
			}
			// The batch's data outlives its segment.
			for i, e := range b.Entries {
				if n := recNo(t, e); n != i {
					t.Fatalf("entry %d is record %d", i, n)
				}
			}
			wantDropped, wantReadings := int64(perSeg-10), readingsOf(10, perSeg)
			if ack {
				if err := q.Ack(b); err != nil {
					t.Fatal(err)
				}
			} else {
				q.Rewind()
				wantDropped, wantReadings = perSeg, readingsOf(0, perSeg)
			}
			_, tel := drain(t, q, 100, true)
			checkSeq(t, "telemetry", tel, perSeg, 519)
			tl = q.Stats().Lanes[LaneTelemetry]
			if tl.Dropped != wantDropped || tl.DroppedReadings != wantReadings || tl.Records != 0 || tl.Readings != 0 {
				t.Fatalf("at the end: %+v, want %d dropped records with %d readings", tl, wantDropped, wantReadings)
			}
			if tl.Acked+tl.Dropped != 519 {
				t.Fatalf("%d acknowledged + %d dropped != 519 appended", tl.Acked, tl.Dropped)
			}
		})
	}
}

func TestAlarmsAloneOverCap(t *testing.T) {
	q := open(t, t.TempDir(), capOpts)
	appendRange(t, q, LaneTelemetry, 0, 100) // two segments: 66 and 34
	appendRange(t, q, LaneAlarm, 1000, 1600) // 74,400 bytes, over the cap
	appendRange(t, q, LaneTelemetry, 100, 105)
	st := q.Stats()
	tl, al := st.Lanes[LaneTelemetry], st.Lanes[LaneAlarm]
	if tl.Dropped != 105 || tl.DroppedReadings != readingsOf(0, 105) || tl.Records != 0 || tl.Bytes != 0 {
		t.Fatalf("telemetry stats %+v, want all 105 records dropped", tl)
	}
	if al.Records != 600 || al.Dropped != 0 || al.Bytes != 600*124 {
		t.Fatalf("alarm stats %+v, want 600 records kept", al)
	}
	alarms, tel := drain(t, q, 50, true)
	checkSeq(t, "alarms", alarms, 1000, 1600)
	checkSeq(t, "telemetry", tel, 0, 0)
	// Once the alarms are delivered, telemetry is kept again.
	appendRange(t, q, LaneTelemetry, 200, 210)
	_, tel = drain(t, q, 50, true)
	checkSeq(t, "telemetry after the alarms drained", tel, 200, 210)
}
