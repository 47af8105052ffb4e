//! Small limiters for what arrives from the network: log lines that a
//! flood would multiply ([`LogLimiter`]) and failed attempts per source
//! address ([`FailureLimiter`], for enrollment guesses).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets at most `burst` lines through per `window`; the first line after a
/// window in which some were held back reports how many.
#[derive(Debug)]
pub struct LogLimiter {
    window: Duration,
    burst: u32,
    state: Mutex<LogWindow>,
}

#[derive(Debug)]
struct LogWindow {
    started: Instant,
    passed: u32,
    suppressed: u64,
}

/// What a caller may log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Log the line; `suppressed` similar lines were held back before it.
    Log { suppressed: u64 },
    /// Hold it back (counted).
    Hold,
}

impl LogLimiter {
    pub fn new(window: Duration, burst: u32) -> Self {
        LogLimiter {
            window,
            burst,
            state: Mutex::new(LogWindow {
                started: Instant::now(),
                passed: 0,
                suppressed: 0,
            }),
        }
    }

    pub fn check(&self) -> LogDecision {
        self.check_at(Instant::now())
    }

    fn check_at(&self, now: Instant) -> LogDecision {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(s.started) >= self.window {
            s.started = now;
            s.passed = 0;
        }
        if s.passed < self.burst {
            s.passed += 1;
            let suppressed = std::mem::take(&mut s.suppressed);
            LogDecision::Log { suppressed }
        } else {
            s.suppressed += 1;
            LogDecision::Hold
        }
    }
}

/// Counts failures per source address in a sliding window and refuses an
/// address that reached `max` until its oldest failure leaves the window.
/// Keeps at most `max_addresses` addresses (the oldest are forgotten first),
/// so a flood from many addresses cannot grow it without bound.
#[derive(Debug)]
pub struct FailureLimiter {
    window: Duration,
    max: usize,
    max_addresses: usize,
    failures: Mutex<HashMap<IpAddr, Vec<Instant>>>,
}

impl FailureLimiter {
    pub fn new(window: Duration, max: usize) -> Self {
        FailureLimiter {
            window,
            max,
            max_addresses: 10_000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(wait)` if `addr` has used up its failures: try again after `wait`.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        self.check_at(addr, Instant::now())
    }

    fn check_at(&self, addr: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = map.get_mut(&addr) else {
            return Ok(());
        };
        times.retain(|t| now.duration_since(*t) < self.window);
        if times.len() < self.max {
            return Ok(());
        }
        let oldest = times[0];
        Err(self.window.saturating_sub(now.duration_since(oldest)))
    }

    /// Records a failure of `addr`.
    pub fn failed(&self, addr: IpAddr) {
        self.failed_at(addr, Instant::now());
    }

    fn failed_at(&self, addr: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_addresses && !map.contains_key(&addr) {
            map.retain(|_, times| {
                times.retain(|t| now.duration_since(*t) < self.window);
                !times.is_empty()
            });
            if map.len() >= self.max_addresses {
                // Still full of live entries: forget the one whose last
                // failure is oldest.
                if let Some(oldest) = map
                    .iter()
                    .min_by_key(|(_, t)| t.last().copied())
                    .map(|(a, _)| *a)
                {
                    map.remove(&oldest);
                }
            }
        }
        let times = map.entry(addr).or_default();
        times.push(now);
        if times.len() > self.max {
            let excess = times.len() - self.max;
            times.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_past_the_burst_are_held_and_then_counted() {
        let l = LogLimiter::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), LogDecision::Log { suppressed: 0 });
        assert_eq!(l.check_at(t0), LogDecision::Log { suppressed: 0 });
        for _ in 0..5 {
            assert_eq!(l.check_at(t0), LogDecision::Hold);
        }
        let later = t0 + Duration::from_secs(11);
        assert_eq!(l.check_at(later), LogDecision::Log { suppressed: 5 });
        assert_eq!(l.check_at(later), LogDecision::Log { suppressed: 0 });
        assert_eq!(l.check_at(later), LogDecision::Hold);
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_they_age_out() {
        let l = FailureLimiter::new(Duration::from_secs(60), 3);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(l.check_at(a, t0).is_ok(), "attempt {i}");
            l.failed_at(a, t0 + Duration::from_secs(i));
        }
        let wait = l.check_at(a, t0 + Duration::from_secs(10)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(l.check_at(b, t0).is_ok(), "another address is not affected");
        assert!(l.check_at(a, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn the_table_of_addresses_stays_bounded() {
        let mut l = FailureLimiter::new(Duration::from_secs(60), 3);
        l.max_addresses = 100;
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.failed_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(l.failures.lock().unwrap().len() <= 100);
    }
}
