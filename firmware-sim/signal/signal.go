// Package signal makes the simulated values of device signals: plausible,
// changing and deterministic from a seed.
//
// A generator advances in ticks of 100 ms counted from a start time; all its
// random draws come from its own source, seeded from the run's seed and the
// signal's name, so the value at a given tick does not depend on how often or
// in which order signals were asked for.
package signal

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"time"

	"outpost/configs"
)

// Tick is the step of random walks, toggles and noise.
const Tick = 100 * time.Millisecond

// Kind says which field of a Value is meaningful.
type Kind uint8

const (
	Number Kind = iota
	Bool
	Text
)

// Value is a simulated value: a number, a bool or a text.
type Value struct {
	Kind Kind
	Num  float64
	Bool bool
	Text string
}

// Num, B and Str build Values.
func Num(f float64) Value { return Value{Kind: Number, Num: f} }
func B(b bool) Value      { return Value{Kind: Bool, Bool: b} }
func Str(s string) Value  { return Value{Kind: Text, Text: s} }

// Truth is the value as a bool: a bool itself, a number rounded away from
// zero, a non-empty text.
func (v Value) Truth() bool {
	switch v.Kind {
	case Bool:
		return v.Bool
	case Text:
		return v.Text != ""
	}
	return math.Round(v.Num) != 0
}

// Float is the value as a number: bools are 0 or 1, texts parse or are 0.
func (v Value) Float() float64 {
	switch v.Kind {
	case Bool:
		if v.Bool {
			return 1
		}
		return 0
	case Text:
		f, err := strconv.ParseFloat(v.Text, 64)
		if err != nil {
			return 0
		}
		return f
	}
	return v.Num
}

// MarshalJSON writes a JSON number, bool or string.
func (v Value) MarshalJSON() ([]byte, error) {
	switch v.Kind {
	case Bool:
		return json.Marshal(v.Bool)
	case Text:
		return json.Marshal(v.Text)
	}
	if math.IsNaN(v.Num) || math.IsInf(v.Num, 0) {
		return nil, fmt.Errorf("signal: value %v has no JSON form", v.Num)
	}
	return json.Marshal(v.Num)
}

// String formats the value for logs and test failures.
func (v Value) String() string {
	switch v.Kind {
	case Bool:
		return strconv.FormatBool(v.Bool)
	case Text:
		return strconv.Quote(v.Text)
	}
	return strconv.FormatFloat(v.Num, 'g', -1, 64)
}

// Generator gives a signal's value at a time. It is safe for concurrent use.
type Generator struct {
	sim   configs.Sim
	start time.Time

	mu    sync.Mutex
	rng   *rand.Rand
	tick  int64   // ticks advanced so far
	walk  float64 // random walk position
	on    bool    // toggle state
	noise float64 // noise drawn for the current tick
}

// Waves lists the supported waves.
var Waves = configs.Wave("").Values()

// New returns the generator of sim. key names the signal (e.g. device and
// signal id) so that signals with equal settings still differ.
func New(sim configs.Sim, seed int64, key string, start time.Time) (*Generator, error) {
	if !slices.Contains(Waves, string(sim.Wave)) {
		return nil, fmt.Errorf("signal %s: unknown wave %q", key, sim.Wave)
	}
	if (sim.Wave == "random" || sim.Wave == "daily") && sim.Max < sim.Min {
		return nil, fmt.Errorf("signal %s: max %v below min %v", key, sim.Max, sim.Min)
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	g := &Generator{
		sim:   sim,
		start: start,
		rng:   rand.New(rand.NewPCG(uint64(seed), h.Sum64())),
		walk:  (sim.Min + sim.Max) / 2,
	}
	g.noise = g.draw()
	return g, nil
}

// draw returns this tick's gaussian noise.
func (g *Generator) draw() float64 {
	if g.sim.Noise == 0 {
		return 0
	}
	return g.rng.NormFloat64() * g.sim.Noise
}

// advance moves the generator's state to tick k.
func (g *Generator) advance(k int64) {
	for g.tick < k {
		g.tick++
		switch g.sim.Wave {
		case "random":
			step := g.sim.Noise
			if step == 0 {
				step = (g.sim.Max - g.sim.Min) / 100
			}
			g.walk += g.rng.NormFloat64() * step
			// Reflect at the bounds.
			for g.walk < g.sim.Min || g.walk > g.sim.Max {
				if g.walk < g.sim.Min {
					g.walk = 2*g.sim.Min - g.walk
				}
				if g.walk > g.sim.Max {
					g.walk = 2*g.sim.Max - g.walk
				}
				if g.sim.Max == g.sim.Min {
					g.walk = g.sim.Min
				}
			}
		case "toggle":
			if g.rng.Float64() < g.sim.Rate*Tick.Seconds() {
				g.on = !g.on
			}
		case "daily":
			g.noise = g.draw()
		}
	}
}

// At returns the value at time t. Times before the start give the start's
// value; the state never moves backwards.
func (g *Generator) At(t time.Time) Value {
	el := t.Sub(g.start)
	if el < 0 {
		el = 0
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.advance(int64(el / Tick))
	s := g.sim
	switch s.Wave {
	case "constant":
		return Num(s.Value)
	case "text":
		return Str(s.Text)
	case "toggle":
		return B(g.on)
	case "counter":
		return Num(s.Min + s.Rate*el.Seconds())
	case "random":
		return Num(g.walk)
	}
	// daily: peak at 15:00 local time, trough at 03:00.
	h := float64(t.Hour()) + float64(t.Minute())/60 + float64(t.Second())/3600
	mid, amp := (s.Min+s.Max)/2, (s.Max-s.Min)/2
	v := mid + amp*math.Cos(2*math.Pi*(h-15)/24) + g.noise
	return Num(math.Max(s.Min, math.Min(s.Max, v)))
}
