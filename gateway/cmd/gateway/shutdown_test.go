package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"outpost/configs"
	"outpost/firmware-sim/sim"
	"outpost/gateway/model"
	"outpost/testbench/hub"
	"outpost/testbench/testlog"
)

// station is a station file whose one device sits on a Modbus TCP endpoint
// where nothing listens, with its hub at broker.
func station(t *testing.T, broker string) *configs.Station {
	t.Helper()
	return writeStation(t, fmt.Sprintf(`
version: 2
station: {id: sd-1, type: safety_post}
state_dir: %s
hub:
  mqtt: {url: "%s"}
links:
  - {id: lan, protocol: modbus-tcp, address: "%s", timeout: 200ms}
devices:
  - {id: meter-1, template: sdm120, link: lan, unit_id: 1, poll: 100ms}
`, t.TempDir(), broker, freeAddr(t)))
}

func startBroker(t *testing.T) *hub.Mosquitto {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := hub.StartMosquitto(ctx, t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Thaw(); m.Kill() })
	return m
}

// waitOnline waits until the gateway's retained status says online.
func waitOnline(t *testing.T, broker, station string) {
	t.Helper()
	online := make(chan struct{}, 1)
	o := paho.NewClientOptions().AddBroker(broker).SetClientID("watch-" + station).SetCleanSession(true)
	c := paho.NewClient(o)
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher: %v", tok.Error())
	}
	defer c.Disconnect(0)
	c.Subscribe("outpost/v1/"+station+"/status", 1, func(_ paho.Client, m paho.Message) {
		if bytes.Contains(m.Payload(), []byte(`"state":"online"`)) {
			select {
			case online <- struct{}{}:
			default:
			}
		}
	})
	select {
	case <-online:
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway never came online")
	}
}

// runGateway runs the gateway until cancel and returns when run returned.
func runGateway(t *testing.T, st *configs.Station) (cancel func(), done <-chan error) {
	return runLogged(t, st, io.Discard)
}

// runLogged is runGateway with the gateway's log written to w.
func runLogged(t *testing.T, st *configs.Station, w io.Writer) (cancel func(), done <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- run(ctx, st, slog.New(slog.NewTextHandler(w, nil)), nil) }()
	return cancel, ch
}

// waitStopped waits for run to return, within its documented bound.
func waitStopped(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(stopLimit + statusTimeout + time.Second):
		t.Fatal("the gateway did not stop")
	}
}

// TestShutdownWhenHubHangs: the hub's broker stops answering (SIGSTOP: the
// connection stays open, nothing comes back) and the gateway is told to
// stop. It must stop within its documented bound, not wait for the hub.
func TestShutdownWhenHubHangs(t *testing.T) {
	m := startBroker(t)
	st := station(t, m.URL())
	cancel, done := runGateway(t, st)
	waitOnline(t, m.URL(), st.Station.ID)
	m.Freeze()
	start := time.Now()
	cancel()
	bound := stopLimit + statusTimeout + time.Second
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
		t.Logf("stopped %v after the request, with the hub hanging", time.Since(start).Round(time.Millisecond))
	case <-time.After(bound):
		t.Fatalf("the gateway did not stop within %v of the request while the hub hung", bound)
	}
}

// TestStartCancelledDuringConnect: the gateway is told to stop while it
// still waits for the hub's broker (which accepted the connection and
// hangs). Nothing of it may go on running afterwards.
func TestStartCancelledDuringConnect(t *testing.T) {
	m := startBroker(t)
	m.Freeze()
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	st := station(t, m.URL())
	cancel, done := runGateway(t, st)
	time.Sleep(300 * time.Millisecond) // a moment into the connect; the test is about what is left after
	cancel()
	waitStopped(t, done)
}

// TestStopDeliversWhatMemoryHolds: the state disk refuses writes (chattr
// +i) while the gateway runs, the hub's broker stops answering, and the
// gateway is told to stop; the broker answers again once the stop waits
// for it. The telemetry the queue holds in memory reaches the hub before
// the process ends, where it was lost with the process: the gateway says
// it waited, and not that it lost any, and the hub has every message of
// the device, its sequence unbroken.
func TestStopDeliversWhatMemoryHolds(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make the state directory immutable")
	}
	m := startBroker(t)
	st := station(t, m.URL())
	simulate(t, st, &served{rs: map[string][]sim.Reading{}}) // meter-1, at the endpoint station leaves free
	t.Cleanup(func() {
		exec.Command("chattr", "-R", "-i", st.StateDir).Run()
		for _, d := range fallbackDirs(st.Station.ID) { // where the status went meanwhile
			os.RemoveAll(d)
		}
	})

	var mu sync.Mutex
	var seqs []uint64
	c := paho.NewClient(paho.NewClientOptions().AddBroker(m.URL()).SetClientID("watch-telemetry").SetCleanSession(true))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("watcher: %v", tok.Error())
	}
	defer c.Disconnect(0)
	if tok := c.Subscribe("outpost/v1/"+st.Station.ID+"/meter-1/+", 1, func(_ paho.Client, msg paho.Message) {
		m, err := model.ParseJSON(msg.Payload())
		if err != nil {
			t.Errorf("message %s: %v", msg.Payload(), err)
			return
		}
		mu.Lock()
		seqs = append(seqs, m.Seq)
		mu.Unlock()
	}); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(seqs)
	}
	waitReceived := func(n int) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); received() < n; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the hub has %d messages of meter-1, want %d", received(), n)
			}
		}
	}

	var logs testlog.Buffer
	cancel, done := runLogged(t, st, &logs)
	waitReceived(3)
	if out, err := exec.Command("chattr", "-R", "+i", st.StateDir).CombinedOutput(); err != nil {
		t.Fatalf("chattr: %v: %s", err, out)
	}
	waitReceived(received() + 5) // telemetry from memory
	m.Freeze()
	time.Sleep(time.Second) // memory holds ten polls the frozen hub cannot take
	cancel()
	// Once the stop waits for the hub, the hub answers again.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "waiting for the hub to take what memory holds"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			m.Thaw()
			t.Fatalf("the stop did not wait for the hub to take what memory holds:\n%s", logs.String())
		}
	}
	m.Thaw()
	waitStopped(t, done)
	log := logs.String()
	if !strings.Contains(log, "waiting for the hub to take what memory holds before stopping") || strings.Contains(log, "lost") {
		t.Errorf("the gateway's log, stopping with telemetry in memory, wants that it waited and lost nothing:\n%s", log)
	}
	mu.Lock()
	defer mu.Unlock()
	// Health and telemetry go on connections of their own: sorted.
	got := slices.Compact(slices.Sorted(slices.Values(seqs)))
	for i := 1; i < len(got); i++ {
		if got[i] != got[i-1]+1 {
			t.Fatalf("meter-1's sequence numbers at the hub: %v, broken at %d", got, got[i-1]+1)
		}
	}
}
