package dcon

import (
	"bytes"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/creack/pty"
	"go.bug.st/serial"

	"outpost/drivers"
	"outpost/drivers/bus"
)

// TestOutOfStep: an answer that is not the command's (here box-1's name,
// owed by a sync that timed out, where its I/O was asked) shows the
// answers are out of step. The I/O answer still on its way must not be
// taken for the next module's: box-2's read must give box-2's inputs, not
// box-1's pressed button. The responder on the pty plays the bus.
func TestOutOfStep(t *testing.T) {
	st := loadStation(t, t.TempDir(), twoModules, `  - {id: box-1, template: dcon-panic-box, link: rs485-2, address: 0x01, checksum: true}
  - {id: box-2, template: dcon-panic-box, link: rs485-2, address: 0x02, checksum: true}
`)
	master, tty, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	answers := map[string]string{
		"$01M": "!014050", "$02M": "!024050",
		"$016": "!000300", // LED and siren off; tamper closed, button pressed
		"$026": "!000200", // button not pressed
	}
	var mu sync.Mutex
	var heard []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		var late []byte
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
				heard = append(heard, cmd)
				first := len(heard) == 1
				mu.Unlock()
				out := append(late, Command(answers[cmd], true)...)
				late = nil
				if first {
					// A sync's name answer comes where the I/O was asked;
					// the I/O answer comes late, after the next command.
					out, late = Command(answers["$01M"], true), out
				}
				master.Write(out)
			}
		}
	}()
	// Once every fd of the pty's device side is closed, the master's Read
	// fails and the responder ends.
	var b *Bus
	defer func() {
		if b != nil {
			b.port.Close()
		}
		tty.Close()
		<-done
		master.Close()
	}()
	open := func(string, *serial.Mode) (bus.Port, error) {
		return serial.Open(tty.Name(), &serial.Mode{BaudRate: 9600})
	}
	b, err = build(drivers.Links(st)[0], open, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	_, err = b.ask(b.byID["box-1"], readIO(1), KindReadIO, 100*time.Millisecond)
	var fe *FrameError
	if !errors.As(err, &fe) || fe.Kind != badZeros {
		t.Fatalf("box-1 given its name for I/O: %v, want a frame error (data byte 2 not 00)", err)
	}
	ans, err := b.ask(b.byID["box-2"], readIO(2), KindReadIO, 100*time.Millisecond)
	if err != nil || ans.Data != [3]byte{0x00, 0x02, 0x00} {
		t.Fatalf("box-2: % x, %v; want its own 00 02 00 (not box-1's late 00 03 00)", ans.Data, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got, want := heard, []string{"$016", "$02M", "$026"}; !slices.Equal(got, want) {
		t.Errorf("commands %q, want %q: box-2's name asked, to realign", got, want)
	}
}
