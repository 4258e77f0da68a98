package main

import (
	"bytes"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"image/color"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

// The HTML report is one file that reads offline: the summary, then the
// run's timeline drawn as SVG plots (gonum/plot) inlined in the page, with
// no script and nothing fetched. It is made from the JSON report alone, so
// `testbench report` makes it again from a report kept by CI.

// htmlPath is where the HTML report beside a JSON report goes.
func htmlPath(jsonPath string) string {
	return strings.TrimSuffix(jsonPath, ".json") + ".html"
}

// writeHTMLReport writes rep's HTML report to path.
func writeHTMLReport(path string, rep Report) error {
	var b bytes.Buffer
	if err := renderHTML(&b, rep); err != nil {
		return fmt.Errorf("html report of %s: %w", rep.Scenario, err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("html report: %w", err)
	}
	return nil
}

// cmdReport makes the HTML report of a JSON report again.
func cmdReport(args []string, log *slog.Logger) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage()
	}
	in := args[0]
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	out := fs.String("html", htmlPath(in), "where to write the HTML report")
	fs.Parse(args[1:])
	rep, err := readReport(in)
	if err == nil {
		err = writeHTMLReport(*out, rep)
	}
	if err != nil {
		log.Error("report", "err", err)
		return 1
	}
	fmt.Println(*out)
	return 0
}

// readReport reads a JSON report.
func readReport(path string) (Report, error) {
	var rep Report
	b, err := os.ReadFile(path)
	if err != nil {
		return rep, fmt.Errorf("report: %w", err)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		return rep, fmt.Errorf("report %s: %w", path, err)
	}
	return rep, nil
}

// figure is one plot of the page.
type figure struct {
	ID, Caption string
	SVG         template.HTML
}

// renderHTML writes rep as a page.
func renderHTML(w io.Writer, rep Report) error {
	var figs []figure
	if tl := rep.Timeline; tl != nil {
		for _, f := range []struct {
			id, caption string
			draw        func(*Timeline) (*plot.Plot, vg.Length, error)
		}{
			{"readings", "Readings per second: served by the devices, arrived at the hub's MQTT. A dip is the hub not getting them; the rise after it, the gateway's queue draining.", readingsPlot},
			{"queue", "Messages waiting in the gateway's queue for each hub store, from its status file (written every few seconds).", queuePlot},
			{"alarms", "Share of raised alarms that reached the hub within a latency, per source.", alarmsPlot},
			{"health", "Each device's health as the gateway reported it to the hub.", healthPlot},
		} {
			p, h, err := f.draw(tl)
			if err != nil {
				return err
			}
			if p == nil {
				continue
			}
			svg, err := svgOf(p, 9*vg.Inch, h)
			if err != nil {
				return fmt.Errorf("plot %s: %w", f.id, err)
			}
			figs = append(figs, figure{f.id, f.caption, svg})
		}
	}
	return page.Execute(w, struct {
		R       Report
		Figures []figure
	}{rep, figs})
}

// sans is the plots' font (Liberation Sans, metric-compatible with Arial,
// which the page falls back on).
var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

// newPlot is a plot with the page's fonts.
func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text, p.X.Label.Text, p.Y.Label.Text = title, x, y
	p.Title.TextStyle.Font = font.From(sans, 13)
	p.Title.Padding = 6
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(sans, 11)
		a.Tick.Label.Font = font.From(sans, 10)
		a.Tick.Marker = plainTicks
	}
	p.Legend.TextStyle.Font = font.From(sans, 10)
	p.Legend.Top = true
	return p
}

// plainTicks are gonum's ticks labelled 25, not 25.00.
var plainTicks = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = strconv.FormatFloat(ts[i].Value, 'f', -1, 64)
		}
	}
	return ts
})

// timePlot is a plot over the run, 0 to its end, from 0 up.
func timePlot(title, y string, tl *Timeline) *plot.Plot {
	p := newPlot(title, "seconds since the gateway started", y)
	p.X.Min, p.X.Max = 0, max(tl.EndS, 1)
	p.Y.Min = 0
	return p
}

var (
	blue   = color.RGBA{31, 119, 180, 255}
	orange = color.RGBA{255, 127, 14, 255}
	grey   = color.RGBA{140, 140, 140, 255}
	green  = color.RGBA{44, 160, 44, 255}
	amber  = color.RGBA{240, 180, 0, 255}
	red    = color.RGBA{214, 39, 40, 255}
	purple = color.RGBA{148, 103, 189, 255}
	// uplinkColors are the uplinks' lines, in their names' order.
	uplinkColors = []color.Color{blue, orange, purple, green}
	stateColors  = map[string]color.Color{"online": green, "degraded": amber, "offline": red}
)

// faultColor is the shade of a window, or the line of a moment.
func faultColor(w faultWindow) color.Color {
	switch {
	case w.moment() && strings.HasPrefix(w.Action, "kill-gateway"):
		return color.RGBA{60, 60, 60, 255}
	case w.moment() && w.Action == "power-cut":
		return color.RGBA{140, 0, 0, 255}
	case w.moment():
		return color.RGBA{0, 128, 128, 255}
	case strings.HasSuffix(w.Label, " frozen"):
		return color.NRGBA{148, 103, 189, 60}
	case strings.HasSuffix(w.Label, " silent"):
		return color.NRGBA{255, 127, 14, 55}
	}
	return color.NRGBA{214, 39, 40, 45}
}

// drawFaults shades the fault windows from 0 to top, draws the moments as
// dashed lines and the load's end as a dotted one; with legend, each kind
// of fault in the legend once.
func drawFaults(p *plot.Plot, tl *Timeline, top float64, legend bool) error {
	seen := map[string]bool{}
	for _, w := range tl.Faults {
		var thumb plot.Thumbnailer
		if w.moment() {
			l, err := vline(w.FromS, top, faultColor(w), []vg.Length{vg.Points(4), vg.Points(3)})
			if err != nil {
				return err
			}
			p.Add(l)
			thumb = l
		} else {
			poly, err := plotter.NewPolygon(plotter.XYs{{X: w.FromS, Y: 0}, {X: w.ToS, Y: 0}, {X: w.ToS, Y: top}, {X: w.FromS, Y: top}})
			if err != nil {
				return err
			}
			poly.Color, poly.LineStyle.Width = faultColor(w), 0
			p.Add(poly)
			thumb = poly
		}
		if legend && !seen[w.Label] {
			seen[w.Label] = true
			p.Legend.Add(w.Label, thumb)
		}
	}
	if tl.LoadEndS > 0 {
		l, err := vline(tl.LoadEndS, top, grey, []vg.Length{vg.Points(1), vg.Points(2)})
		if err != nil {
			return err
		}
		p.Add(l)
		if legend {
			p.Legend.Add("load ends", l)
		}
	}
	return nil
}

// faultLabels is how many kinds of fault the legend shows, the load's end
// among them.
func faultLabels(tl *Timeline) int {
	labels := map[string]bool{"load ends": tl.LoadEndS > 0}
	for _, w := range tl.Faults {
		labels[w.Label] = true
	}
	n := 0
	for _, on := range labels {
		if on {
			n++
		}
	}
	return n
}

func vline(x, top float64, c color.Color, dashes []vg.Length) (*plotter.Line, error) {
	l, err := plotter.NewLine(plotter.XYs{{X: x, Y: 0}, {X: x, Y: top}})
	if err != nil {
		return nil, err
	}
	l.Color, l.Width, l.Dashes = c, vg.Points(1.2), dashes
	return l, nil
}

// headroom is the top of a plot h high whose data reach hi: room above
// them for a legend of that many entries.
func headroom(hi float64, entries int, h vg.Length) float64 {
	data := h - 1.1*vg.Inch // less the title and the time axis
	legend := vg.Length(entries)*vg.Points(12) + vg.Points(8)
	share := min(float64(legend/data), 0.6)
	return max(hi/(1-share), 1)
}

func readingsPlot(tl *Timeline) (*plot.Plot, vg.Length, error) {
	if len(tl.Hub) == 0 {
		return nil, 0, nil
	}
	hub, served := make(plotter.XYs, len(tl.Hub)), make(plotter.XYs, len(tl.Hub))
	hi := 0.0
	for i, s := range tl.Hub {
		hub[i] = plotter.XY{X: s.T, Y: s.PerS}
		// The simulator's stats are rewritten every second: its rate is
		// taken over two samples, not to show its beat against ours.
		j := max(i-2, 0)
		if dt := s.T - tl.Hub[j].T; dt > 0 {
			served[i] = plotter.XY{X: s.T, Y: float64(s.Sent-tl.Hub[j].Sent) / dt}
		} else {
			served[i] = plotter.XY{X: s.T}
		}
		hi = max(hi, hub[i].Y, served[i].Y)
	}
	p := timePlot("Readings per second", "readings/s", tl)
	const h = 3.4 * vg.Inch
	top := headroom(hi, faultLabels(tl)+2, h)
	p.Y.Max = top
	if err := drawFaults(p, tl, top, true); err != nil {
		return nil, 0, err
	}
	sl, err := plotter.NewLine(served)
	if err != nil {
		return nil, 0, err
	}
	sl.Color, sl.Width, sl.Dashes = grey, vg.Points(1.2), []vg.Length{vg.Points(3), vg.Points(2)}
	hl, err := plotter.NewLine(hub)
	if err != nil {
		return nil, 0, err
	}
	hl.Color, hl.Width = blue, vg.Points(1.8)
	p.Add(sl, hl)
	p.Legend.Add("readings/s served by the devices", sl)
	p.Legend.Add("readings/s at hub", hl)
	return p, h, nil
}

func queuePlot(tl *Timeline) (*plot.Plot, vg.Length, error) {
	if len(tl.Queue) == 0 {
		return nil, 0, nil
	}
	uplinks := map[string]bool{}
	hi := 0.0
	for _, q := range tl.Queue {
		for u, n := range q.Uplinks {
			uplinks[u] = true
			hi = max(hi, float64(n))
		}
	}
	p := timePlot("Gateway queue depth", "messages waiting", tl)
	const h = 3 * vg.Inch
	top := headroom(hi, faultLabels(tl)+len(uplinks), h)
	p.Y.Max = top
	if err := drawFaults(p, tl, top, true); err != nil {
		return nil, 0, err
	}
	for i, u := range slices.Sorted(maps.Keys(uplinks)) {
		xy := make(plotter.XYs, 0, len(tl.Queue))
		for _, q := range tl.Queue {
			if n, ok := q.Uplinks[u]; ok {
				xy = append(xy, plotter.XY{X: q.T, Y: float64(n)})
			}
		}
		l, s, err := plotter.NewLinePoints(xy)
		if err != nil {
			return nil, 0, err
		}
		c := uplinkColors[i%len(uplinkColors)]
		l.Color, l.Width = c, vg.Points(1.6)
		s.Color, s.Radius, s.Shape = c, vg.Points(1.8), draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add(u+" queue", l, s)
	}
	return p, h, nil
}

// alarmsPlot is the latencies' distribution per source, as a CDF.
func alarmsPlot(tl *Timeline) (*plot.Plot, vg.Length, error) {
	if len(tl.Alarms) == 0 {
		return nil, 0, nil
	}
	p := newPlot("Alarm latency, device to hub", "latency (ms)", "alarms within (%)")
	p.Y.Min, p.Y.Max = 0, 100
	p.Legend.Top, p.Legend.Left = false, false
	lats := map[string][]float64{}
	lo, hi := math.Inf(1), 0.0
	for src, as := range tl.Alarms {
		for _, a := range as {
			lats[src] = append(lats[src], max(a.MS, 0.1))
		}
		slices.Sort(lats[src])
		lo, hi = min(lo, lats[src][0]), max(hi, lats[src][len(lats[src])-1])
	}
	if hi/lo > 20 {
		// A few slow ones would squeeze the many fast to the left.
		p.X.Scale, p.X.Tick.Marker = plot.LogScale{}, plot.LogTicks{Prec: -1}
		p.X.Min, p.X.Max = lo/1.2, hi*1.2
	} else {
		p.X.Min = 0
	}
	for i, src := range slices.Sorted(maps.Keys(lats)) {
		lat := lats[src]
		l, s, err := plotter.NewLinePoints(cdf(lat))
		if err != nil {
			return nil, 0, err
		}
		c := uplinkColors[i%len(uplinkColors)]
		l.Color, l.Width, l.StepStyle = c, vg.Points(1.6), plotter.PostStep
		s.Color, s.Radius, s.Shape = c, vg.Points(2), draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add(fmt.Sprintf("%s (%d alarms)", src, len(lat)), l, s)
	}
	return p, 3 * vg.Inch, nil
}

// cdf is the empirical distribution of sorted values: at each, the share
// (in %) of values at or below it.
func cdf(sorted []float64) plotter.XYs {
	xy := plotter.XYs{{X: sorted[0], Y: 0}}
	for i, v := range sorted {
		xy = append(xy, plotter.XY{X: v, Y: 100 * float64(i+1) / float64(len(sorted))})
	}
	return xy
}

// maxHealthRows is how many devices the health plot shows one by one:
// past it, those whose state never changed share a row per state.
const maxHealthRows = 40

// healthRow is a row of the health plot: a device, or devices alike.
type healthRow struct {
	label   string
	changes []healthChange
}

func healthRows(changes []healthChange) []healthRow {
	by := map[string][]healthChange{}
	for _, c := range changes {
		by[c.Device] = append(by[c.Device], c)
	}
	ids := slices.Sorted(maps.Keys(by))
	var rows []healthRow
	steady := map[string][]string{} // state -> devices always in it
	for _, id := range ids {
		if len(ids) > maxHealthRows && len(by[id]) == 1 {
			steady[by[id][0].State] = append(steady[by[id][0].State], id)
			continue
		}
		rows = append(rows, healthRow{id, by[id]})
	}
	for _, st := range slices.Sorted(maps.Keys(steady)) {
		first := steady[st][0]
		rows = append(rows, healthRow{fmt.Sprintf("%d more, %s throughout", len(steady[st]), st), by[first]})
	}
	return rows
}

// healthPlot draws a row per device, coloured by its state over time.
func healthPlot(tl *Timeline) (*plot.Plot, vg.Length, error) {
	if len(tl.Health) == 0 {
		return nil, 0, nil
	}
	rows := healthRows(tl.Health)
	p := timePlot("Device health", "", tl)
	n := float64(len(rows))
	// The faults, shaded behind the rows, are in the legend of the plots
	// above: this one's is the states, in rows of its own at the top.
	if err := drawFaults(p, tl, n, false); err != nil {
		return nil, 0, err
	}
	var ticks plot.ConstantTicks
	legend := map[string]plot.Thumbnailer{}
	for i, row := range rows {
		y := n - float64(i) - 1 // the first row at the top
		ticks = append(ticks, plot.Tick{Value: y + 0.5, Label: row.label})
		for k, c := range row.changes {
			end := tl.EndS
			if k+1 < len(row.changes) {
				end = row.changes[k+1].T
			}
			poly, err := plotter.NewPolygon(plotter.XYs{{X: c.T, Y: y + 0.15}, {X: end, Y: y + 0.15}, {X: end, Y: y + 0.85}, {X: c.T, Y: y + 0.85}})
			if err != nil {
				return nil, 0, err
			}
			poly.Color, poly.LineStyle.Width = stateColor(c.State), 0
			p.Add(poly)
			legend[c.State] = poly
		}
	}
	for _, st := range slices.SortedFunc(maps.Keys(legend), byState) {
		p.Legend.Add(st, legend[st])
	}
	const row = 0.3 * vg.Inch
	extra := math.Ceil(float64((vg.Length(len(legend))*vg.Points(12) + vg.Points(6)) / row))
	p.Y.Max = n + extra
	p.Y.Tick.Marker = ticks
	p.Y.Tick.Length = 0
	return p, vg.Length(n+extra)*row + 1.1*vg.Inch, nil
}

// byState orders health states from good to bad, others after.
func byState(a, b string) int {
	rank := func(s string) int {
		if i := slices.Index([]string{"online", "degraded", "offline"}, s); i >= 0 {
			return i
		}
		return 3
	}
	return cmp.Or(cmp.Compare(rank(a), rank(b)), cmp.Compare(a, b))
}

func stateColor(state string) color.Color {
	if c, ok := stateColors[state]; ok {
		return c
	}
	return grey
}

// svgOf renders p as an SVG element to inline in the page.
func svgOf(p *plot.Plot, w, h vg.Length) (template.HTML, error) {
	c := vgsvg.New(w, h)
	p.Draw(draw.New(c))
	var b bytes.Buffer
	if _, err := c.WriteTo(&b); err != nil {
		return "", err
	}
	svg := b.String()
	i := strings.Index(svg, "<svg")
	if i < 0 {
		return "", fmt.Errorf("no <svg> in what vgsvg wrote")
	}
	return template.HTML(svg[i:]), nil // the XML prolog has no place in HTML
}

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"verdict": verdictOf,
	"f1":      func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"sorted":  func(m map[string]latency) []string { return slices.Sorted(maps.Keys(m)) },
}).Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{verdict .R.Pass}} {{.R.Scenario}}: testbench report</title>
<style>
body { font-family: "Liberation Sans", Arial, Helvetica, sans-serif; margin: 1.5rem auto; max-width: 1000px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin: 0 0 .3rem; }
.verdict { display: inline-block; padding: .1rem .6rem; border-radius: .3rem; color: #fff; font-weight: bold; margin-right: .5rem; }
.PASS { background: #2ca02c; } .FAIL { background: #d62728; }
.meta { color: #555; margin-bottom: 1rem; }
.failures { border-left: 4px solid #d62728; background: #fdecea; padding: .5rem 1rem; }
.failures li { margin: .2rem 0; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
th, td { text-align: right; padding: .25rem .7rem; border-bottom: 1px solid #ddd; }
th:first-child, td:first-child { text-align: left; }
td.bad { color: #d62728; font-weight: bold; }
figure.plot { margin: 1.5rem 0; }
figure.plot svg { width: 100%; height: auto; }
figure.plot svg text { font-family: "Liberation Sans", Arial, Helvetica, sans-serif !important; }
figcaption { color: #555; font-size: .9rem; }
details { margin: .5rem 0; }
</style>
</head>
<body>
<h1><span class="verdict {{verdict .R.Pass}}" id="verdict">{{verdict .R.Pass}}</span>{{.R.Scenario}}</h1>
<div class="meta">seed {{.R.Seed}} · ran {{f1 .R.DurationS}} s · gateway restarted {{.R.Gateway.Restarts}} times</div>
{{if .R.Failures}}<div class="failures" id="failures"><strong>What failed</strong><ul>{{range .R.Failures}}<li>{{.}}</li>{{end}}</ul></div>
{{else}}<p>Everything the scenario expects held.</p>{{end}}
<table id="summary">
<tr><th>readings</th><th>sent</th><th>at hub MQTT</th><th>in InfluxDB</th><th>lost</th><th>duplicates</th><th>historical</th></tr>
{{with .R.Readings}}<tr><td></td><td>{{.Sent}}</td><td>{{.AtHubMQTT}}</td><td>{{.InInflux}}</td><td{{if .Lost}} class="bad"{{end}}>{{.Lost}} (MQTT {{.LostMQTT}}, InfluxDB {{.LostInflux}})</td><td>{{.Duplicates}}</td><td>{{.Historical}}</td></tr>{{end}}
</table>
<table id="counts">
<tr><th></th><th>served</th><th>at hub</th><th>gateway's own</th></tr>
{{with .R.Events}}<tr><td>events</td><td>{{.Served}}</td><td{{if ne .Served .AtHub}} class="bad"{{end}}>{{.AtHub}}</td><td>{{.Gateway}}</td></tr>{{end}}
</table>
{{with .R.Alarms}}<table id="alarm-latency">
<tr><th>alarms</th><th>sent</th><th>delivered</th><th>lost</th><th>duplicates</th></tr>
<tr><td></td><td>{{.Sent}}</td><td>{{.Delivered}}</td><td{{if .Lost}} class="bad"{{end}}>{{.Lost}}</td><td>{{.Duplicates}}</td></tr>
<tr><th>latency, ms</th><th>n</th><th>p50</th><th>p99</th><th>max</th></tr>
{{$l := .LatencyMS}}{{range sorted $l}}{{$x := index $l .}}<tr><td>{{.}}</td><td>{{$x.N}}</td><td>{{f1 $x.P50}}</td><td>{{f1 $x.P99}}</td><td>{{f1 $x.Max}}</td></tr>{{end}}
</table>{{end}}
<table id="gateway">
<tr><th>gateway</th><th>CPU s</th><th>max RSS MB</th><th>steady CPU %</th><th>health messages</th></tr>
<tr><td></td><td>{{f1 .R.Gateway.CPUS}}</td><td>{{f1 .R.Gateway.MaxRSSMB}}</td><td>{{with .R.Gateway.SteadyCPUPercent}}{{f1 .}}{{else}}–{{end}}</td><td>{{.R.Health}}</td></tr>
</table>
{{with .R.Drain}}<p id="drain">Drain of a backlog of {{.Backlog}} readings: {{printf "%.0f" .RateMQTT}} readings/s into MQTT ({{f1 .SecondsMQTT}} s), {{printf "%.0f" .RateInflux}} into InfluxDB ({{f1 .SecondsInflux}} s){{if .Target}}; target {{printf "%.0f" .Target}}/s met: {{.TargetMet}}{{end}}.</p>{{end}}
{{with .R.Polls}}<p id="polls">Polls over {{printf "%.0f" .WindowS}} s: every device that is not silent at {{f1 .MinPercent}}% or more of its configured rate (lowest: {{.Slowest}}).</p>{{end}}
{{if .R.Faults}}<details id="faults"><summary>{{len .R.Faults}} faults played (seconds since the load began)</summary><ul>{{range .R.Faults}}<li>{{.}}</li>{{end}}</ul></details>{{end}}
{{range .Figures}}<figure class="plot" id="plot-{{.ID}}" data-plot="{{.ID}}">
{{.SVG}}
<figcaption>{{.Caption}}</figcaption>
</figure>
{{else}}<p>This report has no timeline.</p>{{end}}
</body>
</html>
`))
