package main

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"
)

// TestFleetOfTwo runs a fleet of two stations (a workstation and a police
// room) for real: each its own gateway and simulator, one Mosquitto and
// one InfluxDB. Nothing may be lost, every event must arrive once, and
// the report must say what arrived where and what it cost.
func TestFleetOfTwo(t *testing.T) {
	t.Parallel() // beside TestBrokenExpectationFails: each runs its own hub
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	// The gateways and simulators are built with the race detector here
	// (TestMain), several times slower: polls are not held to a rate.
	plan := fleetPlan{Stations: 2, Duration: 10 * time.Second, Drain: 30 * time.Second}
	rep, err := runFleetHub(ctx, plan, t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Pass {
		t.Fatalf("fleet failed: %v", rep.Failures)
	}
	if len(rep.PerStation) != 2 || rep.PerStation[0].ID != "ws-f0001" || rep.PerStation[1].ID != "pr-f0002" {
		t.Fatalf("stations %+v, want ws-f0001 and pr-f0002", rep.PerStation)
	}
	rd := rep.Readings
	if rd.Sent == 0 || rd.AtHubMQTT != rd.Sent || rd.InInflux != rd.Sent {
		t.Errorf("readings: sent %d, at the broker %d, in InfluxDB %d", rd.Sent, rd.AtHubMQTT, rd.InInflux)
	}
	for _, s := range rep.PerStation {
		if s.Sent == 0 || s.AtHubMQTT != s.Sent || s.GatewayRSSMB == 0 || s.GatewayCPUS == 0 {
			t.Errorf("station %s: %+v", s.ID, s)
		}
	}
	if rep.Rates.Sent <= 0 || rep.Rates.HubMQTT <= 0 || rep.Rates.HubInflux <= 0 || rep.Gateways.CPUMSPer1000 <= 0 {
		t.Errorf("rates %+v, gateways %+v", rep.Rates, rep.Gateways)
	}
	if len(rep.Hub) != 2 || rep.Hub[0].Cores < 0 || rep.Hub[1].Cores < 0 {
		t.Errorf("hub servers %+v", rep.Hub)
	}
}
