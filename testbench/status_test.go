package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	paho "github.com/eclipse/paho.mqtt.golang"

	"outpost/gateway/model"
	"outpost/gateway/model/schema"
	"outpost/gateway/status"
	"outpost/testbench/hub"
)

// chromium is Debian's Chromium, which make test installs.
const chromium = "/usr/bin/chromium"

// TestStatusPageAndSnapshot runs the police room (社区警务室) through the
// gateway, with a real Mosquitto: the status page, open in a real headless
// Chromium at a phone's size, shows every device online, and the hub holds
// the station's retained health snapshot with every device; a device the
// simulator switches off turns offline on the open page (it refreshes
// itself) and in the snapshot within its health timeout (three polls
// without an answer) plus 2 s.
func TestStatusPageAndSnapshot(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s: %v (make test-deps installs it)", chromium, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	work := t.TempDir()
	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer mq.Stop()
	src, err := os.ReadFile("../configs/police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	station, st, err := prepareStation(stationSpec{Src: src}, work, hubAddrs{MQTT: mq.URL()})
	if err != nil {
		t.Fatal(err)
	}

	// The hub's view: the retained snapshot, as an operator's view that
	// connects would get it.
	snaps := make(chan status.Snapshot, 100)
	cl := paho.NewClient(paho.NewClientOptions().AddBroker(mq.URL()).SetClientID("status-test"))
	if tok := cl.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer cl.Disconnect(100)
	topic := st.Hub.MQTT.TopicPrefix + "/" + st.Station.ID + "/snapshot"
	cl.Subscribe(topic, 1, func(_ paho.Client, m paho.Message) {
		if err := schema.ValidateSnapshot(m.Payload()); err != nil {
			t.Errorf("snapshot does not follow the hub contract's schema: %v\n%s", err, m.Payload())
		}
		var s status.Snapshot
		if err := json.Unmarshal(m.Payload(), &s); err != nil {
			t.Errorf("snapshot on %s: %v\n%s", topic, err, m.Payload())
			return
		}
		snaps <- s
	}).Wait()

	out, _ := os.Create(filepath.Join(work, "processes.log"))
	defer out.Close()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("simulator and gateway output:\n%s", b[max(0, len(b)-20000):])
		}
	}()
	sim, gw := &proc{name: "firmware-sim"}, &proc{name: "gateway"}
	defer sim.kill()
	defer gw.kill()
	if err := sim.start(ctx, out, "firmware-sim ready", "-config", station, "-control", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	control := sim.printed("firmware-sim control ")
	if err := gw.start(ctx, out, "", "run", "-config", station); err != nil {
		t.Fatal(err)
	}
	addr, err := statusAddr(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	page := "http://" + addr + "/"

	var ids []string
	for _, d := range st.Devices {
		ids = append(ids, d.ID)
	}
	all := func(state model.HealthState) map[string]model.HealthState {
		m := map[string]model.HealthState{}
		for _, id := range ids {
			m[id] = state
		}
		return m
	}

	// One browser, as a phone shows the page, left open: the page must
	// refresh itself.
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.UserDataDir(t.TempDir()))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	if _, err := chromedp.Run(bctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	if _, err := chromedp.Run(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	online := all(model.Online)
	waitPage(t, bctx, online, 20*time.Second)
	waitSnapshot(t, snaps, online, 20*time.Second)
	fits, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth <= window.innerWidth`))
	if err != nil || !fits {
		t.Errorf("the page is wider than a phone's screen (390 px): %v", err)
	}

	// th-hall is switched off: three polls of 1 s without an answer make
	// it offline; the open page and the hub see it within that plus 2 s.
	off := time.Now()
	resp, err := http.Post("http://"+control+"/devices/th-hall/silence", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("silencing th-hall: %v %v", resp, err)
	}
	resp.Body.Close()
	offline := all(model.Online)
	offline["th-hall"] = model.Offline
	const timeout = 3*time.Second + 2*time.Second
	waitPage(t, bctx, offline, timeout)
	onPage := time.Since(off)
	waitSnapshot(t, snaps, offline, timeout-onPage)
	t.Logf("th-hall offline on the page %.1f s and at the hub %.1f s after it was switched off (bound %s)", onPage.Seconds(), time.Since(off).Seconds(), timeout)
}

// waitPage watches the status page open in the browser until every
// device shows the state wanted, or fails after within.
func waitPage(t *testing.T, bctx context.Context, want map[string]model.HealthState, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var got map[string]model.HealthState
	for {
		cards, err := chromedp.Run(bctx, chromedp.Evaluate[map[string]string](
			`Object.fromEntries([...document.querySelectorAll(".card.device")].map(e => [e.id.slice(4), e.dataset.state]))`))
		if err != nil {
			t.Fatalf("chromium: %v", err)
		}
		got = map[string]model.HealthState{}
		for id, st := range cards {
			got[id] = model.HealthState(st)
		}
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the status page shows %v, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond) // the page's own refresh is what is waited for
	}
}

// waitSnapshot waits for a snapshot at the hub with every device in the
// state wanted.
func waitSnapshot(t *testing.T, snaps <-chan status.Snapshot, want map[string]model.HealthState, within time.Duration) {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	var got map[string]model.HealthState
	for {
		select {
		case s := <-snaps:
			got = map[string]model.HealthState{}
			for _, d := range s.Devices {
				got[d.ID] = d.State
			}
			if maps.Equal(got, want) {
				return
			}
		case <-timer.C:
			t.Fatalf("the hub's snapshot says %v, want %v", got, want)
		}
	}
}
