package mqtt

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.mqtt.golang/packets"

	"outpost/gateway/model"
)

// TestPacketSize holds PacketSize to the packet paho's own encoder writes,
// around the sizes where the remaining length takes another byte.
func TestPacketSize(t *testing.T) {
	for _, n := range []int{0, 50, 90, 100, 16300, 16400, 70000} {
		m := model.Message{Station: "pr-0001", StationType: model.PoliceRoom, Device: "kiosk-1", DeviceKind: "kiosk",
			Seq: 7, Time: time.Date(2026, 11, 29, 1, 2, 3, 0, time.UTC), Kind: model.KindTelemetry,
			Readings: []model.Reading{{Signal: "text", Value: model.String(strings.Repeat("x", n)), Quality: model.Good}}}
		p := packets.NewControlPacket(packets.Publish).(*packets.PublishPacket)
		p.TopicName, p.Qos, p.MessageID, p.Payload = Topic(DefaultPrefix, &m), 1, 1, model.AppendJSON(nil, &m)
		var b bytes.Buffer
		if err := p.Write(&b); err != nil {
			t.Fatal(err)
		}
		if got := PacketSize(DefaultPrefix, &m); got != b.Len() {
			t.Errorf("text of %d: PacketSize = %d, paho writes %d bytes", n, got, b.Len())
		}
	}
}

func TestTopicOfEachKind(t *testing.T) {
	for _, tt := range []struct {
		kind model.Kind
		want string
	}{
		{model.KindTelemetry, "outpost/v1/sp-7/siren-1/telemetry"},
		{model.KindEvent, "outpost/v1/sp-7/siren-1/event"},
		{model.KindHealth, "outpost/v1/sp-7/siren-1/health"},
		{model.KindResult, "outpost/v1/sp-7/siren-1/command/result"},
	} {
		m := model.Message{Station: "sp-7", Device: "siren-1", Kind: tt.kind}
		if got := Topic(DefaultPrefix, &m); got != tt.want {
			t.Errorf("%s: topic %s, want %s", tt.kind, got, tt.want)
		}
	}
	if got, want := CommandTopic(DefaultPrefix, "sp-7", "+"), "outpost/v1/sp-7/+/command"; got != want {
		t.Errorf("command topic %s, want %s", got, want)
	}
}
