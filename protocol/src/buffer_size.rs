//! How big the next read or write buffer should be: a size that follows the traffic, so
//! bulk transfers get few large syscalls and small exchanges stay small. The size survives
//! the buffer being released while a session is quiet, so a bulk stream that stalls for a
//! moment resumes at full size instead of growing again from the bottom.
//!
//! A `BufferBudget` shared by every session of a process counts every buffer byte they
//! hold. Each buffer's minimum (one record) is always granted, since a session must be able
//! to hold the record it is reading, even a record a peer stalls in the middle of; growth
//! past it is granted only from what is left. Large buffers are what make bulk transfers
//! cheap, and the budget is what keeps a thousand bulk sessions, or a thousand stalled
//! ones, inside a container's memory limit: minimums crowd growth out, never the other
//! way round. A session the budget cannot serve moves its bytes with the minimum, more
//! slowly but correctly.

use std::sync::{
    atomic::{AtomicIsize, Ordering},
    Arc,
};

/// Buffer bytes a process may hold at once. Below zero when minimums alone exceed it.
#[derive(Debug)]
pub struct BufferBudget {
    available: AtomicIsize,
    total: usize,
}

// === impl BufferBudget ===

impl BufferBudget {
    pub fn new(bytes: usize) -> Arc<Self> {
        let bytes = bytes.min(isize::MAX as usize);
        Arc::new(Self {
            available: AtomicIsize::new(bytes as isize),
            total: bytes,
        })
    }

    /// Grants up to `want` bytes, as many as are left.
    fn take(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                granted = want.min(available.max(0) as usize);
                Some(available - granted as isize)
            });
        granted
    }

    /// Counts `bytes` that must be held whatever is left (a buffer's minimum).
    fn charge(&self, bytes: usize) {
        self.available.fetch_sub(bytes as isize, Ordering::AcqRel);
    }

    fn give(&self, bytes: usize) {
        self.available.fetch_add(bytes as isize, Ordering::AcqRel);
    }

    /// Buffer bytes held now, minimums included; above the budget only when minimums
    /// alone exceed it.
    pub fn in_use(&self) -> usize {
        (self.total as isize - self.available.load(Ordering::Acquire)).max(0) as usize
    }
}

#[derive(Debug)]
pub struct BufferSize {
    min: usize,
    max: usize,
    next: usize,
    budget: Option<Arc<BufferBudget>>,
    /// Bytes past `min` granted by the budget for the buffer now allocated.
    held: usize,
    /// Whether the budget counts this buffer's minimum (from `reserve` to `release`).
    floor: bool,
}

// === impl BufferSize ===

impl BufferSize {
    pub const fn new(min: usize, max: usize) -> Self {
        Self {
            min,
            max,
            next: min,
            budget: None,
            held: 0,
            floor: false,
        }
    }

    /// Counts this buffer in `budget`, and draws growth past `min` from it, from now on.
    pub fn set_budget(&mut self, budget: Arc<BufferBudget>) {
        self.release();
        self.budget = Some(budget);
    }

    /// The size the traffic asks for next, whatever the budget.
    pub fn next(&self) -> usize {
        self.next
    }

    /// The size to allocate next: what the traffic asks for, as far as the budget grants
    /// it. What is granted, and the minimum, are held until `release`.
    pub fn reserve(&mut self) -> usize {
        let Some(budget) = &self.budget else {
            return self.next;
        };
        if !self.floor {
            budget.charge(self.min);
            self.floor = true;
        }
        let want = self.next - self.min;
        if want > self.held {
            self.held += budget.take(want - self.held);
        }
        self.min + self.held
    }

    /// The buffer was freed: gives its grant and its minimum back.
    pub fn release(&mut self) {
        if let Some(budget) = &self.budget {
            let floor = if std::mem::take(&mut self.floor) { self.min } else { 0 };
            budget.give(std::mem::take(&mut self.held) + floor);
        }
    }

    /// Learns from `n` bytes moved through a buffer of `len`: a full buffer doubles the
    /// size, one under a quarter full halves it.
    pub fn record(&mut self, n: usize, len: usize) {
        if n >= len {
            self.next = (self.next * 2).min(self.max);
        } else if n < len / 4 {
            self.next = (self.next / 2).max(self.min);
        }
    }
}

impl Drop for BufferSize {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_full_reads_shrinks_on_small_ones_within_bounds() {
        let mut size = BufferSize::new(16, 256);
        for _ in 0..10 {
            let len = size.reserve();
            size.record(len, len);
        }
        assert_eq!(size.reserve(), 256);
        size.record(100, 256); // partly full: stays
        assert_eq!(size.next(), 256);
        for _ in 0..10 {
            size.record(1, size.next());
        }
        assert_eq!(size.next(), 16);
    }

    #[test]
    fn growth_comes_from_the_budget_and_goes_back_to_it() {
        let budget = BufferBudget::new(300);
        let (mut a, mut b) = (BufferSize::new(16, 256), BufferSize::new(16, 256));
        a.set_budget(budget.clone());
        b.set_budget(budget.clone());
        for size in [&mut a, &mut b] {
            for _ in 0..10 {
                let len = size.reserve();
                size.record(len, len);
            }
        }
        assert_eq!(a.reserve(), 256, "the first takes all it asks for");
        assert_eq!(b.reserve(), 16 + 28, "the second gets its minimum and what is left");
        assert_eq!(budget.in_use(), 300);
        a.release();
        assert_eq!(budget.in_use(), 44, "a release gives the minimum back too");
        assert_eq!(b.reserve(), 256, "released bytes serve the next reservation");
        drop(b);
        assert_eq!(budget.in_use(), 0, "a dropped size gives everything back");
        assert_eq!(a.next(), 256, "a release does not forget the size");
    }

    #[test]
    fn minimums_are_always_granted_and_crowd_growth_out() {
        let budget = BufferBudget::new(40);
        let mut sizes: Vec<BufferSize> = (0..4).map(|_| BufferSize::new(16, 256)).collect();
        for size in &mut sizes {
            size.set_budget(budget.clone());
            assert_eq!(size.reserve(), 16, "a minimum is granted past the budget");
            size.record(16, 16);
        }
        assert_eq!(budget.in_use(), 64, "every byte held is counted, over budget or not");
        assert_eq!(sizes[0].reserve(), 16, "no growth while minimums exceed the budget");
        sizes.truncate(1);
        assert_eq!(budget.in_use(), 16);
        for _ in 0..4 {
            sizes[0].record(256, 256);
        }
        assert_eq!(sizes[0].reserve(), 16 + 24, "growth resumes from what is left");
    }
}
