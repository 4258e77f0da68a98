// Package bus is what every polled link driver needs, whatever protocol it
// speaks on the wire: a serial bus (Modbus RTU, DCON) or a TCP endpoint
// shared by several devices.
//
//   - Turns is the wire lock: one request at a time, handed out in the
//     order asked, with alarm polls and commands ahead of normal polls.
//   - Line is what the pollers of a link share besides the lock: which
//     addresses answer (for a silent device's reason), and whether polls
//     run late.
//   - Tracker follows one device's health from its polls; Schedule says
//     when to poll it next and how hard to try; Every runs a poll loop on
//     a fixed grid of slots.
//   - Serial opens a serial port from a link's configs.Serial, and reopens
//     it with backoff after it failed.
//
// Protocol packages keep their framing, request planning and decoding; this
// package knows nothing of bytes on the wire.
package bus

import (
	"context"
	"sync"
)

// Priority of a turn on the wire.
type Priority uint8

const (
	// Poll is a normal poll: every signal of a device, at its poll
	// interval.
	Poll Priority = iota
	// AlarmPoll reads a device's alarm inputs (a panic button, a door
	// contact) at its short alarm interval.
	AlarmPoll
	// Command writes to a device for a command from the hub.
	Command
)

// urgent says whether a turn of this priority goes before normal polls.
func (p Priority) urgent() bool { return p != Poll }

// Turns is the wire lock of one link. It hands the wire to waiters in the
// order they came, within two classes: alarm polls and commands (urgent)
// before normal polls. A sync.Mutex would let the goroutine that unlocks
// take it again at once, and a device whose requests time out would then
// hold the wire for poll after poll while the others wait.
//
// Alarm polls and commands share one queue, in order: both are one short
// request, so neither can starve the other, and a command waits behind at
// most the alarm polls already waiting. A normal poll waits while urgent
// turns are queued. Urgent turns are a few requests per alarm interval, so
// normal polls get the wire between them; but on a bus overloaded with
// alarm polls (too many alarm devices, too short an alarm_poll, a noisy
// line) they would never get it, and with them went the devices' health.
// So after MaxUrgentRun urgent turns in a row while a normal poll waits,
// the oldest normal poll gets one: an alarm poll then waits at most one
// more request.
//
// The zero value is an unlocked lock.
type Turns struct {
	mu     sync.Mutex
	busy   bool
	urgent []chan struct{}
	normal []chan struct{}
	run    int // urgent turns handed over in a row while normal ones waited
}

// MaxUrgentRun is how many urgent turns in a row a waiting normal poll lets
// pass before it gets one.
const MaxUrgentRun = 8

// Lock waits for the wire. It returns ctx's error, without the wire, when
// ctx ends first.
func (q *Turns) Lock(ctx context.Context, p Priority) error {
	q.mu.Lock()
	if !q.busy {
		q.busy = true
		q.mu.Unlock()
		return nil
	}
	ch := make(chan struct{})
	if p.urgent() {
		q.urgent = append(q.urgent, ch)
	} else {
		q.normal = append(q.normal, ch)
	}
	q.mu.Unlock()
	select {
	case <-ch: // Unlock handed the wire over: it stays busy
		return nil
	case <-ctx.Done():
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	select {
	case <-ch:
		// Handed over as ctx ended: pass it on.
		q.handOver()
	default:
		q.urgent = remove(q.urgent, ch)
		q.normal = remove(q.normal, ch)
	}
	return ctx.Err()
}

// Unlock gives the wire to the next waiter.
func (q *Turns) Unlock() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.handOver()
}

// handOver passes the wire on; q.mu is held.
func (q *Turns) handOver() {
	switch {
	case len(q.urgent) > 0 && (len(q.normal) == 0 || q.run < MaxUrgentRun):
		if len(q.normal) > 0 {
			q.run++
		}
		close(q.urgent[0])
		q.urgent = q.urgent[1:]
	case len(q.normal) > 0:
		q.run = 0
		close(q.normal[0])
		q.normal = q.normal[1:]
	default:
		q.busy = false
	}
}

// Waiting is how many turns wait for the wire, urgent and normal.
func (q *Turns) Waiting() (urgent, normal int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.urgent), len(q.normal)
}

func remove(s []chan struct{}, ch chan struct{}) []chan struct{} {
	for i, c := range s {
		if c == ch {
			return append(s[:i:i], s[i+1:]...)
		}
	}
	return s
}

// TwoMasters is what an installer is told of another master heard on a
// bus (counted other_master).
const TwoMasters = "two masters on one bus talk over each other; stop the other (an old controller, a display, a laptop with a Modbus tool) or give it a bus of its own"
