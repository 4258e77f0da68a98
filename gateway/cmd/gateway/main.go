// Command gateway is the outpost edge daemon and the installer's tool:
// `gateway help` lists its commands, `gateway COMMAND --help` explains one.
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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/model"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// prog is the command's name in usage lines and examples: the name it
// was run by (the Debian package installs it as outpost-gateway).
var prog = "gateway"

func main() {
	if len(os.Args) > 0 {
		prog = filepath.Base(os.Args[0])
	}
	os.Exit(cli(os.Args[1:], os.Stdout, os.Stderr))
}

// command is one subcommand of the gateway binary.
type command struct {
	name    string
	args    string // after the name, in the usage line
	summary string
	example string // after the program's name
	run     func(c *command, args []string, stdout, stderr io.Writer) int
}

var commands []*command

func init() {
	commands = []*command{
		{name: "run", args: "-config STATION.yaml [flags]", summary: "run the station: read its devices and forward everything to the hub",
			example: "run -config /etc/outpost/station.yaml", run: cmdRun},
		{name: "validate", args: "STATION.yaml", summary: "check a station file and its templates; print every problem as FILE:LINE:COL: message and exit 1 if there is any",
			example: "validate /etc/outpost/station.yaml", run: cmdValidate},
		{name: "reload", args: "-config STATION.yaml", summary: "check the station file and have the running gateway apply it: changed links restart, the others keep polling; a file with errors is refused and the gateway runs on as it was",
			example: "reload -config /etc/outpost/station.yaml", run: cmdReload},
		{name: "status", args: "-config STATION.yaml", summary: "show whether the running gateway reaches the hub, why not, and what waits in its queues; exit 1 if something needs attention",
			example: "status -config /etc/outpost/station.yaml", run: cmdStatus},
		{name: "ports", args: "[-json]", summary: "list the serial ports present, with USB ids and serial numbers, and the stable path to put in the station file",
			example: "ports", run: cmdPorts},
		{name: "probe", args: "-port PORT [-baud 9600] [-parity none] [-units 1-32] [-scan] | -tcp HOST:PORT [-units 1-32]", summary: "scan a Modbus RTU bus or TCP endpoint for the units that answer, and name the built-in templates each reads as",
			example: "probe -port /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K1234-if00-port0 -units 1-10 -scan", run: cmdProbe},
		{name: "read", args: "-config STATION.yaml DEVICE", summary: "read one device once, as the gateway would, and print its decoded signals with units and quality; exit 1 unless all are good",
			example: "read -config /etc/outpost/station.yaml th-hall", run: cmdRead},
		{name: "commission", args: "-config STATION.yaml [-json]", summary: "try every device of the station once, and the hub, and print what is wrong in words to act on; exit 0 only when all pass",
			example: "commission -config /etc/outpost/station.yaml", run: cmdCommission},
		{name: "passwd", args: "-file FILE [-generate | -remove] DEVICE", summary: "set an MQTT device's password in its link's password file (the hash of a line read from stdin, or of a new one printed with -generate), or remove it",
			example: "passwd -file /etc/outpost/devices.passwd -generate kiosk-1", run: cmdPasswd},
		{name: "version", summary: "print the gateway's version and hub contract version",
			example: "version", run: cmdVersion},
	}
}

func cli(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	if name == "help" && len(rest) > 0 {
		name, rest = rest[0], []string{"-help"}
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(c, rest, stdout, stderr)
		}
	}
	switch name {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "gateway: unknown command %q\n", name)
	usage(stderr)
	return 2
}

// flags is the command's flag set; errors go to stderr.
func (c *command) flags(stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(prog+" "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { c.usage(fs) }
	return fs
}

// parse parses args into fs. With -h, -help or --help anywhere it prints
// the usage to stdout; ok is false when the command must end with code.
func (c *command) parse(fs *flag.FlagSet, args []string, stdout io.Writer) (ok bool, code int) {
	for _, a := range args {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout)
			c.usage(fs)
			return false, 0
		}
	}
	if err := fs.Parse(args); err != nil {
		return false, 2
	}
	return true, 0
}

// usage prints the command's usage, flags and example to fs's output.
func (c *command) usage(fs *flag.FlagSet) {
	w := fs.Output()
	fmt.Fprintf(w, "usage: %s %s %s\n\n%s\n", prog, c.name, c.args, strings.Join(wrap(c.summary, 80), "\n"))
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprintln(w, "\nflags:")
		fs.PrintDefaults()
	}
	fmt.Fprintf(w, "\nexample:\n  %s %s\n", prog, c.example)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s COMMAND [arguments]   (%[1]s COMMAND --help tells more)\n\ncommands:\n", prog)
	for _, c := range commands {
		// Readable in an 80-column terminal.
		for i, line := range wrap(c.summary, 80-13) {
			name := ""
			if i == 0 {
				name = c.name
			}
			fmt.Fprintf(w, "  %-10s %s\n", name, line)
		}
	}
}

func cmdVersion(c *command, args []string, stdout, stderr io.Writer) int {
	if ok, code := c.parse(c.flags(stderr), args, stdout); !ok {
		return code
	}
	fmt.Fprintf(stdout, "outpost gateway %s (hub contract v%d)\n", version, model.ContractVersion)
	return 0
}

func cmdValidate(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	if fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: gateway validate STATION.yaml")
		return 2
	}
	path := fs.Arg(0)
	st, err := configs.Load(path)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: valid: station %s (%s), %d devices on %d links\n",
		path, st.Station.ID, st.Station.Type, len(st.Devices), len(st.Links))
	for _, w := range warnings(st, nil) {
		fmt.Fprintln(stdout, "warning: "+w)
	}
	return 0
}

// warnings says what in a valid station file will not work as meant. ds
// are the station's drivers by link name where they are built already (a
// running gateway's); nil makes them here (they do no I/O).
func warnings(st *configs.Station, ds map[string]drivers.Driver) []string {
	var out []string
	for _, w := range st.Warnings {
		out = append(out, w.Error())
	}
	for _, tmp := range []string{"/tmp/", "/var/tmp/", "/dev/shm/"} {
		if strings.HasPrefix(filepath.Clean(st.StateDir)+"/", tmp) {
			out = append(out, fmt.Sprintf("state_dir %s is under %s: the queue and the sequence numbers may not survive a reboot, and the packaged service has a /tmp of its own; use /var/lib/outpost/%s",
				st.StateDir, strings.TrimSuffix(tmp, "/"), st.Station.ID))
			break
		}
	}
	for _, l := range st.Links {
		if w, ok := l.Settings.(interface{ Warnings() []string }); ok {
			for _, msg := range w.Warnings() {
				out = append(out, "link "+l.ID+": "+msg)
			}
		}
	}
	return append(out, busWarnings(st, ds)...)
}

// busy is the share of a link's wire time beyond which a retry or a slow
// answer makes its polls late.
const busy = 0.7

// busWarnings says which links' polls would take most of their wire, as
// their drivers estimate it (a serial bus knows its speed and its devices'
// request plans).
func busWarnings(st *configs.Station, ds map[string]drivers.Driver) []string {
	type loader interface{ Load() (all, alarms float64) }
	var out []string
	for _, l := range drivers.Links(st) {
		d := ds[l.Name()]
		if ds == nil {
			var err error
			if d, err = drivers.New(l, slog.New(slog.DiscardHandler)); err != nil {
				continue
			}
		}
		ld, ok := d.(loader)
		if !ok {
			continue
		}
		all, alarms := ld.Load()
		if all <= busy {
			continue
		}
		out = append(out, fmt.Sprintf("link %s: its polls would take about %.0f%% of the wire (alarm polls %.0f%%), more than %.0f%%: polls will run late; raise the baud rate, lengthen poll or alarm_poll, or split the devices over two buses",
			l.Name(), 100*all, 100*alarms, 100*busy))
	}
	return out
}

func cmdRun(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	config := fs.String("config", "", "station file (required)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
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
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
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
	if err := run(ctx, st, log, hup); err != nil && !errors.Is(err, context.Canceled) {
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
