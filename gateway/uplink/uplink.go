// Package uplink holds what the hub's uplinks (uplink/mqtt, uplink/influx)
// share with the forwarders that drive them: a batch in the uplink's own
// form; how its Send says that the hub refused some messages for good, and
// that it dropped the connection in the middle of a batch; and how their
// long loops make way for alarms.
package uplink

import (
	"context"
	"errors"
	"fmt"
	"runtime"

	"outpost/gateway/model"
)

// Batch is a batch of messages in an uplink's own form (MQTT payloads,
// InfluxDB's line protocol). A forwarder adds each message as it reads it
// from the queue and keeps none decoded: a second of telemetry for
// InfluxDB at 70,000 readings/s is 4,700 messages, 10-13 MB decoded (a
// heap profile of bench-tcp) and 2-3 MB as line protocol.
type Batch interface {
	// Add encodes m as the batch's next message. m is not kept.
	Add(m *model.Message)
	// Len is the number of messages added.
	Len() int
	// Send sends the messages added and returns nil only when the hub
	// took every one. A *Rejected lists by their order of Add those it
	// refused for good.
	Send(ctx context.Context) error
	// Reset empties the batch for the next one.
	Reset()
}

// SendAll adds msgs to the empty batch b and sends it.
func SendAll(ctx context.Context, b Batch, msgs []model.Message) error {
	for i := range msgs {
		b.Add(&msgs[i])
	}
	return b.Send(ctx)
}

// Emptied returns buf emptied for a batch's next use, or nil when the
// last use took under a quarter of a large array: a forwarder keeps the
// array that batches at load grew to only while such batches come.
func Emptied[T any](buf []T) []T {
	if cap(buf) > shrinkOver && len(buf) < cap(buf)/4 {
		return nil
	}
	return buf[:0]
}

// shrinkOver is the capacity up to which Emptied always keeps an array.
const shrinkOver = 4096

// Yield lets other goroutines run at every 64th item of a long loop over
// a batch (call it with the item's index). Draining a backlog keeps every
// CPU busy with telemetry; an alarm (a frame from a panel, the forwarder
// it wakes) would otherwise wait for a CPU until the scheduler preempts
// the drain, about 10 ms at each handoff.
func Yield(i int) {
	if i%64 == 63 {
		runtime.Gosched()
	}
}

// ErrDropped means the hub dropped the connection while a batch was under
// way. A batch that meets it again and again, on connections that were up
// when it started, may hold a message the hub will never take (one over
// the broker's packet limit, say).
var ErrDropped = errors.New("the hub dropped the connection during the batch")

// Rejected is what Send returns when the hub took every message of the
// batch except those listed, which it will never take: sending them again
// is pointless. A forwarder sets them aside and goes on.
type Rejected struct {
	Items []Rejection
}

// Rejection is one message the hub refused for good: its index in the
// batch, the hub's reason, and what was sent when it is not the message's
// JSON payload (InfluxDB's line protocol).
type Rejection struct {
	Index   int
	Reason  string
	Payload []byte
}

func (r *Rejected) Error() string {
	if len(r.Items) == 0 {
		return "no message rejected"
	}
	return fmt.Sprintf("the hub rejected %d messages for good (first: %s)", len(r.Items), r.Items[0].Reason)
}
