package pipeline

import (
	"strings"
	"testing"
	"time"

	"outpost/configs"
	"outpost/configs/modbus"
	"outpost/gateway/model"
)

// recordHeader is the queue's framing per record (gateway/queue/segment.go).
const recordHeader = 24

// TestQueueBytesPerReading prints how many bytes of queue one reading of
// each shipped device takes, the figure the queue cap is sized by (see
// docs/operations.md), and holds it under a bound:
//
//	go test -run TestQueueBytesPerReading -v ./gateway/pipeline
func TestQueueBytesPerReading(t *testing.T) {
	st, err := configs.LoadEmbedded("police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	totalBytes, totalReadings := 0, 0
	for _, d := range st.Devices {
		tm := st.Templates[d.Template]
		m := model.Message{
			Station: st.Station.ID, StationType: st.Station.Type, Device: d.ID, DeviceKind: tm.Kind,
			Seq: 123456, Time: time.Date(2026, 11, 28, 12, 0, 0, 123456789, time.UTC), Kind: model.KindTelemetry,
		}
		for _, r := range tm.Body.(*modbus.Template).Registers {
			v := model.Number(1234.5)
			switch r.Type {
			case modbus.TypeBool:
				v = model.Bool(true)
			case modbus.TypeString:
				v = model.String(strings.Repeat("x", 2*r.Length))
			}
			m.Readings = append(m.Readings, model.Reading{Signal: r.Signal, Unit: r.Unit, Quality: model.Good, Value: v})
		}
		size := len(model.AppendBinary(nil, &m)) + recordHeader
		per := float64(size) / float64(len(m.Readings))
		t.Logf("%-12s %-15s %d readings, %4d bytes a poll, %5.1f bytes a reading", d.ID, tm.Name, len(m.Readings), size, per)
		if per > 80 {
			t.Errorf("%s: %.1f bytes a reading in the queue; the sizing guide assumes at most 80", d.ID, per)
		}
		totalBytes += size
		totalReadings += len(m.Readings)
	}
	t.Logf("police room: %.1f bytes a reading on average", float64(totalBytes)/float64(totalReadings))
}
