// This file is the replay cache of section "Freshness and replay": two generations
// of 60 s each, keyed by the first 16 bytes of the client nonce, bounded in size.
package xlgo

import "sync"

const (
	replayGeneration = 2 * MaxClockSkew // seconds per generation
	// ReplayCapacity bounds the nonces held per generation (fail closed when full).
	ReplayCapacity = 262144
)

// ReplayCache remembers accepted nonces for at least 2 × MAX_CLOCK_SKEW.
type ReplayCache struct {
	mu        sync.Mutex
	started   bool
	gen       int64 // the newest generation seen
	cur, prev map[[16]byte]struct{}
	capacity  int
}

// NewReplayCache returns an empty cache with the spec's capacity.
func NewReplayCache() *ReplayCache {
	return &ReplayCache{capacity: ReplayCapacity, cur: map[[16]byte]struct{}{}, prev: map[[16]byte]struct{}{}}
}

// floorDiv is floor(a / b) for b > 0, also for negative a.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b != 0 && a < 0 {
		q--
	}
	return q
}

// rotate moves the cache to the generation of now (see the spec's rules).
func (c *ReplayCache) rotate(now int64) {
	g := floorDiv(now, replayGeneration)
	switch {
	case !c.started:
		c.started, c.gen = true, g
	case g == c.gen+1:
		c.prev, c.cur, c.gen = c.cur, map[[16]byte]struct{}{}, g
	case g > c.gen+1:
		c.prev, c.cur, c.gen = map[[16]byte]struct{}{}, map[[16]byte]struct{}{}, g
	case g < c.gen-1:
		// Clock stepped back by more than a generation: follow it, but keep
		// everything remembered for one more generation.
		for k := range c.cur {
			c.prev[k] = struct{}{}
		}
		c.cur, c.gen = map[[16]byte]struct{}{}, g
	}
	// g == c.gen or c.gen-1: counts as the newest generation.
}

// CheckAndRecord returns "" and records the nonce if it is new, else the refusal
// reason: "replayed" or "replay_cache_full".
func (c *ReplayCache) CheckAndRecord(nonce []byte, now int64) string {
	var key [16]byte
	copy(key[:], nonce)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rotate(now)
	if _, ok := c.cur[key]; ok {
		return "replayed"
	}
	if _, ok := c.prev[key]; ok {
		return "replayed"
	}
	if len(c.cur) >= c.capacity {
		return "replay_cache_full"
	}
	c.cur[key] = struct{}{}
	return ""
}
