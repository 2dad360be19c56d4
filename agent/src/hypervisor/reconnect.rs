//! When to try reopening a lost libvirt connection: at once the first time, then after a
//! delay that doubles with every failed attempt up to [`MAX_DELAY`], so a libvirtd that is
//! down for long is not hammered by every poll, and one that comes back is found again
//! within seconds.

use std::time::{Duration, Instant};

/// The wait after the first failed attempt.
pub const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct ReconnectBackoff {
    /// No attempt before this; `None` while the connection is fine.
    next_attempt: Option<Instant>,
    delay: Duration,
    failures: u32,
}

impl ReconnectBackoff {
    /// Whether an attempt to reconnect may be made at `now`.
    pub fn may_attempt(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|next| now >= next)
    }

    /// An attempt failed at `now`: the next one waits longer.
    pub fn failed(&mut self, now: Instant) -> Duration {
        self.delay = if self.failures == 0 {
            FIRST_DELAY
        } else {
            (self.delay * 2).min(MAX_DELAY)
        };
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = Some(now + self.delay);
        self.delay
    }

    /// The connection works (again); returns how many attempts had failed.
    pub fn succeeded(&mut self) -> u32 {
        let failures = self.failures;
        *self = Self::default();
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_bound_and_reset_on_success() {
        let mut backoff = ReconnectBackoff::default();
        let start = Instant::now();
        assert!(backoff.may_attempt(start));
        let mut delays = Vec::new();
        let mut now = start;
        for _ in 0..8 {
            let delay = backoff.failed(now);
            assert!(!backoff.may_attempt(now));
            assert!(!backoff.may_attempt(now + delay - Duration::from_millis(1)));
            now += delay;
            assert!(backoff.may_attempt(now));
            delays.push(delay);
        }
        assert_eq!(delays[0], FIRST_DELAY);
        assert_eq!(delays[1], FIRST_DELAY * 2);
        assert!(delays.iter().all(|delay| *delay <= MAX_DELAY));
        assert_eq!(*delays.last().unwrap(), MAX_DELAY);
        assert_eq!(backoff.succeeded(), 8);
        assert!(backoff.may_attempt(now));
        assert_eq!(backoff.failed(now), FIRST_DELAY);
    }
}
