package mqtt

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/uplink"
	"outpost/testbench/hub"
)

type command struct{ device, payload string }

// desk is the duty desk's side: a plain client that publishes commands.
func desk(t *testing.T, url string) paho.Client {
	t.Helper()
	c := paho.NewClient(paho.NewClientOptions().AddBroker(url).SetClientID("duty-desk").SetCleanSession(true))
	if tok := c.Connect(); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("duty desk connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func publish(t *testing.T, c paho.Client, topic, payload string, retained bool) {
	t.Helper()
	if tok := c.Publish(topic, 1, retained, payload); !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func alarms(t *testing.T, url string, got chan<- command) *Uplink {
	t.Helper()
	u := NewAlarms(configs.MQTT{URL: url}, station, func(device string, payload []byte) {
		got <- command{device, string(payload)}
	}, quiet())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := u.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	return u
}

func nextCommand(t *testing.T, ch <-chan command) command {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("no command within 10 s")
		return command{}
	}
}

// The alarm lane's connection lives beside the main one, takes the duty
// desk's commands, and keeps them in the broker while it is away.
func TestAlarmConnectionTakesCommands(t *testing.T) {
	b := startBroker(t)
	status := subscribe(t, b.URL(), "watcher", "outpost/v1/#")
	main := connect(t, b.URL())
	got := make(chan command, 10)
	dd := desk(t, b.URL())
	topic := CommandTopic(DefaultPrefix, station.ID, "siren-1")
	// A retained command is sent at every subscription, marked retained:
	// it is never taken.
	publish(t, dd, topic, `{"id":"c-0"}`, true)
	a := alarms(t, b.URL(), got) // subscribed when Connect returns

	publish(t, dd, topic, `{"id":"c-1"}`, false)
	if c := nextCommand(t, got); c != (command{"siren-1", `{"id":"c-1"}`}) {
		t.Errorf("command %+v, want c-1", c)
	}
	// Both connections are up at once: neither took the other's client id.
	if !main.Connected() || !a.Connected() {
		t.Fatalf("connected: main %v, alarms %v", main.Connected(), a.Connected())
	}
	// An alarm goes out on the alarm connection.
	ev := model.Message{Station: station.ID, StationType: station.Type, Device: "btn-1", DeviceKind: "panic_button", Seq: 1,
		Time: time.Now().UTC(), Kind: model.KindEvent, Event: &model.Event{Kind: model.EventPanic, Severity: model.Critical}}
	if err := uplink.SendAll(context.Background(), a.NewBatch(), []model.Message{ev}); err != nil {
		t.Fatal(err)
	}
	for r := next(t, status); r.topic != "outpost/v1/"+station.ID+"/btn-1/event"; r = next(t, status) {
	}

	// Away: the broker keeps commands for the persistent session.
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	publish(t, dd, topic, `{"id":"c-2"}`, false)
	// A command published retained while away reaches the session once,
	// as any other. A command of another station never arrives.
	publish(t, dd, topic, `{"id":"c-retained"}`, true)
	publish(t, dd, CommandTopic(DefaultPrefix, "other-station", "siren-1"), `{"id":"c-other"}`, false)
	a2 := alarms(t, b.URL(), got)
	// Handlers run concurrently: the two come in either order. c-1 may
	// come again: its acknowledgement may not have left before the
	// connection closed (see c-3 below).
	c1, c2, cRetained := command{"siren-1", `{"id":"c-1"}`}, command{"siren-1", `{"id":"c-2"}`}, command{"siren-1", `{"id":"c-retained"}`}
	for kept := map[command]bool{}; !kept[c2] || !kept[cRetained]; {
		c := nextCommand(t, got)
		if c != c1 && c != c2 && c != cRetained {
			t.Fatalf("command %+v kept while away, want c-2 and c-retained (or c-1 again)", c)
		}
		kept[c] = true
	}
	if err := a2.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	a3 := alarms(t, b.URL(), got)
	defer a3.Close(context.Background())
	publish(t, dd, topic, `{"id":"c-3"}`, false)
	// c-2 and c-retained may come again: their acknowledgements may not
	// have left before the connection closed, and QoS 1 then delivers
	// them once more (the desk's durable ids make that harmless). c-0,
	// only ever sent marked retained, never.
	for c := nextCommand(t, got); c != (command{"siren-1", `{"id":"c-3"}`}); c = nextCommand(t, got) {
		if c != (command{"siren-1", `{"id":"c-2"}`}) && c != (command{"siren-1", `{"id":"c-retained"}`}) {
			t.Fatalf("command %+v, want c-3 (or c-2 or c-retained again)", c)
		}
	}
	// Closing the alarm connection did not publish the station offline.
	select {
	case r := <-status:
		if r.topic == StatusTopic(DefaultPrefix, station.ID) && r.payload != "" {
			if s, _ := ParseStatus([]byte(r.payload)); s.State == StateOffline {
				t.Error("closing the alarm connection published the station offline")
			}
		}
	default:
	}
}

// TestCheckACL: an installer's check publishes to the station's own
// commands topic and to each device's, and reads them back, so that a
// broker whose ACL drops what the station publishes, or for one device, or
// its commands, fails it (an MQTT 3.1.1 broker acknowledges both and
// delivers nothing). The gateway's alarm connection, whose session kept
// the check's messages while it was away, ignores them, on a device's
// commands topic too.
func TestCheckACL(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "passwd")
	if err := hub.PasswordFile(pw, "outpost", "secret"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	own := "outpost/v1/" + station.ID
	acl := fmt.Sprintf("the broker %%s takes the station's connection, but what it published to %s/_check/command did not reach its subscription to its commands in 3s: its ACL must let the station's user publish to %s/# and subscribe to %s/+/command", own, own, own)
	perDevice := fmt.Sprintf("the broker %%s drops what the station publishes for ups-1: a probe to %s/ups-1/command did not come back in 3s, where one to %s/_check/command did; its ACL must let the station's user publish to %s/# (an ACL that lists devices must list these)", own, own, own)
	for _, c := range []struct {
		name, acl string
		want      string // the error's beginning, "" for none
	}{
		{"as the hub contract says", "topic write " + own + "/#\ntopic read " + own + "/+/command\n", ""},
		{"publish only", "topic write " + own + "/#\n", acl},
		{"commands only", "topic read " + own + "/+/command\n", acl},
		{"devices listed, one missing", "topic write " + own + "/_check/#\ntopic write " + own + "/siren-1/#\ntopic write " + own + "/door-1/#\ntopic read " + own + "/+/command\n", perDevice},
	} {
		t.Run(c.name, func(t *testing.T) {
			sub := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-"))
			if err := os.MkdirAll(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			aclFile := filepath.Join(sub, "acl")
			if err := os.WriteFile(aclFile, []byte("user outpost\n"+c.acl), 0o644); err != nil {
				t.Fatal(err)
			}
			b, err := hub.StartMosquittoWith(ctx, filepath.Join(sub, "broker"), quiet(), hub.MosquittoOptions{
				Config: "allow_anonymous false\npassword_file " + pw + "\nacl_file " + aclFile + "\n"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Stop)
			url := "tcp://outpost:secret@" + b.Addr()
			got := make(chan command, 10)
			a := alarms(t, url, got) // its session takes the commands
			if err := a.Close(ctx); err != nil {
				t.Fatal(err)
			}
			err = Check(ctx, configs.MQTT{URL: url}, station, "siren-1", "ups-1", "door-1")
			if c.want == "" {
				if err != nil {
					t.Fatalf("Check: %v", err)
				}
			} else {
				// Mosquitto 2.0 with max_queued_messages 0 (the test
				// hub's) acknowledges a publish its ACL denies, then
				// closes the connection; with its default (1000) it
				// does not: what follows is named as not tried.
				want := fmt.Sprintf(c.want, "tcp://outpost:xxxxx@"+b.Addr())
				if err == nil || !slices.Contains([]string{want, want + "; it then closed the connection: door-1 not tried"}, err.Error()) && !strings.HasPrefix(err.Error(), want+" (") {
					t.Fatalf("Check: %v\nwant %s", err, want)
				}
				t.Logf("Check: %v", err)
				return
			}
			a = alarms(t, url, got)
			defer a.Close(ctx)
			publish(t, desk(t, url), CommandTopic(DefaultPrefix, station.ID, "siren-1"), `{"id":"c-9"}`, false)
			if c := nextCommand(t, got); c != (command{"siren-1", `{"id":"c-9"}`}) {
				t.Errorf("command %+v, want c-9 alone (the check's probes are not commands)", c)
			}
		})
	}
}
