//! libvirt's default event loop, set up once per process, run on a thread of its own.
//!
//! libvirt dispatches every event (domain events, close notices, the remote driver's
//! socket I/O and keepalive probes) from whatever event loop the process registered with
//! `virEventRegisterDefaultImpl`, and only while some thread keeps calling
//! `virEventRunDefaultImpl`. [`start`] does both, once; later calls only report how the
//! first one went.
//!
//! It must run BEFORE the process opens a connection it wants events from: the remote
//! driver (`qemu:///system` goes through libvirtd) decides at open whether it can watch
//! its socket from an event loop and answer libvirtd's keepalive probes. A connection
//! opened earlier still works for calls, but reads events only during its next call and
//! never notices a silent libvirtd.
//!
//! This module must never block or stop the loop thread on purpose: every callback of
//! the process runs on it. It holds no `unsafe` (`virt` wraps both calls safely).
#![forbid(unsafe_code)]

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

/// The loop could not be set up; nothing in this process will receive libvirt events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventLoopError {
    #[error("cannot register libvirt's default event loop: {0}")]
    Register(String),
    #[error("cannot start the libvirt event loop thread: {0}")]
    Thread(String),
}

static EVENT_LOOP: OnceLock<Result<(), EventLoopError>> = OnceLock::new();
static ITERATION_FAILURES: AtomicU64 = AtomicU64::new(0);

/// After a failed iteration, so a persistent failure does not spin a core.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_millis(50);

/// Registers libvirt's default event loop and starts the thread that runs it, once per
/// process; calling it again is harmless and returns the first call's outcome. Call it
/// before opening any libvirt connection.
pub fn start() -> Result<(), EventLoopError> {
    EVENT_LOOP.get_or_init(register_and_spawn).clone()
}

/// Whether [`start`] succeeded in this process.
pub fn is_running() -> bool {
    matches!(EVENT_LOOP.get(), Some(Ok(())))
}

/// How many iterations of the loop failed since the process started (each is logged).
pub fn iteration_failures() -> u64 {
    ITERATION_FAILURES.load(Ordering::Relaxed)
}

fn register_and_spawn() -> Result<(), EventLoopError> {
    virt::event::event_register_default_impl()
        .map_err(|error| EventLoopError::Register(error.to_string()))?;
    thread::Builder::new()
        .name("libvirt-events".into())
        .spawn(run_forever)
        .map_err(|error| EventLoopError::Thread(error.to_string()))?;
    Ok(())
}

fn run_forever() {
    loop {
        if let Err(error) = virt::event::event_run_default_impl() {
            ITERATION_FAILURES.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, "an iteration of the libvirt event loop failed");
            thread::sleep(PAUSE_AFTER_FAILURE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loop_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "libvirt-events")
            .count()
    }

    #[test]
    fn starting_again_and_at_once_from_many_threads_is_harmless() {
        let outcomes: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(start))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        assert_eq!(start(), Ok(()));
        assert!(is_running());
        // The thread names itself once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while loop_threads() == 0 && std::time::Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(Duration::from_millis(50));
        assert_eq!(loop_threads(), 1);
    }
}
