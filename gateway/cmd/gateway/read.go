package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"text/tabwriter"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/gateway/model"
)

// cmdRead reads one device of a station file once, through its link's
// driver as the gateway would, and prints what it decoded. Nothing goes to
// the hub, and the state directory is not touched.
func cmdRead(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	config := fs.String("config", "", "station file (required)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the device's first reading")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	if *config == "" || fs.NArg() != 1 {
		fmt.Fprintln(stderr, "usage: gateway read -config STATION.yaml DEVICE")
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	id := fs.Arg(0)
	link, ok := deviceLink(st, id)
	if !ok {
		fmt.Fprintf(stderr, "gateway read: %s has no device %q (devices: %v)\n", *config, id, deviceIDs(st))
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	m, health, err := readOnce(ctx, link, slog.New(slog.DiscardHandler))
	if err != nil {
		fmt.Fprintf(stderr, "gateway read: device %s on %s (%s): %v\n", id, link.Name(), link.Protocol(), err)
		return 1
	}
	if m == nil {
		why := "it sent nothing"
		if health != nil && health.Reason != "" {
			why = string(health.State) + ": " + health.Reason
		}
		fmt.Fprintf(stderr, "gateway read: no reading from %s on %s (%s) within %s: %s\n", id, link.Name(), link.Protocol(), *timeout, why)
		return 1
	}
	printReading(stdout, m)
	if slices.ContainsFunc(m.Readings, func(r model.Reading) bool { return r.Quality != model.Good }) {
		if health != nil && health.Reason != "" {
			fmt.Fprintf(stdout, "\n%s: %s\n", health.State, health.Reason)
		}
		return 1
	}
	return 0
}

// deviceLink is the link of the device id, with that device alone on it.
func deviceLink(st *configs.Station, id string) (drivers.Link, bool) {
	for _, l := range drivers.Links(st) {
		for _, d := range l.Devices {
			if d.ID == id {
				l.Devices = []*configs.Device{d}
				return l, true
			}
		}
	}
	return drivers.Link{}, false
}

func deviceIDs(st *configs.Station) []string {
	var ids []string
	for _, d := range st.Devices {
		ids = append(ids, d.ID)
	}
	return ids
}

// errRead ends the driver once the reading is in.
var errRead = errors.New("read")

// readOnce runs the link's driver until its device's first telemetry, or
// ctx ends; it returns that message (nil if none came) and the device's
// last health report.
func readOnce(ctx context.Context, link drivers.Link, log *slog.Logger) (*model.Message, *model.Health, error) {
	d, err := drivers.New(link, log)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	got := make(chan model.Message, 1)
	var health *model.Health
	healthc := make(chan model.Health, 16)
	runErr := make(chan error, 1)
	go func() {
		runErr <- d.Run(ctx, func(m model.Message) error {
			switch {
			case m.Kind == model.KindTelemetry && len(m.Readings) > 0:
				select {
				case got <- m:
					cancel(errRead)
				default:
				}
			case m.Kind == model.KindHealth && m.Health != nil:
				select {
				case healthc <- *m.Health:
				default:
				}
			}
			return nil
		})
	}()
	for {
		select {
		case h := <-healthc:
			health = &h
		case err := <-runErr:
			select {
			case m := <-got:
				return &m, health, nil
			default:
			}
			if err != nil {
				return nil, health, err
			}
			return nil, health, nil
		}
	}
}

func printReading(w io.Writer, m *model.Message) {
	fmt.Fprintf(w, "%s (%s) at %s\n", m.Device, m.DeviceKind, m.Time.Local().Format("2006-01-02 15:04:05.000"))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SIGNAL\tVALUE\tUNIT\tQUALITY")
	for _, r := range m.Readings {
		v := r.Value.String()
		if r.Value.IsZero() {
			v = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Signal, v, orDash(r.Unit), r.Quality)
	}
	tw.Flush()
}
