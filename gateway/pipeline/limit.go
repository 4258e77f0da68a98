package pipeline

import (
	"sync/atomic"

	"outpost/gateway/model"
)

// SizeLimit is the largest message a hub takes, as the station file states
// it (the broker's max_packet_size) or as the gateway learns it: when the
// broker drops the connection on a message every time it is sent alone,
// the limit drops below that message's size. Ingest splits telemetry over
// the limit into messages that fit; a forwarder sets aside at once a queued
// message over it, instead of breaking the connection on it again. It is
// safe for concurrent use.
type SizeLimit struct {
	// Size is a message's size as the hub counts it (mqtt.PacketSize).
	Size func(*model.Message) int
	max  atomic.Int64 // 0: no limit known
}

// A learned limit settles learnMargin below the message that failed (the
// same device's next message is a little larger or smaller), and never
// below minLearned: the gateway's own events must still fit.
const (
	learnMargin = 8 // an eighth
	minLearned  = 512
)

// NewSizeLimit returns a limit of max bytes (0 for none known yet).
func NewSizeLimit(size func(*model.Message) int, max int) *SizeLimit {
	l := &SizeLimit{Size: size}
	l.max.Store(int64(max))
	return l
}

// Max is the limit now, 0 when none is known.
func (l *SizeLimit) Max() int { return int(l.max.Load()) }

// TooLarge says whether m is over the limit. A nil limit has none.
func (l *SizeLimit) TooLarge(m *model.Message) bool {
	if l == nil {
		return false
	}
	max := l.max.Load()
	return max > 0 && int64(l.Size(m)) > max
}

// learn lowers the limit below the size of m, a message the hub would not
// take, and returns the new limit.
func (l *SizeLimit) learn(m *model.Message) int {
	size := int64(l.Size(m))
	next := max(size-size/learnMargin, minLearned)
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
