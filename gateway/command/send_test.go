package command

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/model"
)

// kiosk stands for a driver whose device takes actions as messages: it
// answers each command when told to, as a kiosk back on line would.
type kiosk struct {
	mu   sync.Mutex
	got  []drivers.Outgoing
	away chan struct{} // Send waits while it is open
	sent chan drivers.Outgoing
}

func newKiosk(away bool) *kiosk {
	k := &kiosk{away: make(chan struct{}), sent: make(chan drivers.Outgoing, 100)}
	if !away {
		close(k.away)
	}
	return k
}

func (k *kiosk) Send(ctx context.Context, device string, c drivers.Outgoing) error {
	select {
	case <-k.away:
	case <-ctx.Done():
		return ctx.Err()
	}
	k.mu.Lock()
	k.got = append(k.got, c)
	k.mu.Unlock()
	k.sent <- c
	return nil
}

func kioskTemplate() *configs.Template {
	return &configs.Template{Name: "outpost-kiosk", Kind: "kiosk", Body: body{},
		Actions: []configs.Action{{Name: "request_status", Args: []configs.Field{
			{Name: "ticket", Type: configs.Text, Required: true, MaxLen: 40},
			{Name: "status", Type: configs.Text, Required: true, MaxLen: 16, Enum: []string{"received", "dispatched", "closed"}},
			{Name: "note", Type: configs.Text, MaxLen: 10},
		}}}}
}

func startKioskDesk(t *testing.T, path string, k *kiosk, now func() time.Time) *rig {
	t.Helper()
	store, _, err := OpenStore(path, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{res: &results{ch: make(chan model.Message, 100)}, done: make(chan struct{}), path: path}
	r.desk = &Desk{Station: "pc-0001", Targets: map[string]Target{
		"kiosk-1": {Template: kioskTemplate(), Link: "station-mqtt", Messenger: k},
		"siren-1": {Template: sirenTemplate(), Link: "rs485-1", Commander: newDevice()}},
		MaxTTL: time.Hour, Store: store, Emit: r.res.emit, Log: slog.New(slog.DiscardHandler), Now: now}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.desk.Run(ctx); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

// A device that takes actions as messages gets the template's args,
// checked first; an action that sets signals takes none.
func TestDeskMessageArgs(t *testing.T) {
	r := startKioskDesk(t, filepath.Join(t.TempDir(), "commands.jsonl"), newKiosk(false), nil)
	now := time.Now()
	for _, tt := range []struct {
		name, device, action, args string
		want                       model.Result
	}{
		{"good", "kiosk-1", "request_status", `{"ticket":"K-1","status":"dispatched","note":"on way"}`, model.Result{ID: "a-1", Status: model.ResultOK}},
		{"missing", "kiosk-1", "request_status", `{"ticket":"K-1"}`, model.Result{ID: "a-2", Status: model.ResultRejected, Reason: `request_status needs arg "status"`}},
		{"unknown arg", "kiosk-1", "request_status", `{"ticket":"K-1","status":"closed","colour":"red"}`, model.Result{ID: "a-3", Status: model.ResultRejected, Reason: `request_status takes no arg "colour" (its args: ticket, status, note)`}},
		{"not a choice", "kiosk-1", "request_status", `{"ticket":"K-1","status":"lost"}`, model.Result{ID: "a-4", Status: model.ResultRejected, Reason: `request_status: status is "lost" (expected one of: received, dispatched, closed)`}},
		{"too long", "kiosk-1", "request_status", `{"ticket":"K-1","status":"closed","note":"0123456789x"}`, model.Result{ID: "a-5", Status: model.ResultRejected, Reason: "request_status: note is 11 bytes long (at most 10)"}},
		{"wrong type", "kiosk-1", "request_status", `{"ticket":7,"status":"closed"}`, model.Result{ID: "a-6", Status: model.ResultRejected, Reason: "request_status: ticket must be a string, not a number"}},
		{"no such action", "kiosk-1", "siren_on", ``, model.Result{ID: "a-7", Status: model.ResultRejected, Reason: `kiosk-1 has no action "siren_on" (it takes: request_status)`}},
		{"args to a device that sets signals", "siren-1", "acknowledge", `{"colour":"red"}`, model.Result{ID: "a-8", Status: model.ResultRejected, Reason: "acknowledge takes no args but for (it got: colour)"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r.desk.Handle(tt.device, cmd(tt.want.ID, tt.action, tt.args, now, 30))
			got := r.res.next(t)
			tt.want.Action = tt.action
			if got != tt.want {
				t.Errorf("result %+v\nwant   %+v", got, tt.want)
			}
		})
	}
}

// A kiosk away holds up its own commands only, which reach it in order
// when it is back; commands a restart caught unanswered are sent again
// after it, in their order, and an expired one is answered failed.
func TestDeskMessagesWhileAwayAndAcrossRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.jsonl")
	away := newKiosk(true)
	r := startKioskDesk(t, path, away, nil)
	now := time.Now()
	for i, st := range []string{"received", "dispatched", "closed"} {
		r.desk.Handle("kiosk-1", cmd("k-"+string(rune('1'+i)), "request_status", `{"ticket":"K-1","status":"`+st+`"}`, now, 600))
	}
	r.desk.Handle("kiosk-1", cmd("k-4", "request_status", `{"ticket":"K-2","status":"received"}`, now, 60))
	r.desk.Handle("siren-1", cmd("s-1", "acknowledge", "", now, 30))
	if got := r.res.next(t); got.ID != "s-1" || got.Status != model.ResultOK {
		t.Fatalf("the siren's command waited behind the kiosk away: %+v", got)
	}
	r.stop() // the gateway stops with four commands unanswered
	back := newKiosk(false)
	// It starts again five minutes later: k-4's ttl has run out.
	r2 := startKioskDesk(t, path, back, func() time.Time { return now.Add(5 * time.Minute) })
	// The kiosk's results in the order it answered; k-4's comes when the
	// desk starts, among them.
	var ids []string
	for range 4 {
		res := r2.res.next(t)
		if res.ID == "k-4" {
			if res.Status != model.ResultFailed || res.Reason != "expired: the gateway restarted and the device had not answered before the command's ttl" {
				t.Errorf("k-4: %s %q", res.Status, res.Reason)
			}
			continue
		}
		ids = append(ids, res.ID+" "+string(res.Status))
	}
	if want := []string{"k-1 ok", "k-2 ok", "k-3 ok"}; !equalStrings(ids, want) {
		t.Errorf("results %v, want %v", ids, want)
	}
	back.mu.Lock()
	defer back.mu.Unlock()
	var order []string
	for _, c := range back.got {
		order = append(order, c.ID+" "+c.Args["status"].(string))
	}
	if !equalStrings(order, []string{"k-1 received", "k-2 dispatched", "k-3 closed"}) {
		t.Errorf("the kiosk got %v", order)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
