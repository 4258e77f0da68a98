package main

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// printSummary writes a table of the runs, a row each, by scenario.
func printSummary(w io.Writer, reps []Report) {
	reps = slices.Clone(reps)
	slices.SortFunc(reps, func(a, b Report) int { return cmp.Compare(a.Scenario, b.Scenario) })
	table := [][]string{{"scenario", "verdict", "duration s", "sent", "at hub MQTT", "in Influx", "lost", "duplicates", "alarm p99 ms", "gateway CPU s", "max RSS MB"}}
	for _, r := range reps {
		rd := r.Readings
		table = append(table, []string{r.Scenario, verdictOf(r.Pass), fmt.Sprintf("%.0f", r.DurationS),
			fmt.Sprint(rd.Sent), fmt.Sprint(rd.AtHubMQTT), fmt.Sprint(rd.InInflux), fmt.Sprint(rd.Lost), fmt.Sprint(rd.Duplicates),
			alarmP99(r.Alarms), fmt.Sprintf("%.1f", r.Gateway.CPUS), fmt.Sprintf("%.1f", r.Gateway.MaxRSSMB)})
	}
	writeTable(w, table)
}

// writeTable writes rows of cells in columns, the first two to the left,
// the figures to the right.
func writeTable(w io.Writer, rows [][]string) {
	width := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, c := range row {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, c := range row {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i < 2 {
				b.WriteString(c + pad + "  ")
			} else {
				b.WriteString(pad + c + "  ")
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
}

func verdictOf(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

// alarmP99 is the p99 latency of each alarm source, "-" without alarms.
func alarmP99(a *alarmReport) string {
	if a == nil || len(a.LatencyMS) == 0 {
		return "-"
	}
	var s []string
	for _, src := range slices.Sorted(maps.Keys(a.LatencyMS)) {
		s = append(s, fmt.Sprintf("%s %.0f", src, a.LatencyMS[src].P99))
	}
	return strings.Join(s, ", ")
}
