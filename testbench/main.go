// Command testbench proves outpost end to end: it starts a hub (a real
// Mosquitto and InfluxDB), the simulated firmware of a station and the
// gateway, runs a scenario with its faults, and reports what arrived.
//
//	testbench run SCENARIO|all -report FILE|DIR
//	testbench run fleet -stations N -duration D -report FILE
//	testbench run bench-tcp -units N -poll D -window D -report FILE
//	testbench report JSONFILE [-html OUT]
//	testbench demo
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"

	_ "outpost/configs/protocols" // the testbench reads every protocol's station files
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "run":
		os.Exit(cmdRun(ctx, os.Args[2:], log))
	case "report":
		os.Exit(cmdReport(os.Args[2:], log))
	case "demo":
		os.Exit(cmdDemo(ctx, os.Args[2:], log))
	case "watch-alarms":
		os.Exit(cmdWatchAlarms(ctx, os.Args[2:], log))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  testbench run SCENARIO|all -report FILE|DIR   run scenarios of testbench/scenarios; exit 0 only if all pass
                                                 (an HTML report beside each JSON report)
  testbench run fleet -stations N -duration D -report FILE
                                                 N stations of the five types, each its own gateway and simulator,
                                                 against one Mosquitto and InfluxDB; exit 0 only if nothing was lost
                                                 and every device kept (-min-poll) its poll rate
  testbench run fleet-cluster -stations N -duration D -report FILE
                                                 the same against three NATS nodes (MQTT, clustered), one killed
                                                 mid-run and restarted: nothing lost, every gateway on it moved
  testbench run bench-tcp [-units 100 -poll 100ms -endpoints 1 -windows 1 -window 60s -gateway PATH] -report FILE
                                                 one station of Modbus TCP units of 15 fields, the real gateway, Mosquitto
                                                 and InfluxDB: per window, readings served and delivered to each store, the
                                                 gateway's and the hub's CPU per reading (docs/testbench.md)
  testbench report JSONFILE [-html OUT]          make the HTML report of a JSON report again
  testbench demo                                 the simulated police room through the gateway to an in-process hub`)
	os.Exit(2)
}

func cmdRun(ctx context.Context, args []string, log *slog.Logger) int {
	if len(args) == 0 {
		usage()
	}
	name := args[0]
	if name == "fleet" {
		return cmdFleet(ctx, args[1:], log)
	}
	if name == "fleet-cluster" {
		return cmdFleetCluster(ctx, args[1:], log)
	}
	if name == "bench-tcp" {
		return cmdBench(ctx, args[1:], log)
	}
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	reportPath := fs.String("report", "", "write the JSON report to this file (to DIR/SCENARIO.json with 'all')")
	parallel := fs.Int("parallel", 4, "with 'all', how many scenarios that are not solo run at once")
	fs.Parse(args[1:])
	names := []string{name}
	if name == "all" {
		files, _ := filepath.Glob(filepath.Join(scenarioDir(), "*.yaml"))
		names = names[:0]
		for _, f := range files {
			names = append(names, strings.TrimSuffix(filepath.Base(f), ".yaml"))
		}
		sort.Strings(names)
	}
	var solo, shared []*Scenario
	for _, n := range names {
		sc, err := loadScenario(n)
		if err != nil {
			log.Error("scenario", "err", err)
			return 2
		}
		switch {
		case sc.Soak && name == "all":
			log.Info("scenario left to make soak", "scenario", sc.Name, "duration", sc.Duration)
			continue
		case sc.Solo || len(names) == 1:
			solo = append(solo, sc)
		default:
			shared = append(shared, sc)
		}
	}
	// The longest first, so that the lanes end together.
	sort.SliceStable(shared, func(i, j int) bool { return shared[i].Duration > shared[j].Duration })
	var mu sync.Mutex // one scenario's report at a time
	failed := 0
	var rows []Report
	run := func(sc *Scenario) error {
		log.Info("scenario starts", "scenario", sc.Name, "duration", sc.Duration)
		rep, err := runScenario(ctx, sc, log.With("scenario", sc.Name))
		if err != nil {
			rep.Failures = append(rep.Failures, err.Error())
			rep.Pass = false
		}
		mu.Lock()
		defer mu.Unlock()
		if !rep.Pass {
			failed++
		}
		rows = append(rows, rep)
		return printReport(sc, rep, *reportPath, name == "all")
	}
	for _, sc := range solo {
		if err := run(sc); err != nil {
			log.Error("report", "err", err)
			return 2
		}
	}
	// The others share the machine, *parallel at a time: what they hold
	// to (nothing lost, every event once, the right values) does not
	// depend on having it to themselves.
	work := make(chan *Scenario)
	var wg sync.WaitGroup
	var errs []error
	for range max(*parallel, 1) {
		wg.Go(func() {
			for sc := range work {
				if err := run(sc); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	for _, sc := range shared {
		work <- sc
	}
	close(work)
	wg.Wait()
	if len(errs) > 0 {
		log.Error("report", "err", errors.Join(errs...))
		return 2
	}
	fmt.Println()
	printSummary(os.Stdout, rows)
	fmt.Printf("scenarios: %d passed, %d failed\n", len(rows)-failed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// printReport prints a scenario's summary and its failures, and writes
// the report to path (to path/SCENARIO.json with dir), with its HTML
// report beside it. The JSON, with its timeline, is for the files: too
// long for a terminal.
func printReport(sc *Scenario, rep Report, path string, dir bool) error {
	if path != "" {
		if dir {
			os.MkdirAll(path, 0o755)
			path = filepath.Join(path, sc.Name+".json")
		}
		b, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			return err
		}
		if err := writeHTMLReport(htmlPath(path), rep); err != nil {
			return err
		}
	}
	verdict := "PASS"
	if !rep.Pass {
		verdict = "FAIL"
	}
	fmt.Printf("%s %s: sent %d, at hub mqtt %d, in influx %d, lost %d, duplicates %d, gateway cpu %.2fs, max rss %.1f MB\n",
		verdict, sc.Name, rep.Readings.Sent, rep.Readings.AtHubMQTT, rep.Readings.InInflux, rep.Readings.Lost,
		rep.Readings.Duplicates, rep.Gateway.CPUS, rep.Gateway.MaxRSSMB)
	if p := rep.Polls; p != nil {
		fmt.Printf("  polls over %.0f s: every device not silent at %.1f%% or more of its configured rate (lowest: %s)\n", p.WindowS, p.MinPercent, p.Slowest)
	}
	if d := rep.Drain; d != nil {
		fmt.Printf("  drain of %d readings: %.0f readings/s into MQTT, %.0f into InfluxDB", d.Backlog, d.RateMQTT, d.RateInflux)
		if d.Target > 0 {
			fmt.Printf(" (target %.0f: met %v)", d.Target, d.TargetMet)
		}
		fmt.Println()
	}
	for _, f := range rep.Failures {
		fmt.Printf("  failed: %s\n", f)
	}
	if path != "" {
		fmt.Printf("  report: %s, %s\n", path, htmlPath(path))
	}
	return nil
}
