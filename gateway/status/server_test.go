package status

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"outpost/gateway/model"
)

func testServer(t *testing.T, token string, notReady ...string) *httptest.Server {
	t.Helper()
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	b := NewBoard(testStation(), t0)
	delivery := NewDeliveryHistogram()
	delivery.WithLabelValues("mqtt", "alarm").Observe(0.015)
	b.Saw(model.Message{Device: "th-1", Kind: model.KindHealth, Time: t0, Health: &model.Health{State: model.Offline,
		Reason: "no answer", Counters: map[string]uint64{"timeouts": 7, model.RTTCounter: 12500}}})
	s := &Server{
		Snapshot: func() Snapshot {
			return Snapshot{V: 1, Station: "pr-1", Uplinks: []Uplink{{Name: "mqtt", Connected: true, Queue: Queue{Alarms: 2, Telemetry: 40, OldestAgeS: 12.5},
				Forwarders: []Forwarder{{Lane: "alarm", Delivered: 31, Failures: 2, Restarts: 1, LastDelivery: t0.Add(90 * time.Second)}}}},
				Disk: Disk{FreeBytes: 1 << 30}, Devices: b.Devices()}
		},
		Ready:   func() []string { return notReady },
		Token:   token,
		Log:     slog.New(slog.DiscardHandler),
		Metrics: []prometheus.Collector{delivery},
	}
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url, bearer string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestServerToken: with a token, every path but /healthz wants it, in
// the Authorization header or as ?token= (the page's way).
func TestServerToken(t *testing.T) {
	const token = "0123456789abcdef0123"
	srv := testServer(t, token)
	cases := []struct {
		path, bearer string
		code         int
	}{
		{"/healthz", "", 200},
		{"/", "", 401},
		{"/api/status", "", 401},
		{"/metrics", "wrong-token-0123456789", 401},
		{"/readyz", "", 401},
		{"/api/status", token, 200},
		{"/?token=" + token, "", 200},
		{"/metrics?token=" + token, "", 200},
	}
	for _, c := range cases {
		code, body := get(t, srv.URL+c.path, c.bearer)
		if code != c.code {
			t.Errorf("GET %s (bearer %q): %d %q, want %d", c.path, c.bearer, code, body, c.code)
		}
		if code == 401 && !strings.Contains(body, "a token is required") {
			t.Errorf("GET %s: 401 says %q, not how to pass the token", c.path, body)
		}
	}
}

// TestServerPaths: what each path says, from one snapshot.
func TestServerPaths(t *testing.T) {
	srv := testServer(t, "")
	code, body := get(t, srv.URL+"/api/devices", "")
	var devs []Device
	if err := json.Unmarshal([]byte(body), &devs); code != 200 || err != nil || len(devs) != 2 ||
		devs[0].ID != "th-1" || devs[0].State != model.Offline || devs[0].Reason != "no answer" || devs[1].State != Unknown {
		t.Errorf("/api/devices: %d %v\n%s", code, err, body)
	}
	code, body = get(t, srv.URL+"/metrics", "")
	for _, want := range []string{
		`outpost_device_state{device="th-1",kind="temperature_humidity",link="rs485-1",state="offline"} 1`,
		`outpost_device_state{device="th-1",kind="temperature_humidity",link="rs485-1",state="online"} 0`,
		`outpost_device_state{device="door-1",kind="door_contact",link="rs485-1",state="unknown"} 1`,
		`outpost_device_errors_total{counter="timeouts",device="th-1"} 7`,
		`outpost_device_rtt_seconds{device="th-1"} 0.0125`,
		`outpost_uplink_connected{uplink="mqtt"} 1`,
		`outpost_queue_records{lane="alarm",uplink="mqtt"} 2`,
		`outpost_queue_records{lane="telemetry",uplink="mqtt"} 40`,
		`outpost_queue_oldest_age_seconds{uplink="mqtt"} 12.5`,
		`outpost_state_disk_free_bytes 1.073741824e+09`,
		`outpost_forwarder_delivered_total{lane="alarm",uplink="mqtt"} 31`,
		`outpost_forwarder_send_failures_total{lane="alarm",uplink="mqtt"} 2`,
		`outpost_forwarder_restarts_total{lane="alarm",uplink="mqtt"} 1`,
		`outpost_forwarder_last_delivery_seconds{lane="alarm",uplink="mqtt"} 1.79602569e+09`,
		`outpost_delivery_seconds_bucket{lane="alarm",uplink="mqtt",le="0.01"} 0`,
		`outpost_delivery_seconds_bucket{lane="alarm",uplink="mqtt",le="0.02"} 1`,
		`outpost_delivery_seconds_count{lane="alarm",uplink="mqtt"} 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(body, want+"\n") && !strings.Contains(body, want+" ") {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if code != 200 {
		t.Errorf("/metrics: %d", code)
	}
	if code, body = get(t, srv.URL+"/readyz", ""); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	if code, body = get(t, srv.URL+"/", ""); code != 200 || !strings.Contains(body, "<title>outpost station status</title>") {
		t.Errorf("/: %d %.80q", code, body)
	}
	if code, _ = get(t, srv.URL+"/nothing", ""); code != 404 {
		t.Errorf("/nothing: %d, want 404", code)
	}

	srv = testServer(t, "", "the disk refuses the mqtt queue's writes: no space left on device")
	if code, body = get(t, srv.URL+"/readyz", ""); code != 503 || body != "not ready: the disk refuses the mqtt queue's writes: no space left on device\n" {
		t.Errorf("/readyz of a gateway whose disk refuses: %d %q", code, body)
	}
}
