package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"outpost/configs"
	"outpost/gateway/pipeline"
	"outpost/gateway/queue"
	"outpost/gateway/status"
)

// statusEvery is how often the running gateway writes its status file;
// a file older than staleAfter means the gateway is not running.
const (
	statusEvery = 2 * time.Second
	staleAfter  = 10 * time.Second
)

// uplinkState says whether an uplink reaches the hub, since when, and why
// not.
type uplinkState func() (connected bool, cause string, since time.Time)

// writeStatus writes the gateway's status file every statusEvery until
// ctx ends, and once more then.
func writeStatus(ctx context.Context, st *configs.Station, queues map[string]*queue.Queue, states map[string]uplinkState,
	dead *pipeline.DeadLetters, log *slog.Logger) {
	started := time.Now().UTC()
	path := status.File(st.StateDir)
	write := func() {
		s := status.Snapshot{Station: st.Station.ID, Type: string(st.Station.Type), Time: time.Now().UTC(), Started: started}
		for _, name := range st.Uplinks() {
			qs := queues[name].Stats()
			a, t := qs.Kept(), qs.Lanes[queue.LaneTelemetry]
			connected, cause, since := states[name]()
			s.Uplinks = append(s.Uplinks, status.Uplink{
				Name: name, Connected: connected, Cause: cause, Since: since.UTC(), DeadLetters: dead.Kept(name),
				Queue: status.Queue{Alarms: a.Records, Telemetry: t.Records, Readings: a.Readings + t.Readings,
					Bytes: a.Bytes + t.Bytes, InMemory: a.Memory, DroppedReadings: t.DroppedReadings, LostAlarms: a.Lost,
					DiskError: diskError(qs)},
			})
		}
		if err := status.Write(path, s); err != nil {
			log.Debug("status file not written", "err", err)
		}
	}
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		write()
		select {
		case <-ctx.Done():
			write()
			return
		case <-t.C:
		}
	}
}

func diskError(s queue.Stats) string {
	if s.WriteFailing {
		return s.WriteError
	}
	return ""
}

func cmdStatus(c *command, args []string, stdout, stderr io.Writer) int {
	flags := c.flags(stderr)
	config := flags.String("config", "", "station file (required)")
	if ok, code := c.parse(flags, args, stdout); !ok {
		return code
	}
	if *config == "" {
		fmt.Fprintln(stderr, "gateway status: -config STATION.yaml is required")
		return 2
	}
	st, err := configs.Load(*config)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	s, err := status.Read(status.File(st.StateDir))
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(stdout, "station %s: the gateway has not run with this station file (no %s)\n", st.Station.ID, status.File(st.StateDir))
		return 1
	}
	if err != nil {
		fmt.Fprintln(stderr, "gateway status:", err)
		return 1
	}
	return printStatus(stdout, s, time.Now())
}

// printStatus prints a status for a person, and returns 0 when the
// gateway runs and reaches every hub store, 1 otherwise.
func printStatus(w io.Writer, s status.Snapshot, now time.Time) int {
	code := 0
	age := now.Sub(s.Time).Round(time.Second)
	fmt.Fprintf(w, "station %s (%s), running since %s\n", s.Station, s.Type, s.Started.Local().Format(time.DateTime))
	if age > staleAfter {
		fmt.Fprintf(w, "NOT RUNNING: the gateway last wrote its status %s ago (%s)\n", age, s.Time.Local().Format(time.DateTime))
		code = 1
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "uplink\thub\tsince\talarms\ttelemetry\treadings\tdropped\tdead letters")
	var notes []string
	for _, u := range s.Uplinks {
		state := "connected"
		if !u.Connected {
			state, code = "DOWN", 1
		}
		q := u.Queue
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\n", u.Name, state, u.Since.Local().Format(time.TimeOnly),
			q.Alarms, q.Telemetry, q.Readings, q.DroppedReadings, u.DeadLetters)
		if u.Cause != "" && !u.Connected {
			notes = append(notes, fmt.Sprintf("%s: %s", u.Name, u.Cause))
		}
		if q.DiskError != "" {
			code = 1
			notes = append(notes, fmt.Sprintf("%s: the disk refuses the queue's writes (%s); %d alarms held in memory, %d lost",
				u.Name, q.DiskError, q.InMemory, q.LostAlarms))
		}
	}
	tw.Flush()
	slices.Sort(notes)
	if len(notes) > 0 {
		fmt.Fprintln(w, "\n"+strings.Join(notes, "\n"))
	}
	return code
}
