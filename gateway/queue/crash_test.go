package queue

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// The kill test runs this test binary again as a child that appends until
// it is killed. These variables tell the child where and from which record.
const (
	childDirEnv  = "OUTPOST_QUEUE_CHILD_DIR"
	childFromEnv = "OUTPOST_QUEUE_CHILD_FROM"
	// childReadersEnv has the child read and acknowledge with two readers
	// while it appends (see readUntilKilled).
	childReadersEnv = "OUTPOST_QUEUE_CHILD_READERS"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		from, _ := strconv.Atoi(os.Getenv(childFromEnv))
		if os.Getenv(childReadersEnv) != "" {
			readUntilKilled(dir, from)
		}
		appendUntilKilled(dir, from)
		os.Exit(3) // not reached: the parent kills us
	}
	os.Exit(m.Run())
}

// appendUntilKilled appends telemetry record i, and alarm record i when i
// is a multiple of 7, with the default options, and prints i once both
// Appends returned.
func appendUntilKilled(dir string, from int) {
	q, err := Open(dir, DefaultOptions(), slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	var line []byte
	for i := from; ; i++ {
		if err := q.Append(LaneTelemetry, rec(i)); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		if i%7 == 0 {
			if err := q.Append(LaneAlarm, rec(i)); err != nil {
				fmt.Fprintln(os.Stderr, "child:", err)
				os.Exit(2)
			}
		}
		line = strconv.AppendInt(line[:0], int64(i), 10)
		line = append(line, '\n')
		if _, err := os.Stdout.Write(line); err != nil {
			os.Exit(2)
		}
	}
}

// TestKillDuringAppend kills a child with SIGKILL while it appends, three
// times, and checks that every record the child reported as appended is in
// the queue, in order, with nothing missing or repeated before it.
func TestKillDuringAppend(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(uint64(os.Getpid()), 7))
	next := 0 // the next telemetry record number the queue should hold
	var alarmsReported []int
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childDirEnv+"="+dir, childFromEnv+"="+strconv.Itoa(next))
		cmd.Stderr = testWriter{t}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := 200 + r.IntN(3000)
		sc := bufio.NewScanner(out)
		last, seen := next-1, 0
		for sc.Scan() {
			n, err := strconv.Atoi(sc.Text())
			if err != nil || n != last+1 {
				t.Fatalf("round %d: child printed %q after %d", round, sc.Text(), last)
			}
			last = n
			if n%7 == 0 {
				alarmsReported = append(alarmsReported, n)
			}
			if seen++; seen == killAfter {
				if err := cmd.Process.Kill(); err != nil { // SIGKILL
					t.Fatal(err)
				}
			}
		}
		err = cmd.Wait()
		if seen < killAfter {
			t.Fatalf("round %d: child ended after %d records: %v", round, seen, err)
		}
		t.Logf("round %d: killed after record %d was reported (%v)", round, last, err)

		q := open(t, dir, testOpts)
		st := q.Stats()
		alarms, tel := drain(t, q, 1000, false)
		if len(tel) < last+1 {
			t.Fatalf("round %d: %d telemetry records, but the child reported %d as appended", round, len(tel), last)
		}
		checkSeq(t, fmt.Sprintf("round %d telemetry", round), tel, 0, len(tel))
		// Every reported alarm is there, in order; an alarm of a record
		// not yet reported may be missing (the kill came between the two
		// Appends), and then the next child does not append it.
		for i, j := 0, 0; i < len(alarmsReported); i++ {
			for j < len(alarms) && alarms[j] < alarmsReported[i] {
				j++
			}
			if j == len(alarms) || alarms[j] != alarmsReported[i] {
				t.Fatalf("round %d: reported alarm %d is missing from %v", round, alarmsReported[i], short(alarms))
			}
		}
		for i := 1; i < len(alarms); i++ {
			if alarms[i] <= alarms[i-1] {
				t.Fatalf("round %d: alarms out of order: %d after %d", round, alarms[i], alarms[i-1])
			}
		}
		t.Logf("round %d: %d telemetry and %d alarm records; torn bytes cut %d", round, len(tel), len(alarms), st.TornBytes)
		next = len(tel)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

// readUntilKilled appends telemetry records from from on, printing "a N"
// once record N's Append returned, while the readers mqtt (batches of up
// to 50) and influx (batches of up to 3, so it falls behind) take and
// acknowledge them, each printing "R> N" before it acknowledges a batch
// that ends with record N and "R= N" after.
func readUntilKilled(dir string, from int) {
	opt := DefaultOptions()
	opt.Readers = twoReaders.Readers
	q, err := Open(dir, opt, slog.New(slog.NewTextHandler(os.Stderr, nil)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		os.Exit(2)
	}
	say := func(format string, args ...any) {
		if _, err := fmt.Fprintf(os.Stdout, format+"\n", args...); err != nil {
			os.Exit(2)
		}
	}
	for _, c := range []struct {
		name string
		max  int
	}{{"mqtt", 50}, {"influx", 3}} {
		r := q.Reader(c.name)
		go func() {
			for {
				b, err := r.Next(context.Background(), c.max)
				if err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
				last, _ := strconv.Atoi(string(b.Entries[len(b.Entries)-1].Data[4:12]))
				say("%s> %d", c.name, last)
				if err := r.Ack(b); err != nil {
					fmt.Fprintln(os.Stderr, "child:", err)
					os.Exit(2)
				}
				say("%s= %d", c.name, last)
			}
		}()
	}
	for i := from; ; i++ {
		if err := q.Append(LaneTelemetry, rec(i)); err != nil {
			fmt.Fprintln(os.Stderr, "child:", err)
			os.Exit(2)
		}
		say("a %d", i)
	}
}

// TestKillWhileReadersAck kills a child with SIGKILL while it appends and
// its two readers take and acknowledge records at different speeds, three
// times, and checks for each reader that what it gets after the restart
// starts after the last batch it reported acknowledged and no later than
// the one after the last it was about to acknowledge, and runs on, without
// a gap, past the last record reported appended.
func TestKillWhileReadersAck(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(os.Getpid()), 9))
	next := 0
	for round := range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childDirEnv+"="+dir, childFromEnv+"="+strconv.Itoa(next), childReadersEnv+"=1")
		cmd.Stderr = testWriter{t}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		killAfter := next + 500 + rng.IntN(5000)
		appended := next - 1
		acking, acked := map[string]int{"mqtt": -1, "influx": -1}, map[string]int{"mqtt": -1, "influx": -1}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var who string
			var n int
			if _, err := fmt.Sscan(sc.Text(), &who, &n); err != nil {
				t.Fatalf("round %d: child printed %q", round, sc.Text())
			}
			switch {
			case who == "a":
				if n != appended+1 {
					t.Fatalf("round %d: child appended %d after %d", round, n, appended)
				}
				appended = n
				if n == killAfter {
					if err := cmd.Process.Kill(); err != nil { // SIGKILL
						t.Fatal(err)
					}
				}
			case strings.HasSuffix(who, ">"):
				acking[strings.TrimSuffix(who, ">")] = n
			case strings.HasSuffix(who, "="):
				acked[strings.TrimSuffix(who, "=")] = n
			}
		}
		err = cmd.Wait()
		if appended < killAfter {
			t.Fatalf("round %d: child ended after record %d: %v", round, appended, err)
		}
		t.Logf("round %d: killed after record %d was appended; mqtt acknowledged %d, influx %d (%v)", round, appended, acked["mqtt"], acked["influx"], err)

		q := open(t, dir, twoReaders)
		total := 0
		for _, name := range twoReaders.Readers {
			_, tel := drain(t, q.Reader(name), 1000, true)
			if len(tel) == 0 {
				if acking[name] < appended {
					t.Fatalf("round %d: %s gets nothing, but was about to acknowledge only up to %d of %d", round, name, acking[name], appended)
				}
				continue
			}
			first, last := tel[0], tel[len(tel)-1]
			if first <= acked[name] || first > acking[name]+1 && first > acked[name]+1 {
				t.Fatalf("round %d: %s starts again at %d, after acknowledging %d (about to acknowledge %d)", round, name, first, acked[name], acking[name])
			}
			checkSeq(t, fmt.Sprintf("round %d %s", round, name), tel, first, first+len(tel))
			if last < appended {
				t.Fatalf("round %d: %s ends at %d, but %d was appended", round, name, last, appended)
			}
			next = max(next, last+1)
			total += len(tel)
		}
		t.Logf("round %d: %d records delivered again or for the first time", round, total)
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
