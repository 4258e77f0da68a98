package command

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// body is a template body with given signals.
type body []configs.Signal

func (b body) Signals() []configs.Signal { return b }

// device records the writes a Desk makes, as a driver would carry them
// out; fail makes a signal's writes fail.
type device struct {
	mu     sync.Mutex
	writes []string // "signal=value"
	fail   map[string]error
	wrote  chan string
}

func newDevice() *device { return &device{fail: map[string]error{}, wrote: make(chan string, 100)} }

func (d *device) Set(ctx context.Context, dev, signal string, v model.Value) error {
	d.mu.Lock()
	err := d.fail[signal]
	if err == nil {
		d.writes = append(d.writes, fmt.Sprintf("%s=%v", signal, v))
	}
	d.mu.Unlock()
	if err == nil {
		d.wrote <- fmt.Sprintf("%s=%v", signal, v)
	}
	return err
}

func (d *device) got() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.writes...)
}

func sirenTemplate() *configs.Template {
	return &configs.Template{Name: "test-siren", Kind: "siren",
		Body: body{
			{Name: "siren", Type: configs.Bool, Writable: true},
			{Name: "led", Type: configs.Bool, Writable: true},
			{Name: "volume", Type: configs.Number, Writable: true, Limits: &configs.Range{Min: 0, Max: 10}},
			{Name: "pressed", Type: configs.Bool},
		},
		Actions: []configs.Action{
			{Name: "siren_on", Set: []configs.Setting{{Signal: "siren", Value: configs.Literal{Value: model.Bool(true)}}}, For: 3 * time.Minute},
			{Name: "siren_off", Set: []configs.Setting{{Signal: "siren", Value: configs.Literal{Value: model.Bool(false)}}}},
			{Name: "acknowledge", Set: []configs.Setting{{Signal: "led", Value: configs.Literal{Value: model.Bool(true)}}}},
		}}
}

// results collects what a Desk emits.
type results struct {
	mu  sync.Mutex
	got []model.Message
	ch  chan model.Message
}

func (r *results) emit(m model.Message) error {
	r.mu.Lock()
	r.got = append(r.got, m)
	r.mu.Unlock()
	r.ch <- m
	return nil
}

// next waits for the next result.
func (r *results) next(t *testing.T) model.Result {
	t.Helper()
	select {
	case m := <-r.ch:
		if m.Kind != model.KindResult || m.Result == nil {
			t.Fatalf("emitted %s, want a result", m.Kind)
		}
		return *m.Result
	case <-time.After(5 * time.Second):
		t.Fatal("no result within 5s")
	}
	return model.Result{}
}

type rig struct {
	desk   *Desk
	dev    *device
	res    *results
	cancel context.CancelFunc
	done   chan struct{}
	path   string
}

// startDesk runs a Desk for a station with one device, siren-1, and a
// store at path.
func startDesk(t *testing.T, path string, dev *device, now func() time.Time) *rig {
	t.Helper()
	store, _, err := OpenStore(path, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dev: dev, res: &results{ch: make(chan model.Message, 100)}, done: make(chan struct{}), path: path}
	r.desk = &Desk{Station: "sp-0007", Targets: map[string]Target{"siren-1": {Template: sirenTemplate(), Link: "rs485-1", Commander: dev}},
		MaxTTL: time.Hour, Store: store, Emit: r.res.emit, Log: slog.New(slog.DiscardHandler), Now: now}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.desk.Run(ctx); close(r.done) }()
	t.Cleanup(r.stop)
	return r
}

func (r *rig) stop() {
	r.cancel()
	<-r.done
	r.desk.Store.Close()
}

func cmd(id, action, args string, sent time.Time, ttl int) []byte {
	s := fmt.Sprintf(`{"v":1,"id":%q,"action":%q,"ts":%q,"ttl":%d`, id, action, sent.Format(time.RFC3339Nano), ttl)
	if args != "" {
		s += `,"args":` + args
	}
	return []byte(s + "}")
}

func TestDeskAnswersEveryCommand(t *testing.T) {
	now := time.Now()
	r := startDesk(t, filepath.Join(t.TempDir(), "commands.jsonl"), newDevice(), nil)
	tests := []struct {
		name, device string
		payload      []byte
		want         model.Result
		wantDevice   string
		writes       int
	}{
		{"named action", "siren-1", cmd("c-1", "acknowledge", "", now, 30), model.Result{ID: "c-1", Action: "acknowledge", Status: model.ResultOK}, "siren-1", 1},
		{"set within limits", "siren-1", cmd("c-2", "set", `{"signal":"volume","value":7}`, now, 30), model.Result{ID: "c-2", Action: "set", Status: model.ResultOK}, "siren-1", 1},
		{"out of range", "siren-1", cmd("c-3", "set", `{"signal":"volume","value":11}`, now, 30),
			model.Result{ID: "c-3", Action: "set", Status: model.ResultRejected, Reason: "11 is out of range for volume (0 to 10)"}, "siren-1", 0},
		{"wrong type", "siren-1", cmd("c-4", "set", `{"signal":"led","value":1}`, now, 30),
			model.Result{ID: "c-4", Action: "set", Status: model.ResultRejected, Reason: "led takes true or false, not 1"}, "siren-1", 0},
		{"not writable", "siren-1", cmd("c-5", "set", `{"signal":"pressed","value":false}`, now, 30),
			model.Result{ID: "c-5", Action: "set", Status: model.ResultRejected, Reason: `siren-1 has no writable signal "pressed" (writable: siren, led, volume)`}, "siren-1", 0},
		{"unknown action", "siren-1", cmd("c-6", "launch", "", now, 30),
			model.Result{ID: "c-6", Action: "launch", Status: model.ResultRejected, Reason: `siren-1 has no action "launch" (it takes: set, siren_on, siren_off, acknowledge)`}, "siren-1", 0},
		{"expired", "siren-1", cmd("c-7", "siren_on", "", now.Add(-time.Minute), 30),
			model.Result{ID: "c-7", Action: "siren_on", Status: model.ResultRejected, Reason: "expired: sent " + now.Add(-time.Minute).UTC().Format(time.RFC3339) + " with a ttl of 30s"}, "siren-1", 0},
		{"from the future", "siren-1", cmd("c-8", "siren_on", "", now.Add(time.Hour), 30),
			model.Result{ID: "c-8", Action: "siren_on", Status: model.ResultRejected, Reason: "sent 1h0m0s in the future"}, "siren-1", 0},
		{"longer than the action lasts", "siren-1", cmd("c-9", "siren_on", `{"for":600}`, now, 30),
			model.Result{ID: "c-9", Action: "siren_on", Status: model.ResultRejected, Reason: "for 10m0s is longer than siren_on lasts at most (3m0s)"}, "siren-1", 0},
		{"unknown device", "siren-9", cmd("c-10", "siren_on", "", now, 30),
			model.Result{ID: "c-10", Action: "siren_on", Status: model.ResultRejected, Reason: "no device siren-9 at station sp-0007"}, model.GatewayDevice, 0},
		{"malformed", "siren-1", []byte(`{"v":1,"action":"siren_on"`),
			model.Result{ID: "-", Status: model.ResultRejected, Reason: "malformed: not a JSON object"}, "siren-1", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(r.dev.got())
			r.desk.Handle(tt.device, tt.payload)
			got := r.res.next(t)
			if got.ID != tt.want.ID || got.Action != tt.want.Action || got.Status != tt.want.Status || !strings.HasPrefix(got.Reason, tt.want.Reason) {
				t.Errorf("result %+v, want %+v (reason as prefix)", got, tt.want)
			}
			r.res.mu.Lock()
			m := r.res.got[len(r.res.got)-1]
			r.res.mu.Unlock()
			if m.Device != tt.wantDevice {
				t.Errorf("result on device %s, want %s", m.Device, tt.wantDevice)
			}
			if n := len(r.dev.got()) - before; n != tt.writes {
				t.Errorf("%d writes, want %d", n, tt.writes)
			}
		})
	}
}

func TestDeskDeviceFailure(t *testing.T) {
	dev := newDevice()
	dev.fail["siren"] = errors.New("no answer from unit 3 after 2 tries")
	r := startDesk(t, filepath.Join(t.TempDir(), "commands.jsonl"), dev, nil)
	r.desk.Handle("siren-1", cmd("c-1", "siren_on", "", time.Now(), 30))
	want := model.Result{ID: "c-1", Action: "siren_on", Status: model.ResultFailed, Reason: "setting siren to true: no answer from unit 3 after 2 tries"}
	if got := r.res.next(t); got != want {
		t.Errorf("result %+v, want %+v", got, want)
	}
}

// A command acts once, whatever the broker redelivers, also across a
// restart; a redelivery is answered with the first result.
func TestDeskActsOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.jsonl")
	dev := newDevice()
	r := startDesk(t, path, dev, nil)
	c := cmd("c-1", "acknowledge", "", time.Now(), 600)
	r.desk.Handle("siren-1", c)
	first := r.res.next(t)
	r.desk.Handle("siren-1", c)
	if again := r.res.next(t); again != first {
		t.Errorf("redelivery answered %+v, want the first result %+v", again, first)
	}
	r.stop()

	r2 := startDesk(t, path, dev, nil)
	r2.desk.Handle("siren-1", c)
	if again := r2.res.next(t); again != first {
		t.Errorf("redelivery after a restart answered %+v, want %+v", again, first)
	}
	// The same id for another action is refused, not carried out.
	r2.desk.Handle("siren-1", cmd("c-1", "siren_on", "", time.Now(), 600))
	if got := r2.res.next(t); got.Status != model.ResultRejected || got.Reason != "id c-1 was already used, by acknowledge for siren-1" {
		t.Errorf("reused id: %+v", got)
	}
	if got := dev.got(); len(got) != 1 || got[0] != "led=true" {
		t.Errorf("device writes %v, want [led=true] once", got)
	}
}

// A lasting action is set back by the gateway, also when the gateway
// restarted in between; a later command takes over the signal.
func TestDeskLastingActions(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.jsonl")
	dev := newDevice()
	r := startDesk(t, path, dev, nil)
	wait := func(want string) {
		t.Helper()
		select {
		case got := <-dev.wrote:
			if got != want {
				t.Fatalf("device wrote %s, want %s", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("device did not write %s within 5s", want)
		}
	}
	r.desk.Handle("siren-1", cmd("c-1", "siren_on", `{"for":0.3}`, time.Now(), 30))
	wait("siren=true")
	if got := r.res.next(t); got.Status != model.ResultOK {
		t.Fatalf("siren_on: %+v", got)
	}
	wait("siren=false") // after 0.3 s, by itself

	// Sounded for 0.5 s, then the gateway stops and starts again: the
	// siren still stops on time.
	r.desk.Handle("siren-1", cmd("c-2", "siren_on", `{"for":0.5}`, time.Now(), 30))
	wait("siren=true")
	r.res.next(t)
	r.stop()
	r2 := startDesk(t, path, dev, nil)
	wait("siren=false")

	// Sounded again before the first sounding ends: the first one's end
	// does not silence the second.
	r2.desk.Handle("siren-1", cmd("c-3", "siren_on", `{"for":0.2}`, time.Now(), 30))
	wait("siren=true")
	r2.res.next(t)
	r2.desk.Handle("siren-1", cmd("c-4", "siren_on", `{"for":1}`, time.Now(), 30))
	wait("siren=true")
	r2.res.next(t)
	start := time.Now()
	wait("siren=false")
	if took := time.Since(start); took < 700*time.Millisecond {
		t.Errorf("siren stopped %v after the second sounding began, want about 1s", took)
	}
}

// A command the gateway took but could not finish before it stopped is
// reported at the next start, and not carried out then.
func TestDeskReportsInterruptedCommands(t *testing.T) {
	path := filepath.Join(t.TempDir(), "commands.jsonl")
	store, _, err := OpenStore(path, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Put(Entry{ID: "c-1", Device: "siren-1", Action: "acknowledge", At: time.Now()}, time.Now()); err != nil {
		t.Fatal(err)
	}
	store.Close()
	dev := newDevice()
	r := startDesk(t, path, dev, nil)
	got := r.res.next(t)
	if got.ID != "c-1" || got.Status != model.ResultFailed || !strings.HasPrefix(got.Reason, "interrupted:") {
		t.Errorf("result %+v, want c-1 failed: interrupted", got)
	}
	if w := dev.got(); len(w) != 0 {
		t.Errorf("device writes %v after the restart, want none", w)
	}
}
