package mqtt

import (
	"fmt"
	"sync/atomic"

	"outpost/gateway/model"
)

// PacketLimit is the largest PUBLISH packet the broker takes, as the
// station file states it (hub.mqtt.max_packet_size) or as the gateway
// learns it: when the broker drops the connection on a message every time
// it is sent alone, the limit drops below that message's size. Ingest
// splits telemetry over the limit into messages that fit; a batch refuses
// a message over it (a *uplink.Rejected), instead of breaking the
// connection on it again. It is safe for concurrent use.
type PacketLimit struct {
	prefix string
	max    atomic.Int64 // 0: no limit known
}

// A learned limit settles learnMargin below the message that failed (the
// same device's next message is a little larger or smaller), and never
// below minLearned: the gateway's own events must still fit. A broker that
// drops a packet of leastBroker bytes or fewer cannot serve a station
// (hub.mqtt.max_packet_size accepts no less), whatever the gateway learns.
const (
	learnMargin = 8 // an eighth
	minLearned  = 512
	leastBroker = 1024
)

// NewPacketLimit returns a limit of max bytes (0 for none known yet) for
// messages published under prefix.
func NewPacketLimit(prefix string, max int) *PacketLimit {
	l := &PacketLimit{prefix: prefix}
	l.max.Store(int64(max))
	return l
}

// Max is the limit now, 0 when none is known.
func (l *PacketLimit) Max() int { return int(l.max.Load()) }

// TooLarge says whether m's packet is over the limit.
func (l *PacketLimit) TooLarge(m *model.Message) bool {
	max := l.max.Load()
	return max > 0 && int64(PacketSize(l.prefix, m)) > max
}

// refuses says why a packet of size bytes is not sent, or "" when it may
// be.
func (l *PacketLimit) refuses(size int) string {
	max := l.max.Load()
	if max == 0 || int64(size) <= max {
		return ""
	}
	return fmt.Sprintf("%d bytes, over the %d bytes the hub takes (hub.mqtt.max_packet_size, or learned from the broker dropping the connection)", size, max)
}

// Learn lowers the limit below the size of m, a message the broker would
// not take, and says what follows, for the reason m is not published.
func (l *PacketLimit) Learn(m *model.Message) string {
	return l.learn(PacketSize(l.prefix, m))
}

// learn lowers the limit below size, the size of a packet the broker
// would not take, and says what follows.
func (l *PacketLimit) learn(size int) string {
	next := max(int64(size-size/learnMargin), minLearned)
	for {
		max := l.max.Load()
		if max > 0 && max <= next {
			next = max
			break
		}
		if l.max.CompareAndSwap(max, next) {
			break
		}
	}
	why := fmt.Sprintf("from now on no message over %d bytes is published: telemetry is split, others are set aside (set hub.mqtt.max_packet_size to the broker's limit)", next)
	if size <= leastBroker {
		why += fmt.Sprintf("; but a broker that will not take %d bytes is below the least a station needs, %d bytes (the gateway's own events and snapshot): raise the broker's packet size limit (max_packet_size in Mosquitto), or grant the station's topics in its ACL", size, leastBroker)
	}
	return why
}
