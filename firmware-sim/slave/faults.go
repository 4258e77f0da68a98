package slave

import (
	"math/rand/v2"
	"time"
)

// Faults say what each unit does wrong now; either may be nil.
type Faults struct {
	// Silent units answer nothing, as one switched off would not.
	Silent func(unit byte) bool
	// Flaky units lose or damage this share of their answers (0 to 1),
	// half one way, half the other: a failing transceiver, a bad contact.
	Flaky func(unit byte) float64
	// Slow units answer this late.
	Slow func(unit byte) time.Duration
}

func (f Faults) silent(unit byte) bool { return f.Silent != nil && f.Silent(unit) }

func (f Faults) slow(unit byte) time.Duration {
	if f.Slow == nil {
		return 0
	}
	return f.Slow(unit)
}

// What a flaky unit does to one answer.
type fault int

const (
	none fault = iota
	lose
	damage
)

func (f Faults) fault(unit byte) fault {
	if f.Flaky == nil {
		return none
	}
	share := f.Flaky(unit)
	switch r := rand.Float64(); {
	case r < share/2:
		return lose
	case r < share:
		return damage
	}
	return none
}
