package modbus

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"outpost/configs"
	mb "outpost/configs/modbus"
)

func holdings(addrs ...int) []mb.Register {
	var regs []mb.Register
	for _, a := range addrs {
		regs = append(regs, mb.Register{Signal: fmt.Sprintf("r%d", a), Table: mb.Holding, Address: a, Type: mb.TypeUint16, Scale: 1})
	}
	return regs
}

func planString(reqs []Request) string {
	var s []string
	for _, r := range reqs {
		s = append(s, r.String())
	}
	return strings.Join(s, ", ")
}

var bus9600 = &tBus{ID: "b", Baud: 9600, Parity: configs.ParityNone, DataBits: 8, StopBits: 1, Turnaround: 5 * time.Millisecond}

func TestCharTimeAndSilence(t *testing.T) {
	cases := []struct {
		bus           tBus
		char, silence time.Duration
	}{
		{tBus{Baud: 9600, Parity: "none", DataBits: 8, StopBits: 1}, 1041666, 3645831},
		{tBus{Baud: 19200, Parity: "even", DataBits: 8, StopBits: 1}, 572916, 2005206},
		{tBus{Baud: 9600, Parity: "odd", DataBits: 7, StopBits: 2}, 1145833, 4010415},
		{tBus{Baud: 115200}, 86805, 1750 * time.Microsecond},
	}
	for _, c := range cases {
		if got := c.bus.settings().CharTime(); got != c.char {
			t.Errorf("CharTime(%+v) = %v, want %v", c.bus, got, c.char)
		}
		if got := Silence(c.bus.settings()); got != c.silence {
			t.Errorf("Silence(%+v) = %v, want %v", c.bus, got, c.silence)
		}
	}
}

// TestPlanScattered is the DESIGN's scattered map at 9600 8N1 with a 5 ms
// turnaround: the plan beats reading one span and reading every run alone.
func TestPlanScattered(t *testing.T) {
	tmpl := &tTemplate{Name: "scattered", ReadGaps: true, Registers: holdings(0, 1, 5, 9, 30, 31, 60, 100)}
	cost := BusCost(bus9600.settings())
	plan, err := Plan(tmpl.body(), cost)
	if err != nil {
		t.Fatal(err)
	}
	span := []Request{{Table: mb.Holding, Start: 0, Count: 101}}
	separate := []Request{
		{Table: mb.Holding, Start: 0, Count: 2}, {Table: mb.Holding, Start: 5, Count: 1},
		{Table: mb.Holding, Start: 9, Count: 1}, {Table: mb.Holding, Start: 30, Count: 2},
		{Table: mb.Holding, Start: 60, Count: 1}, {Table: mb.Holding, Start: 100, Count: 1},
	}
	wp, ws, wsep := cost.WireTime(plan), cost.WireTime(span), cost.WireTime(separate)
	t.Logf("9600 8N1, 5ms turnaround: planned %v [%s], one span of 101 %v, six requests %v",
		wp.Round(10*time.Microsecond), planString(plan), ws.Round(10*time.Microsecond), wsep.Round(10*time.Microsecond))
	if want := "holding 0-9, holding 30-31, holding 60-60, holding 100-100"; planString(plan) != want {
		t.Errorf("plan = %s, want %s", planString(plan), want)
	}
	// 4 requests of 13 framing chars and 7 silence chars, 14 registers,
	// 4 turnarounds: 108 chars at 10/9600 s, plus 20 ms.
	if want := 108*bus9600.settings().CharTime() + 20*time.Millisecond; wp != want {
		t.Errorf("planned wire time %v, want %v", wp, want)
	}
	if !(wp < ws && wp < wsep) {
		t.Errorf("plan %v does not beat span %v and separate %v", wp, ws, wsep)
	}
	// Every signal is covered exactly once.
	seen := map[int]int{}
	for _, r := range plan {
		for _, i := range r.Signals {
			seen[i]++
			a := tmpl.Registers[i].Address
			if a < r.Start || a >= r.Start+r.Count {
				t.Errorf("signal %d at %d outside request %s", i, a, r)
			}
		}
	}
	for i := range tmpl.Registers {
		if seen[i] != 1 {
			t.Errorf("signal %d covered %d times", i, seen[i])
		}
	}
}

func TestPlanTCPMergesAll(t *testing.T) {
	tmpl := &tTemplate{ReadGaps: true, Registers: holdings(0, 1, 5, 9, 30, 31, 60, 100)}
	plan, err := Plan(tmpl.body(), EndpointCost(nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := planString(plan); got != "holding 0-100" {
		t.Fatalf("TCP plan = %s, want one request holding 0-100", got)
	}
}

func TestPlanLimitsAndGaps(t *testing.T) {
	tcp := EndpointCost(nil)
	f32 := func(a int) mb.Register {
		return mb.Register{Signal: fmt.Sprint("f", a), Table: mb.Input, Address: a, Type: mb.TypeFloat32}
	}
	coil := func(a int) mb.Register {
		return mb.Register{Signal: fmt.Sprint("c", a), Table: mb.Coil, Address: a, Type: mb.TypeBool}
	}
	cases := []struct {
		name string
		tmpl tTemplate
		cost Cost
		want string
	}{
		{"125 registers fit one request", tTemplate{ReadGaps: true, Registers: holdings(0, 124)}, tcp, "holding 0-124"},
		{"126 registers take two", tTemplate{ReadGaps: true, Registers: holdings(0, 125)}, tcp, "holding 0-0, holding 125-125"},
		{"a float ending at the limit fits", tTemplate{ReadGaps: true, Registers: []mb.Register{f32(0), f32(123)}}, tcp, "input 0-124"},
		{"a float is never split at the limit", tTemplate{ReadGaps: true, Registers: []mb.Register{f32(0), f32(124)}}, tcp, "input 0-1, input 124-125"},
		{"2000 bits fit one request", tTemplate{ReadGaps: true, Registers: []mb.Register{coil(0), coil(1999)}}, tcp, "coil 0-1999"},
		{"2001 bits take two", tTemplate{ReadGaps: true, Registers: []mb.Register{coil(0), coil(2000)}}, tcp, "coil 0-0, coil 2000-2000"},
		{"no gaps: only adjacent signals merge", tTemplate{ReadGaps: false, Registers: append(holdings(0, 1, 2, 5), f32(6), f32(8), f32(20))}, tcp,
			"input 6-9, input 20-21, holding 0-2, holding 5-5"},
		{"overlapping bits of one register", tTemplate{ReadGaps: false, Registers: []mb.Register{
			{Signal: "a", Table: mb.Holding, Address: 0, Type: mb.TypeBool, Bit: bit(0)},
			{Signal: "b", Table: mb.Holding, Address: 0, Type: mb.TypeBool, Bit: bit(1)},
			{Signal: "c", Table: mb.Holding, Address: 1, Type: mb.TypeUint32}}}, tcp, "holding 0-2"},
		{"tables apart", tTemplate{ReadGaps: true, Registers: []mb.Register{coil(3), f32(0), holdings(0)[0], {Signal: "d", Table: mb.Discrete, Type: mb.TypeBool}}}, BusCost(bus9600.settings()),
			"coil 3-3, discrete 0-0, input 0-1, holding 0-0"},
		{"rtu: a far register stays apart", tTemplate{ReadGaps: true, Registers: holdings(0, 1, 2, 200)}, BusCost(bus9600.settings()), "holding 0-2, holding 200-200"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			plan, err := Plan(c.tmpl.body(), c.cost)
			if err != nil {
				t.Fatal(err)
			}
			if got := planString(plan); got != c.want {
				t.Fatalf("plan = %s, want %s", got, c.want)
			}
			for _, r := range plan {
				lim := MaxRegisters
				if r.Table.IsBits() {
					lim = MaxBits
				}
				if r.Count > lim {
					t.Errorf("%s reads %d > %d", r, r.Count, lim)
				}
			}
		})
	}
}

func TestPlanErrors(t *testing.T) {
	cases := []struct {
		reg  mb.Register
		want string
	}{
		{mb.Register{Signal: "s", Table: mb.Holding, Type: mb.TypeString, Length: 126}, "signal s: 126 holding entries exceed the 125 a request may read"},
		{mb.Register{Signal: "s", Table: mb.Holding, Type: mb.TypeString}, "signal s: string on holding table has no width"},
		{mb.Register{Signal: "u", Table: mb.Input, Type: mb.TypeUint32, Address: 65535}, "signal u: addresses 65535-65536 outside 0-65535"},
	}
	for _, c := range cases {
		_, err := Plan(&mb.Template{Registers: []mb.Register{c.reg}}, EndpointCost(nil))
		if err == nil || err.Error() != c.want {
			t.Errorf("Plan(%+v) error %v, want %q", c.reg, err, c.want)
		}
	}
}

// TestPlanOptimal compares the planner with every partition of small maps.
func TestPlanOptimal(t *testing.T) {
	cost := BusCost(bus9600.settings())
	maps := [][]int{{0, 1, 5, 9, 30, 31, 60, 100}, {0, 3, 6, 9, 12}, {0, 20, 21, 22, 40, 41, 90}, {5}, {0, 7, 8, 15, 40}}
	for _, addrs := range maps {
		plan, err := Plan(&mb.Template{ReadGaps: true, Registers: holdings(addrs...)}, cost)
		if err != nil {
			t.Fatal(err)
		}
		got := cost.WireTime(plan)
		// Brute force over the 2^(n-1) ways to cut the sorted list.
		best := time.Duration(-1)
		for mask := 0; mask < 1<<(len(addrs)-1); mask++ {
			var d time.Duration
			start := addrs[0]
			for i := 1; i <= len(addrs); i++ {
				if i == len(addrs) || mask&(1<<(i-1)) != 0 {
					d += cost.Request(mb.Holding, addrs[i-1]-start+1)
					if i < len(addrs) {
						start = addrs[i]
					}
				}
			}
			if best < 0 || d < best {
				best = d
			}
		}
		if got != best {
			t.Errorf("%v: plan %s costs %v, best partition %v", addrs, planString(plan), got, best)
		}
	}
}

func BenchmarkPlan(b *testing.B) {
	tmpl := &tTemplate{ReadGaps: true, Registers: holdings(0, 1, 5, 9, 30, 31, 60, 100)}
	cost := BusCost(bus9600.settings())
	for b.Loop() {
		if _, err := Plan(tmpl.body(), cost); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cost.WireTime([]Request{{Table: mb.Holding, Count: 101}}).Microseconds())/1000, "span-ms")
}
