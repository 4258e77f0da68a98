package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"go.bug.st/serial"

	"outpost/configs"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// cmdProbe scans a Modbus RTU bus or a Modbus TCP endpoint for the units
// that answer, through the gateway's own driver, and names the built-in
// templates each one reads as: every signal good and within the range its
// datasheet gives. With -scan it first looks for the line settings at
// which anything answers.
func cmdProbe(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	port := fs.String("port", "", "serial port of a Modbus RTU bus (gateway ports lists them)")
	tcp := fs.String("tcp", "", "address of a Modbus TCP endpoint, HOST:PORT")
	baud := fs.Int("baud", 9600, "baud rate of the bus")
	parity := fs.String("parity", "none", "parity of the bus: none, even or odd")
	units := fs.String("units", "1-32", "unit ids to try: 1-32, or 1,2,5")
	timeout := fs.Duration("timeout", 200*time.Millisecond, "how long each unit has to answer")
	scan := fs.Bool("scan", false, "first find the baud rate and parity at which units answer (9600, 19200, 4800, 38400, 2400, 115200 baud; none, even, odd)")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	ids, err := parseUnits(*units)
	if err != nil || (*port == "") == (*tcp == "") {
		if err == nil {
			err = fmt.Errorf("give -port (a serial bus) or -tcp (an endpoint), one of them")
		}
		fmt.Fprintln(stderr, "gateway probe:", err)
		return 2
	}
	if *port != "" {
		// A port that does not open is said once, with what to check,
		// not as units that do not answer.
		sp, err := bus.OpenSerial(*port, &serial.Mode{BaudRate: *baud})
		if err != nil {
			fmt.Fprintln(stderr, "gateway probe:", err)
			return 1
		}
		sp.Close()
	}
	p := prober{timeout: *timeout, log: slog.New(slog.DiscardHandler)}
	link := func(baud int, parity string) string {
		if *tcp != "" {
			return fmt.Sprintf("{id: bus, protocol: modbus-tcp, address: %q, timeout: %s, retries: 0}", *tcp, *timeout)
		}
		return fmt.Sprintf("{id: bus, protocol: modbus-rtu, port: %q, baud: %d, parity: %s, timeout: %s, retries: 0}", *port, baud, parity, *timeout)
	}
	where := *tcp
	if *port != "" {
		where = fmt.Sprintf("%s at %d baud, parity %s", *port, *baud, *parity)
	}
	if *scan && *port != "" {
		found := false
		for _, b := range []int{9600, 19200, 4800, 38400, 2400, 115200} {
			for _, par := range []string{"none", "even", "odd"} {
				fmt.Fprintf(stdout, "trying %d baud, parity %s ... ", b, par)
				seen, err := p.present(link(b, par), ids)
				if err != nil {
					fmt.Fprintln(stderr, "\ngateway probe:", err)
					return 1
				}
				fmt.Fprintln(stdout, seen.summary())
				if len(seen.answer) > 0 {
					*baud, *parity, found = b, par, true
					break
				}
			}
			if found {
				break
			}
		}
		if !found {
			fmt.Fprintln(stdout, "no unit answers at any of these settings: check the wiring (A/B swapped?), the termination and the unit ids")
			return 1
		}
		where = fmt.Sprintf("%s at %d baud, parity %s", *port, *baud, *parity)
	}
	fmt.Fprintf(stdout, "probing %s, units %s (%s each)\n", where, *units, *timeout)
	seen, err := p.present(link(*baud, *parity), ids)
	if err != nil {
		fmt.Fprintln(stderr, "gateway probe:", err)
		return 1
	}
	if len(seen.answer) == 0 {
		fmt.Fprintln(stdout, seen.summary())
		return 1
	}
	matches, err := p.identify(link(*baud, *parity), seen.answer)
	if err != nil {
		fmt.Fprintln(stderr, "gateway probe:", err)
		return 1
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "UNIT\tREADS AS")
	for _, u := range seen.answer {
		m := matches[u]
		if len(m) == 0 {
			m = []string{"no built-in template (write one from its datasheet: docs/station-file.md)"}
		}
		fmt.Fprintf(tw, "%d\t%s\n", u, strings.Join(m, "; "))
	}
	tw.Flush()
	for _, u := range seen.garbled {
		fmt.Fprintf(stdout, "unit %d answers with damaged frames: another baud rate or parity (try -scan), or noise on the line\n", u)
	}
	fmt.Fprintf(stdout, "%d of %d units answer. In the station file: {id: ..., template: TEMPLATE, link: ..., unit_id: UNIT}\n", len(seen.answer), len(ids))
	return 0
}

// prober runs the gateway's Modbus driver over a link of a station made in
// memory.
type prober struct {
	timeout time.Duration
	log     *slog.Logger
}

// presence is what a pass over the units found.
type presence struct {
	answer  []int // units that answered, data or exception
	garbled []int // units whose answers came damaged
	tried   int
	why     string // why none answered, when none did
}

func (s presence) summary() string {
	if len(s.answer) == 0 && len(s.garbled) == 0 {
		none := fmt.Sprintf("none of the %d units answers", s.tried)
		if s.tried == 1 {
			none = "the unit does not answer"
		}
		if s.why != "" {
			return fmt.Sprintf("%s (%s)", none, s.why)
		}
		return none
	}
	return fmt.Sprintf("%d of %d units answer, %d with damaged frames", len(s.answer), s.tried, len(s.garbled))
}

// probeTemplate is read to see whether a unit answers: two input
// registers; a device without them answers with an exception, which says
// as much.
const probeTemplate = "xy-md02"

// present reads every unit once and says which answered.
func (p prober) present(link string, ids []int) (presence, error) {
	out := presence{tried: len(ids)}
	got, health, err := p.pass(link, probeTemplate, ids)
	if err != nil {
		return out, err
	}
	for _, u := range ids {
		id := unitID(u)
		m, read := got[id]
		c := health[id].Counters
		switch {
		case read && slices.ContainsFunc(m.Readings, func(r model.Reading) bool { return !r.Value.IsZero() }), c["exceptions"] > 0:
			out.answer = append(out.answer, u)
		case c["crc_errors"] > 0 || c["frame_errors"] > 0:
			out.garbled = append(out.garbled, u)
		}
	}
	if len(out.answer)+len(out.garbled) == 0 {
		// The unit asked last knew the others silent, and said that of
		// the bus (bus.SilenceReason); a port that did not open is the
		// same reason for all.
		for _, u := range ids {
			if r := health[unitID(u)].Reason; out.why == "" || strings.HasPrefix(r, "no answer from any ") {
				out.why = r
			}
		}
	}
	return out, nil
}

// identify reads the units with every built-in Modbus template and says,
// per unit, which read whole and plausible, with what they read.
func (p prober) identify(link string, ids []int) (map[int][]string, error) {
	ts, err := configs.BuiltinTemplates()
	if err != nil {
		return nil, err
	}
	out := map[int][]string{}
	for _, t := range ts {
		if t.Protocol != "modbus" {
			continue
		}
		got, _, err := p.pass(link, t.Name, ids)
		if err != nil {
			return nil, err
		}
		for _, u := range ids {
			m, ok := got[unitID(u)]
			if !ok || len(m.Readings) == 0 || slices.ContainsFunc(m.Readings, func(r model.Reading) bool { return r.Quality != model.Good }) {
				continue
			}
			var vals []string
			for _, r := range m.Readings[:min(3, len(m.Readings))] {
				vals = append(vals, strings.TrimSpace(r.Signal+" "+r.Value.String()+" "+r.Unit))
			}
			out[u] = append(out[u], fmt.Sprintf("%s (%s)", t.Name, strings.Join(vals, ", ")))
		}
	}
	return out, nil
}

// pass reads each unit once with a template, as the gateway would.
func (p prober) pass(link, template string, ids []int) (map[string]model.Message, map[string]model.Health, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 2\nstation: {id: probe, type: police_room}\nhub: {mqtt: {url: \"tcp://127.0.0.1:1883\"}}\nstatus: {listen: \"off\"}\nlinks:\n  - %s\ndevices:\n", link)
	for _, u := range ids {
		fmt.Fprintf(&b, "  - {id: %s, template: %s, link: bus, unit_id: %d, poll: 1h}\n", unitID(u), template, u)
	}
	st, err := configs.Parse("probe", []byte(b.String()))
	if err != nil {
		return nil, nil, err
	}
	// Every unit a try within its timeout, one after the other, and some.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(len(ids)+2)*(p.timeout+100*time.Millisecond)+2*time.Second)
	defer cancel()
	return firstReadings(ctx, drivers.Links(st)[0], p.log)
}

func unitID(u int) string { return "unit-" + strconv.Itoa(u) }

// parseUnits reads "1-32" or "1,2,5" (or both: "1-4,9").
func parseUnits(s string) ([]int, error) {
	var out []int
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(strings.TrimSpace(part), "-")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 1 || b > 247 || a > b {
			return nil, fmt.Errorf("-units %q: want unit ids 1 to 247, as 1-32 or 1,2,5", s)
		}
		for u := a; u <= b; u++ {
			if !slices.Contains(out, u) {
				out = append(out, u)
			}
		}
	}
	return out, nil
}
