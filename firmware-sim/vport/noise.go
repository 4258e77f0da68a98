package vport

import (
	"hash/fnv"
	"math/rand/v2"
	"sync"
	"sync/atomic"
)

// Noise corrupts a share of the bytes that cross a serial line, as
// electrical noise on RS-485 does: each byte, with probability Share, has
// one of its bits flipped. It serves both directions of a port (see
// Port.SetNoise), so every protocol simulated on a virtual port gets the
// same noise. It is safe for concurrent use.
type Noise struct {
	share float64
	mu    sync.Mutex
	rng   *rand.Rand
	hits  atomic.Int64
}

// NewNoise makes noise that corrupts share (0 to 1) of the bytes,
// repeatably for a seed and a key (a link's id: each link its own noise).
func NewNoise(share float64, seed int64, key string) *Noise {
	h := fnv.New64a()
	h.Write([]byte(key))
	return &Noise{share: share, rng: rand.New(rand.NewPCG(uint64(seed), h.Sum64()))}
}

// Corrupt damages b in place and returns how many bytes it damaged.
func (n *Noise) Corrupt(b []byte) int {
	if n == nil || n.share <= 0 {
		return 0
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	hit := 0
	for i := range b {
		if n.rng.Float64() < n.share {
			b[i] ^= 1 << n.rng.IntN(8)
			hit++
		}
	}
	n.hits.Add(int64(hit))
	return hit
}

// Corrupted is how many bytes the noise damaged so far.
func (n *Noise) Corrupted() int64 {
	if n == nil {
		return 0
	}
	return n.hits.Load()
}
