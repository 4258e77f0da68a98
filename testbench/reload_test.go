package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"outpost/gateway/model"
)

// TestReload runs the police room (社区警务室) and changes its station file
// under the running gateway, as an installer in the field would:
//   - gateway reload with a file that has an error is refused with the
//     error, and so is SIGHUP: the gateway runs on as it was;
//   - a valid change (ups-1 polled every 500 ms instead of 2 s, the
//     meter's endpoint removed) restarts rs485-2, stops meter-lan and
//     leaves rs485-1 polling: th-hall reports on without a gap;
//   - no reading is lost: every device's sequence numbers at the hub run
//     without a hole across both reloads.
func TestReload(t *testing.T) {
	t.Parallel() // its own station, hub and ports
	pr := newPoliceRoom(t)
	ctx, station, st, gw, logPath := pr.ctx, pr.station, pr.st, pr.gw, pr.logPath
	// edit rewrites the station file as an installer would.
	edit := func(change func(devices map[string]map[string]any, doc map[string]any)) {
		t.Helper()
		b, err := os.ReadFile(station)
		if err != nil {
			t.Fatal(err)
		}
		var doc map[string]any
		if err := yaml.Unmarshal(b, &doc); err != nil {
			t.Fatal(err)
		}
		devices := map[string]map[string]any{}
		for _, d := range doc["devices"].([]any) {
			devices[d.(map[string]any)["id"].(string)] = d.(map[string]any)
		}
		change(devices, doc)
		if b, err = yaml.Marshal(doc); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(station, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	orig, _ := os.ReadFile(station)

	var mu sync.Mutex
	seqs := map[string][]uint64{}     // device -> sequence numbers at the hub
	times := map[string][]time.Time{} // device -> times of its telemetry
	col, err := collect(ctx, pr.mq.URL(), st, func(m *model.Message, _ []byte, dup bool) {
		mu.Lock()
		defer mu.Unlock()
		if !dup && m.Device != model.GatewayDevice {
			seqs[m.Device] = append(seqs[m.Device], m.Seq)
			if m.Kind == model.KindTelemetry {
				times[m.Device] = append(times[m.Device], time.Now())
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer col.close()

	pr.start(t)
	telemetry := func(dev string, since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, at := range times[dev] {
			if at.After(since) {
				n++
			}
		}
		return n
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for !ok() {
			if ctx.Err() != nil {
				t.Fatalf("never: %s", what)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	start := time.Now()
	for _, d := range st.Devices {
		waitFor(d.ID+" reports", func() bool { return telemetry(d.ID, start) >= 2 })
	}

	// A file with an error: gateway reload refuses it and says why; so
	// does the gateway on SIGHUP, and it runs on.
	edit(func(devices map[string]map[string]any, _ map[string]any) { devices["smoke-hall"]["unit_id"] = 1 })
	cmd := exec.CommandContext(ctx, filepath.Join(binDir(), "gateway"), "reload", "-config", station)
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "unit_id: unit id 1 is already used on rs485-1 by devices[0] (th-hall)") ||
		!strings.Contains(string(msg), "not reloaded: fix the station file first") {
		t.Errorf("gateway reload of a broken file: %v\n%s", err, msg)
	}
	if err := gw.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor("the gateway refuses the broken file", func() bool {
		b, _ := os.ReadFile(logPath)
		return bytes.Contains(b, []byte("reload refused: fix the station file"))
	})
	refused := time.Now()
	waitFor("th-hall reports after the refused reload", func() bool { return telemetry("th-hall", refused) >= 2 })

	// A valid change, through gateway reload.
	if err := os.WriteFile(station, orig, 0o644); err != nil {
		t.Fatal(err)
	}
	edit(func(devices map[string]map[string]any, doc map[string]any) {
		devices["ups-1"]["poll"] = "500ms"
		doc["links"] = slices.DeleteFunc(doc["links"].([]any), func(l any) bool { return l.(map[string]any)["id"] == "meter-lan" })
		doc["devices"] = slices.DeleteFunc(doc["devices"].([]any), func(d any) bool { return d.(map[string]any)["id"] == "meter-main" })
	})
	// gateway reload says what the gateway did, as its log does, and
	// what validate would warn of (this test's state directory is under
	// /tmp).
	did := "restarted rs485-2; added none; removed meter-lan; 1 unchanged, still polling"
	if msg, err := exec.CommandContext(ctx, filepath.Join(binDir(), "gateway"), "reload", "-config", station).CombinedOutput(); err != nil ||
		!strings.Contains(string(msg), "reloaded "+station+": "+did) || !strings.Contains(string(msg), "\nwarning: state_dir "+st.StateDir+" is under /tmp") {
		t.Fatalf("gateway reload: %v\n%s", err, msg)
	}
	reloaded := time.Now()
	b, _ := os.ReadFile(logPath)
	if want := `links="` + did + `"`; !bytes.Contains(b, []byte(want)) {
		t.Errorf("the gateway's log does not say %s", want)
	}
	// A valid file with a change only a restart applies: gateway reload
	// says the gateway refused it, and exits 1.
	applied, _ := os.ReadFile(station)
	edit(func(_ map[string]map[string]any, doc map[string]any) { doc["status"] = map[string]any{"listen": "off"} })
	if msg, err := exec.CommandContext(ctx, filepath.Join(binDir(), "gateway"), "reload", "-config", station).CombinedOutput(); err == nil ||
		!strings.Contains(string(msg), "refused "+station+" and runs on as it was: status changed: restart the gateway") {
		t.Errorf("gateway reload of a status change: %v\n%s", err, msg)
	}
	if err := os.WriteFile(station, applied, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor("ups-1 polled every 500 ms", func() bool { return telemetry("ups-1", reloaded) >= 6 })
	meterAfter := telemetry("meter-main", reloaded.Add(time.Second))

	// Stop, and let everything queued reach the hub.
	if err := gw.stop(10 * time.Second); err != nil {
		t.Error(err)
	}
	if meterAfter != 0 {
		t.Errorf("meter-main reported %d times after its link was removed", meterAfter)
	}
	mu.Lock()
	defer mu.Unlock()
	// th-hall (rs485-1, unchanged) never paused: no gap much beyond its
	// 1 s poll.
	ts := times["th-hall"]
	for i := 1; i < len(ts); i++ {
		if gap := ts[i].Sub(ts[i-1]); ts[i].After(refused) && gap > 2500*time.Millisecond {
			t.Errorf("th-hall paused %.1f s at %s, across the reloads", gap.Seconds(), ts[i].Format("15:04:05.000"))
		}
	}
	for dev, s := range seqs {
		s = slices.Clone(s)
		slices.Sort(s)
		for i := 1; i < len(s); i++ {
			if s[i] != s[i-1]+1 {
				t.Errorf("%s: sequence numbers jump from %d to %d at the hub: readings lost", dev, s[i-1], s[i])
			}
		}
	}
}
