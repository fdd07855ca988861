//! How much to read next: a buffer size that follows the traffic, so bulk transfers get
//! few large syscalls and small exchanges stay small. The size survives the buffer being
//! released while a session is quiet, so a bulk stream that stalls for a moment resumes
//! at full size instead of growing again from the bottom.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadSize {
    min: usize,
    max: usize,
    next: usize,
}

impl ReadSize {
    pub const fn new(min: usize, max: usize) -> Self {
        Self { min, max, next: min }
    }

    /// The size to allocate for the next read.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Learns from a read of `n` bytes into a buffer of `len`: a full buffer doubles the
    /// size, one under a quarter full halves it.
    pub fn record(&mut self, n: usize, len: usize) {
        if n >= len {
            self.next = (self.next * 2).min(self.max);
        } else if n < len / 4 {
            self.next = (self.next / 2).max(self.min);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_full_reads_shrinks_on_small_ones_within_bounds() {
        let mut size = ReadSize::new(16, 256);
        for _ in 0..10 {
            let len = size.next();
            size.record(len, len);
        }
        assert_eq!(size.next(), 256);
        size.record(100, 256); // partly full: stays
        assert_eq!(size.next(), 256);
        for _ in 0..10 {
            size.record(1, size.next());
        }
        assert_eq!(size.next(), 16);
    }
}
