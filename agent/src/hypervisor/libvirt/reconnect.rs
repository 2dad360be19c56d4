//! Reopening a lost libvirt connection (libvirtd restarted, say). Tried at once the first
//! time, then on the agent's [`Backoff`] schedule, so a libvirtd that is down for long is
//! not hammered by every poll, and one that comes back is found again within seconds.
//!
//! libvirt's event loop notices a closed socket at once (or, with keepalives, a libvirtd
//! that stopped answering) and the connection's event stream says so; the poller then
//! polls at once, and that call reconnects here. The call that follows a failed reconnect
//! fails on the dead connection, which is how the poller learns that libvirt is
//! unreachable and heartbeats say so; it polls again on the same kind of schedule until
//! a reconnect works.
//!
//! A new connection gets a lifecycle-event registration of its own (the old one is
//! dropped with the old connection) and its hint stream goes out to the poller, which
//! polls every domain on receiving it: whatever happened meanwhile produced no event.

use std::time::{Duration, Instant};

use virt::connect::Connect;

use super::{LibvirtHost, ensure_storage_pool, events};
use crate::backoff::Backoff;

/// The wait after the first failed attempt.
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_DELAY: Duration = Duration::from_secs(5);

/// When the next attempt to reconnect may be made.
#[derive(Debug)]
pub struct ReconnectSchedule {
    backoff: Backoff,
    /// No attempt before this; `None` while the connection is fine.
    next_attempt: Option<Instant>,
}

impl Default for ReconnectSchedule {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(FIRST_DELAY, MAX_DELAY),
            next_attempt: None,
        }
    }
}

impl ReconnectSchedule {
    /// Whether an attempt to reconnect may be made at `now`.
    pub fn may_attempt(&self, now: Instant) -> bool {
        self.next_attempt.is_none_or(|next| now >= next)
    }

    /// An attempt failed at `now`: the next one waits longer. Returns that wait.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.backoff.failed();
        self.next_attempt = Some(now + delay);
        delay
    }

    /// The connection works (again); returns how many attempts had failed.
    pub fn succeeded(&mut self) -> u32 {
        self.next_attempt = None;
        self.backoff.succeeded()
    }
}

impl LibvirtHost {
    /// Reopens the connection if libvirtd went away, with backoff between failed attempts.
    pub(super) fn reconnect_if_dead(&mut self) {
        if self.connection.is_alive().unwrap_or(false) {
            return;
        }
        let now = Instant::now();
        if !self.reconnect.may_attempt(now) {
            return;
        }
        match Connect::open(Some(&self.settings.uri)) {
            Ok(connection) => {
                let failed_attempts = self.reconnect.succeeded();
                tracing::info!(uri = %self.settings.uri, failed_attempts, "reconnected to libvirt");
                events::enable_keepalive(&connection);
                self.forget_connection_events();
                self.connection = connection;
                // A restarted libvirtd brings autostarted pools back; make sure of it.
                if let Err(error) = ensure_storage_pool(&self.connection, &self.settings) {
                    tracing::warn!(%error, "the storage pool is not ready after reconnecting");
                }
                if let Err(error) = self.register_for_events() {
                    tracing::warn!(%error, "no lifecycle events on the new libvirt connection; polling only");
                }
            }
            Err(error) => {
                let retry_in = self.reconnect.failed(now);
                tracing::warn!(uri = %self.settings.uri, error = error.message(), ?retry_in,
                    "libvirt is unreachable");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_wait_longer_after_each_failure_and_start_over_on_success() {
        let mut schedule = ReconnectSchedule::default();
        let start = Instant::now();
        assert!(schedule.may_attempt(start));
        let mut delays = Vec::new();
        let mut now = start;
        for _ in 0..8 {
            let delay = schedule.failed(now);
            assert!(!schedule.may_attempt(now));
            assert!(!schedule.may_attempt(now + delay - Duration::from_millis(1)));
            now += delay;
            assert!(schedule.may_attempt(now));
            delays.push(delay);
        }
        let jittered = |nominal: Duration| {
            nominal.mul_f64(1.0 - crate::backoff::JITTER)
                ..=nominal.mul_f64(1.0 + crate::backoff::JITTER)
        };
        assert!(jittered(FIRST_DELAY).contains(&delays[0]), "{delays:?}");
        assert!(jittered(FIRST_DELAY * 2).contains(&delays[1]), "{delays:?}");
        assert!(
            jittered(MAX_DELAY).contains(delays.last().unwrap()),
            "{delays:?}"
        );
        assert_eq!(schedule.succeeded(), 8);
        assert!(schedule.may_attempt(now));
        assert!(jittered(FIRST_DELAY).contains(&schedule.failed(now)));
    }
}
