package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"outpost/configs"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/durable"
	"outpost/gateway/model"
	"outpost/gateway/uplink/influx"
	"outpost/gateway/uplink/mqtt"
)

// CommissioningFile is where `gateway commission` leaves its record in the
// state directory, for the hub.
const CommissioningFile = "commissioning.json"

// check is one line of the commissioning table: a device or a part of the
// hub, and what was found.
type check struct {
	Name     string          `json:"name"`
	Link     string          `json:"link,omitempty"`
	Protocol string          `json:"protocol,omitempty"`
	OK       bool            `json:"ok"`
	Result   string          `json:"result"`
	Readings []model.Reading `json:"readings,omitempty"`
}

// commissioning is the record of one `gateway commission`.
type commissioning struct {
	Station string    `json:"station"`
	Type    string    `json:"station_type"`
	At      time.Time `json:"at"`
	OK      bool      `json:"ok"`
	Devices []check   `json:"devices"`
	Hub     []check   `json:"hub"`
	// Warnings are gateway validate's: what may not work as meant.
	Warnings []string `json:"warnings,omitempty"`
}

func cmdCommission(c *command, args []string, stdout, stderr io.Writer) int {
	fs := c.flags(stderr)
	config := fs.String("config", "", "station file (required)")
	asJSON := fs.Bool("json", false, "print the record as JSON")
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for each device's first reading")
	if ok, code := c.parse(fs, args, stdout); !ok {
		return code
	}
	if *config == "" {
		fmt.Fprintln(stderr, "usage: gateway commission -config STATION.yaml")
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		fmt.Fprintln(stderr, "gateway commission: fix the station file first (gateway validate checks it)")
		return 1
	}
	if err := notWhileRunning(st); err != nil {
		fmt.Fprintln(stderr, "gateway commission:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	rec := commission(ctx, st, *timeout)
	data, _ := json.MarshalIndent(rec, "", "  ")
	if *asJSON {
		stdout.Write(append(data, '\n'))
	} else {
		printCommissioning(stdout, rec)
	}
	path := filepath.Join(st.StateDir, CommissioningFile)
	if err := durable.MkdirAll(st.StateDir); err == nil {
		err = durable.WriteFile(path, append(data, '\n'))
	}
	if err != nil {
		fmt.Fprintf(stderr, "gateway commission: the record was not kept in %s: %v\n", path, err)
	}
	if !rec.OK {
		return 1
	}
	return 0
}

// commission tries every device of the station once and the hub.
func commission(ctx context.Context, st *configs.Station, timeout time.Duration) commissioning {
	rec := commissioning{Station: st.Station.ID, Type: string(st.Station.Type), At: time.Now().UTC(), OK: true, Warnings: warnings(st, nil)}
	log := slog.New(slog.DiscardHandler)
	results := make([][]check, len(st.Links))
	var wg sync.WaitGroup
	for i, l := range drivers.Links(st) {
		wg.Go(func() {
			got, health, err := firstReadings(ctx, l, log)
			heard := heardOnLink(health)
			for _, d := range l.Devices {
				c := check{Name: d.ID, Link: l.Name(), Protocol: l.Protocol()}
				if err != nil {
					c.Result = "the link cannot run: " + err.Error()
				} else {
					m, hasM := got[d.ID]
					h, hasH := health[d.ID]
					c.OK, c.Result = verdict(l.Template(d), m, hasM, h, hasH, heard, timeout)
					c.Readings = m.Readings
				}
				results[i] = append(results[i], c)
			}
		})
	}
	var hub []check
	wg.Go(func() {
		m := check{Name: "hub MQTT", OK: true, Result: "OK: the broker takes the station's connection"}
		if err := mqtt.Check(ctx, st.Hub.MQTT, st.Station, deviceIDs(st)...); err != nil {
			m.OK, m.Result = false, err.Error()
		}
		hub = append(hub, m)
		if st.Hub.Influx != nil {
			ix := check{Name: "hub InfluxDB", OK: true, Result: "OK: InfluxDB takes the station's writes to " + st.Hub.Influx.Bucket}
			if err := influx.Check(ctx, *st.Hub.Influx); err != nil {
				ix.OK, ix.Result = false, err.Error()
			}
			hub = append(hub, ix)
		}
	})
	wg.Wait()
	for _, r := range results {
		rec.Devices = append(rec.Devices, r...)
	}
	rec.Hub = hub
	for _, c := range append(rec.Devices, rec.Hub...) {
		rec.OK = rec.OK && c.OK
	}
	return rec
}

// verdict says, in an installer's words, what a device's first reading
// and health say of it; heard is the other master's requests its link's
// devices heard (see heardOnLink).
func verdict(t *configs.Template, m model.Message, hasM bool, h model.Health, hasH bool, heard uint64, timeout time.Duration) (bool, string) {
	const answers = "OK: it answers (no readings to show)"
	if !hasM {
		switch {
		case hasH && h.State == model.Online:
			return true, but(answers, h, heard)
		case hasH && h.Reason != "":
			return false, also(h.Reason, h, heard)
		}
		return false, fmt.Sprintf("nothing from it within %s: is it powered and wired, and does the station file name it right?", timeout)
	}
	var bad, odd, good []string
	for _, r := range m.Readings {
		switch r.Quality {
		case model.Good:
			good = append(good, shown(r))
		case model.Uncertain:
			odd = append(odd, shown(r))
		default:
			bad = append(bad, r.Signal)
		}
	}
	switch {
	case len(bad) > 0:
		why := "no value for " + strings.Join(bad, ", ")
		if hasH && h.Reason != "" {
			why += ": " + h.Reason
		}
		return false, also(why, h, heard)
	case len(odd) > 0:
		return false, "outside the plausible range (a wrong template, or a failing sensor): " + strings.Join(odd, ", ")
	case hasH && h.State != model.Online:
		// Good values from a device that is not as its template says (a
		// module without the latch the template reads).
		why := "values read, but " + string(h.State)
		if h.Reason != "" {
			why += ": " + h.Reason
		}
		return false, also(why, h, heard)
	}
	if len(good) == 0 {
		return true, but(answers, h, heard)
	}
	// The values, so that an installer sees one that is plausible but
	// wrong (2.3 °C in a warm room: a wrong scale).
	ok := "OK: " + strings.Join(good[:min(len(good), showMax)], ", ")
	if more := len(good) - showMax; more > 0 {
		ok += fmt.Sprintf(", and %d more (gateway read shows them all)", more)
	}
	if u := unlike(t, m); u != "" {
		ok += "; " + u
	}
	return true, but(ok, h, heard)
}

// unlike says which of a device's good values its template reads otherwise
// than a built-in template made from a datasheet reads the same register
// (configs.Template.Unlike), "" when none: a copied register map with a
// wrong scale gives values that look right (2.61 °C for 26.1), so the
// installer is told beside them, not only in a warning below the table.
func unlike(t *configs.Template, m model.Message) string {
	if t == nil || len(t.Unlike) == 0 {
		return ""
	}
	var diffs []string
	for _, sg := range t.Body.Signals() {
		u, ok := t.Unlike[sg.Name]
		if ok && slices.ContainsFunc(m.Readings, func(r model.Reading) bool { return r.Signal == sg.Name && r.Quality == model.Good }) {
			diffs = append(diffs, fmt.Sprintf("%s as %s where the built-in template %s, from that model's datasheet, reads %s", sg.Name, sg.Conversion, u.Template, u.Conversion))
		}
	}
	if len(diffs) == 0 {
		return ""
	}
	return "check against the device's display: template " + t.Name + " reads " + strings.Join(diffs, "; ")
}

// unclean says, after a device's verdict, what its requests met on the way
// to its values ("it met timeouts 2, checksum_errors 1: ..."), "" when
// every one was answered well, and whether that was more than timeouts.
// A device that answered only after timeouts or damaged frames passes,
// since it does answer, but a line that loses or damages frames in the few
// requests of a commissioning will delay an alarm some day: the installer
// should mend it before leaving, and sees so. One that fails says it too
// when frames came damaged, since its reason names only the first failure
// (a timeout, on a noisy line, like that of a wrong address); a silent
// one's reason says what to check already. Where the devices of its link
// heard another master (heard), that is named instead of the wiring.
func unclean(h model.Health, heard uint64) (said string, damaged bool) {
	var met []string
	for _, c := range lineFaults {
		if n := h.Counters[c]; n > 0 {
			met = append(met, fmt.Sprintf("%s %d", c, n))
			damaged = damaged || c != "timeouts"
		}
	}
	if n := h.Counters["other_master"]; n > 0 {
		met = append(met, fmt.Sprintf("other_master %d", n))
	}
	switch {
	case len(met) == 0:
		return "", false
	case heard > 0:
		// The other master's frames, heard by this device's requests or
		// its neighbours', damaged and lost these: no wiring fix mends it.
		return "it met " + strings.Join(met, ", ") + ": another master polls this bus; " + bus.TwoMasters, true
	}
	return "it met " + strings.Join(met, ", ") + ": frames lost or damaged on the way; check the wiring (termination, grounding) or the network", damaged
}

// heardOnLink is how many requests of another master the devices of a
// link heard, by their health.
func heardOnLink(health map[string]model.Health) uint64 {
	var n uint64
	for _, h := range health {
		n += h.Counters["other_master"]
	}
	return n
}

// but adds to a passing verdict what the device's requests met, if any.
func but(ok string, h model.Health, heard uint64) string {
	if u, _ := unclean(h, heard); u != "" {
		return ok + "; but " + u
	}
	return ok
}

// also adds to a failing verdict the damaged frames the device's requests
// met, if any, unless the verdict names another master already (a health
// reason does, after a request's failure).
func also(why string, h model.Health, heard uint64) string {
	if heard > 0 && strings.Contains(why, bus.TwoMasters) {
		return why
	}
	if u, damaged := unclean(h, heard); damaged {
		return why + "; " + u
	}
	return why
}

// lineFaults are the health counters, of any driver, of frames lost or
// damaged between the gateway and a device (docs/hub-contract.md): not
// those of its activity (polls, a panel's frames and tests), its schedule,
// or an answer that came late (late_answers: a timeout to raise).
var lineFaults = []string{"timeouts", "crc_errors", "checksum_errors", "frame_errors", "length_errors",
	"bad_frames", "truncated_lines", "unconfirmed_reads", "io_errors"}

// showMax is how many values a device's line shows.
const showMax = 6

// shown is a reading as an installer reads it: "temperature = 22.5 °C".
func shown(r model.Reading) string {
	s := r.Signal + " = " + clip(r.Value.String(), 24)
	if r.Unit != "" {
		s += " " + r.Unit
	}
	return s
}

// printCommissioning prints the record as a table for an 80-column
// terminal: the result wraps under its own column.
func printCommissioning(w io.Writer, rec commissioning) {
	fmt.Fprintf(w, "Commissioning %s (%s), %s\n\n", rec.Station, rec.Type, rec.At.Local().Format("2006-01-02 15:04"))
	const nameW, linkW = 14, 10
	resultW := 80 - nameW - linkW - 2
	row := func(name, link, result string) {
		lines := wrap(result, resultW)
		for i, l := range lines {
			if i > 0 {
				name, link = "", ""
			}
			fmt.Fprintf(w, "%-*s %-*s %s\n", nameW, clip(name, nameW), linkW, clip(link, linkW), l)
		}
	}
	row("DEVICE", "LINK", "RESULT")
	for _, c := range rec.Devices {
		row(c.Name, c.Link, c.Result)
	}
	for _, c := range rec.Hub {
		row(c.Name, "", c.Result)
	}
	failed := 0
	for _, c := range append(rec.Devices, rec.Hub...) {
		if !c.OK {
			failed++
		}
	}
	if len(rec.Warnings) > 0 {
		fmt.Fprintln(w)
	}
	for _, warning := range rec.Warnings {
		indent := ""
		for _, l := range wrap("warning: "+warning, 80-2) {
			fmt.Fprintln(w, indent+l)
			indent = "  "
		}
	}
	switch {
	case failed == 0 && len(rec.Warnings) > 0:
		fmt.Fprintln(w, "\nAll passed; read the warnings above before leaving the station.")
	case failed == 0:
		fmt.Fprintln(w, "\nAll passed: the station is ready.")
	default:
		fmt.Fprintf(w, "\n%d of %d checks failed: fix them and run gateway commission again.\n", failed, len(rec.Devices)+len(rec.Hub))
	}
}

// wrap breaks s into lines of at most width runes, at spaces where it
// can.
func wrap(s string, width int) []string {
	var lines []string
	for len([]rune(s)) > width {
		r := []rune(s)
		cut := width
		for i := width; i > width/2; i-- {
			if r[i] == ' ' {
				cut = i
				break
			}
		}
		lines = append(lines, strings.TrimRight(string(r[:cut]), " "))
		s = strings.TrimLeft(string(r[cut:]), " ")
	}
	return append(lines, s)
}

func clip(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
