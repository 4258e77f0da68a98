package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sys/unix"

	"outpost/configs"
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
	"outpost/gateway/queue"
	"outpost/gateway/seq"
	"outpost/testbench/hub"
)

// TestStateDirUnusable: a gateway whose state_dir cannot be written at
// start (an SD card remounted read-only) runs all the same, with its state
// in memory: it raises state_dir_unusable, gateway status says where the
// state is, and its sequence numbers go on from the disk's. Started again
// once the disk is mended, it takes back what the fallback still held (here
// queued while the hub's broker hung) and goes on above its numbers.
func TestStateDirUnusable(t *testing.T) {
	b := runThenBreak(t)
	st, m, hubMsgs := b.st, b.m, b.hub
	m.Freeze() // what the gateway now queues stays in its fallback
	stop, done := runGateway(t, st)
	// Until meter-1's health is known (offline: no device answers), and so
	// queued in the fallback: the gateway says STATE IN MEMORY before its
	// first poll.
	polled := regexp.MustCompile(`(?m)^meter-1 +(online|offline|degraded) `)
	var out, errb bytes.Buffer
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out.Reset()
		if code := cli([]string{"status", "-config", st.File}, &out, &errb); code == 1 && strings.Contains(out.String(), "STATE IN MEMORY") && polled.MatchString(out.String()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway status says, after 10 s:\n%s%s", out.String(), errb.String())
		}
	}
	if want := "; it keeps its state in " + b.fallback + ", and a power cut loses what is queued there"; !strings.Contains(out.String(), want) {
		t.Errorf("gateway status:\n%s\nwant %q", out.String(), want)
	}
	stop()
	<-done
	b.mend()
	m.Thaw()

	// Started on the mended disk: the fallback's queue reaches the hub.
	stop, done = runGateway(t, st)
	defer func() { stop(); <-done }()
	ev := hubMsgs.await(t, "state_dir_unusable", func(m model.Message) bool {
		return m.Kind == model.KindEvent && m.Event.Kind == model.EventStateDirUnusable
	})
	if ev.Event.Severity != model.Critical || ev.Event.Details["state_dir"] != st.StateDir || ev.Event.Details["instead"] != b.fallback || ev.Event.Details["error"] == "" {
		t.Errorf("event %+v", ev.Event)
	}
	first := b.first
	second := hubMsgs.await(t, "meter-1's health from the fallback", meterHealth(first.Seq))
	third := hubMsgs.await(t, "meter-1's health of the third run", meterHealth(first.Seq, second.Seq))
	if !(first.Seq+seqJump < second.Seq && second.Seq < third.Seq) {
		t.Errorf("meter-1's numbers %d, %d (on the fallback), %d: want them rising, the fallback's %d above", first.Seq, second.Seq, third.Seq, seqJump)
	}
	if _, err := os.Stat(b.fallback); !os.IsNotExist(err) {
		t.Errorf("the fallback %s is still there (%v)", b.fallback, err)
	}
}

// TestStateDirUnusableReboot: the disk is mended with a reboot, which
// loses the fallback. The gateway goes on from the disk's numbers, below
// those the fallback used, and no number comes twice (the hub would drop
// the second as a duplicate).
func TestStateDirUnusableReboot(t *testing.T) {
	b := runThenBreak(t)
	st, hubMsgs, first := b.st, b.hub, b.first
	stop, done := runGateway(t, st)
	second := hubMsgs.await(t, "meter-1's health from the fallback", meterHealth(first.Seq))
	stop()
	<-done
	b.mend()
	if err := os.RemoveAll(b.fallback); err != nil { // the reboot
		t.Fatal(err)
	}
	stop, done = runGateway(t, st)
	defer func() { stop(); <-done }()
	third := hubMsgs.await(t, "meter-1's health after the reboot", meterHealth(first.Seq, second.Seq))
	if !(first.Seq < third.Seq && third.Seq < second.Seq) || second.Seq < first.Seq+seqJump {
		t.Errorf("meter-1's numbers %d, %d (on the fallback), %d (after the reboot): want the fallback's %d above, and the third between", first.Seq, second.Seq, third.Seq, seqJump)
	}
}

// brokenDisk is a station whose gateway ran once on a good disk, and
// whose state_dir is then made unusable.
type brokenDisk struct {
	m        *hub.Mosquitto
	st       *configs.Station
	hub      *hubLog // the hub's subscriber to the station's topics
	first    model.Message
	fallback string // where the gateway will keep its state
	mend     func()
}

// runThenBreak runs a first gateway (fallbacks under a runtime directory
// of the test's) until the hub has meter-1's health, stops it, and makes
// its state_dir unusable (see breakStateDir).
func runThenBreak(t *testing.T) brokenDisk {
	t.Helper()
	m := startBroker(t)
	runtime := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtime)
	st := station(t, m.URL())
	b := brokenDisk{m: m, st: st, hub: subscribeAll(t, m.URL(), st.Station.ID), fallback: filepath.Join(runtime, st.Station.ID)}
	stop, done := runGateway(t, st)
	b.first = b.hub.await(t, "meter-1's first health", meterHealth())
	stop()
	<-done
	var how string
	b.mend, how = breakStateDir(t, st.StateDir)
	t.Logf("state_dir made unusable: %s", how)
	return b
}

// meterHealth matches a health message of meter-1 whose number is none of
// those given.
func meterHealth(not ...uint64) func(model.Message) bool {
	return func(m model.Message) bool {
		return m.Device == "meter-1" && m.Kind == model.KindHealth && !slices.Contains(not, m.Seq)
	}
}

// breakStateDir makes dir unusable: mounted read-only when this test may
// mount (root), else with its queue's directory turned into a file. mend
// undoes it.
func breakStateDir(t *testing.T, dir string) (mend func(), how string) {
	t.Helper()
	if os.Geteuid() == 0 {
		err := mountReadOnly(dir)
		if err == nil {
			var once sync.Once
			mend := func() {
				once.Do(func() {
					if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
						t.Errorf("umount %s: %v", dir, err)
					}
				})
			}
			t.Cleanup(mend) // also when the test fails before it mends
			return mend, "mounted read-only"
		}
		t.Logf("mount %s read-only: %v", dir, err)
	}
	q := filepath.Join(dir, "queue")
	if err := os.RemoveAll(q); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(q, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := os.Remove(q); err != nil {
			t.Fatal(err)
		}
	}, "its queue directory a file"
}

// mountReadOnly mounts dir read-only on itself in one step: the mount is
// made read-only before it is attached, so a gateway running on dir cannot
// open a file for writing on it in between, which made the two steps of
// mount(8) (a bind, then a remount read-only) fail as busy.
func mountReadOnly(dir string) error {
	fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC)
	if err != nil {
		return fmt.Errorf("open_tree: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}); err != nil {
		return fmt.Errorf("mount_setattr: %w", err)
	}
	if err := unix.MoveMount(fd, "", unix.AT_FDCWD, dir, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		return fmt.Errorf("move_mount: %w", err)
	}
	return nil
}

// hubLog is what a subscriber to a station's topics received.
type hubLog struct {
	mu   sync.Mutex
	msgs []model.Message
	more chan struct{}
}

// subscribeAll subscribes to every topic of the station at the broker.
func subscribeAll(t *testing.T, broker, station string) *hubLog {
	t.Helper()
	h := &hubLog{more: make(chan struct{}, 1)}
	c := paho.NewClient(paho.NewClientOptions().AddBroker(broker).SetClientID("hub-" + station).SetCleanSession(true).SetAutoReconnect(true))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("hub subscriber: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	tok := c.Subscribe("outpost/v1/"+station+"/#", 1, func(_ paho.Client, p paho.Message) {
		msg, err := model.ParseJSON(p.Payload())
		if err != nil {
			return // the status and the snapshot
		}
		h.mu.Lock()
		h.msgs = append(h.msgs, msg)
		h.mu.Unlock()
		select {
		case h.more <- struct{}{}:
		default:
		}
	})
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("hub subscriber: %v", tok.Error())
	}
	return h
}

// await returns the first message received that match says is the one,
// within 20 s.
func (h *hubLog) await(t *testing.T, what string, match func(model.Message) bool) model.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		h.mu.Lock()
		for _, m := range h.msgs {
			if match(m) {
				h.mu.Unlock()
				return m
			}
		}
		h.mu.Unlock()
		select {
		case <-h.more:
		case <-ctx.Done():
			t.Fatalf("no %s at the hub in 20 s", what)
		}
	}
}

// TestStateDirReadOnlyUnderGateway: a second gateway of the station
// started while the first runs on a state_dir that has gone read-only (an
// installer's gateway run beside the service) stops at once, naming the
// first, rather than run beside it on a fallback: two masters on a bus
// scramble each other's frames. It needs to mount the state_dir
// read-only.
func TestStateDirReadOnlyUnderGateway(t *testing.T) {
	m := startBroker(t)
	t.Setenv("RUNTIME_DIRECTORY", t.TempDir())
	st := station(t, m.URL())
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()
	awaitRunning(t, st)
	if _, how := breakStateDir(t, st.StateDir); how != "mounted read-only" {
		t.Skipf("this test needs to mount the state_dir read-only; it could only make %s", how)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := run(ctx, st, slog.New(slog.DiscardHandler), nil)
	want := fmt.Sprintf("another gateway (pid %d) runs with state_dir %s: stop it first", os.Getpid(), st.StateDir)
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("second gateway: %v, want %q...", err, want)
	}
}

// TestTakeBackDamaged: a fallback left by an earlier run that cannot be
// taken back (here its queue is not a directory) does not keep the
// gateway from starting on its state_dir.
func TestTakeBackDamaged(t *testing.T) {
	m := startBroker(t)
	runtime := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtime)
	st := station(t, m.URL())
	left := filepath.Join(runtime, st.Station.ID)
	if err := os.MkdirAll(left, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "queue"), []byte("not a queue"), 0o600); err != nil {
		t.Fatal(err)
	}
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()
	waitOnline(t, m.URL(), st.Station.ID)
}

// TestStateDirUnusablePanel: on a fallback, the drivers keep their own
// state there too: a DC-09 receiver remembers the frames it acknowledged
// in the fallback, not in the state_dir that refuses it.
func TestStateDirUnusablePanel(t *testing.T) {
	runtime := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtime)
	st, panel := startPanel(t, "1s")
	if _, how := breakStateDir(t, st.StateDir); how != "mounted read-only" {
		// The stand-in leaves the state_dir itself writable, where the
		// receiver would write all the same.
		t.Skipf("this test needs to mount the state_dir read-only; it could only make %s", how)
	}
	stop, done := runGateway(t, st)
	defer func() { stop(); <-done }()
	memory := filepath.Join(runtime, st.Station.ID, "dc09", "alarm-rx.json")
	for deadline := time.Now().Add(15 * time.Second); !exists(memory); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no %s 15 s into alarms", memory)
		}
		if err := panel.(sim.Actor).Act(context.Background(), "alarm", map[string]string{"code": "120", "zone": "1"}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestFallbackInUse: a gateway started on a good state_dir while another
// gateway of the station still runs on its fallback (started when the disk
// was read-only) stops, as it would beside one on state_dir.
func TestFallbackInUse(t *testing.T) {
	runtime := t.TempDir()
	t.Setenv("RUNTIME_DIRECTORY", runtime)
	st := station(t, "tcp://"+freeAddr(t)) // no broker: the start stops before it
	other, err := queue.Open(filepath.Join(runtime, st.Station.ID, "queue"), queue.Options{Readers: st.Uplinks()}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = run(ctx, st, slog.New(slog.DiscardHandler), nil)
	if want := "another gateway runs with the state of station sd-1 in memory: stop it first"; err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("run: %v, want %q...", err, want)
	}
}

// TestSeqJumpTwoEpisodes: a flaky disk fails, the gateway runs on a
// fallback for a while, a reboot loses it, and the disk fails again soon
// after. The second fallback's numbers start above every number the first
// one used, though the disk's leases moved on by little meanwhile.
func TestSeqJumpTwoEpisodes(t *testing.T) {
	st := station(t, "tcp://127.0.0.1:1") // no broker: only its devices
	quiet := slog.New(slog.DiscardHandler)
	disk, err := seq.Open(st.SeqFile(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := disk.Next("meter-1"); err != nil { // leases a block
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	// A new fallback made at a time, with the numbers it starts from.
	fallback := func(at time.Time) *seq.Counters {
		t.Helper()
		fb := inDir(st, t.TempDir())
		if err := carry(st, fb); err != nil {
			t.Fatal(err)
		}
		if err := jumpSeq(fb, at, quiet); err != nil {
			t.Fatal(err)
		}
		c, err := seq.Open(fb.SeqFile(), quiet)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ep1 := fallback(t0)
	var last uint64
	for range 50000 { // 50,000 messages of meter-1 in the first episode, 10 hours at 1.4 a second
		if last, err = ep1.Next("meter-1"); err != nil {
			t.Fatal(err)
		}
	}
	// The reboot loses the first fallback; the disk's leases move on by a
	// block before it fails again, ten hours later.
	for range 5000 {
		if _, err := disk.Next("meter-1"); err != nil {
			t.Fatal(err)
		}
	}
	ep2 := fallback(t0.Add(10 * time.Hour))
	next, err := ep2.Next("meter-1")
	if err != nil {
		t.Fatal(err)
	}
	if next <= last {
		t.Errorf("the second fallback's first number %d is not above the first's last, %d", next, last)
	}
	if gw, err := ep2.Next(model.GatewayDevice); err != nil || gw < seqJump {
		t.Errorf("the gateway's first number on the fallback %d (%v), want %d or more", gw, err, uint64(seqJump))
	}
}
