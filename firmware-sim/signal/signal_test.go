package signal

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"outpost/configs"
)

var t0 = time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)

func gen(t *testing.T, sim configs.Sim, seed int64, key string) *Generator {
	t.Helper()
	g, err := New(sim, seed, key, t0)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestDeterministic(t *testing.T) {
	for _, sim := range []configs.Sim{
		{Wave: "random", Min: 215, Max: 235, Noise: 0.5},
		{Wave: "daily", Min: 16, Max: 29, Noise: 0.3},
		{Wave: "toggle", Rate: 0.5},
	} {
		a, b := gen(t, sim, 7, "d/s"), gen(t, sim, 7, "d/s")
		other := gen(t, sim, 8, "d/s")
		differs := false
		// b is asked less often than a: the values still agree.
		for i := range 600 {
			at := t0.Add(time.Duration(i) * 250 * time.Millisecond)
			va := a.At(at)
			if i%7 == 0 {
				if vb := b.At(at); vb != va {
					t.Fatalf("%s: seed 7 gave %v and %v at step %d", sim.Wave, va, vb, i)
				}
			}
			differs = differs || other.At(at) != va
		}
		if !differs {
			t.Errorf("%s: seeds 7 and 8 gave the same 600 values", sim.Wave)
		}
	}
}

func TestWaves(t *testing.T) {
	// Bounded waves stay in bounds for a simulated day.
	for _, sim := range []configs.Sim{
		{Wave: "random", Min: 0.85, Max: 0.99, Noise: 0.01},
		{Wave: "random", Min: 0, Max: 2, Noise: 5},
		{Wave: "daily", Min: 45, Max: 75, Noise: 1},
	} {
		g := gen(t, sim, 1, "k")
		lo, hi := math.Inf(1), math.Inf(-1)
		for i := range 24 * 60 {
			v := g.At(t0.Add(time.Duration(i) * time.Minute)).Num
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
		if lo < sim.Min || hi > sim.Max || lo == hi {
			t.Errorf("%+v: a day ranged %v..%v", sim, lo, hi)
		}
	}
	// Daily peaks mid-afternoon and bottoms before dawn.
	g := gen(t, configs.Sim{Wave: "daily", Min: 16, Max: 29}, 1, "k")
	if v := g.At(t0.Add(15 * time.Hour)).Num; v != 29 {
		t.Errorf("daily at 15:00 = %v, want 29", v)
	}
	if v := g.At(t0.Add(27 * time.Hour)).Num; math.Abs(v-16) > 1e-9 {
		t.Errorf("daily at 03:00 = %v, want 16", v)
	}
	// Counter grows at its rate from min.
	c := gen(t, configs.Sim{Wave: "counter", Min: 100, Rate: 0.5}, 1, "k")
	if v := c.At(t0.Add(10 * time.Second)).Num; v != 105 {
		t.Errorf("counter after 10 s = %v, want 105", v)
	}
	// Toggle flips about rate times per second.
	tg := gen(t, configs.Sim{Wave: "toggle", Rate: 1}, 1, "k")
	flips, last := 0, tg.At(t0).Bool
	for i := 1; i <= 1000; i++ {
		v := tg.At(t0.Add(time.Duration(i) * Tick)).Bool
		if v != last {
			flips++
		}
		last = v
	}
	if flips < 70 || flips > 130 {
		t.Errorf("toggle at 1/s flipped %d times in 100 s", flips)
	}
	if v := gen(t, configs.Sim{Wave: "constant", Value: 3.5}, 1, "k").At(t0.Add(time.Hour)); v != Num(3.5) {
		t.Errorf("constant = %v", v)
	}
	if v := gen(t, configs.Sim{Wave: "text", Text: "UPS-3K"}, 1, "k").At(t0); v != Str("UPS-3K") {
		t.Errorf("text = %v", v)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(configs.Sim{Wave: "sine"}, 1, "d/s", t0); err == nil || err.Error() != `signal d/s: unknown wave "sine"` {
		t.Errorf("unknown wave: %v", err)
	}
	if _, err := New(configs.Sim{Wave: "random", Min: 2, Max: 1}, 1, "d/s", t0); err == nil || err.Error() != "signal d/s: max 1 below min 2" {
		t.Errorf("max below min: %v", err)
	}
}

func TestValueJSON(t *testing.T) {
	for v, want := range map[Value]string{Num(21.3): "21.3", B(true): "true", Str("a\"b"): `"a\"b"`, Num(-0.5): "-0.5"} {
		b, err := json.Marshal(v)
		if err != nil || string(b) != want {
			t.Errorf("json(%v) = %s, %v; want %s", v, b, err, want)
		}
	}
	if _, err := json.Marshal(Num(math.NaN())); err == nil {
		t.Error("NaN marshalled")
	}
}
