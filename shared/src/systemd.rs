//! Telling systemd how the service is doing, through the `sd-notify` crate: `READY=1` once
//! the process really serves, `STOPPING=1` when it begins to shut down, and `WATCHDOG=1`
//! pings while it is healthy (`WatchdogSec=` in the unit). Without `NOTIFY_SOCKET` (not
//! started by systemd with `Type=notify`) every notification is a no-op, and without
//! `WATCHDOG_USEC` the watchdog task does nothing.
//!
//! A ping proves more than "the runtime is alive": the watchdog task first runs a health
//! check the binary supplies (the coordinator asks its database, the agent makes a round trip
//! through its libvirt thread) and pings only when that answers in time. A process that hangs
//! there stops pinging, and systemd restarts it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the service is up (`READY=1`).
pub fn notify_ready() {
    send(&[NotifyState::Ready], "READY=1");
}

/// Tells systemd the service is shutting down (`STOPPING=1`).
pub fn notify_stopping() {
    send(&[NotifyState::Stopping], "STOPPING=1");
}

fn send(states: &[NotifyState], what: &str) {
    match sd_notify::notify(states) {
        Ok(()) => tracing::debug!(notification = what, "told systemd"),
        Err(error) => tracing::warn!(notification = what, %error, "cannot notify systemd"),
    }
}

/// The interval systemd expects watchdog pings within, when its watchdog is on for this
/// process (`WATCHDOG_USEC`, and `WATCHDOG_PID` unset or ours).
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

/// Feeds systemd's watchdog for as long as the process runs, when it is on; otherwise never
/// resolves and does nothing. See [`feed_watchdog`].
pub async fn run_watchdog<F, Fut, E>(check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    match watchdog_interval() {
        Some(interval) => {
            tracing::info!(
                ?interval,
                "systemd watchdog on: pinging at half the interval"
            );
            feed_watchdog(interval, check, || {
                send(&[NotifyState::Watchdog], "WATCHDOG=1")
            })
            .await
        }
        None => std::future::pending().await,
    }
}

/// Every half `interval`, runs `check` and calls `ping` when it succeeded within half the
/// interval. A check that fails or hangs skips the ping, so systemd sees a process that no
/// longer does its work as hung. Never returns.
pub async fn feed_watchdog<F, Fut, E>(interval: Duration, mut check: F, mut ping: impl FnMut())
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let period = interval / 2;
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match tokio::time::timeout(period, check()).await {
            Ok(Ok(())) => ping(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "health check failed: not feeding systemd's watchdog")
            }
            Err(_) => tracing::warn!(
                timeout = ?period,
                "health check did not answer in time: not feeding systemd's watchdog"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn pings_only_while_the_check_passes_in_time() {
        let pings = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let hung = Arc::new(AtomicBool::new(false));
        let task = {
            let (pings, healthy, hung) = (pings.clone(), healthy.clone(), hung.clone());
            tokio::spawn(async move {
                feed_watchdog(
                    Duration::from_millis(100),
                    move || {
                        let (healthy, hung) = (healthy.clone(), hung.clone());
                        async move {
                            if hung.load(Ordering::SeqCst) {
                                std::future::pending::<()>().await;
                            }
                            if healthy.load(Ordering::SeqCst) {
                                Ok(())
                            } else {
                                Err("database unreachable")
                            }
                        }
                    },
                    move || {
                        pings.fetch_add(1, Ordering::SeqCst);
                    },
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(320)).await;
        let healthy_pings = pings.load(Ordering::SeqCst);
        assert!(
            healthy_pings >= 4,
            "pings at half the interval: {healthy_pings}"
        );

        healthy.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let before = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            before,
            "a failing check stops pings"
        );

        healthy.store(true, Ordering::SeqCst);
        hung.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(60)).await;
        let before = pings.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            pings.load(Ordering::SeqCst),
            before,
            "a hung check stops pings"
        );

        hung.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pings.load(Ordering::SeqCst) > before, "pings resume");
        task.abort();
    }

    #[test]
    fn notifications_without_systemd_are_no_ops() {
        // NOTIFY_SOCKET is not set for unit tests; nothing is sent and nothing fails.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            notify_ready();
            notify_stopping();
        }
    }
}
