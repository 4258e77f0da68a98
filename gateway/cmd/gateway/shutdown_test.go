package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"
	"go.uber.org/goleak"

	"outpost/configs"
	"outpost/testbench/hub"
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
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- run(ctx, st, slog.New(slog.NewTextHandler(io.Discard, nil)), nil) }()
	return cancel, ch
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
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(stopLimit + statusTimeout + time.Second):
		t.Fatal("the gateway did not stop")
	}
}
