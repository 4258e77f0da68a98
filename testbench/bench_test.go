package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// TestBenchTCP runs a small bench for real (ten units on two endpoints,
// two windows of 4 s) and holds its report to what can be exact: every
// reading the slave served in a window reached both stores, no more, and
// the figures of cost are there.
func TestBenchTCP(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// 200 points a second: a write of a second's worth would carry 200,
	// but -batch-size holds each to 100.
	plan := benchPlan{Units: 10, Endpoints: 2, Poll: 50 * time.Millisecond, Warmup: 2 * time.Second,
		Window: 4 * time.Second, Windows: 2, Drain: 30 * time.Second, BatchSize: 100}
	rep, err := runBench(ctx, plan, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Pass {
		t.Fatalf("bench failed: %v", rep.Failures)
	}
	if rep.ScheduledPerS != 3000 || len(rep.Windows) != 2 {
		t.Fatalf("scheduled %.0f readings/s in %d windows, want 3000 in 2", rep.ScheduledPerS, len(rep.Windows))
	}
	for i, w := range rep.Windows {
		// The gateway and the slave are built with the race detector here
		// (TestMain): the schedule is not held to a figure, only bounded.
		polls := float64(plan.Units) * (w.Seconds/plan.Poll.Seconds() + 1)
		switch {
		case w.Expected == 0 || w.Expected%benchFields != 0 || float64(w.Expected) > polls*benchFields:
			t.Errorf("window %d: %d readings expected, want a whole number of polls of 15 fields, at most %.0f", i+1, w.Expected, polls*benchFields)
		case w.MQTT != w.Expected || w.Influx != w.Expected:
			t.Errorf("window %d: %d expected, %d at MQTT, %d in InfluxDB", i+1, w.Expected, w.MQTT, w.Influx)
		case math.Abs(w.Seconds-4) > 0.5:
			t.Errorf("window %d lasted %.2f s, want 4", i+1, w.Seconds)
		case w.SchedulePercent <= 0 || w.SchedulePercent > 101:
			t.Errorf("window %d: schedule kept %.2f%%", i+1, w.SchedulePercent)
		case w.GatewayUSPerReading <= 0 || w.MosquittoUSPerReading <= 0 || w.InfluxdUSPerReading <= 0 || w.GatewayPeakRSSMB <= 0:
			t.Errorf("window %d: cpu µs per reading: gateway %.2f, mosquitto %.2f, influxd %.2f; gateway peak RSS %.1f MB",
				i+1, w.GatewayUSPerReading, w.MosquittoUSPerReading, w.InfluxdUSPerReading, w.GatewayPeakRSSMB)
		case w.InfluxWrites <= 0 || w.PointsPerWrite <= 0 || float64(w.InfluxPoints) != w.PointsPerWrite*float64(w.InfluxWrites):
			t.Errorf("window %d: %d InfluxDB writes of %d points, %.1f points each", i+1, w.InfluxWrites, w.InfluxPoints, w.PointsPerWrite)
		case w.PointsPerWrite > float64(plan.BatchSize):
			t.Errorf("window %d: %.1f points a write, over the station's batch_size %d", i+1, w.PointsPerWrite, plan.BatchSize)
		}
	}
}

func TestBenchPlanCheck(t *testing.T) {
	good := benchPlan{Units: 100, Endpoints: 1, Poll: 100 * time.Millisecond, Window: time.Minute, Windows: 1, Drain: time.Minute}
	for _, c := range []struct {
		name string
		edit func(p *benchPlan)
		want string // in the error; "" for none
	}{
		{"good", func(p *benchPlan) {}, ""},
		{"no units", func(p *benchPlan) { p.Units = 0 }, "-units 0"},
		{"more endpoints than units", func(p *benchPlan) { p.Endpoints = 101 }, "-endpoints 101"},
		{"too many units on an endpoint", func(p *benchPlan) { p.Units = 248 }, "248 units on an endpoint, at most 247"},
		{"poll too fast", func(p *benchPlan) { p.Poll = 5 * time.Millisecond }, "-poll 5ms"},
		{"no window", func(p *benchPlan) { p.Windows = 0 }, "-windows 0"},
		{"batch size", func(p *benchPlan) { p.BatchSize = 1000 }, ""},
		{"batch size too large", func(p *benchPlan) { p.BatchSize = 50001 }, "-batch-size 50001: 1 to 50000"},
		{"batch size negative", func(p *benchPlan) { p.BatchSize = -1 }, "-batch-size -1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := good
			c.edit(&p)
			err := p.check()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Fatalf("check: %v, want %q", err, c.want)
			}
		})
	}
}

// TestParseHTTPDVars reads the write counters from InfluxDB 1.8's
// /debug/vars as it prints them (cut down to the parts read and one
// other), one write in flight.
func TestParseHTTPDVars(t *testing.T) {
	const vars = `{
"cmdline": ["influxd", "run", "-config", "/tmp/influxdb.conf"],
"httpd:127.0.0.1:8086": {"name":"httpd","tags":{"bind":"127.0.0.1:8086"},"values":{"authFail":0,"pointsWrittenDropped":0,"pointsWrittenFail":0,"pointsWrittenOK":52631,"queryReq":3,"req":62,"writeReq":51,"writeReqActive":1,"writeReqBytes":7390112}},
"write": {"name":"write","tags":{},"values":{"pointReq":52631,"writeOk":50}}
}`
	var m map[string]json.RawMessage
	if err := json.Unmarshal([]byte(vars), &m); err != nil {
		t.Fatal(err)
	}
	reqs, points, err := parseHTTPDVars(m)
	if err != nil || reqs != 50 || points != 52631 {
		t.Fatalf("%d requests, %d points, %v; want 50, 52631", reqs, points, err)
	}
	delete(m, "httpd:127.0.0.1:8086")
	if _, _, err := parseHTTPDVars(m); err == nil || !strings.Contains(err.Error(), "no httpd") {
		t.Fatalf("without httpd: %v", err)
	}
}
