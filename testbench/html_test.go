package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestHTMLReport makes the HTML report of real JSON reports again, as
// `testbench report` does, opens it in a real headless Chromium and
// checks that each plot rendered: its figure holds an SVG of some size,
// with its title, the labels of its series in the legend and, in the
// health timeline, a row for every device. The reports are of real runs
// (testdata/reports/README says how they were made).
func TestHTMLReport(t *testing.T) {
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s: %v (make test-deps installs it)", chromium, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.UserDataDir(t.TempDir()))...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	for _, tc := range []struct {
		report  string
		verdict string
		// plots are the figures wanted, each with texts its SVG must show;
		// the others must be absent.
		plots map[string][]string
	}{{
		report:  "broker-outage.json",
		verdict: "PASS",
		plots: map[string][]string{
			"readings": {"Readings per second", "readings/s at hub", "readings/s served by the devices", "broker down", "load ends"},
			"queue":    {"Gateway queue depth", "mqtt queue", "influx queue", "broker down", "load ends"},
			"health":   {"Device health", "online"},
		},
	}, {
		report:  "steady-police-cube.json",
		verdict: "PASS",
		plots: map[string][]string{
			"readings": {"Readings per second", "readings/s at hub", "readings/s served by the devices", "load ends"},
			"queue":    {"Gateway queue depth", "mqtt queue", "influx queue"},
			"alarms":   {"Alarm latency, device to hub"},
			"health":   {"Device health", "online"},
		},
	}} {
		t.Run(tc.report, func(t *testing.T) {
			src := filepath.Join("testdata", "reports", tc.report)
			rep, err := readReport(src)
			if err != nil {
				t.Fatal(err)
			}
			// Every device has its row; every alarm source its line.
			for dev := range rep.Readings.ByDevice {
				tc.plots["health"] = append(tc.plots["health"], dev)
			}
			if rep.Alarms != nil {
				for src, l := range rep.Alarms.LatencyMS {
					tc.plots["alarms"] = append(tc.plots["alarms"], fmt.Sprintf("%s (%d alarms)", src, l.N))
				}
			}
			out := filepath.Join(t.TempDir(), "report.html")
			if code := cmdReport([]string{src, "-html", out}, slog.New(slog.NewTextHandler(io.Discard, nil))); code != 0 {
				t.Fatalf("testbench report %s -html %s: exit %d", src, out, code)
			}
			if _, err := chromedp.Run(bctx, chromedp.Navigate("file://"+out)); err != nil {
				t.Fatalf("chromium: %v", err)
			}
			page, err := chromedp.Run(bctx, chromedp.Evaluate[shownPage](`({
				verdict: document.getElementById("verdict").textContent,
				plots: Object.fromEntries([...document.querySelectorAll("figure[data-plot]")].map(f => {
					const svg = f.querySelector("svg"), box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
					return [f.dataset.plot, {width: box.width, height: box.height,
						texts: svg ? [...svg.querySelectorAll("text")].map(e => e.textContent) : []}];
				})),
			})`))
			if err != nil {
				t.Fatalf("chromium: %v", err)
			}
			if page.Verdict != tc.verdict {
				t.Errorf("verdict %q, want %q", page.Verdict, tc.verdict)
			}
			if got, want := slices.Sorted(maps.Keys(page.Plots)), slices.Sorted(maps.Keys(tc.plots)); !slices.Equal(got, want) {
				t.Errorf("plots %q, want %q", got, want)
			}
			for id, texts := range tc.plots {
				p, ok := page.Plots[id]
				if !ok {
					continue
				}
				if p.Width < 400 || p.Height < 150 {
					t.Errorf("plot %s is %.0f×%.0f px: not drawn to be read", id, p.Width, p.Height)
				}
				for _, want := range texts {
					if !slices.Contains(p.Texts, want) {
						t.Errorf("plot %s shows no %q; its texts: %s", id, want, strings.Join(p.Texts, " | "))
					}
				}
			}
		})
	}
}

// shownPage is what the browser shows of an HTML report: its verdict and,
// per plot, the size of its SVG and the texts in it.
type shownPage struct {
	Verdict string
	Plots   map[string]struct {
		Width, Height float64
		Texts         []string
	}
}
