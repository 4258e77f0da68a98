package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
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
	if err := notWhileRunning(st); err != nil {
		fmt.Fprintln(stderr, "gateway read:", err)
		return 1
	}
	id := fs.Arg(0)
	link, dev, ok := deviceLink(st, id)
	if !ok {
		fmt.Fprintf(stderr, "gateway read: %s has no device %q (devices: %v)\n", *config, id, deviceIDs(st))
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	got, healths, err := firstReadings(ctx, link, slog.New(slog.DiscardHandler), id)
	if err != nil {
		fmt.Fprintf(stderr, "gateway read: device %s on %s (%s): %v\n", id, link.Name(), link.Protocol(), err)
		return 1
	}
	m, ok := got[id]
	health, hasHealth := healths[id]
	heard := heardOnLink(healths)
	if !ok {
		// An alarm panel sends events, no readings: that it answers is
		// what there is to see, as commission says.
		fine, why := verdict(nil, m, false, health, hasHealth, heard, *timeout)
		if fine {
			fmt.Fprintf(stdout, "%s on %s (%s): %s\n", id, link.Name(), link.Protocol(), why)
			return 0
		}
		fmt.Fprintf(stderr, "gateway read: no reading from %s on %s (%s): %s\n", id, link.Name(), link.Protocol(), why)
		return 1
	}
	printReading(stdout, &m)
	if fine, _ := verdict(nil, m, true, health, hasHealth, heard, *timeout); fine {
		if u := unlike(link.Template(dev), m); u != "" {
			fmt.Fprintf(stdout, "\n%s\n", u)
		}
		if u, _ := unclean(health, heard); u != "" {
			fmt.Fprintf(stdout, "\nanswered, but %s\n", u)
		}
		return 0
	}
	if hasHealth && health.Reason != "" {
		fmt.Fprintf(stdout, "\n%s: %s\n", health.State, also(health.Reason, health, heard))
	}
	return 1
}

// deviceLink is the link of the device id, and the device. The tool runs
// the whole link, as the gateway would: a device that does not answer is
// told from a link at fault by whether its neighbours answer (a wrong unit
// id, or the wiring), and the tool ends as soon as the device is read.
func deviceLink(st *configs.Station, id string) (drivers.Link, *configs.Device, bool) {
	for _, l := range drivers.Links(st) {
		for _, d := range l.Devices {
			if d.ID == id {
				return l, d, true
			}
		}
	}
	return drivers.Link{}, nil, false
}

func deviceIDs(st *configs.Station) []string {
	var ids []string
	for _, d := range st.Devices {
		ids = append(ids, d.ID)
	}
	return ids
}

// firstReadings runs the link's driver until each of the devices of ids
// (all the link's when none) sent its first poll's telemetry, or ctx ends. It returns those messages and each
// device's last health report, by device; an error only when the driver
// could not run at all.
//
// It forwards nothing, so it keeps no event: a device that pushes one (a
// kiosk's emergency call, an alarm panel's frame) is not acknowledged,
// and sends it again to the gateway once it runs.
func firstReadings(ctx context.Context, link drivers.Link, log *slog.Logger, ids ...string) (map[string]model.Message, map[string]model.Health, error) {
	link.Once = true
	d, err := drivers.New(link, log)
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var mu sync.Mutex
	got, health := map[string]model.Message{}, map[string]model.Health{}
	partial := map[string]model.Message{} // readings of the devices not all read yet
	signals := map[string][]string{}      // in the template's order
	all := len(ids) == 0
	for _, d := range link.Devices {
		for _, sg := range link.Template(d).Body.Signals() {
			signals[d.ID] = append(signals[d.ID], sg.Name)
		}
		if all {
			ids = append(ids, d.ID)
		}
	}
	// A device is done with its health report and a good first reading,
	// or a bad one and the report that says why. Good values do not make
	// it done alone: its first poll sends its health after them, which
	// may say that the device is not as its template says (a module
	// without the latch the template reads).
	done := func(dev string) bool {
		h, ok := health[dev]
		if !ok {
			return false
		}
		if len(signals[dev]) == 0 { // an alarm panel: events only
			return true
		}
		m, ok := got[dev]
		return ok && (h.State != model.Online || !slices.ContainsFunc(m.Readings, func(r model.Reading) bool { return r.Quality == model.Bad }))
	}
	err = d.Run(ctx, func(m model.Message) error {
		if m.Kind == model.KindEvent {
			return errNotForwarded
		}
		mu.Lock()
		defer mu.Unlock()
		switch {
		case m.Kind == model.KindTelemetry:
			// A device's signals may come in several messages (an alarm
			// poll's has only the alarm inputs; an ASCII-line device
			// sends a line of each kind): the first reading of each.
			if _, ok := got[m.Device]; ok {
				break
			}
			p := partial[m.Device]
			if p.Device == "" {
				p = m
				p.Readings = nil
			}
			for _, r := range m.Readings {
				if !slices.ContainsFunc(p.Readings, func(h model.Reading) bool { return h.Signal == r.Signal }) {
					p.Readings = append(p.Readings, r)
				}
			}
			partial[m.Device] = p
			if len(p.Readings) == len(signals[m.Device]) {
				slices.SortFunc(p.Readings, func(a, b model.Reading) int {
					return slices.Index(signals[m.Device], a.Signal) - slices.Index(signals[m.Device], b.Signal)
				})
				got[m.Device] = p
			}
		case m.Kind == model.KindHealth && m.Health != nil:
			health[m.Device] = *m.Health
		}
		if !slices.ContainsFunc(ids, func(id string) bool { return !done(id) }) {
			cancel()
		}
		return nil
	})
	if ctx.Err() != nil {
		err = nil // it ran until it had them all, or the time was up
	}
	mu.Lock()
	defer mu.Unlock()
	return got, health, err
}

// errNotForwarded refuses an event to the driver of an installer's tool:
// the device keeps it, and sends it again.
var errNotForwarded = errors.New("not forwarded to the hub by this tool: the device sends it again to the gateway")

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
