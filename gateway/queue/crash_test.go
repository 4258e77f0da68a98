package queue

import (
	"bufio"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// The kill test runs this test binary again as a child that appends until
// it is killed. These variables tell the child where and from which record.
const (
	childDirEnv  = "OUTPOST_QUEUE_CHILD_DIR"
	childFromEnv = "OUTPOST_QUEUE_CHILD_FROM"
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(childDirEnv); dir != "" {
		from, _ := strconv.Atoi(os.Getenv(childFromEnv))
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
