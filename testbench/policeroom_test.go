package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"outpost/configs"
	"outpost/testbench/hub"
)

// policeRoom is the reference 社区警务室 station (or another) for an
// end-to-end test: a real Mosquitto as the hub, the station file prepared
// for the test's folder; start runs the simulator (with its control API)
// and the gateway, whose output the test prints if it fails. Everything
// stops when the test ends.
type policeRoom struct {
	ctx     context.Context
	mq      *hub.Mosquitto
	station string // the station file
	st      *configs.Station
	logPath string
	log     *os.File
	sim, gw *proc
	control string // the simulator's control API, once started
}

func newPoliceRoom(t *testing.T) *policeRoom {
	t.Helper()
	src, err := os.ReadFile("../configs/police-room.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return newPoliceRoomFrom(t, ctx, string(src))
}

// newPoliceRoomFrom is the same with another station file.
func newPoliceRoomFrom(t *testing.T, ctx context.Context, src string) *policeRoom {
	t.Helper()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	work := t.TempDir()
	mq, err := hub.StartMosquitto(ctx, filepath.Join(work, "mosquitto"), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mq.Stop() })
	station, st, err := prepareStation(stationSpec{Src: []byte(src)}, work, hubAddrs{MQTT: mq.URL()})
	if err != nil {
		t.Fatal(err)
	}
	p := &policeRoom{ctx: ctx, mq: mq, station: station, st: st, logPath: filepath.Join(work, "processes.log"),
		sim: &proc{name: "firmware-sim"}, gw: &proc{name: "gateway"}}
	t.Cleanup(func() {
		p.gw.kill()
		p.sim.kill()
		if p.log == nil {
			return
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.logPath)
			t.Logf("simulator and gateway output:\n%s", b[max(0, len(b)-20000):])
		}
		p.log.Close()
	})
	return p
}

// out is where the processes write, printed if the test fails.
func (p *policeRoom) out(t *testing.T) *os.File {
	t.Helper()
	if p.log == nil {
		f, err := os.Create(p.logPath)
		if err != nil {
			t.Fatal(err)
		}
		p.log = f
	}
	return p.log
}

func (p *policeRoom) start(t *testing.T) {
	t.Helper()
	if err := p.sim.start(p.ctx, p.out(t), "firmware-sim ready", "-config", p.station, "-control", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	p.control = p.sim.control()
	if err := p.gw.start(p.ctx, p.out(t), "", "run", "-config", p.station); err != nil {
		t.Fatal(err)
	}
}
