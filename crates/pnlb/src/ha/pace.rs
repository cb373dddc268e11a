//! A token bucket: how many datagrams may go now. The active node paces its
//! batches and the answers to Nacks with one, a backup its Nacks with
//! another, so neither a burst of flows nor a backup that fell behind can
//! turn into a flood that loses more than it repairs.

use std::time::Instant;

pub struct Pace {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pace {
    /// `per_second` on average, `burst` at once (and to start with).
    pub fn new(per_second: f64, burst: f64, now: Instant) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// How many may go now (tokens accrued since the last call included).
    pub fn available(&mut self, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.tokens as usize
    }

    /// `n` went.
    pub fn spend(&mut self, n: usize) {
        self.tokens = (self.tokens - n as f64).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut pace = Pace::new(1_000.0, 100.0, start);
        assert_eq!(pace.available(start), 100);
        pace.spend(100);
        assert_eq!(pace.available(start), 0);
        assert_eq!(pace.available(start + Duration::from_millis(10)), 10);
        pace.spend(4);
        assert_eq!(pace.available(start + Duration::from_millis(10)), 6);
        assert_eq!(
            pace.available(start + Duration::from_secs(60)),
            100,
            "never more than the burst"
        );
    }
}
