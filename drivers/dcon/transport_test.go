package dcon

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"go.bug.st/serial"

	"outpost/drivers"
	"outpost/drivers/bus"
	"outpost/gateway/model"
)

// TestOutOfStep: an answer that is not the command's (here box-1's name,
// owed by a sync that timed out, where its I/O was asked) shows the
// answers are out of step. The I/O answer still on its way must not be
// taken for the next module's: box-2's read must give box-2's inputs, not
// box-1's pressed button. The responder on the pty plays the bus.
func TestOutOfStep(t *testing.T) {
	answers := map[string]string{
		"$01M": "!014050", "$02M": "!024050",
		"$016": "!000300", // LED and siren off; tamper closed, button pressed
		"$026": "!000200", // button not pressed
	}
	var late []byte
	b, heard := onBus(t, 9600, func(i int, cmd string) []byte {
		out := append(late, Command(answers[cmd], true)...)
		late = nil
		if i == 0 {
			// A sync's name answer comes where the I/O was asked; the
			// I/O answer comes late, after the next command.
			out, late = Command(answers["$01M"], true), out
		}
		return out
	})

	_, err := b.ask(b.byID["box-1"], readIO(1), KindReadIO, 100*time.Millisecond)
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Kind != badZeros {
		t.Fatalf("box-1 given its name for I/O: %v, want a frame error (data byte 2 not 00)", err)
	}
	ans, err := b.ask(b.byID["box-2"], readIO(2), KindReadIO, 100*time.Millisecond)
	if err != nil || ans.Data != [3]byte{0x00, 0x02, 0x00} {
		t.Fatalf("box-2: % x, %v; want its own 00 02 00 (not box-1's late 00 03 00)", ans.Data, err)
	}
	if got, want := heard(), []string{"$016", "$02M", "$026"}; !slices.Equal(got, want) {
		t.Errorf("commands %q, want %q: box-2's name asked, to realign", got, want)
	}
}

// TestSyncDamagedName: a sync whose name answer comes with one character
// damaged realigns the bus at once: the command after it is sent without
// waiting out the timeout, and the damaged answer is counted. Two damaged
// characters are not the name answer: the sync waits on for it (a late
// answer, or noise), and fails at its timeout.
func TestSyncDamagedName(t *testing.T) {
	for _, tc := range []struct {
		name     string
		damage   func(name []byte) // damages box-1's name answer with its checksum
		realigns bool              // the sync ends on the damaged answer
		counter  string            // box-1's health counter of the damaged answer
	}{
		{"one character", func(a []byte) { a[4] ^= 0x04 }, true, "checksum_errors"},
		{"its CR", func(a []byte) { a[len(a)-1] ^= 0x01 }, true, "bad_frames"},
		{"two characters", func(a []byte) { a[4] ^= 0x04; a[5] ^= 0x02 }, false, ""}, // the request counts its timeout
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, heard := onBus(t, 38400, func(i int, cmd string) []byte {
				switch cmd {
				case "$016":
					if i == 0 {
						return nil // unanswered: the bus is out of step
					}
					return Command("!000300", true)
				case "$01M":
					a := Command("!014050", true)
					tc.damage(a)
					return a
				}
				return nil
			})
			const timeout = 200 * time.Millisecond
			m := b.byID["box-1"]
			if _, err := b.ask(m, readIO(1), KindReadIO, timeout); !errors.As(err, new(*TimeoutError)) {
				t.Fatalf("first $016: %v, want a timeout", err)
			}
			start := time.Now()
			ans, err := b.ask(m, readIO(1), KindReadIO, timeout)
			took := time.Since(start)
			switch {
			case tc.realigns && (err != nil || ans.Data != [3]byte{0x00, 0x03, 0x00}):
				t.Fatalf("$016 after the sync: % x, %v; want 00 03 00", ans.Data, err)
			case tc.realigns && took >= timeout:
				t.Errorf("$016 after the sync took %v, want less than the %v timeout: the sync waited past its answer", took, timeout)
			case !tc.realigns && !errors.As(err, new(*TimeoutError)):
				t.Fatalf("$016 after the sync: %v, want the sync's timeout", err)
			case !tc.realigns && !strings.Contains(err.Error(), "(10 bytes of a late answer dropped)"):
				t.Errorf("$016 after the sync: %v, want the damaged name answer dropped as a late answer", err)
			}
			want := []string{"$016", "$01M", "$016"}
			if !tc.realigns {
				want = want[:2]
			}
			if got := heard(); !slices.Equal(got, want) {
				t.Errorf("commands %q, want %q", got, want)
			}
			if !tc.realigns {
				return
			}
			m.mu.Lock()
			h, _ := m.health.Observe(bus.Result{Requests: 1})
			m.mu.Unlock()
			if h.Counters[tc.counter] != 1 {
				t.Errorf("counters %v, want %s: 1", h.Counters, tc.counter)
			}
		})
	}
}

// onBus builds a bus of box-1 and box-2 (both with checksum) on a pty whose
// far end answers each command (without its checksum; i counts them from
// 0) with what answer returns, at once. heard gives the commands so far.
func onBus(t *testing.T, baud int, answer func(i int, cmd string) []byte) (b *Bus, heard func() []string) {
	t.Helper()
	st := loadStation(t, t.TempDir(), twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, checksum: true}
  - {id: box-2, template: dcon-panic-box, link: rs485-2, address: 0x02, checksum: true}
`)
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var cmds []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		var acc []byte
		for {
			n, err := master.Read(buf)
			if err != nil {
				return
			}
			acc = append(acc, buf[:n]...)
			for {
				i := bytes.IndexByte(acc, '\r')
				if i < 0 {
					break
				}
				cmd := string(acc[:i-2]) // without its checksum
				acc = acc[i+1:]
				mu.Lock()
				cmds = append(cmds, cmd)
				n := len(cmds) - 1
				mu.Unlock()
				if out := answer(n, cmd); len(out) > 0 {
					master.Write(out)
				}
			}
		}
	}()
	open := func(string, *serial.Mode) (bus.Port, error) {
		return serial.Open(tty.Name(), &serial.Mode{BaudRate: baud})
	}
	b, err = build(drivers.Links(st)[0], open, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	// Once every fd of the pty's device side is closed, the master's Read
	// fails and the responder ends.
	t.Cleanup(func() {
		b.port.Close()
		tty.Close()
		<-done
		master.Close()
	})
	return b, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(cmds)
	}
}

// TestNameUnanswered: a module whose name answers all come damaged is
// degraded with the reason that its name was not read, and the damage,
// not a reason about its I/O, which was never asked.
func TestNameUnanswered(t *testing.T) {
	answers := map[string]string{"$01M": "!0140%0", "$016": "!000300", "$02M": "!024050", "$026": "!000200"}
	b, _ := onBus(t, 38400, func(_ int, cmd string) []byte { return Command(answers[cmd], true) })
	h := runBuilt(t, b).next(t, "box-1", model.KindHealth, 5*time.Second, nil).Health
	const want = `no valid answer to $AAM (read name): bad answer (name: "40%0")`
	if h.State != model.Degraded || h.Reason != want {
		t.Fatalf("box-1's health %s, %q; want degraded, %q", h.State, h.Reason, want)
	}
}
