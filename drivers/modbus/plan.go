package modbus

import (
	"fmt"
	"sort"
	"time"

	mb "outpost/configs/modbus"
)

// Protocol limits of one read request.
const (
	MaxRegisters = 125  // registers per read of input or holding registers
	MaxBits      = 2000 // bits per read of coils or discrete inputs
)

// Request is one planned read: Count entries (registers or bits) of Table
// from Start, covering the template's registers whose indexes are Signals.
type Request struct {
	Table   mb.Table
	Start   int
	Count   int
	Signals []int
}

func (r Request) String() string {
	return fmt.Sprintf("%s %d-%d", r.Table, r.Start, r.Start+r.Count-1)
}

// Cost prices a read request for the planner. A request of n entries costs
// Overhead plus the bytes it moves (request and response) times Char.
type Cost struct {
	// Overhead is paid once per request: framing bytes, the silences
	// around frames and the device's turnaround on a serial bus; the round
	// trip on TCP.
	Overhead time.Duration
	// Char is the time of one byte on the wire; 0 on TCP, where bytes are
	// free next to a round trip.
	Char time.Duration
}

// Framing of an RTU read: the request is 8 bytes (unit, function, address,
// quantity, CRC), the response 5 plus the data (unit, function, byte count,
// CRC).
const (
	rtuRequestBytes  = 8
	rtuResponseBytes = 5
)

// tcpRoundTrip is what a TCP request is assumed to cost.
const tcpRoundTrip = time.Millisecond

// Silence is the inter-frame silence of an RTU bus: 3.5 character times,
// and a fixed 1.75 ms above 19200 baud as the serial line specification
// recommends.
func Silence(b *mb.RTU) time.Duration {
	if b.Baud > 19200 {
		return 1750 * time.Microsecond
	}
	return b.CharTime() * 7 / 2
}

// BusCost prices requests on an RTU bus.
func BusCost(b *mb.RTU) Cost {
	c := b.CharTime()
	return Cost{
		Overhead: time.Duration(rtuRequestBytes+rtuResponseBytes)*c + 2*Silence(b) + b.Turnaround,
		Char:     c,
	}
}

// EndpointCost prices requests to a TCP endpoint: a round trip each, bytes
// free, so the planner merges whenever the template allows.
func EndpointCost(*mb.TCP) Cost {
	return Cost{Overhead: tcpRoundTrip}
}

// dataBytes is how many response data bytes a read of n entries moves.
func dataBytes(t mb.Table, n int) int {
	if t.IsBits() {
		return (n + 7) / 8
	}
	return 2 * n
}

// Request is the cost of reading n entries of table t.
func (c Cost) Request(t mb.Table, n int) time.Duration {
	return c.Overhead + time.Duration(dataBytes(t, n))*c.Char
}

// WireTime is the total cost of a plan.
func (c Cost) WireTime(reqs []Request) time.Duration {
	var d time.Duration
	for _, r := range reqs {
		d += c.Request(r.Table, r.Count)
	}
	return d
}

var tableOrder = []mb.Table{mb.Coil, mb.Discrete, mb.Input, mb.Holding}

// unit is a run of signals whose spans overlap: the planner never splits it.
type unit struct {
	start, end int // [start, end)
	signals    []int
}

// Plan groups a template's registers into read requests that cost least
// under c: a signal is never split across requests, a request stays within
// the protocol's limits, and requests span unmapped addresses only when the
// template says gaps are readable. Requests come table by table (coils,
// discrete inputs, input registers, holding registers), by address.
func Plan(t *mb.Template, c Cost) ([]Request, error) {
	var out []Request
	for _, table := range tableOrder {
		var idx []int
		for i := range t.Registers {
			if t.Registers[i].Table == table {
				idx = append(idx, i)
			}
		}
		if len(idx) == 0 {
			continue
		}
		limit := MaxRegisters
		if table.IsBits() {
			limit = MaxBits
		}
		sort.SliceStable(idx, func(a, b int) bool {
			return t.Registers[idx[a]].Address < t.Registers[idx[b]].Address
		})
		var units []unit
		for _, i := range idx {
			r := &t.Registers[i]
			span := r.Span()
			if span <= 0 {
				return nil, fmt.Errorf("signal %s: %s on %s table has no width", r.Signal, r.Type, table)
			}
			if r.Address < 0 || r.Address+span > 65536 {
				return nil, fmt.Errorf("signal %s: addresses %d-%d outside 0-65535", r.Signal, r.Address, r.Address+span-1)
			}
			if n := len(units); n > 0 && r.Address < units[n-1].end {
				u := &units[n-1]
				u.end = max(u.end, r.Address+span)
				u.signals = append(u.signals, i)
			} else {
				units = append(units, unit{start: r.Address, end: r.Address + span, signals: []int{i}})
			}
		}
		for _, u := range units {
			if u.end-u.start > limit {
				return nil, fmt.Errorf("signal %s: %d %s entries exceed the %d a request may read",
					t.Registers[u.signals[0]].Signal, u.end-u.start, table, limit)
			}
		}
		out = append(out, partition(table, units, limit, t.ReadGaps, c)...)
	}
	return out, nil
}

// partition splits units (sorted, disjoint) into consecutive groups, one
// request each, of least total cost, by dynamic programming over prefixes.
func partition(table mb.Table, units []unit, limit int, gaps bool, c Cost) []Request {
	n := len(units)
	best := make([]time.Duration, n+1) // best[j]: cost of units[:j]
	from := make([]int, n+1)           // first unit of the last group
	reqs := make([]int, n+1)           // requests in that plan (ties)
	for j := 1; j <= n; j++ {
		best[j] = -1
		for i := j - 1; i >= 0; i-- {
			if i < j-1 && !gaps && units[i].end != units[i+1].start {
				break
			}
			count := units[j-1].end - units[i].start
			if count > limit {
				break
			}
			cost := best[i] + c.Request(table, count)
			if best[j] < 0 || cost < best[j] || cost == best[j] && reqs[i]+1 < reqs[j] {
				best[j], from[j], reqs[j] = cost, i, reqs[i]+1
			}
		}
	}
	out := make([]Request, reqs[n])
	for j, k := n, reqs[n]-1; j > 0; j, k = from[j], k-1 {
		i := from[j]
		r := Request{Table: table, Start: units[i].start, Count: units[j-1].end - units[i].start}
		for _, u := range units[i:j] {
			r.Signals = append(r.Signals, u.signals...)
		}
		out[k] = r
	}
	return out
}

// AlarmPlan plans the reads of a template's alarm inputs alone: the
// signals with an event rule (discrete inputs, coils, bits of registers),
// read at the device's alarm interval in requests of their own, so that a
// button press is seen without reading the rest of the map. It is empty
// when the template has no such signal.
func AlarmPlan(t *mb.Template, c Cost) ([]Request, error) {
	var idx []int
	// Never across gaps: the alarm poll reads the cells of alarm inputs
	// and nothing else (configs.Signal.Fast says which signals it reads).
	sub := &mb.Template{}
	for i := range t.Registers {
		if t.Registers[i].Event != nil {
			idx = append(idx, i)
			sub.Registers = append(sub.Registers, t.Registers[i])
		}
	}
	if len(idx) == 0 {
		return nil, nil
	}
	reqs, err := Plan(sub, c)
	if err != nil {
		return nil, err
	}
	for i := range reqs {
		for j, s := range reqs[i].Signals {
			reqs[i].Signals[j] = idx[s]
		}
	}
	return reqs, nil
}
