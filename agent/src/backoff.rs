//! The one retry schedule of the agent, for everything it reconnects to (the coordinator,
//! a restarted libvirtd): the first retry after a short delay, each further one after twice
//! the delay up to a bound, every delay spread by ±20 % jitter so that agents that lost the
//! same peer at the same moment do not all come back at once. Success starts over.
//!
//! A schedule may keep its first retries after a success quick
//! ([`Backoff::with_quick_retries`]): a peer that was there a moment ago is most likely
//! back within seconds (a restart, a network blip), and doubling from the first failure on
//! would have the agent sleep through most of that time after it is back. Only once the
//! quick retries are spent does the delay grow.
//!
//! Only computes delays; the caller sleeps or checks the time.

use std::time::Duration;

/// How far a delay may stray from its nominal value, as a fraction of it.
pub const JITTER: f64 = 0.2;

/// Exponential backoff with jitter; see the module docs.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    /// The nominal delay after the next failure.
    next: Duration,
    failures: u32,
    /// After a success, this many failures wait about `quick_delay` each.
    quick_retries: u32,
    quick_delay: Duration,
    /// Whether the quick retries apply: after a success, until a permanent failure.
    quick: bool,
}

impl Backoff {
    /// Waits about `first` after the first failure and never much more than `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first.min(max),
            failures: 0,
            quick_retries: 0,
            quick_delay: first.min(max),
            quick: false,
        }
    }

    /// After each success, the next `count` failures wait about `delay` each (the first one
    /// about the first delay, if that is shorter); then the delay doubles from `delay` on.
    pub fn with_quick_retries(mut self, delay: Duration, count: u32) -> Self {
        self.quick_delay = delay.min(self.max);
        self.quick_retries = count;
        self
    }

    /// One more failed attempt: how long to wait before the next one.
    pub fn failed(&mut self) -> Duration {
        self.failed_with(rand::random_range((1.0 - JITTER)..(1.0 + JITTER)))
    }

    fn failed_with(&mut self, jitter_factor: f64) -> Duration {
        let nominal = if self.quick && self.failures < self.quick_retries {
            let nominal = self.next.min(self.quick_delay);
            self.next = self.quick_delay.saturating_mul(2).min(self.max);
            nominal
        } else {
            let nominal = self.next;
            self.next = nominal.saturating_mul(2).min(self.max);
            nominal
        };
        self.failures = self.failures.saturating_add(1);
        nominal.mul_f64(jitter_factor)
    }

    /// A failure that retrying soon will not fix (a refused credential, say): from now on
    /// wait the longest delay, until a success.
    pub fn wait_longest(&mut self) {
        self.next = self.max;
        self.quick = false;
    }

    /// The attempt worked: start over. Returns how many attempts had failed.
    pub fn succeeded(&mut self) -> u32 {
        let failures = self.failures;
        self.next = self.first.min(self.max);
        self.failures = 0;
        self.quick = true;
        failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_double_up_to_the_bound_and_start_over_on_success() {
        let mut backoff = Backoff::new(FIRST, MAX);
        let nominal: Vec<Duration> = (0..8).map(|_| backoff.failed_with(1.0)).collect();
        assert_eq!(nominal[0], FIRST);
        assert_eq!(nominal[1], FIRST * 2);
        assert!(nominal.windows(2).all(|pair| pair[1] >= pair[0]));
        assert!(nominal.iter().all(|delay| *delay <= MAX));
        assert_eq!(*nominal.last().unwrap(), MAX);
        assert_eq!(backoff.succeeded(), 8);
        assert_eq!(backoff.failed_with(1.0), FIRST);

        backoff.wait_longest();
        assert_eq!(backoff.failed_with(1.0), MAX);
        assert_eq!(backoff.succeeded(), 2);
    }

    #[test]
    fn quick_retries_follow_a_success_and_then_the_delay_doubles() {
        let quick = Duration::from_secs(1);
        let mut backoff = Backoff::new(FIRST, MAX).with_quick_retries(quick, 3);
        // Never connected yet: the usual doubling.
        assert_eq!(backoff.failed_with(1.0), FIRST);
        assert_eq!(backoff.failed_with(1.0), FIRST * 2);
        backoff.succeeded();
        let nominal: Vec<Duration> = (0..6).map(|_| backoff.failed_with(1.0)).collect();
        assert_eq!(
            nominal,
            [FIRST, quick, quick, quick * 2, quick * 4, MAX],
            "three quick retries after a success, then doubling up to the bound"
        );
        // A refused credential ends the quick retries.
        backoff.succeeded();
        backoff.wait_longest();
        assert_eq!(backoff.failed_with(1.0), MAX);
        assert_eq!(backoff.failed_with(1.0), MAX);
    }

    #[test]
    fn jitter_stays_within_its_band_and_varies() {
        let mut delays = Vec::new();
        for _ in 0..200 {
            let mut backoff = Backoff::new(FIRST, MAX);
            delays.push(backoff.failed());
        }
        let (low, high) = (FIRST.mul_f64(1.0 - JITTER), FIRST.mul_f64(1.0 + JITTER));
        assert!(
            delays.iter().all(|delay| (low..=high).contains(delay)),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|delay| *delay != delays[0]),
            "two hundred agents would retry in lockstep"
        );
    }
}
