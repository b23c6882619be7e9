//! A log-line budget, so a misbehaving peer or a flood of local connections
//! cannot turn into an unbounded log.

use std::time::{Duration, Instant};

/// Allows `burst` lines per `window`; counts what it suppressed so the next
/// allowed line can say how many were dropped.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl RateLimit {
    /// A budget of `burst` lines per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged now. `Some(n)`: yes, and `n` lines were
    /// suppressed since the last allowed one.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&mut self, now: Instant) -> Option<u64> {
        match self.start {
            Some(s) if now.duration_since(s) < self.window => {}
            _ => {
                self.start = Some(now);
                self.used = 0;
            }
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

impl Default for RateLimit {
    /// Ten lines per ten seconds.
    fn default() -> Self {
        Self::new(10, Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_per_window_and_counts_the_rest() {
        let mut r = RateLimit::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(r.allow_at(t0), None);
        }
        let t1 = t0 + Duration::from_secs(11);
        assert_eq!(r.allow_at(t1), Some(1000));
        assert_eq!(r.allow_at(t1), Some(0));
        assert_eq!(r.allow_at(t1), None);
    }
}
