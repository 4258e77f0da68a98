package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
	"outpost/gateway/model/schema"
	"outpost/testbench/hub"
)

// TestMain builds the gateway, the simulator and the testbench once; the
// tests run them as the separate processes they are in production (the
// testbench's alarm watcher is one).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "outpost-bin-")
	if err != nil {
		panic(err)
	}
	for pkg, name := range map[string]string{"../gateway/cmd/gateway": "gateway", "../firmware-sim": "firmware-sim", ".": "testbench"} {
		out, err := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, out)
			os.Exit(1)
		}
	}
	os.Setenv("OUTPOST_BIN", dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// sample is one value of one signal of one device.
type sample struct {
	Device, Signal string
	Value          any // float64, bool or string
}

func (s sample) key() string { return fmt.Sprintf("%s/%s=%#v", s.Device, s.Signal, s.Value) }

// TestEveryValueArrivesExactly runs the simulator (RTU at 9600 and at 19200
// baud with even parity, and TCP) through the gateway into a real Mosquitto
// and a real InfluxDB, and checks that every value the simulator served
// arrives decoded exactly — every data type, byte order, scale and offset —
// with the right station, device and kind, at both hub stores.
func TestEveryValueArrivesExactly(t *testing.T) {
	t.Parallel() // its own station, hub and ports
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	work := t.TempDir()

	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer mq.Stop()
	ix, err := hub.StartInflux(ctx, filepath.Join(work, "influx"), log)
	if err != nil {
		t.Fatal(err)
	}
	defer ix.Stop()

	src, err := os.ReadFile("testdata/e2e/station.yaml")
	if err != nil {
		t.Fatal(err)
	}
	station, st, err := prepareStation(stationSpec{Src: src, Templates: "testdata/e2e/devices"}, work,
		hubAddrs{MQTT: mq.URL(), Influx: ix.URL(), DB: ix.Database()})
	if err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	var atHub []sample
	validated := 0
	var quality tail
	kinds := map[string]string{}
	col, err := collect(ctx, mq.URL(), st, func(m *model.Message, payload []byte, dup bool) {
		mu.Lock()
		defer mu.Unlock()
		if err := schema.Validate(payload); err != nil {
			t.Errorf("payload of %s does not follow the hub contract's schema: %v\n%s", m.ID(), err, payload)
		}
		validated++
		if m.Kind != model.KindTelemetry || dup {
			return
		}
		if m.Station != "e2e-1" || m.StationType != "grid_station" {
			t.Errorf("message %s names station %q type %q", m.ID(), m.Station, m.StationType)
		}
		kinds[m.Device] = m.DeviceKind
		for _, r := range m.Readings {
			quality.add(m.Device, r.Signal, m.Time, r.Quality == model.Good)
			if r.Quality != model.Good {
				continue
			}
			atHub = append(atHub, sample{m.Device, r.Signal, r.Value.Interface()})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer col.close()

	logPath := filepath.Join(work, "processes.log")
	out, _ := os.Create(logPath)
	defer out.Close()
	defer func() {
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("simulator and gateway output:\n%s", b[max(0, len(b)-20000):])
		}
	}()
	served := filepath.Join(work, "served.jsonl")
	sim, gw := &proc{name: "firmware-sim"}, &proc{name: "gateway"}
	defer sim.kill()
	defer gw.kill()
	if err := sim.start(ctx, out, "firmware-sim ready", "-config", station, "-served", served, "-seed", "7", "-control", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	if err := gw.start(ctx, out, "", "run", "-config", station); err != nil {
		t.Fatal(err)
	}
	// Let every device be polled a number of times, then stop the
	// simulator first so that what it served is final. It goes deaf
	// first, for longer than a request's timeout: an answer it wrote just
	// before it stops would go with its virtual port, unread, and count
	// as lost.
	waitServed(t, ctx, served, 20*(3*29+3))
	if err := deafen(ctx, sim.control(), true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the serial links' timeout is 500 ms
	if err := sim.stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	want := readServed(t, served)
	checkAllSignalsServed(t, st, want)

	// Wait until the hub has as many values as were served.
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(atHub)
		mu.Unlock()
		if n >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := gw.stop(10 * time.Second); err != nil {
		t.Error(err)
	}

	mu.Lock()
	quality.check(t, "MQTT hub")
	compareSamples(t, "MQTT hub", want, atHub)
	t.Logf("%d payloads at the hub follow the schema", validated)
	for _, dev := range []string{"at-9600", "at-19200", "at-tcp"} {
		if kinds[dev] != "all_types" {
			t.Errorf("device %s arrived with kind %q, want all_types", dev, kinds[dev])
		}
	}
	if kinds["th-9600"] != "temp_humidity" {
		t.Errorf("th-9600 arrived with kind %q", kinds["th-9600"])
	}
	mu.Unlock()

	compareSamples(t, "InfluxDB", want, influxSamples(t, ctx, ix, st.Station.ID))
}

// waitServed waits until the simulator's served log has at least n lines.
func waitServed(t *testing.T, ctx context.Context, path string, n int) {
	t.Helper()
	for {
		if s := readServed(t, path); len(s) >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the simulator served fewer than %d readings before the test timed out", n)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func readServed(t *testing.T, path string) []sample {
	t.Helper()
	f, err := os.Open(path)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []sample
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var s sample
		if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
			continue // a line being written
		}
		out = append(out, s)
	}
	return out
}

// influxSamples reads back every signal field of the station's points;
// bad readings (a <signal>_quality field) only at the end, as the
// simulator stopped.
func influxSamples(t *testing.T, ctx context.Context, ix *hub.Influx, station string) []sample {
	t.Helper()
	var out []sample
	var quality tail
	defer quality.check(t, "InfluxDB")
	for _, kind := range []string{"all_types", "temp_humidity"} {
		series, err := ix.Query(ctx, fmt.Sprintf(`SELECT * FROM %q WHERE station = '%s'`, kind, station))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range series {
			for _, row := range s.Rows() {
				dev, _ := row["device"].(string)
				if row["station_type"] != "grid_station" {
					t.Errorf("influx %s point of %s: station_type %v", kind, dev, row["station_type"])
				}
				at := time.Unix(0, mustInt(t, row["time"]))
				for col, v := range row {
					switch col {
					case "time", "device", "station", "station_type", "seq", "historical":
						continue
					}
					if sig, ok := strings.CutSuffix(col, "_quality"); ok {
						quality.add(dev, sig, at, false)
						continue
					}
					quality.add(dev, col, at, true)
					if n, ok := v.(json.Number); ok {
						f, err := strconv.ParseFloat(string(n), 64)
						if err != nil {
							t.Fatalf("influx %s.%s: %v", kind, col, err)
						}
						v = f
					}
					out = append(out, sample{dev, col, v})
				}
			}
		}
	}
	return out
}

// tail checks that a device's readings are bad only at the end of a run:
// once the simulator stops every reading is bad, and the poll in progress
// then may have read some signals before, so a bad reading may share its
// time with the device's last good one, never come before it.
type tail struct {
	lastGood map[string]time.Time // by device
	bad      []sample             // Value is the reading's time
}

func (q *tail) add(device, signal string, at time.Time, good bool) {
	if !good {
		q.bad = append(q.bad, sample{device, signal, at})
		return
	}
	if q.lastGood == nil {
		q.lastGood = map[string]time.Time{}
	}
	if at.After(q.lastGood[device]) {
		q.lastGood[device] = at
	}
}

func (q *tail) check(t *testing.T, where string) {
	t.Helper()
	for _, b := range q.bad {
		at, last := b.Value.(time.Time), q.lastGood[b.Device]
		if at.Before(last) {
			t.Errorf("%s: bad reading %s/%s at %s while the simulator ran (a good one followed at %s)",
				where, b.Device, b.Signal, at.Format(time.StampMicro), last.Format(time.StampMicro))
		}
	}
}

// compareSamples checks that got holds exactly the samples of want, as
// multisets, and prints the first differences readably.
func compareSamples(t *testing.T, where string, want, got []sample) {
	t.Helper()
	count := map[string]int{}
	for _, s := range want {
		count[s.key()]++
	}
	for _, s := range got {
		count[s.key()]--
	}
	var missing, extra []string
	for k, n := range count {
		for ; n > 0; n-- {
			missing = append(missing, k)
		}
		for ; n < 0; n++ {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing)+len(extra) > 0 {
		t.Errorf("%s: %d values served, %d received; %d served values missing, %d received values never served\nmissing: %v\nextra: %v",
			where, len(want), len(got), len(missing), len(extra), head(missing, 10), head(extra, 10))
	} else {
		t.Logf("%s: all %d served values arrived exactly", where, len(want))
	}
}

// checkAllSignalsServed checks that every signal of every device of the
// station was served, so that no type or byte order went untested.
func checkAllSignalsServed(t *testing.T, st *configs.Station, served []sample) {
	t.Helper()
	seen := map[string]bool{}
	for _, s := range served {
		seen[s.Device+"/"+s.Signal] = true
	}
	for _, d := range st.Devices {
		for _, sg := range st.Templates[d.Template].Body.Signals() {
			if !seen[d.ID+"/"+sg.Name] {
				t.Errorf("signal %s of %s was never served", sg.Name, d.ID)
			}
		}
	}
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

func mustInt(t *testing.T, v any) int64 {
	t.Helper()
	n, ok := v.(json.Number)
	if !ok {
		t.Fatalf("not a number: %#v", v)
	}
	i, err := n.Int64()
	if err != nil {
		t.Fatal(err)
	}
	return i
}
