package dcon

import (
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	dc "outpost/configs/dcon"
	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// TestRun: the reads that confirm a change of a module's I/O are the
// module's, across the calls of its polls and alarm polls, for runFor at
// most; the state last confirmed is confirmed again by one call's reads;
// with the checksum one read confirms, two when the outputs changed.
func TestRun(t *testing.T) {
	released, pressed := State{In: 0x0F}, State{In: 0x0E}
	ledOn, ledOnPressed := State{In: 0x0F, Out: 0x01}, State{In: 0x0E, Out: 0x01}
	type step struct {
		call  int // the call of state the read is made in; calls interleave
		s     State
		after time.Duration // since the step before
		// want
		sure, again, broke bool
	}
	for _, tc := range []struct {
		name     string
		checksum bool
		steps    []step
	}{
		{"three alike confirm", false, []step{
			{s: pressed}, {s: pressed, after: 10 * time.Millisecond}, {s: pressed, after: 10 * time.Millisecond, sure: true},
		}},
		{"a change goes on across calls", false, []step{
			// Two reads at the end of one alarm poll's budget, one at
			// the next alarm poll, 250 ms later.
			{s: pressed}, {s: pressed, after: 30 * time.Millisecond}, {call: 1, s: pressed, after: 250 * time.Millisecond, sure: true},
		}},
		{"the confirmed state takes one call's reads", false, []step{
			{s: released}, {s: released}, {s: released, sure: true},
			// Alarm polls read it once each; a poll then needs three
			// reads of its own (the button may have been pressed since
			// the alarm polls' reads), and theirs between its reads do
			// not break it.
			{call: 1, s: released, again: true}, {call: 2, s: released, again: true},
			{call: 3, s: released, again: true}, {call: 3, s: released, again: true},
			{call: 4, s: released, again: true},
			{call: 3, s: released, again: true, sure: true},
		}},
		{"a change after a confirmed state starts a new run", false, []step{
			{s: pressed}, {s: pressed}, {s: pressed, sure: true},
			{call: 1, s: released}, {call: 1, s: released}, {call: 1, s: released, sure: true},
		}},
		{"another state breaks the run", false, []step{
			{s: pressed}, {s: pressed}, {s: released, broke: true}, {s: pressed, broke: true}, {s: pressed}, {s: pressed, sure: true},
		}},
		{"a run that began too long ago is dropped", false, []step{
			{s: pressed}, {call: 1, s: pressed, after: runFor / 2}, {call: 2, s: pressed, after: runFor/2 + time.Millisecond},
			{call: 2, s: pressed, after: 10 * time.Millisecond}, {call: 2, s: pressed, after: 10 * time.Millisecond, sure: true},
		}},
		{"the checksum confirms one read", true, []step{
			{s: pressed, sure: true}, {call: 1, s: released, sure: true},
		}},
		{"with the checksum, outputs not confirmed take two", true, []step{
			{s: released, sure: true},
			// One answer shows the LED on (damage that cancels in the
			// sum); the next shows what the module holds.
			{call: 1, s: ledOn}, {call: 1, s: released, again: true, sure: true, broke: true},
			// A command switched it on: two answers alike.
			{call: 2, s: ledOn}, {call: 2, s: ledOn, sure: true},
			{call: 3, s: ledOnPressed, sure: true},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &module{set: &dc.Device{Checksum: tc.checksum}}
			at := time.Now()
			type alike struct {
				s State
				n int
			}
			mine := map[int]alike{} // each call's reads alike in a row
			for i, st := range tc.steps {
				at = at.Add(st.after)
				if c := mine[st.call]; c.n > 0 && c.s == st.s {
					mine[st.call] = alike{st.s, c.n + 1}
				} else {
					mine[st.call] = alike{st.s, 1}
				}
				sure, again, broke := m.read(st.s, at, mine[st.call].n)
				got, want := fmt.Sprintf("sure=%v again=%v broke=%v", sure, again, broke), fmt.Sprintf("sure=%v again=%v broke=%v", st.sure, st.again, st.broke)
				if got != want {
					t.Fatalf("read %d (call %d, %04X): %s, want %s", i+1, st.call, st.s.In, got, want)
				}
			}
		})
	}
}

// TestResultWhy: the failure a poll that got no valid answer is reported
// with is the one that says most: the port's, else the first damaged
// answer (the module is there, the line damages), else the first timeout.
func TestResultWhy(t *testing.T) {
	timeout := &TimeoutError{After: 30 * time.Millisecond}
	checksum := &FrameError{Kind: badChecksum, Detail: "got 3A, want 3B"}
	length := &FrameError{Kind: badLength, Detail: `"!0F" `}
	port := &bus.LinkDownError{Err: errors.New("open /dev/ttyUSB0: no such file or directory")}
	for _, tc := range []struct {
		name  string
		fails []error
		want  error
	}{
		{"timeouts", []error{timeout, timeout}, timeout},
		{"a damaged answer after a timeout", []error{timeout, checksum, timeout}, checksum},
		{"the first damaged answer", []error{length, checksum}, length},
		{"the port", []error{checksum, port, timeout}, port},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r result
			for _, err := range tc.fails {
				r.fail(err)
			}
			if r.why != tc.want {
				t.Errorf("why = %v, want %v", r.why, tc.want)
			}
		})
	}
}

// TestLatchedPressTime: a press only the latch saw is stamped with the
// latch's read, or just after the last message when a poll published
// after the latch was read: never with that message's time, as InfluxDB
// keeps one point of a device at a time, and the press would overwrite
// the poll's values there.
func TestLatchedPressTime(t *testing.T) {
	st := loadStation(t, t.TempDir(), twoModules, `  - {id: box-1, template: dcon-panic-box-latched, link: rs485-2, address: 0x01, checksum: true}
`)
	latchRead := time.Date(2026, 12, 3, 8, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name      string
		published time.Time // the last message's time
		want      time.Time
	}{
		{"the latch read after the last message", latchRead.Add(-time.Second), latchRead},
		{"a poll published after the latch's read", latchRead.Add(3 * time.Millisecond), latchRead.Add(3*time.Millisecond + time.Nanosecond)},
		{"a poll's read at the same time", latchRead, latchRead.Add(time.Nanosecond)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := build(drivers.Links(st)[0], nil, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}
			m := b.byID["box-1"]
			var sent []model.Message
			p := &poller{b: b, m: m, log: slog.New(slog.DiscardHandler), emit: func(msg model.Message) error {
				sent = append(sent, msg)
				return nil
			}}
			// Released, no tamper (its input is active low).
			m.published, m.pubAt = m.readings(&reading{State: State{In: 0b10}, at: tc.published}), tc.published
			m.mu.Lock()
			p.latchedPress(0b01, latchRead)
			m.mu.Unlock()
			if len(sent) != 1 {
				t.Fatalf("%d messages, want the press", len(sent))
			}
			if got := sent[0].Time; !got.Equal(tc.want) {
				t.Errorf("the press is stamped %s, want %s (the last message %s)", got.Format(time.RFC3339Nano), tc.want.Format(time.RFC3339Nano), tc.published.Format(time.RFC3339Nano))
			}
			if r := sent[0].Readings[0]; r.Signal != "pressed" || !r.Value.Equal(model.Bool(true)) {
				t.Errorf("first reading %+v, want pressed true", r)
			}
		})
	}
}
