//! Commands that change what exists on the host (create and delete of VMs and snapshots)
//! and are still running. A registration waits for them before taking its inventory.
//!
//! Why: when the session drops while such a command runs (the coordinator restarted, the
//! network blinked), the command runs on to its end, but its answer is lost. The coordinator
//! then learns the outcome from the next registration's inventory, and it treats a VM it
//! never got an answer for that is missing from the inventory as never made (it drops the
//! record and releases the quota). An inventory taken while the create is still running
//! would miss the domain that appears a moment later: a domain nobody knows of. Waiting
//! until the command has finished makes the inventory include everything that was accepted
//! before it.

use std::time::Duration;

use tokio::sync::watch;

use super::CommandExecutor;

/// Counts running commands that change what exists; see the module docs.
#[derive(Debug)]
pub(super) struct ExistenceChanges {
    running: watch::Sender<usize>,
}

impl Default for ExistenceChanges {
    fn default() -> Self {
        Self {
            running: watch::Sender::new(0),
        }
    }
}

/// Counts one command as running until dropped (also when its task is cancelled).
pub(super) struct Running<'a> {
    changes: &'a ExistenceChanges,
}

impl ExistenceChanges {
    pub(super) fn begin(&self) -> Running<'_> {
        self.running.send_modify(|running| *running += 1);
        Running { changes: self }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.changes
            .running
            .send_modify(|running| *running = running.saturating_sub(1));
    }
}

impl CommandExecutor {
    /// Waits until no command that creates or deletes a VM or snapshot runs, at most `bound`.
    /// Returns whether that point was reached.
    pub async fn existence_settled(&self, bound: Duration) -> bool {
        let mut running = self.existence_changes.running.subscribe();
        let busy = *running.borrow_and_update();
        if busy == 0 {
            return true;
        }
        tracing::info!(
            running = busy,
            "waiting for creates and deletes in progress before taking the inventory"
        );
        let settled = tokio::time::timeout(bound, running.wait_for(|running| *running == 0))
            .await
            .is_ok();
        if !settled {
            tracing::warn!(
                ?bound,
                "creates or deletes still running; registering without waiting longer"
            );
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn waits_for_running_changes_within_its_bound() {
        let (executor, _host) = super::super::tests::memory_executor().await;
        let executor = Arc::new(executor);
        assert!(executor.existence_settled(Duration::from_millis(10)).await);

        let running = executor.existence_changes.begin();
        assert!(!executor.existence_settled(Duration::from_millis(50)).await);
        let waiter = tokio::spawn({
            let executor = Arc::clone(&executor);
            async move { executor.existence_settled(Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(running);
        assert!(waiter.await.unwrap());
    }
}
