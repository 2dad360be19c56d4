//! The periodic look at every domain on the host: the agent has no libvirt event loop, so
//! polling is how it notices changes nobody asked for (a guest powering itself off, a crash,
//! a hand-made domain appearing). Changes go to the [`StateTracker`] and out on a broadcast
//! channel that the current coordinator session (if any) forwards.
//!
//! Polling only reads; it never changes a domain.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use vmm_proto::DomainReport;

use crate::hypervisor::{HypervisorError, HypervisorHandle};
use crate::state::StateTracker;

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
