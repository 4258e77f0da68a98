package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/testbench/hub"
)

// cmdDemo runs the simulated police room through the gateway to an MQTT
// broker embedded in this process, standing in for the hub, and prints what
// reaches it until Ctrl-C. Nothing needs to be installed.
func cmdDemo(ctx context.Context, _ []string, log *slog.Logger) int {
	if err := demo(ctx, log); err != nil && ctx.Err() == nil {
		log.Error("demo", "err", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, log *slog.Logger) error {
	work, err := os.MkdirTemp("", "outpost-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	port, err := hub.FreePort()
	if err != nil {
		return err
	}
	broker := mochi.New(&mochi.Options{InlineClient: true, Logger: slog.New(slog.DiscardHandler)})
	broker.AddHook(new(auth.AllowHook), nil)
	if err := broker.AddListener(listeners.NewTCP(listeners.Config{ID: "hub", Address: fmt.Sprintf("127.0.0.1:%d", port)})); err != nil {
		return err
	}
	go broker.Serve()
	defer broker.Close()

	src, err := configs.Embedded.ReadFile("police-room.yaml")
	if err != nil {
		return err
	}
	hubURL := fmt.Sprintf("tcp://127.0.0.1:%d", port)
	station, st, err := prepareStation(stationSpec{Src: src}, work, hubAddrs{MQTT: hubURL})
	if err != nil {
		return err
	}
	logs, err := os.Create(filepath.Join(work, "processes.log"))
	if err != nil {
		return err
	}
	defer logs.Close()

	view := newLiveView(st)
	col, err := collect(ctx, hubURL, st, view.print)
	if err != nil {
		return err
	}
	defer col.close()

	sim, gw := &proc{name: "firmware-sim"}, &proc{name: "gateway"}
	defer sim.kill()
	defer gw.kill()
	if err := sim.start(ctx, logs, "firmware-sim ready", "-config", station); err != nil {
		return err
	}
	if err := gw.start(ctx, logs, "", "run", "-config", station); err != nil {
		return err
	}
	fmt.Printf("outpost demo: %s (%s, 社区警务室) — %d devices on %d links\n",
		st.Station.ID, st.Station.Type, len(st.Devices), len(st.Links))
	fmt.Printf("hub: embedded MQTT broker at %s, topics %s; Ctrl-C to stop\n", hubURL, stationTopics(st))
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if addr, err := statusAddr(wctx, st, time.Time{}); err == nil {
		fmt.Printf("status page: http://%s/ (open it in a browser; metrics at /metrics)\n", addr)
	}
	cancel()
	fmt.Println()
	<-ctx.Done()
	gw.stop(5 * time.Second)
	sim.stop(5 * time.Second)
	c := col.counts()
	fmt.Printf("\nat the hub: %d readings, %d events, %d health messages\n", c.Readings, sumEvents(c.Events), c.Health)
	return nil
}

func sumEvents(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// liveView prints each message that reaches the hub as one readable line.
type liveView struct{ width int }

func newLiveView(st *configs.Station) *liveView {
	w := 0
	for _, d := range st.Devices {
		w = max(w, len(d.ID))
	}
	return &liveView{width: w}
}

func (v *liveView) print(m *model.Message, _ []byte, dup bool) {
	ts := m.Time.Local().Format("15:04:05.000")
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-*s  ", ts, v.width, m.Device)
	switch m.Kind {
	case model.KindTelemetry:
		parts := make([]string, 0, len(m.Readings))
		for _, r := range m.Readings {
			val := r.Value.String()
			if r.Quality != model.Good {
				val += "(" + string(r.Quality) + ")"
			}
			if r.Unit != "" {
				val += " " + r.Unit
			}
			parts = append(parts, r.Signal+"="+val)
		}
		sort.Strings(parts)
		b.WriteString(strings.Join(parts, "  "))
	case model.KindEvent:
		fmt.Fprintf(&b, "EVENT %s [%s] %v", m.Event.Kind, m.Event.Severity, m.Event.Details)
	case model.KindHealth:
		fmt.Fprintf(&b, "HEALTH %s", m.Health.State)
		if m.Health.Reason != "" {
			fmt.Fprintf(&b, " (%s)", m.Health.Reason)
		}
	}
	fmt.Fprintf(&b, "  #%d", m.Seq)
	if dup {
		b.WriteString(" (duplicate)")
	}
	fmt.Println(b.String())
}
