// Package uplink holds what the hub's uplinks (uplink/mqtt, uplink/influx)
// share with the forwarders that drive them: how a Send says that the hub
// refused some messages for good, and that it dropped the connection in
// the middle of a batch; and how their long loops make way for alarms.
package uplink

import (
	"errors"
	"fmt"
	"runtime"
)

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
