package bus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// waitQueued waits until the lock has these many waiters.
func waitQueued(t *testing.T, q *Turns, urgent, normal int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		u, n := q.Waiting()
		if u == urgent && n == normal {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiters %d urgent, %d normal; want %d, %d", u, n, urgent, normal)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestTurns: the wire goes to waiters in the order they came within their
// class, urgent ones (alarm polls, commands) before normal polls, and never
// back to the one that just let it go while others wait.
func TestTurns(t *testing.T) {
	cases := []struct {
		name  string
		order []Priority // the priority of waiter i+1, queued in this order
		want  string     // the order they get the wire
	}{
		{"fifo", []Priority{Poll, Poll, Poll}, "[1 2 3 0]"},
		{"an alarm poll overtakes waiting polls", []Priority{Poll, Poll, AlarmPoll}, "[3 1 2 0]"},
		{"a command too", []Priority{Poll, Command, Poll}, "[2 1 3 0]"},
		{"alarm polls and commands keep their order", []Priority{Poll, Command, AlarmPoll, Command}, "[2 3 4 1 0]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var q Turns
			ctx := context.Background()
			var mu sync.Mutex
			var order []int
			got := func(i int) {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
			}
			q.Lock(ctx, Poll)
			var wg sync.WaitGroup
			urgent, normal := 0, 0
			for i, p := range c.order {
				wg.Go(func() {
					q.Lock(ctx, p)
					got(i + 1)
					q.Unlock()
				})
				if p.urgent() {
					urgent++
				} else {
					normal++
				}
				// Waiter i queues before waiter i+1 starts.
				waitQueued(t, &q, urgent, normal)
			}
			q.Unlock()
			q.Lock(ctx, Poll) // the holder asks again at once: it comes last
			got(0)
			q.Unlock()
			wg.Wait()
			if s := fmt.Sprint(order); s != c.want {
				t.Errorf("the wire went to %s, want %s", s, c.want)
			}
		})
	}
}

// TestTurnsCancel: a waiter whose context ends leaves the queue without
// the wire, and the wire still reaches the others, also when it was handed
// over just as the context ended.
func TestTurnsCancel(t *testing.T) {
	var q Turns
	q.Lock(context.Background(), Poll)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- q.Lock(ctx, Command) }()
	waitQueued(t, &q, 1, 0)
	other := make(chan struct{})
	go func() {
		q.Lock(context.Background(), Poll)
		close(other)
		q.Unlock()
	}()
	waitQueued(t, &q, 1, 1)
	cancel()
	if err := <-errc; err != context.Canceled {
		t.Fatalf("Lock returned %v, want context.Canceled", err)
	}
	waitQueued(t, &q, 0, 1)
	q.Unlock()
	<-other

	// Handed over and cancelled at once: whoever wins, the wire is not
	// lost.
	for range 100 {
		var q Turns
		q.Lock(context.Background(), Poll)
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- q.Lock(ctx, AlarmPoll) }()
		waitQueued(t, &q, 1, 0)
		go cancel()
		q.Unlock()
		if err := <-errc; err == nil {
			q.Unlock()
		}
		done := make(chan struct{})
		go func() { q.Lock(context.Background(), Poll); q.Unlock(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("the wire was lost in a cancelled hand-over")
		}
	}
}

// TestTurnsNoStarvation: a normal poll waiting behind a stream of urgent
// turns gets the wire after MaxUrgentRun of them.
func TestTurnsNoStarvation(t *testing.T) {
	var q Turns
	ctx := context.Background()
	q.Lock(ctx, Poll)
	got := make(chan struct{})
	go func() {
		q.Lock(ctx, Poll)
		close(got)
		q.Unlock()
	}()
	waitQueued(t, &q, 0, 1)
	urgent := 0
	for {
		// An urgent turn is always waiting when the wire is let go.
		done := make(chan struct{})
		go func() {
			q.Lock(ctx, AlarmPoll)
			close(done)
		}()
		waitQueued(t, &q, 1, 1) // the normal poll waits while we hold the wire
		q.Unlock()
		urgentHasIt := false
		select {
		case <-got:
		case <-done:
			// Either the urgent turn came first, or the normal poll had
			// its turn and has passed the wire on already.
			urgentHasIt = true
			select {
			case <-got:
			default:
				urgent++
				if urgent > MaxUrgentRun {
					t.Fatalf("%d urgent turns in a row while a normal poll waited", urgent)
				}
				continue
			}
		}
		if urgent != MaxUrgentRun {
			t.Errorf("the normal poll got the wire after %d urgent turns, want %d", urgent, MaxUrgentRun)
		}
		if !urgentHasIt {
			<-done // the urgent one is next
		}
		q.Unlock()
		return
	}
}
