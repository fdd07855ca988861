//! How big the next read or write buffer should be: a size that follows the traffic, so
//! bulk transfers get few large syscalls and small exchanges stay small. The size survives
//! the buffer being released while a session is quiet, so a bulk stream that stalls for a
//! moment resumes at full size instead of growing again from the bottom.
//!
//! Growth past the minimum can be drawn from a `BufferBudget` shared by every session of
//! a process: large buffers are what make bulk transfers cheap, and the budget is what
//! keeps a thousand bulk sessions inside a container's memory limit. A session the
//! budget cannot serve moves its bytes with the minimum, more slowly but correctly.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

/// Bytes of buffer growth, past each buffer's minimum, that a process may hold at once.
#[derive(Debug)]
pub struct BufferBudget {
    available: AtomicUsize,
    total: usize,
}

// === impl BufferBudget ===

impl BufferBudget {
    pub fn new(bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            available: AtomicUsize::new(bytes),
            total: bytes,
        })
    }

    /// Grants up to `want` bytes, as many as are left.
    fn take(&self, want: usize) -> usize {
        let mut granted = 0;
        let _ = self
            .available
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |available| {
                granted = want.min(available);
                Some(available - granted)
            });
        granted
    }

    fn give(&self, bytes: usize) {
        self.available.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes granted and not yet given back.
    pub fn in_use(&self) -> usize {
        self.total - self.available.load(Ordering::Acquire)
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
        }
    }

    /// Draws growth past `min` from `budget` from now on.
    pub fn set_budget(&mut self, budget: Arc<BufferBudget>) {
        self.release();
        self.budget = Some(budget);
    }

    /// The size the traffic asks for next, whatever the budget.
    pub fn next(&self) -> usize {
        self.next
    }

    /// The size to allocate next: what the traffic asks for, as far as the budget grants
    /// it. What is granted is held until `release`.
    pub fn reserve(&mut self) -> usize {
        let Some(budget) = &self.budget else {
            return self.next;
        };
        let want = self.next - self.min;
        if want > self.held {
            self.held += budget.take(want - self.held);
        }
        self.min + self.held
    }

    /// The buffer was freed: gives its grant back.
    pub fn release(&mut self) {
        if let Some(budget) = &self.budget {
            budget.give(std::mem::take(&mut self.held));
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
        assert_eq!(b.reserve(), 16 + 60, "the second gets what is left");
        assert_eq!(budget.in_use(), 300);
        a.release();
        assert_eq!(b.reserve(), 256, "released bytes serve the next reservation");
        drop(b);
        assert_eq!(budget.in_use(), 0, "a dropped size gives its grant back");
        assert_eq!(a.next(), 256, "a release does not forget the size");
    }
}
