package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/status"
	"outpost/testbench/hub"

	"go.yaml.in/yaml/v3"
)

// TestReportByException runs the police room's devices with deadbands
// (polls every 250 ms) through
// a real gateway into a real Mosquitto twice: with the station's report by
// exception on, the signals with a deadband (temperatures, humidity, power
// factor, frequency) reach the hub with fewer readings than the simulator
// served, every reading left out within its deadband of the value last
// sent, and each device's sequence numbers with no gap; with
// report_by_exception: false, every reading served arrives.
func TestReportByException(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	work := t.TempDir()
	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(mq.Stop)
	src, err := os.ReadFile("../configs/police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// Without the others, the buses notice sooner that the simulator
	// stopped answering.
	var doc map[string]any
	if err := yaml.Unmarshal(src, &doc); err != nil {
		t.Fatal(err)
	}
	doc["devices"] = slices.DeleteFunc(doc["devices"].([]any), func(d any) bool {
		return !slices.Contains([]any{"th-hall", "th-server", "ups-1", "meter-main"}, d.(map[string]any)["id"])
	})
	if src, err = yaml.Marshal(doc); err != nil {
		t.Fatal(err)
	}
	for _, on := range []bool{true, false} {
		t.Run(fmt.Sprintf("report_by_exception=%v", on), func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(work, fmt.Sprint(on))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			// The station file decides (Exceptions), as an installer's would.
			spec := stationSpec{Src: src, ID: fmt.Sprintf("pr-rbe-%v", on), Poll: 250 * time.Millisecond, Exceptions: true,
				// Time for a late answer on two busy cores: one the simulator
				// served must not time out at the gateway.
				Links: map[string]any{"timeout": "1s", "retries": 1}}
			if !on {
				spec.Src = append(slices.Clone(src), "report_by_exception: false\n"...)
			}
			station, st, err := prepareStation(spec, dir, hubAddrs{MQTT: mq.URL()})
			if err != nil {
				t.Fatal(err)
			}
			if st.ReportByException != on {
				t.Fatalf("report_by_exception loaded as %v", st.ReportByException)
			}
			runReportByException(t, ctx, dir, station, st)
		})
	}
}

// hubMsg is what the test keeps of a message at the hub.
type hubMsg struct {
	seq      uint64
	time     time.Time
	kind     model.Kind
	health   model.HealthState
	readings []model.Reading
}

func runReportByException(t *testing.T, ctx context.Context, dir, station string, st *configs.Station) {
	// The signals with a report rule, by device, and their deadbands.
	bands := map[string]map[string]float64{}
	for _, d := range st.Devices {
		for _, sg := range st.Templates[d.Template].Body.Signals() {
			if sg.Report != nil {
				if bands[d.ID] == nil {
					bands[d.ID] = map[string]float64{}
				}
				bands[d.ID][sg.Name] = *sg.Report.Deadband
			}
		}
	}
	if len(bands) != 4 {
		t.Fatalf("devices with report rules: %v, want th-hall, th-server, ups-1 and meter-main", bands)
	}
	var mu sync.Mutex
	got := map[string][]hubMsg{}
	col, err := collect(ctx, st.Hub.MQTT.URL, st, func(m *model.Message, _ []byte, dup bool) {
		if dup {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		hm := hubMsg{seq: m.Seq, time: m.Time, kind: m.Kind, readings: m.Readings}
		if m.Health != nil {
			hm.health = m.Health.State
		}
		got[m.Device] = append(got[m.Device], hm)
	})
	if err != nil {
		t.Fatal(err)
	}
	defer col.close()

	out, err := os.Create(filepath.Join(dir, "processes.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(out.Name())
			t.Logf("simulator and gateway output:\n%s", b[max(0, len(b)-20000):])
		}
	}()
	served := filepath.Join(dir, "served.jsonl")
	sim, gw := &proc{name: "firmware-sim"}, &proc{name: "gateway"}
	defer sim.kill()
	defer gw.kill()
	if err := sim.start(ctx, out, "firmware-sim ready", "-config", station, "-served", served, "-seed", "7", "-control", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := gw.start(ctx, out, "", "run", "-config", station); err != nil {
		t.Fatal(err)
	}
	// Twelve polls of th-hall, then the devices fall deaf: what they
	// served is final, and each is lost to the gateway in turn.
	for n := 0; n < 12; {
		n = 0
		for _, s := range readServed(t, served) {
			if s.Device == "th-hall" && s.Signal == "temperature" {
				n++
			}
		}
		select {
		case <-ctx.Done():
			t.Fatal("th-hall was not polled 12 times")
		case <-time.After(100 * time.Millisecond):
		}
	}
	deaf := time.Now()
	if err := deafen(ctx, sim.control(), true); err != nil {
		t.Fatal(err)
	}
	// Every reading a device served is at the hub when the hub has the
	// health it sent when it stopped answering (degraded, then offline)
	// and every number below that one.
	complete := func(msgs []hubMsg) bool {
		seqs := map[uint64]bool{}
		last := uint64(0)
		for _, m := range msgs {
			seqs[m.seq] = true
			if m.kind == model.KindHealth && m.health != model.Online && !m.time.Before(deaf) {
				last = max(last, m.seq)
			}
		}
		for s := uint64(1); s <= last; s++ {
			if !seqs[s] {
				return false
			}
		}
		return last > 0
	}
	for {
		mu.Lock()
		done := true
		for dev := range bands {
			done = done && complete(got[dev])
		}
		mu.Unlock()
		if done {
			break
		}
		select {
		case <-ctx.Done():
			mu.Lock()
			t.Fatalf("the hub never had every message up to each device's health when it stopped answering: %v", seqsOf(got))
		case <-time.After(100 * time.Millisecond):
		}
	}
	mu.Lock()
	defer mu.Unlock()

	// Sequence numbers: 1, 2, 3, ... with no gap, per device.
	for dev, msgs := range got {
		seqs := seqsOf(map[string][]hubMsg{dev: msgs})[dev]
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Errorf("%s: sequence numbers at the hub %v: a gap before %d", dev, seqs, s)
				break
			}
		}
	}
	// Each signal with a deadband: what the hub has is what was served,
	// less readings within the deadband of the value last sent.
	want := map[string][]float64{}
	for _, s := range readServed(t, served) {
		if _, ok := bands[s.Device][s.Signal]; ok {
			want[s.Device+"/"+s.Signal] = append(want[s.Device+"/"+s.Signal], s.Value.(float64))
		}
	}
	var nServed, nSent int
	unchanged := map[string]uint64{} // by device: served less sent
	for dev, sigs := range bands {
		msgs := slices.Clone(got[dev])
		slices.SortFunc(msgs, func(a, b hubMsg) int { return int(a.seq) - int(b.seq) })
		for sig, band := range sigs {
			var at []float64
			for _, m := range msgs {
				for _, r := range m.readings {
					if v, ok := r.Value.Float(); ok && r.Signal == sig && r.Quality == model.Good {
						at = append(at, v)
					}
				}
			}
			key := dev + "/" + sig
			nServed, nSent = nServed+len(want[key]), nSent+len(at)
			unchanged[dev] += uint64(len(want[key]) - len(at))
			if !st.ReportByException {
				if !slices.Equal(at, want[key]) {
					t.Errorf("%s: the hub has %v, served %v", key, at, want[key])
				}
				continue
			}
			j, last := 0, math.NaN()
			for _, v := range want[key] {
				switch {
				case j < len(at) && at[j] == v:
					j, last = j+1, v
				case math.IsNaN(last) || math.Abs(v-last) > band:
					t.Errorf("%s: %v served and not sent, %v from the value last sent (deadband %v); hub %v, served %v", key, v, math.Abs(v-last), band, at, want[key])
				}
			}
			if j < len(at) {
				t.Errorf("%s: the hub has %v, not in the order served %v", key, at[j:], want[key])
			}
		}
	}
	t.Logf("signals with a deadband: %d readings served, %d at the hub", nServed, nSent)
	// The operator sees, per device, how many readings were left out.
	addr, err := statusAddr(ctx, st, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/api/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var snap status.Snapshot
	if err := json.NewDecoder(resp.Body).Decode(&snap); err != nil {
		t.Fatal(err)
	}
	for _, d := range snap.Devices {
		if d.Unchanged != unchanged[d.ID] {
			t.Errorf("%s: the status says %d readings unchanged, not sent; %d were served and not at the hub", d.ID, d.Unchanged, unchanged[d.ID])
		}
	}
	switch {
	case st.ReportByException && nSent >= nServed:
		t.Errorf("report by exception on: %d of %d readings sent, want fewer", nSent, nServed)
	case !st.ReportByException && nSent != nServed:
		t.Errorf("report by exception off: %d of %d readings sent", nSent, nServed)
	}
}

// seqsOf lists each device's sequence numbers at the hub, sorted.
func seqsOf(got map[string][]hubMsg) map[string][]uint64 {
	out := map[string][]uint64{}
	for dev, msgs := range got {
		for _, m := range msgs {
			out[dev] = append(out[dev], m.seq)
		}
		slices.Sort(out[dev])
	}
	return out
}
