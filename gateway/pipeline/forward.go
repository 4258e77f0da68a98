package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"outpost/gateway/model"
	"outpost/gateway/queue"
	"outpost/gateway/uplink"
)

// Uplink makes the batches a forwarder sends to the hub: one for each
// forwarder, which reuses it.
type Uplink interface {
	NewBatch() uplink.Batch
}

// Limiter is an uplink that can carry fewer messages in one send than a
// forwarder's batch, for now (InfluxDB's writes, cut down on a slow link):
// a batch is then no larger, so that each send that gets through is
// acknowledged, and a failure after it does not send it again.
type Limiter interface {
	SendLimit() int
}

// Learner learns that the hub will not take a message of m's size, and
// says what follows from it (the largest size it takes from now on), for
// the reason m is set aside.
type Learner interface {
	Learn(m *model.Message) string
}

// Source is a durable queue as a Forwarder needs it.
type Source interface {
	Next(ctx context.Context, max int, lanes ...queue.Lane) (queue.Batch, error)
	Ack(b queue.Batch) error
	Rewind(lanes ...queue.Lane)
	Stats() queue.Stats
}

// Forwarder drains lanes of one queue into one uplink: a batch is
// acknowledged (and so deleted) only after the uplink said the hub accepted
// it; on failure the batch is handed out again after a backoff. Delivery is
// at least once. The gateway runs one Forwarder per lane, so that an alarm
// never waits for a telemetry batch in flight.
type Forwarder struct {
	Name   string
	Queue  Source
	Lanes  []queue.Lane // the lanes it drains; all when empty
	Uplink Uplink
	Batch  int // messages per send
	// Linger, when set, paces sends of batches that are not full: such a
	// batch leaves a Linger after the previous send, with what came
	// meanwhile (up to Batch), so that a shallow queue makes one send per
	// Linger instead of one per message, and a steady flow makes requests
	// of Linger's worth (InfluxDB's cost is per request more than per
	// point). A batch after a quiet Linger leaves at once, and so does one
	// within the last tenth of it (lingerSlack): a device polled every
	// Linger has its reading sent as it comes, with the poll, rather than
	// on a timer of its own that wakes the gateway again a few ms later. A
	// full batch, or a backlog, never waits. For telemetry; alarms never
	// wait.
	Linger time.Duration
	// Waited, when set, is told how long each message the hub took had
	// been in the queue, from its append to the hub's acknowledgement
	// (the delivery latency histogram).
	Waited func(time.Duration)
	// HistoricalAfter marks a message historical when it leaves more than
	// this long after its timestamp: it waited out an outage, and reaches
	// the hub with its original time.
	HistoricalAfter time.Duration
	// Outage is shared by the forwarders of one uplink: it logs an outage
	// once when it starts and once when it ends.
	Outage *Outage
	// Uplink's name ("mqtt", "influx"), for dead letters and events.
	UplinkName string
	// DeadLetters keeps the messages the hub refused for good.
	DeadLetters *DeadLetters
	// Report tells the hub what the forwarder had to do (a restart, a
	// message set aside): Ingest.Emit.
	Report func(model.Message) error
	// Limit, when set, learns the largest message the hub takes from a
	// message it drops the connection on, time after time
	// (mqtt.PacketLimit): the uplink refuses larger ones from then on.
	Limit Learner
	Log   *slog.Logger

	failures  atomic.Uint64 // sends the hub did not accept
	delivered atomic.Uint64 // messages the hub took
	restarts  atomic.Uint64
	lastSent  atomic.Int64 // when the hub last took a batch, Unix ns
	// limit is the batch size now: 1 when the hub keeps dropping the
	// connection during a batch, to find a message it will not take.
	limit int
	drops int // batches in a row that met a dropped connection
	// suspects is how many messages of the batch that kept meeting a
	// dropped connection are still to go one at a time: the batch grows
	// again only once they are through, so that it does not take the
	// message at fault along again before that is found.
	suspects int
	rejected rejections
}

// A batch that meets a dropped connection dropsToHalve times in a row is
// sent again one message at a time; a message alone that meets it
// dropsToQuarantine times in a row is one the hub will not take (over the
// broker's packet limit, say), and is set aside as a dead letter.
const (
	dropsToHalve      = 2
	dropsToQuarantine = 3
)

// Retry pacing of a failed send. A failed send costs little (the uplink
// fails at once while it has no connection), and the sooner a retry comes
// after the hub is back, the shorter the outage seen at the hub.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = time.Second
)

// Run forwards until ctx ends. The messages set aside that it has not told
// the hub of yet (see RejectEvery) it tells as it returns.
func (f *Forwarder) Run(ctx context.Context) error {
	defer f.flushRejected()
	// Batches an earlier run took and never acknowledged (it failed) come
	// again.
	f.Queue.Rewind(f.Lanes...)
	backoff := minBackoff
	if f.limit == 0 {
		f.limit = f.Batch
	}
	out := f.Uplink.NewBatch()
	// recs are the records in out, in order: a message the hub refuses is
	// decoded again from its record. Valid until the batch is acknowledged.
	var recs [][]byte
	var batches []queue.Batch
	var last time.Time // of the last send the hub took
	var m model.Message
	for {
		out.Reset()
		clear(recs)
		recs = recs[:0]
		var err error
		batches, err = f.take(ctx, batches[:0], last)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%s queue: %w", f.Name, err)
		}
		now := time.Now()
		for _, b := range batches {
			for i, e := range b.Entries {
				uplink.Yield(i)
				if err := f.decode(&m, e.Data, now); err != nil {
					// The queue checks records with a CRC, so this is a record
					// written by an incompatible version: log it and go on.
					f.Log.Error("undecodable queue record skipped", "uplink", f.Name, "err", err)
					continue
				}
				out.Add(&m)
				recs = append(recs, e.Data)
			}
		}
		sent := time.Now()
		err = out.Send(ctx)
		accepted := out.Len()
		var rej *uplink.Rejected
		switch {
		case errors.As(err, &rej):
			f.setAside(f.refused(recs, rej.Items, now), rej.Items)
			accepted -= len(rej.Items)
		case err != nil && f.poisoned(err, recs, now):
			accepted = 0
		case err != nil:
			f.failures.Add(1)
			f.Queue.Rewind(f.Lanes...)
			if ctx.Err() != nil {
				return nil
			}
			f.Outage.down(f.Name, err, sent)
			f.Log.Debug("hub did not accept a batch; will retry", "forwarder", f.Name, "messages", out.Len(), "retry_in", backoff, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
			continue
		}
		if err == nil || rej != nil {
			// The hub took the batch (but what it refused) on an unbroken
			// connection.
			f.drops, f.suspects = 0, f.suspects-out.Len()
			if f.suspects <= 0 {
				f.suspects, f.limit = 0, min(2*f.limit, f.Batch)
			}
		}
		backoff = minBackoff
		last = time.Now()
		f.delivered.Add(uint64(accepted))
		f.lastSent.Store(last.UnixNano())
		f.Outage.up(f.Name, f.Queue) // the backlog still counts this batch
		for _, b := range batches {
			if f.Waited != nil {
				for _, e := range b.Entries {
					f.Waited(last.Sub(e.Enqueued))
				}
			}
			if err := f.Queue.Ack(b); err != nil {
				return fmt.Errorf("%s queue: %w", f.Name, err)
			}
		}
	}
}

// noWait is a done context: Next with it takes what there is, without
// waiting.
var noWait = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// lingerSlack: a batch that would wait less than Linger/lingerSlack leaves
// at once.
const lingerSlack = 10

// take appends to batches the next records to send, up to the limit (and
// the uplink's, when it is a Limiter): it waits for one, takes what else
// there is, and, when that is not a full batch and the Linger since the
// last send has more than its slack to run, waits it out and takes what
// came meanwhile. The queue hands out at most queue.MaxBatchBytes at a
// time, so a batch may be several of its batches, acknowledged in order.
func (f *Forwarder) take(ctx context.Context, batches []queue.Batch, last time.Time) ([]queue.Batch, error) {
	limit := f.limit
	if l, ok := f.Uplink.(Limiter); ok {
		limit = max(min(limit, l.SendLimit()), 1)
	}
	b, err := f.Queue.Next(ctx, limit, f.Lanes...)
	if err != nil {
		return batches, err
	}
	batches = append(batches, b)
	n := len(b.Entries)
	more := func() {
		for n < limit {
			b, err := f.Queue.Next(noWait, limit-n, f.Lanes...)
			if err != nil {
				return
			}
			batches = append(batches, b)
			n += len(b.Entries)
		}
	}
	more()
	if wait := time.Until(last.Add(f.Linger)); f.Linger > 0 && n < limit && wait > f.Linger/lingerSlack {
		select {
		case <-ctx.Done():
			return batches, ctx.Err()
		case <-time.After(wait):
		}
		more()
	}
	return batches, nil
}

// ForwarderState is what a forwarder has done since the gateway started.
type ForwarderState struct {
	// Delivered messages the hub took; Failures, sends it did not
	// accept (retried); Restarts, times the forwarder failed and was
	// started again.
	Delivered, Failures, Restarts uint64
	// LastDelivery is when the hub last took a batch (zero before).
	LastDelivery time.Time
}

// State says what the forwarder has done; safe while it runs.
func (f *Forwarder) State() ForwarderState {
	s := ForwarderState{Delivered: f.delivered.Load(), Failures: f.failures.Load(), Restarts: f.restarts.Load()}
	if ns := f.lastSent.Load(); ns != 0 {
		s.LastDelivery = time.Unix(0, ns)
	}
	return s
}

// decode decodes a record into m, marked historical when it leaves more
// than HistoricalAfter after its time.
func (f *Forwarder) decode(m *model.Message, data []byte, now time.Time) error {
	if err := model.DecodeBinaryTo(m, data); err != nil {
		return err
	}
	if f.HistoricalAfter > 0 && now.Sub(m.Time) > f.HistoricalAfter {
		m.Historical = true
	}
	return nil
}

// refused decodes again, from recs, the messages of items, in their order.
func (f *Forwarder) refused(recs [][]byte, items []uplink.Rejection, now time.Time) []model.Message {
	msgs := make([]model.Message, len(items))
	for i, it := range items {
		f.decode(&msgs[i], recs[it.Index], now) // decoded once already
	}
	return msgs
}

// poisoned says whether a failed batch is one message the hub will not
// take: the hub dropped the connection while it was sent alone, time after
// time. That message is set aside and the batch counts as done. Batches
// that keep meeting dropped connections are halved until one is alone.
func (f *Forwarder) poisoned(err error, recs [][]byte, now time.Time) bool {
	if !errors.Is(err, uplink.ErrDropped) {
		return false
	}
	f.drops++
	switch {
	case len(recs) > 1 && f.drops >= dropsToHalve:
		// One at a time: the messages before the one at fault go
		// through, and it is found in dropsToQuarantine more tries.
		f.limit, f.drops, f.suspects = 1, 0, len(recs)
		f.Log.Warn("the hub keeps dropping the connection during a batch; sending one message at a time to find the one at fault",
			"forwarder", f.Name, "batch", len(recs))
	case len(recs) == 1 && f.drops >= dropsToQuarantine:
		f.drops = 0
		f.suspects--
		reason := fmt.Sprintf("the hub dropped the connection each of the %d times this message was sent alone: it may exceed the broker's packet size limit or be denied by its ACL", dropsToQuarantine)
		items := []uplink.Rejection{{Index: 0, Reason: reason}}
		msgs := f.refused(recs, items, now)
		if f.Limit != nil {
			items[0].Reason += "; " + f.Limit.Learn(&msgs[0])
		}
		f.setAside(msgs, items)
		return true
	}
	return false
}

// setAside moves messages the hub refused for good to the dead letters,
// and tells the hub with a messages_rejected event (see RejectEvery).
// items[i] says why msgs[i] was refused.
func (f *Forwarder) setAside(msgs []model.Message, items []uplink.Rejection) {
	path := ""
	kept, readings := 0, 0
	for i, it := range items {
		m := &msgs[i]
		readings += m.Values()
		p, err := f.DeadLetters.Put(f.UplinkName, m, it.Reason, it.Payload)
		path = p
		if err != nil {
			f.Log.Error("a message the hub refused could not be kept; it is lost", "forwarder", f.Name, "message", m.ID(), "err", err)
			continue
		}
		kept++
	}
	first := &msgs[0]
	s := aside{messages: len(items), readings: readings, kept: kept,
		device: first.Device, seq: first.Seq, kind: first.Kind, id: first.ID(), reason: items[0].Reason, path: path}
	if first.Device == model.GatewayDevice && first.Event != nil && first.Event.Kind == model.EventRejected {
		f.logSetAside(s) // telling the hub would make another such event, and so on
		return
	}
	f.holdRejected(s)
}

// RejectEvery is the shortest time between two messages_rejected events
// of a forwarder, and their lines in the log. A refusal for good that
// lasts (InfluxDB at its series limit, a field's type taken by another
// station) refuses part of every batch, and the hub would hear of it every
// second for as long. The first refusal after a quiet RejectEvery is told
// at once; those that follow, together, RejectEvery after it.
const RejectEvery = 10 * time.Second

// aside is what a forwarder set aside, as the log and a messages_rejected
// event tell it: the counts (summed over those held back, see
// rejections), and the rest of the first message.
type aside struct {
	messages, readings, kept int
	device                   string
	seq                      uint64
	kind                     model.Kind
	id, reason, path         string
}

// rejections are a forwarder's messages_rejected events held back (see
// RejectEvery).
type rejections struct {
	mu    sync.Mutex
	held  aside // messages == 0: nothing held
	last  time.Time
	timer *time.Timer // of flushRejected, while something is held
}

// holdRejected tells the hub of s at once after a quiet RejectEvery, or
// holds it with what else comes until RejectEvery after the last event.
func (f *Forwarder) holdRejected(s aside) {
	r := &f.rejected
	r.mu.Lock()
	defer r.mu.Unlock()
	if h := &r.held; h.messages == 0 {
		*h = s
	} else {
		h.messages, h.readings, h.kept, h.path = h.messages+s.messages, h.readings+s.readings, h.kept+s.kept, s.path
	}
	wait := time.Until(r.last.Add(RejectEvery))
	switch {
	case wait <= 0:
		f.tellRejected()
	case r.timer == nil:
		r.timer = time.AfterFunc(wait, f.flushRejected)
	}
}

// flushRejected tells the hub of what is held, if anything.
func (f *Forwarder) flushRejected() {
	r := &f.rejected
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.timer != nil {
		r.timer.Stop()
		r.timer = nil
	}
	if r.held.messages > 0 {
		f.tellRejected()
	}
}

// tellRejected reports what is held. Called with f.rejected.mu held.
func (f *Forwarder) tellRejected() {
	r := &f.rejected
	s := r.held
	r.held, r.last = aside{}, time.Now()
	f.logSetAside(s)
	f.Report(model.GatewayEvent(model.EventRejected, model.Warning, map[string]string{
		"uplink":      f.UplinkName,
		"messages":    strconv.Itoa(s.messages),
		"readings":    strconv.Itoa(s.readings),
		"kept":        strconv.Itoa(s.kept),
		"device":      s.device,
		"seq":         strconv.FormatUint(s.seq, 10),
		"kind":        string(s.kind),
		"reason":      s.reason,
		"dead_letter": s.path,
	}))
}

func (f *Forwarder) logSetAside(s aside) {
	f.Log.Warn("the hub refused messages for good; set aside as dead letters", "forwarder", f.Name,
		"messages", s.messages, "first", s.id, "reason", s.reason, "file", s.path)
}

// Supervise runs the forwarder until ctx ends, restarting it whenever it
// fails, and reports every failure to the hub as a forwarder_failed event
// of the gateway, so that no queue is left undrained without a word.
func (f *Forwarder) Supervise(ctx context.Context, s Supervisor) {
	s.Failed = func(err error, restarts int, pause time.Duration) {
		f.restarts.Add(1)
		f.Log.Error("forwarder failed; restarting it", "forwarder", f.Name, "err", err, "restarts", restarts, "in", pause)
		f.Report(model.GatewayEvent(model.EventForwarderFailed, model.Warning, map[string]string{
			"forwarder": f.Name,
			"error":     err.Error(),
			"restarts":  strconv.Itoa(restarts + 1),
			"retry_in":  pause.String(),
		}))
	}
	s.Run(ctx, f.Run)
}

// Outage follows one uplink's outages, as its forwarders see them, so that
// the log says once when the hub stopped accepting, with the reason, and
// once when it accepts again, with how long it took and what waited. The
// outage lasts until every forwarder whose send failed has delivered: an
// InfluxDB that takes the alarm lane's small writes is not back while the
// telemetry lane's fail (a slow link).
type Outage struct {
	Uplink string
	Log    *slog.Logger

	mu      sync.Mutex
	since   time.Time       // zero while the uplink works
	err     string          // of the first failure of the outage
	failing map[string]bool // the forwarders whose last send failed
	upSince time.Time       // the first delivery after the last outage (or ever)
}

// Down says whether the uplink is down, since when and why; when it is
// not, since is when it last began to take messages (zero before the
// first).
func (o *Outage) Down() (down bool, since time.Time, reason string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.since.IsZero() {
		return false, o.upSince, ""
	}
	return true, o.since, o.err
}

// down records a failed send of forwarder that began at sent: a hub that
// hangs fails a send only at its timeout, and the outage began when the
// send did.
func (o *Outage) down(forwarder string, err error, sent time.Time) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.failing == nil {
		o.failing = map[string]bool{}
	}
	o.failing[forwarder] = true
	if !o.since.IsZero() {
		return
	}
	o.since, o.err = sent, err.Error()
	o.Log.Warn("hub uplink down; queueing until it is back", "uplink", o.Uplink, "err", err)
}

// up records a delivery of forwarder.
func (o *Outage) up(forwarder string, q Source) {
	if o == nil {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	delete(o.failing, forwarder)
	if o.since.IsZero() {
		if o.upSince.IsZero() {
			o.upSince = time.Now()
		}
		return
	}
	if len(o.failing) > 0 {
		return
	}
	o.upSince = time.Now()
	var recs, readings int64
	for _, l := range q.Stats().Lanes {
		recs += l.Records
		readings += l.Readings
	}
	o.Log.Info("hub uplink back", "uplink", o.Uplink, "outage", time.Since(o.since).Round(time.Millisecond),
		"backlog_messages", recs, "backlog_readings", readings)
	o.since = time.Time{}
}
