package command

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/model"
)

// Target is a device that takes commands: its template (actions and
// writable signals) and the driver of its link.
type Target struct {
	Template *configs.Template
	// Link is the device's link, for the duty desk's error messages.
	Link string
	// Commander is the link's driver, or nil when its protocol cannot act
	// on devices.
	Commander drivers.Commander
	// Messenger is the link's driver when its devices take actions as
	// messages (MQTT).
	Messenger drivers.Messenger
}

// How long a device has to carry out one step of a command, and how
// often a failed undo (a siren that should stop) is tried again.
const (
	stepTimeout = 10 * time.Second
	undoRetry   = 5 * time.Second
)

// Desk carries out the duty desk's commands for a station: Handle takes a
// command from the broker, Run executes the commands it took, one device
// at a time in the order they came, and sets lasting actions back on time.
// Results go out through Emit, as alarms.
type Desk struct {
	Station string
	// Targets are the station's devices; SetTargets changes them while
	// the desk runs.
	Targets map[string]Target
	// Key, when set, is the station's HMAC key: unsigned commands are
	// refused.
	Key    []byte
	MaxTTL time.Duration
	Store  *Store
	Emit   func(model.Message) error
	Log    *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	readyOnce sync.Once
	ready     chan struct{} // closed once Run has set up

	mu     sync.Mutex
	work   map[string]*queue // per device, while Run runs
	timers map[string]*time.Timer
	ctx    context.Context // Run's, for the undo timers
	wg     sync.WaitGroup  // the workers
}

// SetTargets replaces the station's devices (a reloaded station file):
// commands taken from now on go to the new ones; one being carried out
// finishes on the old.
func (d *Desk) SetTargets(ts map[string]Target) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.Targets = ts
}

// target is a device's target, and whether the station has it.
func (d *Desk) target(device string) (Target, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t, ok := d.Targets[device]
	return t, ok
}

func (d *Desk) readyC() chan struct{} {
	d.readyOnce.Do(func() { d.ready = make(chan struct{}) })
	return d.ready
}

// job is a command for a device's worker, or the undo of one (whose
// steps are read from the store when it runs).
type job struct {
	entry Entry
	steps []Step
	send  *drivers.Outgoing // an action sent to the device as a message
	undo  bool
}

func (d *Desk) now() time.Time {
	if d.Now != nil {
		return d.Now().UTC()
	}
	return time.Now().UTC()
}

// Handle takes one command payload for a device (from its topic). It
// returns once the command is durably taken (and queued for its device)
// or answered: the broker's acknowledgement goes out after it, so that a
// command the gateway has not recorded is delivered again.
//
// Handle waits for Run to have started.
func (d *Desk) Handle(device string, payload []byte) {
	<-d.readyC()
	now := d.now()
	c, err := Decode(d.Station, device, payload, d.Key, d.MaxTTL)
	t, known := d.target(device)
	if err != nil {
		d.answer(c, known, model.ResultRejected, err.Error())
		return
	}
	if e, ok := d.Store.Get(c.ID); ok {
		switch {
		case e.Device != device || e.Action != c.Action:
			d.answer(c, known, model.ResultRejected, fmt.Sprintf("id %s was already used, by %s for %s", c.ID, e.Action, e.Device))
		case e.Done:
			d.Log.Info("command delivered again; answering with its result", "id", c.ID, "device", device)
			d.answer(c, known, e.Status, e.Reason)
		default:
			d.Log.Info("command delivered again while it is carried out", "id", c.ID, "device", device)
		}
		return
	}
	if !known {
		d.answer(c, false, model.ResultRejected, fmt.Sprintf("no device %s at station %s", device, d.Station))
		return
	}
	steps, undo, err := d.plan(c, t, now)
	switch {
	case err != nil:
	case now.After(c.Expires()):
		err = reject("expired: sent %s with a ttl of %s, arrived %s later", c.Sent.Format(time.RFC3339), c.TTL, now.Sub(c.Sent).Round(time.Millisecond))
	case c.Sent.After(now.Add(Skew)):
		err = reject("sent %s in the future (ts %s): the duty desk's and the station's clocks differ", c.Sent.Sub(now).Round(time.Second), c.Sent.Format(time.RFC3339))
	}
	e := Entry{ID: c.ID, Device: device, Action: c.Action, At: now, Undo: undo}
	if t.Messenger != nil {
		e.Send = &drivers.Outgoing{ID: c.ID, Action: c.Action, Args: c.Args, Sent: c.Sent, Expires: c.Expires()}
	}
	if err != nil {
		// Remembered, so that a redelivery gets the same answer.
		e.Done, e.Status, e.Reason, e.Undo, e.Send = true, model.ResultRejected, err.Error(), nil, nil
		d.finish(e)
		return
	}
	if err := d.Store.Put(e, now); err != nil {
		d.Log.Error("command not recorded; refusing it", "id", c.ID, "device", device, "err", err)
		d.answer(c, true, model.ResultFailed, "the gateway cannot record the command (its disk refuses writes): not carried out")
		return
	}
	d.Log.Info("command taken", "id", c.ID, "device", device, "action", c.Action)
	if !d.enqueue(job{entry: e, steps: steps, send: e.Send}) {
		// Run has ended: the command stays recorded as taken, and the
		// next start reports it as interrupted.
		d.Log.Warn("command taken while the gateway stops", "id", c.ID, "device", device)
	}
}

// plan turns a command into the steps that carry it out, and the undo of
// a lasting action, or says why the device cannot do it.
func (d *Desk) plan(c Command, t Target, now time.Time) ([]Step, *Undo, error) {
	if t.Messenger != nil {
		return nil, nil, sendable(c, t.Template)
	}
	if t.Commander == nil {
		return nil, nil, reject("device %s is on link %s, whose protocol cannot act on devices", c.Device, t.Link)
	}
	if len(c.Args) > 0 {
		return nil, nil, reject("%s takes no args but for (it got: %s)", c.Action, strings.Join(slices.Sorted(maps.Keys(c.Args)), ", "))
	}
	sigs := t.Template.Body.Signals()
	if c.Action == ActionSet {
		i := slices.IndexFunc(sigs, func(s configs.Signal) bool { return s.Name == c.Signal })
		switch {
		case i < 0 || !sigs[i].Writable:
			return nil, nil, reject("%s has no writable signal %q (writable: %s)", c.Device, c.Signal, writable(sigs))
		case c.For != 0:
			return nil, nil, reject("set does not last: it takes no for")
		}
		if err := sigs[i].Accepts(c.Value); err != nil {
			return nil, nil, reject("%v", err)
		}
		return []Step{{c.Signal, c.Value}}, nil, nil
	}
	i := slices.IndexFunc(t.Template.Actions, func(a configs.Action) bool { return a.Name == c.Action })
	if i < 0 {
		return nil, nil, reject("%s has no action %q (it takes: %s)", c.Device, c.Action, actions(t.Template))
	}
	a := t.Template.Actions[i]
	steps := settings(a.Set)
	dur := a.For
	switch {
	case c.For != 0 && a.For == 0:
		return nil, nil, reject("%s does not last: it takes no for", a.Name)
	case c.For > a.For:
		return nil, nil, reject("for %s is longer than %s lasts at most (%s)", c.For, a.Name, a.For)
	case c.For != 0:
		dur = c.For
	}
	if dur == 0 {
		return steps, nil, nil
	}
	back := settings(a.Then)
	if len(a.Then) == 0 {
		for _, s := range steps {
			on, _ := s.Value.AsBool() // the loader made sure
			back = append(back, Step{s.Signal, model.Bool(!on)})
		}
	}
	return steps, &Undo{At: now.Add(dur), Set: back}, nil
}

// sendable checks a command for a device that takes actions as
// messages: one of its template's actions, with the args it names, each
// of its type.
func sendable(c Command, t *configs.Template) error {
	i := slices.IndexFunc(t.Actions, func(a configs.Action) bool { return a.Name == c.Action })
	if i < 0 {
		return reject("%s has no action %q (it takes: %s)", c.Device, c.Action, strings.Join(actionNames(t), ", "))
	}
	if c.For != 0 {
		return reject("%s does not last: it takes no for", c.Action)
	}
	a := t.Actions[i]
	for name := range c.Args {
		if !slices.ContainsFunc(a.Args, func(f configs.Field) bool { return f.Name == name }) {
			return reject("%s takes no arg %q (its args: %s)", c.Action, name, argNames(a.Args))
		}
	}
	for _, f := range a.Args {
		v, ok := c.Args[f.Name]
		if !ok {
			if f.Required {
				return reject("%s needs arg %q", c.Action, f.Name)
			}
			continue
		}
		if _, err := f.Value(v); err != nil {
			return reject("%s: %v", c.Action, err)
		}
	}
	return nil
}

func argNames(fs []configs.Field) string {
	if len(fs) == 0 {
		return "none"
	}
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	return strings.Join(names, ", ")
}

func settings(set []configs.Setting) []Step {
	out := make([]Step, len(set))
	for i, s := range set {
		out[i] = Step{s.Signal, s.Value.Value}
	}
	return out
}

func writable(sigs []configs.Signal) string {
	var names []string
	for _, s := range sigs {
		if s.Writable {
			names = append(names, s.Name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

func actions(t *configs.Template) string {
	return strings.Join(append([]string{ActionSet}, actionNames(t)...), ", ")
}

func actionNames(t *configs.Template) []string {
	names := make([]string, len(t.Actions))
	for i, a := range t.Actions {
		names[i] = a.Name
	}
	return names
}

// Run executes the commands Handle takes until ctx ends. It first answers
// the commands a restart interrupted and schedules the undos still due.
func (d *Desk) Run(ctx context.Context) {
	d.mu.Lock()
	d.ctx = ctx
	d.work, d.timers = map[string]*queue{}, map[string]*time.Timer{}
	d.mu.Unlock()
	for _, e := range d.Store.Pending() {
		switch {
		case !e.Done && e.Send != nil && d.now().Before(e.Send.Expires):
			// A message the device takes once whatever comes again:
			// sent again, in its place among the device's commands.
			d.enqueue(job{entry: e, send: e.Send})
			continue
		case !e.Done && e.Send != nil:
			e.Done, e.Status, e.Send = true, model.ResultFailed, nil
			e.Reason = "expired: the gateway restarted and the device had not answered before the command's ttl"
			d.finish(e)
		case !e.Done:
			e.Done, e.Status = true, model.ResultFailed
			e.Reason = "interrupted: the gateway stopped before the device confirmed the command; it may or may not have acted"
			d.finish(e)
		}
		if e.Undo != nil {
			d.schedule(e)
		}
	}
	// Only now: a command taken before would look interrupted.
	close(d.readyC())
	<-ctx.Done()
	d.mu.Lock()
	for _, t := range d.timers {
		t.Stop()
	}
	d.work = nil
	d.mu.Unlock()
	d.wg.Wait()
}

// enqueue hands a job to its device's worker, started on the device's
// first job; false when Run is not running. It never waits: a device that
// is away (a kiosk offline) holds up its own commands, not the others'
// nor the broker's delivery of them.
func (d *Desk) enqueue(j job) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.work == nil {
		return false
	}
	dev, ctx := j.entry.Device, d.ctx
	q := d.work[dev]
	if q == nil {
		q = &queue{ready: make(chan struct{}, 1)}
		d.work[dev] = q
		d.wg.Go(func() { d.worker(ctx, dev, q) })
	}
	q.push(j)
	return true
}

// queue is a device's jobs, in the order they came.
type queue struct {
	mu    sync.Mutex
	jobs  []job
	ready chan struct{} // has a value while jobs is not empty
}

func (q *queue) push(j job) {
	q.mu.Lock()
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop takes the first job, if there is one.
func (q *queue) pop() (job, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.jobs) == 0 {
		return job{}, false
	}
	j := q.jobs[0]
	q.jobs[0] = job{}
	q.jobs = q.jobs[1:]
	return j, true
}

// schedule runs an entry's undo when it is due (at once if overdue).
func (d *Desk) schedule(e Entry) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.work == nil {
		return
	}
	if old := d.timers[e.ID]; old != nil {
		old.Stop()
	}
	d.timers[e.ID] = time.AfterFunc(max(e.Undo.At.Sub(d.now()), 0), func() {
		d.enqueue(job{entry: e, undo: true})
	})
}

func (d *Desk) worker(ctx context.Context, device string, q *queue) {
	for ctx.Err() == nil {
		j, ok := q.pop()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-q.ready:
			}
			continue
		}
		t, _ := d.target(device)
		d.run(ctx, t, j)
	}
}

// run carries out a job on its device.
func (d *Desk) run(ctx context.Context, t Target, j job) {
	e := j.entry
	if j.undo {
		d.undo(ctx, t, e.ID)
		return
	}
	var failed error
	if j.send != nil {
		failed = d.deliver(ctx, t, e.Device, j.send)
	} else {
		d.supersede(e, j.steps)
		failed = d.apply(ctx, t, e.Device, j.steps)
	}
	if ctx.Err() != nil {
		return // stopping: the entry stays taken, and the next start reports it
	}
	e.Done, e.Status, e.Send = true, model.ResultOK, nil
	if failed != nil {
		e.Status, e.Reason = model.ResultFailed, failed.Error()
	}
	d.finish(e)
	if e.Undo != nil {
		d.schedule(e)
	}
}

// undo sets a lasting action's signals back, as the store has them now
// (a later command may have taken some over), and tries again until the
// device takes it.
func (d *Desk) undo(ctx context.Context, t Target, id string) {
	cur, ok := d.Store.Get(id)
	if !ok || cur.Undo == nil {
		return // superseded
	}
	failed := d.apply(ctx, t, cur.Device, cur.Undo.Set)
	switch {
	case ctx.Err() != nil:
	case failed != nil:
		d.Log.Error("could not set a lasting action back; trying again", "id", id, "device", cur.Device, "action", cur.Action, "err", failed, "retry_in", undoRetry)
		cur.Undo.At = d.now().Add(undoRetry)
		d.schedule(cur)
	default:
		d.Log.Info("lasting action ended", "id", id, "device", cur.Device, "action", cur.Action)
		d.mu.Lock()
		delete(d.timers, id)
		d.mu.Unlock()
		cur.Undo = nil
		if err := d.Store.Put(cur, d.now()); err != nil {
			d.Log.Error("command record", "id", id, "err", err)
		}
	}
}

// apply sets each signal in turn, and stops at the first the device
// refuses.
func (d *Desk) apply(ctx context.Context, t Target, device string, steps []Step) error {
	if t.Commander == nil {
		return fmt.Errorf("device %s is no longer in the station file (it was reloaded)", device)
	}
	for _, s := range steps {
		sctx, cancel := context.WithTimeout(ctx, stepTimeout)
		err := t.Commander.Set(sctx, device, s.Signal, s.Value)
		cancel()
		if err != nil {
			return fmt.Errorf("setting %s to %v: %w", s.Signal, s.Value, err)
		}
	}
	return nil
}

// deliver sends an action to a device that takes actions as messages,
// and waits for its answer until the command expires: a device that is
// away gets it when it returns.
func (d *Desk) deliver(ctx context.Context, t Target, device string, out *drivers.Outgoing) error {
	if t.Messenger == nil {
		return fmt.Errorf("device %s is no longer in the station file (it was reloaded)", device)
	}
	sctx, cancel := context.WithDeadline(ctx, out.Expires)
	defer cancel()
	return t.Messenger.Send(sctx, device, *out)
}

// supersede drops, from the undos still due on the device, the signals a
// new command sets: a siren sounded again must not be silenced by the
// end of the first sounding.
func (d *Desk) supersede(e Entry, steps []Step) {
	for _, p := range d.Store.Pending() {
		if p.Device != e.Device || p.ID == e.ID || p.Undo == nil {
			continue
		}
		kept := slices.DeleteFunc(slices.Clone(p.Undo.Set), func(s Step) bool {
			return slices.ContainsFunc(steps, func(n Step) bool { return n.Signal == s.Signal })
		})
		if len(kept) == len(p.Undo.Set) {
			continue
		}
		p.Undo.Set = kept
		if len(kept) == 0 {
			p.Undo = nil
			d.mu.Lock()
			if t := d.timers[p.ID]; t != nil {
				t.Stop()
			}
			d.mu.Unlock()
		}
		if err := d.Store.Put(p, d.now()); err != nil {
			d.Log.Error("command record", "id", p.ID, "err", err)
		}
		if p.Undo != nil {
			d.schedule(p)
		}
	}
}

// finish records a command's result and sends it.
func (d *Desk) finish(e Entry) {
	if err := d.Store.Put(e, d.now()); err != nil {
		d.Log.Error("command result not recorded", "id", e.ID, "device", e.Device, "err", err)
	}
	d.answer(Command{ID: e.ID, Device: e.Device, Action: e.Action}, true, e.Status, e.Reason)
}

// answer sends a command's result: on the device's topic when the station
// has the device, on the gateway's own otherwise.
func (d *Desk) answer(c Command, known bool, status model.ResultStatus, reason string) {
	id := c.ID
	if id == "" {
		id = "-"
	}
	m := model.Message{Device: c.Device, Kind: model.KindResult,
		Result: &model.Result{ID: id, Action: c.Action, Status: status, Reason: reason}}
	if t, ok := d.target(c.Device); ok && known {
		m.DeviceKind = t.Template.Kind
	} else {
		m.Device, m.DeviceKind = model.GatewayDevice, model.GatewayDevice
	}
	level := slog.LevelInfo
	if status != model.ResultOK {
		level = slog.LevelWarn
	}
	d.Log.Log(context.Background(), level, "command result", "id", id, "device", c.Device, "action", c.Action, "status", status, "reason", reason)
	if err := d.Emit(m); err != nil {
		d.Log.Error("command result not queued durably", "id", id, "err", err)
	}
}
