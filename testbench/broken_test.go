package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestBrokenExpectationFails runs, for real, a scenario whose expectation
// cannot hold (a tamper alarm from a sensor without a tamper switch):
// the testbench must exit 1, and its report must fail for that reason
// alone, with nothing lost.
func TestBrokenExpectationFails(t *testing.T) {
	t.Parallel() // beside TestFleetOfTwo: each runs its own hub
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	report := filepath.Join(t.TempDir(), "broken.json")
	run := exec.CommandContext(ctx, filepath.Join(binDir(), "testbench"), "run", "testdata/scenarios/broken-expectation.yaml", "-report", report)
	// A failed run keeps its files: here, in the test's own directory.
	run.Env = append(os.Environ(), "TMPDIR="+t.TempDir())
	out, err := run.CombinedOutput()
	if code := run.ProcessState.ExitCode(); code != 1 {
		t.Errorf("testbench run exited %d (%v), want 1; its output:\n%s", code, err, out)
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("no report: %v", err)
	}
	var rep Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	want := "no tamper of th-server reached the hub after fault 0"
	if rep.Pass || len(rep.Failures) != 1 || rep.Failures[0] != want {
		t.Errorf("pass %v, failures %q; want it failed with only %q", rep.Pass, rep.Failures, want)
	}
	if rep.Seed != 1 || rep.Readings.Sent == 0 || rep.Readings.Lost != 0 {
		t.Errorf("seed %d, readings %+v: want seed 1 recorded and the run otherwise sound", rep.Seed, rep.Readings)
	}
}
