//! Waiting for a condition with a deadline. Tests poll for what they expect to become true;
//! a fixed sleep is never the thing that makes an assertion pass.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How often [`wait_until`] checks again.
const POLL_EVERY: Duration = Duration::from_millis(150);

/// Calls `check` until it returns `Ok(Some(value))` and returns that value, or fails once
/// `timeout` has passed. `Ok(None)` and `Err(_)` both mean "not yet"; the last error is
/// part of the timeout message, so a condition that can never hold still explains itself.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if started.elapsed() >= timeout {
            match last_error {
                Some(err) => bail!(
                    "timed out after {:.1}s waiting for {what}; last error: {err:#}",
                    timeout.as_secs_f64()
                ),
                None => bail!(
                    "timed out after {:.1}s waiting for {what}",
                    timeout.as_secs_f64()
                ),
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
