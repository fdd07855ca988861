//! Gives memory back to the system after a flood. glibc keeps what a thousand closed
//! sessions freed (their records, tasks and socket state: small blocks) in its arenas, so
//! the sidecar's RSS would stay at the flood's peak for good and count against the
//! container's memory limit. When the open connections or the buffer bytes have fallen
//! well below their peak since the last trim, `malloc_trim` returns the free pages.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::runtime::Runtime;

const EVERY: Duration = Duration::from_secs(5);
/// A fall worth a trim: a quarter of the peak, and at least this many connections or bytes.
const MIN_CONNECTIONS_FREED: usize = 64;
const MIN_BUFFER_BYTES_FREED: usize = 16 << 20;

/// What was held at most since the last trim, and whether it has fallen enough to trim.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    connections: usize,
    buffer_bytes: usize,
}

// === impl Peak ===

impl Peak {
    /// Raises the peak to a high-water mark seen between two looks.
    pub fn saw(&mut self, connections: usize) {
        self.connections = self.connections.max(connections);
    }

    /// Takes in what is held now; true when a trim is due (the peak then restarts from now).
    pub fn observe(&mut self, connections: usize, buffer_bytes: usize) -> bool {
        let fell = |peak: usize, now: usize, floor: usize| peak.saturating_sub(now) >= floor.max(peak / 4);
        let due = fell(self.connections, connections, MIN_CONNECTIONS_FREED)
            || fell(self.buffer_bytes, buffer_bytes, MIN_BUFFER_BYTES_FREED);
        if due {
            *self = Self {
                connections,
                buffer_bytes,
            };
        } else {
            self.connections = self.connections.max(connections);
            self.buffer_bytes = self.buffer_bytes.max(buffer_bytes);
        }
        due
    }
}

/// Trims every `EVERY` when `Peak` says so, until `stop`.
pub async fn trim_after_floods(rt: Arc<Runtime>, stop: CancellationToken) {
    let mut peak = Peak::default();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        peak.saw(rt.gates.take_high_water());
        if peak.observe(rt.gates.open_connections(), rt.buffers.in_use()) {
            trim();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks glibc's own arenas, under their locks.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "returned free memory to the system");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trim_is_due_when_a_flood_has_mostly_left() {
        let mut peak = Peak::default();
        assert!(!peak.observe(10, 0), "nothing has fallen");
        assert!(!peak.observe(1000, 0));
        assert!(!peak.observe(900, 0), "a tenth left: not yet");
        assert!(peak.observe(700, 0), "a quarter of the peak left");
        assert!(!peak.observe(700, 0), "the peak restarts from the trim");
        let mut quiet = Peak::default();
        assert!(!quiet.observe(40, 0));
        assert!(!quiet.observe(0, 0), "40 connections leaving is not a flood");
        let mut bulk = Peak::default();
        assert!(!bulk.observe(2, 64 << 20));
        assert!(bulk.observe(2, 0), "64 MiB of buffers given back");
        let mut brief = Peak::default();
        brief.saw(1000);
        assert!(brief.observe(3, 0), "a flood that came and went between two looks");
    }
}
