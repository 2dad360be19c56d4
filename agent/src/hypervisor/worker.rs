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

/// What the worker thread is asked.
enum Request {
    Call(Job),
    /// Close the hypervisor connection and end; answered once it is closed.
    Close(oneshot::Sender<()>),
}

/// Cheap-to-clone access to the hypervisor worker thread.
#[derive(Clone)]
pub struct HypervisorHandle {
    jobs: std_mpsc::Sender<Request>,
}

impl HypervisorHandle {
    /// Starts the worker thread, opens the hypervisor on it with `open` and returns once
    /// that succeeded. The hypervisor value never leaves the thread.
    pub async fn spawn<H, F>(open: F) -> Result<Self, HypervisorError>
    where
        H: Hypervisor + 'static,
        F: FnOnce() -> Result<H, HypervisorError> + Send + 'static,
    {
        let (jobs, job_queue) = std_mpsc::channel::<Request>();
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
                // Ends when asked to close, or when every handle is dropped.
                let closed = loop {
                    match job_queue.recv() {
                        Ok(Request::Call(job)) => {
                            // A panic in one call must not take the connection away from
                            // every later call; its caller sees the reply channel closed.
                            let outcome =
                                panic::catch_unwind(AssertUnwindSafe(|| job(&mut hypervisor)));
                            if outcome.is_err() {
                                tracing::error!("a hypervisor call panicked; the agent carries on");
                            }
                        }
                        Ok(Request::Close(done)) => break Some(done),
                        Err(_) => break None,
                    }
                };
                drop(hypervisor);
                if let Some(done) = closed {
                    let _ = done.send(());
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
        self.jobs
            .send(Request::Call(boxed))
            .map_err(|_| worker_gone())?;
        reply_rx.await.map_err(|_| worker_gone())?
    }

    /// Closes the hypervisor connection after the calls queued before, waiting at most
    /// `patience` (a hung call ahead of it would otherwise hold the agent's exit); later
    /// calls on any handle fail. The agent closes it before it exits: a process that exits
    /// while this thread is still freeing the connection races the C libraries' own exit
    /// handlers (seen once: "double free or corruption", an abort instead of the exit code).
    pub async fn close(&self, patience: std::time::Duration) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.jobs.send(Request::Close(done_tx)).is_err() {
            return;
        }
        if tokio::time::timeout(patience, done_rx).await.is_err() {
            tracing::warn!(
                ?patience,
                "the hypervisor connection did not close in time; exiting anyway"
            );
        }
    }
}

fn worker_gone() -> HypervisorError {
    HypervisorError::new(
        FailureKind::Unavailable,
        "the hypervisor thread did not answer",
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::hypervisor::memory::MemoryHost;

    /// `close` comes after the calls queued before it, and no call gets through after it:
    /// what the agent relies on to have the connection closed before it exits.
    #[tokio::test]
    async fn close_follows_the_calls_queued_before_it_and_ends_the_thread() {
        let host = MemoryHost::new();
        let handle = host.spawn_handle().await.unwrap();
        let other = handle.clone();
        let answered = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&answered);
        let queued = tokio::spawn(async move {
            other
                .call(move |hv| {
                    std::thread::sleep(Duration::from_millis(200));
                    let facts = hv.host_facts();
                    flag.store(true, Ordering::SeqCst);
                    facts
                })
                .await
        });
        // The slow call is on the thread's queue before the close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.close(Duration::from_secs(10)).await;
        assert!(
            answered.load(Ordering::SeqCst),
            "the call queued before the close ran first"
        );
        assert!(queued.await.unwrap().is_ok());
        let after = handle.call(|hv| hv.host_facts()).await;
        let error = after.expect_err("no call after the close");
        assert_eq!(error.kind, FailureKind::Unavailable, "{error:?}");
        // Closing again (or from another clone) returns at once.
        tokio::time::timeout(
            Duration::from_secs(1),
            handle.close(Duration::from_secs(10)),
        )
        .await
        .expect("a second close returns at once");
    }
}
