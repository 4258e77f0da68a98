// Command firmware-sim is the simulated firmware of every device of a
// station: the other side of the wire from the gateway.
//
//	firmware-sim -config STATION.yaml [-stats FILE] [-served FILE] [-raised FILE] [-statuses FILE] [-control ADDR]
//	             [-seed N] [-turnaround 3ms] [-check-line] [-noise 0.05] [-echo LINK,...] [-silent ID,...]
//	             [-other-master 300ms] [-v]
//
// For every RS-485 bus of the station it makes a virtual serial port linked at
// the bus's port path and answers Modbus RTU there for the devices on that
// bus, paced to the bus's baud rate. For every Modbus TCP endpoint it listens
// at the endpoint's address. Values follow each register's sim block. When all
// ports and listeners are up it prints "firmware-sim ready" on stdout.
//
// Each answer is paced to the bus's line speed: its first byte is readable no
// sooner than the request's wire time, the turnaround (-turnaround, or each
// bus's own) and one character; its last no sooner than the request's and
// the answer's wire time plus the turnaround. With -check-line, a master
// whose baud differs from the bus's (or data bits and parity, where the pty
// lets it set them) hears garbage, as from a real device at other settings.
//
// With -silent, the devices named never answer, as a device that is off or
// configured with another unit id than the station file says: nothing on a
// bus, not even an exception from a Modbus TCP endpoint. They serve nothing.
//
// With -noise, that share of the bytes on every serial line is corrupted,
// in both directions, as electrical noise would.
//
// With -echo, the serial links named echo what the gateway sends back to
// it, as a two-wire RS-485 adapter without echo suppression does.
//
// With -other-master, every Modbus RTU bus has another master on it (an old
// controller left polling): at that interval it reads a holding register
// of the bus's lowest unit, which answers, and the gateway hears both.
//
// With -control it serves an HTTP API on a loopback address through which
// the testbench makes devices act (see control.go): press a button, send
// an alarm, stop a panel's periodic tests. It prints
// "firmware-sim control ADDR" before "firmware-sim ready". With -raised
// it appends one JSON line per alarm a device raised, with when it was on
// its way:
//
//	{"device":"panel-1","kind":"panic","state":"active","at":"…","source":"dc09"}
//
// With -statuses it appends one JSON line per request status a kiosk
// received (each command once, in the order the kiosk got them):
//
//	{"device":"kiosk-1","ticket":"kiosk-1-3","status":"dispatched","id":"c-17","at":"…","sent":"…"}
//
// With -stats it writes its counters as JSON every second and on exit; with
// -served it appends one JSON line per reading served, with the exact value a
// correct master decodes:
//
//	{"device":"th-hall","signal":"temperature","value":21.3}
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"outpost/configs"
	mqttsim "outpost/firmware-sim/mqtt" // registers protocol mqtt too
	"outpost/firmware-sim/sim"

	// The protocols the simulator speaks; each registers itself.
	_ "outpost/firmware-sim/dc09"
	_ "outpost/firmware-sim/dcon"
	_ "outpost/firmware-sim/line"
	_ "outpost/firmware-sim/modbus"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "firmware-sim:", err)
		}
		os.Exit(1)
	}
}

// options are the command line.
type options struct {
	config     string
	stats      string
	served     string
	raised     string
	statuses   string
	control    string
	noise      float64
	seed       int64
	turnaround time.Duration
	other      time.Duration // another master's interval on RTU buses
	checkLine  bool
	silent     []string // device ids
	echo       []string // link ids
	verbose    bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("firmware-sim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.config, "config", "", "station file (required)")
	fs.StringVar(&o.stats, "stats", "", "write counters as JSON to this file every second and on exit")
	fs.StringVar(&o.served, "served", "", "append one JSON line per reading served to this file")
	fs.StringVar(&o.raised, "raised", "", "append one JSON line per alarm a device raised to this file")
	fs.StringVar(&o.statuses, "statuses", "", "append one JSON line per request status a kiosk received to this file")
	fs.StringVar(&o.control, "control", "", "serve the control API (devices' actions) on this loopback address, e.g. 127.0.0.1:0")
	fs.Float64Var(&o.noise, "noise", 0, "share of bytes (0 to 1) corrupted on serial lines, both directions")
	fs.Int64Var(&o.seed, "seed", 1, "seed of the simulated values")
	fs.DurationVar(&o.turnaround, "turnaround", -1, "device turnaround on every bus (default: each bus's turnaround)")
	fs.DurationVar(&o.other, "other-master", 0, "put another master on every Modbus RTU bus, polling its lowest unit at this interval")
	fs.BoolVar(&o.checkLine, "check-line", false, "answer garbage when the master's line settings (baud; data bits and parity where the port keeps them) differ from the bus's")
	fs.Func("silent", "comma-separated device ids that never answer", ids(&o.silent))
	fs.Func("echo", "comma-separated serial link ids whose adapter echoes what the gateway sends", ids(&o.echo))
	fs.BoolVar(&o.verbose, "v", false, "debug logs")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.noise < 0 || o.noise > 1 {
		return o, fmt.Errorf("-noise %v: want a share of bytes from 0 to 1", o.noise)
	}
	if o.config == "" || fs.NArg() > 0 {
		fs.Usage()
		return o, errors.New("usage: firmware-sim -config STATION.yaml [-stats FILE] [-served FILE] [-seed N] [-turnaround D] [-silent ID,...]")
	}
	return o, nil
}

// ids is a flag's parser of comma-separated ids into to.
func ids(to *[]string) func(string) error {
	return func(v string) error {
		for _, id := range strings.Split(v, ",") {
			if id = strings.TrimSpace(id); id != "" {
				*to = append(*to, id)
			}
		}
		return nil
	}
}

// station is a running simulated station.
type station struct {
	opts  options
	log   *slog.Logger
	links map[string]sim.Link
	files []*os.File  // the served and raised logs
	deaf  atomic.Bool // every device answers nothing (control.go: POST /deaf)
	// what the devices do wrong (-silent, and the control API)
	faults *sim.Faults
}

// run runs the simulator until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	s, err := open(o, log)
	if err != nil {
		return err
	}
	defer s.close()
	return s.serve(ctx, stdout)
}

// open loads the station and brings up the simulator of each of its
// links.
func open(o options, log *slog.Logger) (_ *station, err error) {
	st, err := configs.Load(o.config)
	if err != nil {
		return nil, err
	}
	s := &station{opts: o, log: log, links: map[string]sim.Link{}}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	s.faults = sim.NewFaults()
	so := sim.Options{Seed: o.seed, Start: time.Now(), Deaf: &s.deaf, Faults: s.faults,
		Turnaround: o.turnaround, CheckLine: o.checkLine, Noise: o.noise, OtherMaster: o.other, Log: log}
	sink := &servedLog{log: log}
	for _, f := range []struct {
		path string
		w    *io.Writer
	}{{o.served, &sink.served}, {o.raised, &sink.raised}, {o.statuses, &sink.statuses}} {
		if f.path == "" {
			continue
		}
		file, err := os.OpenFile(f.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		s.files = append(s.files, file)
		*f.w = file
		so.Sink = sink
	}
	for _, id := range o.silent {
		if slices.IndexFunc(st.Devices, func(d configs.Device) bool { return d.ID == id }) < 0 {
			return nil, fmt.Errorf("-silent: no device %s in %s", id, o.config)
		}
		so.Faults.SetSilent(id, true)
	}
	so.Echo = map[string]bool{}
	for _, id := range o.echo {
		serial := slices.ContainsFunc(st.Links, func(l configs.Link) bool {
			_, ok := l.Settings.(interface{ Line() *configs.Serial })
			return l.ID == id && ok
		})
		if !serial {
			return nil, fmt.Errorf("-echo: no serial link %s in %s", id, o.config)
		}
		so.Echo[id] = true
	}
	for i := range st.Links {
		l, err := sim.New(st, &st.Links[i], so)
		if err != nil {
			return nil, err
		}
		s.links[st.Links[i].ID] = l
	}
	return s, nil
}

// serve answers on every port and listener until ctx ends or one fails,
// then writes the stats a last time.
func (s *station) serve(ctx context.Context, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg      sync.WaitGroup
		errOnce sync.Once
		runErr  error
	)
	fail := func(err error) {
		errOnce.Do(func() { runErr = err })
		cancel()
	}
	for id, l := range s.links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Serve(ctx); err != nil {
				fail(fmt.Errorf("link %s: %w", id, err))
			}
		}()
	}
	if s.opts.stats != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					if err := s.writeStats(s.opts.stats); err != nil {
						s.log.Warn("stats", "err", err)
					}
				}
			}
		}()
	}
	if s.opts.control != "" {
		addr, err := s.serveControl(ctx, &wg)
		if err != nil {
			fail(err)
		} else {
			fmt.Fprintln(stdout, "firmware-sim control", addr)
		}
	}
	fmt.Fprintln(stdout, "firmware-sim ready")
	<-ctx.Done()
	wg.Wait()
	if s.opts.stats != "" {
		if err := s.writeStats(s.opts.stats); err != nil && runErr == nil {
			runErr = err
		}
	}
	s.log.Info("stopped")
	return runErr
}

// close releases the links' ports and listeners, and the served log.
func (s *station) close() {
	for id, l := range s.links {
		if err := l.Close(); err != nil {
			s.log.Warn("closing link", "link", id, "err", err)
		}
	}
	for _, f := range s.files {
		f.Close()
	}
}

// Stats is the -stats file.
type Stats struct {
	// Time is when the counters were read: rates come from two files.
	Time           time.Time            `json:"time"`
	ReadingsServed int64                `json:"readings_served"`
	EventsServed   int64                `json:"events_served"`
	Devices        map[string]sim.Stats `json:"devices"`
	// Links holds the counters of links that keep their own (what a serial
	// line saw), by link id.
	Links map[string]any `json:"links,omitempty"`
}

func (s *station) stats() Stats {
	out := Stats{Time: time.Now().UTC(), Devices: map[string]sim.Stats{}, Links: map[string]any{}}
	for id, l := range s.links {
		for _, d := range l.Devices() {
			ds := d.Stats()
			out.Devices[d.ID()] = ds
			out.ReadingsServed += ds.ReadingsServed
			out.EventsServed += ds.EventsServed
		}
		if ls, ok := l.(interface{ Stats() any }); ok {
			out.Links[id] = ls.Stats()
		}
	}
	return out
}

// writeStats writes the counters to path atomically.
func (s *station) writeStats(path string) error {
	b, err := json.MarshalIndent(s.stats(), "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	_, err = tmp.Write(append(b, '\n'))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("stats: %w", err)
	}
	return nil
}

// servedLog appends served readings (to served), raised alarms (to
// raised) and the request statuses kiosks received (to statuses) as JSON
// lines, one write per response, alarm or status; any may be nil.
type servedLog struct {
	mu                       sync.Mutex
	served, raised, statuses io.Writer
	log                      *slog.Logger
}

type servedLine struct {
	Device string `json:"device"`
	Signal string `json:"signal"`
	Value  any    `json:"value"`
}

// Served implements sim.Sink.
func (l *servedLog) Served(dev string, rs []sim.Reading) {
	if l.served == nil {
		return
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	for _, r := range rs {
		if err := enc.Encode(servedLine{Device: dev, Signal: r.Signal, Value: r.Value}); err != nil {
			l.log.Warn("served log", "device", dev, "signal", r.Signal, "err", err)
		}
	}
	l.write(l.served, buf.Bytes())
}

// Raised implements sim.Sink.
func (l *servedLog) Raised(r sim.Raised) {
	b, err := json.Marshal(r)
	if err != nil {
		l.log.Warn("raised log", "device", r.Device, "err", err)
		return
	}
	l.write(l.raised, append(b, '\n'))
}

// Status implements mqttsim.StatusSink.
func (l *servedLog) Status(s mqttsim.Status) {
	b, err := json.Marshal(s)
	if err != nil {
		l.log.Warn("statuses log", "device", s.Device, "err", err)
		return
	}
	l.write(l.statuses, append(b, '\n'))
}

func (l *servedLog) write(w io.Writer, b []byte) {
	if w == nil {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, err := w.Write(b); err != nil {
		l.log.Warn("served log", "err", err)
	}
}
