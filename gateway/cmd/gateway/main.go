// Command gateway is the outpost edge daemon and the installer's tool.
//
//	gateway run -config STATION.yaml      run the station
//	gateway validate STATION.yaml         check a station file; exit 1 on errors
//	gateway version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"outpost/configs"
	"outpost/gateway/model"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stderr)
	case "validate":
		return cmdValidate(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "outpost gateway %s (hub contract v%d)\n", version, model.ContractVersion)
		return 0
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "gateway: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  gateway run -config STATION.yaml [-log-level debug|info|warn|error] [-log-format text|json]
  gateway validate STATION.yaml     print every error as FILE:LINE:COL: message; exit 1 if any
  gateway version
`)
}

func cmdValidate(args []string, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: gateway validate STATION.yaml")
		return 2
	}
	st, err := configs.Load(args[0])
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid: station %s (%s), %d devices, %d buses, %d endpoints\n",
		args[0], st.Station.ID, st.Station.Type, len(st.Devices), len(st.Buses), len(st.Endpoints))
	return 0
}

func cmdRun(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "station file (required)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *config == "" {
		fmt.Fprintln(stderr, "gateway run: -config STATION.yaml is required")
		return 2
	}
	log, err := newLogger(stderr, *level, *format)
	if err != nil {
		fmt.Fprintln(stderr, "gateway run:", err)
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		fmt.Fprintln(stderr, "gateway run: not started: fix the station file first (gateway validate checks it)")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		}
		// From now on a second SIGTERM or Ctrl-C ends the process at
		// once, and a shutdown that hangs past its bound ends it too.
		stop()
		limit := stopLimit + statusTimeout + 3*time.Second
		t := time.NewTimer(limit)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			log.Error("shutdown did not finish in time; exiting", "limit", limit)
			os.Exit(1)
		}
	}()
	if err := run(ctx, st, log); err != nil && !errors.Is(err, context.Canceled) {
		log.Error("gateway stopped", "err", err)
		return 1
	}
	return 0
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level %q: expected debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("-log-format %q: expected text or json", format)
}
