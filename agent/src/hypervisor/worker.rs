//! The one OS thread that owns the hypervisor connection, and the async handle to it.
//!
//! libvirt calls block, and the `test:///default` driver gives every connection a fresh
//! in-memory host, so the agent opens exactly one connection for its whole life and runs
//! every call on this thread, in the order the calls arrive. Async code sends a closure and
//! awaits its result; it never blocks the runtime and never waits *on* this thread (waiting
//! for a guest to power off is a loop of short calls from async code).

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc as std_mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::{FailureKind, Hypervisor, HypervisorError};

type Job = Box<dyn FnOnce(&mut dyn Hypervisor) + Send>;

/// Cheap-to-clone access to the hypervisor worker thread.
#[derive(Clone)]
pub struct HypervisorHandle {
    jobs: std_mpsc::Sender<Job>,
}

impl HypervisorHandle {
    /// Starts the worker thread, opens the hypervisor on it with `open` and returns once
    /// that succeeded. The hypervisor value never leaves the thread.
    pub async fn spawn<H, F>(open: F) -> Result<Self, HypervisorError>
    where
        H: Hypervisor + 'static,
        F: FnOnce() -> Result<H, HypervisorError> + Send + 'static,
    {
        let (jobs, job_queue) = std_mpsc::channel::<Job>();
        let (opened_tx, opened_rx) = oneshot::channel();
        thread::Builder::new()
            .name("hypervisor".into())
            .spawn(move || {
                let mut hypervisor = match open() {
                    Ok(hypervisor) => {
                        let _ = opened_tx.send(Ok(()));
                        hypervisor
                    }
                    Err(error) => {
                        let _ = opened_tx.send(Err(error));
                        return;
                    }
                };
                // Ends when every handle is dropped.
                while let Ok(job) = job_queue.recv() {
                    // A panic in one call must not take the connection away from every
                    // later call; its caller sees the reply channel closed.
                    let outcome = panic::catch_unwind(AssertUnwindSafe(|| job(&mut hypervisor)));
                    if outcome.is_err() {
                        tracing::error!("a hypervisor call panicked; the agent carries on");
                    }
                }
            })
            .map_err(|error| {
                HypervisorError::new(
                    FailureKind::Internal,
                    format!("cannot start the hypervisor thread: {error}"),
                )
            })?;
        match opened_rx.await {
            Ok(Ok(())) => Ok(Self { jobs }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(worker_gone()),
        }
    }

    /// Runs `job` on the hypervisor thread and returns its result.
    pub async fn call<R, F>(&self, job: F) -> Result<R, HypervisorError>
    where
        R: Send + 'static,
        F: FnOnce(&mut dyn Hypervisor) -> Result<R, HypervisorError> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel();
        let boxed: Job = Box::new(move |hypervisor| {
            let _ = reply_tx.send(job(hypervisor));
        });
        self.jobs.send(boxed).map_err(|_| worker_gone())?;
        reply_rx.await.map_err(|_| worker_gone())?
    }
}

fn worker_gone() -> HypervisorError {
    HypervisorError::new(
        FailureKind::Unavailable,
        "the hypervisor thread did not answer",
    )
}
