package hub

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func TestMosquittoKillRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := StartMosquitto(ctx, t.TempDir(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	if !strings.HasPrefix(m.URL(), "tcp://127.0.0.1:") {
		t.Errorf("URL %q", m.URL())
	}
	url := m.URL()
	m.Kill()
	if c, err := net.DialTimeout("tcp", m.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepts connections after Kill")
	}
	if err := m.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if m.URL() != url {
		t.Errorf("URL after restart %q, want %q", m.URL(), url)
	}
	c, err := net.DialTimeout("tcp", m.Addr(), time.Second)
	if err != nil {
		t.Fatalf("dial after restart: %v", err)
	}
	c.Close()
	m.Stop()
	m.Stop() // stopping twice is harmless
}

func TestInfluxWriteQueryRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	in, err := StartInflux(ctx, t.TempDir(), testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Stop()
	resp, err := http.Post(in.URL()+"/write?db="+in.Database(), "text/plain",
		strings.NewReader("m,station=s1 seq=1i,v=2.5 1000\nm,station=s1 seq=2i,v=3 2000\n"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("write: %s", resp.Status)
	}
	if err := in.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	n, err := in.Count(ctx, "m")
	if err != nil || n != 2 {
		t.Fatalf("Count = %d, %v; want 2 (data must survive a restart)", n, err)
	}
	series, err := in.Query(ctx, `SELECT * FROM "m"`)
	if err != nil {
		t.Fatal(err)
	}
	if len(series) != 1 || series[0].Name != "m" {
		t.Fatalf("series %+v", series)
	}
	rows := series[0].Rows()
	want := []map[string]any{
		{"time": json.Number("1000"), "seq": json.Number("1"), "station": "s1", "v": json.Number("2.5")},
		{"time": json.Number("2000"), "seq": json.Number("2"), "station": "s1", "v": json.Number("3")},
	}
	if len(rows) != 2 {
		t.Fatalf("rows %v", rows)
	}
	for i := range want {
		for k, v := range want[i] {
			if rows[i][k] != v {
				t.Errorf("row %d %s = %#v, want %#v", i, k, rows[i][k], v)
			}
		}
	}
	if _, err := in.Query(ctx, "SELECT nonsense FROM"); err == nil || !strings.Contains(err.Error(), "error parsing query") {
		t.Errorf("bad query error = %v", err)
	}
	in.Kill()
	if _, err := in.Query(ctx, "SHOW DATABASES"); err == nil {
		t.Error("query after Kill succeeded")
	}
}

func TestInfluxMissingBinary(t *testing.T) {
	t.Setenv(InfluxEnv, "/nonexistent/influxd")
	_, err := StartInflux(context.Background(), t.TempDir(), testLog(t))
	if err == nil || !strings.Contains(err.Error(), "make test-deps") {
		t.Fatalf("error %v, want one telling to run make test-deps", err)
	}
}

// TestNATSClusterKillRestart: three NATS nodes form a cluster that takes
// MQTT on each; a node killed leaves the other two with a meta leader and
// MQTT, and restarted it rejoins (its routes, the meta leader, MQTT).
func TestNATSClusterKillRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	start := time.Now()
	c, err := StartNATSCluster(ctx, t.TempDir(), testLog(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	t.Logf("cluster ready in %v", time.Since(start).Round(time.Millisecond))
	urls := c.MQTTURLs()
	if len(urls) != 3 || c.Node(urls[1]) != 1 {
		t.Fatalf("MQTTURLs %q", urls)
	}
	for i := range 3 {
		if n, err := c.Routes(ctx, i); err != nil || n != 2 {
			t.Errorf("node %d: %d routes, %v; want 2", i, n, err)
		}
	}
	c.Kill(0)
	if conn, err := net.DialTimeout("tcp", strings.TrimPrefix(urls[0], "tcp://"), time.Second); err == nil {
		conn.Close()
		t.Fatal("node 0 still takes connections after Kill")
	}
	// The survivors keep (or elect) a meta leader, not the dead node.
	for {
		l, err := c.MetaLeader(ctx, 1)
		if err == nil && l != "" && l != "n1" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no meta leader among the survivors: %q, %v", l, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	// A survivor takes MQTT sessions again once the streams the dead node
	// led have new leaders (NATS 2.9 elects them in 4 to 9 s; it closes
	// new sessions meanwhile).
	for err := c.mqttConnect(ctx, 2); err != nil; err = c.mqttConnect(ctx, 2) {
		select {
		case <-ctx.Done():
			t.Fatalf("MQTT on a survivor: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	start = time.Now()
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("node 0 back in %v", time.Since(start).Round(time.Millisecond))
	if n, err := c.Routes(ctx, 0); err != nil || n != 2 {
		t.Errorf("restarted node: %d routes, %v; want 2", n, err)
	}
	if l, err := c.MetaLeader(ctx, 0); err != nil || l == "" {
		t.Errorf("restarted node sees meta leader %q, %v", l, err)
	}
	// Its copies of the streams catching up is NATS's own business, which
	// takes from a second to over a minute on a loaded machine: reported
	// (fleet-cluster gives it), not held.
	start = time.Now()
	for err := c.CaughtUp(ctx, 0); err != nil; err = c.CaughtUp(ctx, 0) {
		if time.Since(start) > 10*time.Second {
			t.Logf("restarted node not caught up after %v: %v", time.Since(start).Round(time.Millisecond), err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.Stop()
	c.Stop()
}

// TestOnFreePorts: a server that found a port taken (as Mosquitto and
// influxd say it) is started again, up to portTries times in all; any
// other failure is returned at once.
func TestOnFreePorts(t *testing.T) {
	const (
		mosquittoTaken = "hub: mosquitto exited before it was ready (exit status 1): 1764720000: Error: Address already in use"
		influxTaken    = "hub: influxd exited before it was ready (exit status 1): run: open server: listen tcp 127.0.0.1:41234: bind: address already in use"
		other          = "hub: influxd not ready: context deadline exceeded"
	)
	for _, tc := range []struct {
		name  string
		fails []string // the errors of the tries before one that starts
		tries int
		err   string
	}{
		{name: "started at once", tries: 1},
		{name: "mosquitto's port taken once", fails: []string{mosquittoTaken}, tries: 2},
		{name: "influxd's port taken twice", fails: []string{influxTaken, influxTaken}, tries: 3},
		{name: "taken each time", fails: []string{influxTaken, influxTaken, influxTaken, influxTaken}, tries: portTries, err: influxTaken},
		{name: "another failure", fails: []string{other}, tries: 1, err: other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tries := 0
			v, err := onFreePorts(testLog(t), "server", func(try int) (int, error) {
				tries++
				if try != tries {
					t.Errorf("try %d called as try %d", tries, try)
				}
				if try <= len(tc.fails) {
					return 0, errors.New(tc.fails[try-1])
				}
				return try, nil
			})
			if tries != tc.tries {
				t.Errorf("%d tries, want %d", tries, tc.tries)
			}
			switch {
			case tc.err == "" && (err != nil || v != tc.tries):
				t.Errorf("= %d, %v; want the server of try %d", v, err, tc.tries)
			case tc.err != "" && (err == nil || err.Error() != tc.err):
				t.Errorf("= %d, %v; want the error %q", v, err, tc.err)
			}
		})
	}
}

// TestFreePorts: the ports found are distinct, free once handed over, and
// below the kernel's ephemeral range, where no outgoing connection takes
// one while its server is down for a restart.
func TestFreePorts(t *testing.T) {
	lo, first := listenRange()
	if first == 0 {
		t.Skip("no room below the ephemeral ports on this machine (ip_local_port_range): FreePorts lets the kernel pick, and a server restarted on its port may find it taken")
	}
	ports, err := FreePorts(50)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] || p < lo || p >= first {
			t.Fatalf("ports %v: %d twice, or outside %d-%d", ports, p, lo, first-1)
		}
		seen[p] = true
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(p)))
		if err != nil {
			t.Fatalf("port %d handed over but not free: %v", p, err)
		}
		l.Close()
	}
}
