//! The periodic look at every domain on the host: the agent has no libvirt event loop, so
//! polling is how it notices changes nobody asked for (a guest powering itself off, a crash,
//! a hand-made domain appearing). Changes go to the [`StateTracker`] and out on a broadcast
//! channel that the current coordinator session (if any) forwards.
//!
//! Polling only reads; it never changes a domain.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use vmm_proto::DomainReport;
use vmm_shared::VmId;

use crate::hypervisor::{FailureKind, HypervisorError, HypervisorHandle};
use crate::state::{StateTracker, snapshot_report};

/// How many unsent changes a slow session may fall behind before it resends everything.
const CHANGE_BUFFER: usize = 1024;

pub struct StatePoller {
    hypervisor: HypervisorHandle,
    tracker: Arc<StateTracker>,
    changes: broadcast::Sender<DomainReport>,
    libvirt_connected: AtomicBool,
}

impl StatePoller {
    pub fn new(hypervisor: HypervisorHandle, tracker: Arc<StateTracker>) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            hypervisor,
            tracker,
            changes,
            libvirt_connected: AtomicBool::new(true),
        }
    }

    /// Changes from now on. Subscribe before taking an inventory, so nothing falls between.
    pub fn subscribe(&self) -> broadcast::Receiver<DomainReport> {
        self.changes.subscribe()
    }

    /// Whether the last poll reached libvirt.
    pub fn libvirt_connected(&self) -> bool {
        self.libvirt_connected.load(Ordering::Relaxed)
    }

    pub fn tracker(&self) -> &StateTracker {
        &self.tracker
    }

    /// Lists every domain once, records and publishes what changed.
    pub async fn poll_once(&self) -> Result<(), HypervisorError> {
        let ticket = self.tracker.begin_poll();
        let listing = self.hypervisor.call(|hv| hv.list_domains()).await;
        self.libvirt_connected
            .store(listing.is_ok(), Ordering::Relaxed);
        for change in self.tracker.apply_poll(ticket, &listing?) {
            tracing::debug!(domain = %change.domain_name, state = ?change.state(), generation = change.generation, "domain changed");
            // No receiver just means no coordinator session right now.
            let _ = self.changes.send(change);
        }
        Ok(())
    }

    /// Every domain's latest report, after a fresh poll, with the snapshots of every product
    /// VM: what a registration sends. Fails rather than leave snapshots out, because the
    /// coordinator reconciles its snapshot records against this list.
    pub async fn inventory(&self) -> Result<Vec<DomainReport>, HypervisorError> {
        self.poll_once().await?;
        let mut reports = self.tracker.reports();
        let vm_ids: Vec<VmId> = reports
            .iter()
            .filter_map(|report| report.vm_id.parse().ok())
            .collect();
        let mut snapshots = self
            .hypervisor
            .call(move |hv| {
                let mut by_vm = HashMap::with_capacity(vm_ids.len());
                for vm_id in vm_ids {
                    match hv.list_snapshots(vm_id) {
                        Ok(snapshots) => {
                            by_vm.insert(vm_id, snapshots);
                        }
                        // Deleted since the poll; the next poll reports it absent.
                        Err(error) if error.kind == FailureKind::NotFound => {}
                        Err(error) => return Err(error),
                    }
                }
                Ok(by_vm)
            })
            .await?;
        for report in &mut reports {
            let Ok(vm_id) = report.vm_id.parse::<VmId>() else {
                continue;
            };
            if let Some(observed) = snapshots.remove(&vm_id) {
                report.snapshots = observed.iter().map(snapshot_report).collect();
            }
        }
        Ok(reports)
    }

    /// Polls forever, every `interval`.
    pub async fn run(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_failing = false;
        loop {
            ticker.tick().await;
            match self.poll_once().await {
                Ok(()) if was_failing => {
                    tracing::info!("polling libvirt works again");
                    was_failing = false;
                }
                Ok(()) => {}
                Err(error) => {
                    if !was_failing {
                        tracing::warn!(%error, "cannot poll libvirt; retrying every poll interval");
                    }
                    was_failing = true;
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "poller_tests.rs"]
mod tests;
