//! Rejects a hello seen before within the freshness window.
//!
//! A hello carries a timestamp and a secret client nonce. The server accepts a hello
//! only while its timestamp is within `MAX_CLOCK_SKEW` of its own clock, and remembers
//! every accepted nonce for at least twice that long, in two rotating generations.
//! Memory is bounded: when a generation is full, further hellos are refused (fail
//! closed) until it rotates.
//!
//! Generations follow the server's clock forward. A reading up to one generation
//! behind the newest (concurrent handshakes reach the lock in any order) counts as the
//! newest; a clock stepped back further is followed, keeping what was remembered for
//! one more generation.

use std::{collections::HashSet, sync::Mutex};

/// How far a hello's timestamp may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW: u64 = 30;
const GENERATION_SECS: u64 = 2 * MAX_CLOCK_SKEW;
const DEFAULT_CAPACITY: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("hello timestamp is {0} s away from this server's clock")]
    ClockSkew(i128),
    #[error("hello was seen before")]
    Replayed,
    #[error("replay cache is full")]
    Full,
}

pub struct ReplayGuard {
    capacity: usize,
    state: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    number: u64,
    current: HashSet<[u8; 16]>,
    previous: HashSet<[u8; 16]>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl ReplayGuard {
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            state: Mutex::default(),
        }
    }

    /// Checks freshness and records `nonce`; `now` and `timestamp` in Unix seconds.
    pub fn check(&self, nonce: &[u8; 32], timestamp: u64, now: u64) -> Result<(), ReplayError> {
        let skew = timestamp as i128 - now as i128;
        if skew.unsigned_abs() > MAX_CLOCK_SKEW as u128 {
            return Err(ReplayError::ClockSkew(skew));
        }
        let key: [u8; 16] = nonce[..16].try_into().expect("16 of 32 bytes");
        let mut state = self.state.lock().expect("replay guard poisoned");
        let generation = now / GENERATION_SECS;
        if generation > state.number {
            let current = std::mem::take(&mut state.current);
            state.previous = if generation == state.number + 1 {
                current
            } else {
                HashSet::new()
            };
            state.number = generation;
        } else if generation + 1 < state.number {
            // The clock was stepped back by more than a generation. Follow it (or the
            // cache would not rotate, fill up and refuse every hello until the clock
            // caught up again), keeping every nonce remembered so far for one more
            // generation.
            let current = std::mem::take(&mut state.current);
            if state.previous.len() + current.len() <= 2 * self.capacity {
                state.previous.extend(current);
            } else {
                state.previous = current; // bounded even if the clock keeps going back
            }
            state.number = generation + 1;
        }
        // Otherwise `now` is in the newest generation or one behind it, and counts as
        // the newest: concurrent handshakes read the clock before their RSA work and
        // reach this lock in any order, so at a boundary a reading one second late is
        // normal, and it must not rotate anything away.
        if state.previous.contains(&key) || state.current.contains(&key) {
            return Err(ReplayError::Replayed);
        }
        if state.current.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        state.current.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_is_caught_across_a_rotation() {
        let guard = ReplayGuard::default();
        let nonce = [9u8; 32];
        let t = 1_000_000 * GENERATION_SECS - 1;
        guard.check(&nonce, t, t).unwrap();
        assert_eq!(guard.check(&nonce, t, t), Err(ReplayError::Replayed));
        // One second later the generation rotates; the nonce must still be remembered
        // for as long as the timestamp is fresh.
        assert_eq!(guard.check(&nonce, t, t + MAX_CLOCK_SKEW), Err(ReplayError::Replayed));
        assert_eq!(
            guard.check(&nonce, t, t + MAX_CLOCK_SKEW + 1),
            Err(ReplayError::ClockSkew(-31))
        );
        guard.check(&[8u8; 32], t, t + 1).unwrap();
    }

    #[test]
    fn a_late_clock_reading_at_a_rotation_keeps_the_cache() {
        // Two handshakes straddle a generation boundary: the one that read the clock
        // first (t - 1) takes the lock last. The nonces seen so far must survive.
        let guard = ReplayGuard::default();
        let t = 1_000_000 * GENERATION_SECS;
        guard.check(&[1u8; 32], t - 1, t - 1).unwrap();
        guard.check(&[2u8; 32], t, t).unwrap();
        guard.check(&[3u8; 32], t - 1, t - 1).unwrap();
        for nonce in [[1u8; 32], [2u8; 32], [3u8; 32]] {
            assert_eq!(
                guard.check(&nonce, t, t + 1),
                Err(ReplayError::Replayed),
                "{:?}",
                &nonce[..1]
            );
        }
    }

    #[test]
    fn a_clock_stepped_back_neither_jams_nor_forgets_at_once() {
        let guard = ReplayGuard::with_capacity(2);
        let t = 1_000_000 * GENERATION_SECS + 10;
        guard.check(&[1u8; 32], t, t).unwrap();
        guard.check(&[2u8; 32], t, t).unwrap();
        assert_eq!(guard.check(&[3u8; 32], t, t), Err(ReplayError::Full));
        // An hour back: the cache follows the clock instead of staying full until it
        // catches up, and what it knew is still there.
        let back = t - 3600;
        guard.check(&[3u8; 32], back, back).unwrap();
        assert_eq!(guard.check(&[1u8; 32], back, back), Err(ReplayError::Replayed));
        assert_eq!(guard.check(&[3u8; 32], back, back + 1), Err(ReplayError::Replayed));
        guard
            .check(&[4u8; 32], back + GENERATION_SECS, back + GENERATION_SECS)
            .unwrap();
        assert_eq!(
            guard.check(&[3u8; 32], back, back + MAX_CLOCK_SKEW),
            Err(ReplayError::Replayed)
        );
    }

    #[test]
    fn stale_future_and_overflowing_hellos_are_refused() {
        let guard = ReplayGuard::with_capacity(2);
        assert_eq!(guard.check(&[0; 32], 100, 200), Err(ReplayError::ClockSkew(-100)));
        assert_eq!(guard.check(&[0; 32], 300, 200), Err(ReplayError::ClockSkew(100)));
        guard.check(&[1; 32], 200, 200).unwrap();
        guard.check(&[2; 32], 200, 200).unwrap();
        assert_eq!(guard.check(&[3; 32], 200, 200), Err(ReplayError::Full));
    }
}
