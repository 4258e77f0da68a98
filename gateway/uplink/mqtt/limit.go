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
// below minLearned: the gateway's own events must still fit.
const (
	learnMargin = 8 // an eighth
	minLearned  = 512
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
// not take, and returns the new limit.
func (l *PacketLimit) Learn(m *model.Message) int {
	return l.learn(PacketSize(l.prefix, m))
}

// learn lowers the limit below size, the size of a packet the broker
// would not take, and returns the new limit.
func (l *PacketLimit) learn(size int) int {
	next := max(int64(size-size/learnMargin), minLearned)
	for {
		max := l.max.Load()
		if max > 0 && max <= next {
			return int(max)
		}
		if l.max.CompareAndSwap(max, next) {
			return int(next)
		}
	}
}
