//! Exponential backoff with full jitter: the n-th wait is uniform in
//! `[0, min(cap, base * 2^n)]`. Full jitter spreads a crowd of agents that
//! lost their coordinator at the same instant, so a restarted coordinator
//! is not met by all of them at once.

use std::time::Duration;

/// An endless iterator of waits; [`FullJitter::reset`] after a success.
#[derive(Debug, Clone)]
pub struct FullJitter {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl FullJitter {
    pub fn new(base: Duration, cap: Duration) -> Self {
        FullJitter {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The upper bound of the next wait.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

impl Iterator for FullJitter {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        Some(Duration::from_millis(if ms == 0 {
            0
        } else {
            rand::random_range(0..=ms)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_stays_within() {
        let mut b = FullJitter::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<u128> = (0..8)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next().unwrap();
                assert!(d <= c);
                c.as_millis()
            })
            .collect();
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn waits_are_spread() {
        let b = FullJitter::new(Duration::from_secs(10), Duration::from_secs(10));
        let waits: std::collections::HashSet<u128> = b.take(50).map(|d| d.as_millis()).collect();
        assert!(
            waits.len() > 10,
            "full jitter should spread waits, got {waits:?}"
        );
    }
}
