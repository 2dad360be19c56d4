//! How the agent notices changes nobody asked it for (a guest powering itself off, a crash,
//! `virsh destroy`, a hand-made domain appearing): the host's hints (libvirt's lifecycle
//! events, see [`crate::hypervisor::hints`]) make it read the one domain that changed
//! within milliseconds, and a periodic poll of every domain is the safety net for what
//! hints miss. Changes go to the [`StateTracker`] and out on a broadcast channel that the
//! current coordinator session (if any) forwards.
//!
//! One task ([`StatePoller::run`]) does both, so two looks never overlap:
//! - a hint that one domain changed: that domain is read (one hypervisor call for every
//!   hint already queued, each domain once: a start's or a destroy's pair of events that
//!   arrived together is one read);
//! - hints were dropped, the connection closed, a new connection's stream arrived (after
//!   a reconnect), or the poll interval passed: every domain is read;
//! - a look that fails (libvirt away) is retried soon, then less and less often (up to
//!   every 5 s), not only at the next interval: a retry is also what reconnects;
//! - with [`StatePoller::watching_addresses`], every running product VM that has no
//!   address yet is read again that often: a guest's DHCP lease or guest agent comes
//!   without any lifecycle event, and its addresses should not wait for the next poll.
//!
//! Reads race with operations; the tracker's poll tickets keep an older read from
//! overwriting a newer one (see [`crate::state`]). Watching only reads; it never changes a
//! domain.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;
use vmm_proto::DomainReport;
use vmm_shared::VmId;

use crate::backoff::Backoff;
use crate::hypervisor::hints::{Hint, HintStream, HintStreams};
use crate::hypervisor::{FailureKind, HypervisorError, HypervisorHandle};
use crate::metrics::agent as agent_metrics;
use crate::state::{StateTracker, snapshot_report};

/// How many unsent changes a slow session may fall behind before it resends everything.
const CHANGE_BUFFER: usize = 1024;
/// After a failed look, the next full poll comes this soon, then later and later.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub struct StatePoller {
    hypervisor: HypervisorHandle,
    tracker: Arc<StateTracker>,
    changes: broadcast::Sender<DomainReport>,
    libvirt_connected: AtomicBool,
    /// How often running product VMs without addresses are read again; `None`: only at
    /// the poll interval.
    address_interval: Option<Duration>,
}

impl StatePoller {
    pub fn new(hypervisor: HypervisorHandle, tracker: Arc<StateTracker>) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        Self {
            hypervisor,
            tracker,
            changes,
            libvirt_connected: AtomicBool::new(true),
            address_interval: None,
        }
    }

    /// Reads every running product VM that has no address yet every `interval` (see the
    /// module docs).
    pub fn watching_addresses(mut self, interval: Duration) -> Self {
        self.address_interval = Some(interval);
        self
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
            self.publish(change);
        }
        Ok(())
    }

    /// Reads these domains (in one hypervisor call), records and publishes what changed,
    /// a domain that is gone included.
    pub async fn refresh(&self, uuids: Vec<VmId>) -> Result<(), HypervisorError> {
        let ticket = self.tracker.begin_poll();
        let observed = self
            .hypervisor
            .call(move |hv| {
                uuids
                    .into_iter()
                    .map(|uuid| Ok((uuid, hv.find_vm(uuid)?)))
                    .collect::<Result<Vec<_>, HypervisorError>>()
            })
            .await;
        self.libvirt_connected
            .store(observed.is_ok(), Ordering::Relaxed);
        for (uuid, domain) in observed? {
            let key = domain
                .as_ref()
                .map_or_else(|| uuid.to_string(), |domain| domain.uuid.clone());
            if let Some(change) = self.tracker.apply_refresh(ticket, &key, domain.as_ref()) {
                self.publish(change);
            }
        }
        Ok(())
    }

    fn publish(&self, change: DomainReport) {
        tracing::debug!(domain = %change.domain_name, state = ?change.state(), generation = change.generation, "domain changed");
        // No receiver just means no coordinator session right now.
        let _ = self.changes.send(change);
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

    /// Watches the host forever: reads a domain whenever the current hint stream says it
    /// changed, every domain whenever hints were lost, the connection closed or a new
    /// connection's stream arrives on `hint_streams`, and every `interval` in any case;
    /// retries soon after a failed look. See the module docs.
    pub async fn run(&self, interval: Duration, mut hint_streams: HintStreams) {
        let mut hints: Option<HintStream> = None;
        let mut streams_open = true;
        let mut next_poll = Instant::now();
        let mut retry = Backoff::new(RETRY_FIRST, RETRY_MAX);
        let mut failing = false;
        let mut next_address_look = self.address_interval.map(|every| Instant::now() + every);
        loop {
            let wake = tokio::select! {
                () = tokio::time::sleep_until(next_poll) => Wake::PollDue,
                () = sleep_until_some(next_address_look) => Wake::AddressesDue,
                stream = hint_streams.next(), if streams_open => Wake::NewStream(stream),
                hint = next_hint(hints.as_mut()) => Wake::Hint(hint),
            };
            let look = match wake {
                Wake::PollDue => Look::Everything,
                Wake::AddressesDue => {
                    next_address_look = self.address_interval.map(|every| Instant::now() + every);
                    let awaiting = self.tracker.running_without_addresses();
                    if awaiting.is_empty() || failing {
                        continue;
                    }
                    Look::Domains(awaiting.into_iter().collect())
                }
                Wake::NewStream(Some(stream)) => {
                    tracing::debug!("a new stream of libvirt events; polling every domain");
                    hints = Some(stream);
                    Look::Everything
                }
                Wake::NewStream(None) => {
                    streams_open = false;
                    continue;
                }
                Wake::Hint(None) => {
                    hints = None;
                    continue;
                }
                Wake::Hint(Some(first)) => {
                    // Everything already queued goes into the same look.
                    let queued = hints.as_mut().map_or_else(Vec::new, |stream| {
                        std::iter::from_fn(|| stream.try_recv()).collect()
                    });
                    Look::after(std::iter::once(first).chain(queued))
                }
            };
            let polled_everything = matches!(look, Look::Everything);
            let looked = match look {
                Look::Everything => self.poll_once().await,
                Look::Domains(uuids) => self.refresh(uuids.into_iter().collect()).await,
            };
            match looked {
                Ok(()) => {
                    retry.succeeded();
                    if failing {
                        tracing::info!("reading libvirt works again");
                        failing = false;
                    }
                    if polled_everything {
                        next_poll = Instant::now() + interval;
                    }
                }
                Err(error) => {
                    if !failing {
                        tracing::warn!(%error, "cannot read libvirt; retrying, less and less often");
                        failing = true;
                    }
                    next_poll = Instant::now() + retry.failed();
                }
            }
        }
    }
}

/// Sleeps until `deadline`; never resolves without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What woke [`StatePoller::run`].
enum Wake {
    PollDue,
    /// Time to read the running product VMs that have no address yet.
    AddressesDue,
    /// A new connection's hint stream, or `None`: the host will send no more.
    NewStream(Option<HintStream>),
    /// The next hint, or `None`: the stream ended.
    Hint(Option<Hint>),
}

/// What to read after some hints.
#[derive(Debug, PartialEq, Eq)]
enum Look {
    Everything,
    Domains(BTreeSet<VmId>),
}

impl Look {
    /// Each domain hinted at once; everything if any hint asks for it (or names no domain
    /// the agent can look up). Counts the hints for the metrics.
    fn after(hints: impl IntoIterator<Item = Hint>) -> Self {
        let mut domains = BTreeSet::new();
        let mut everything = false;
        for hint in hints {
            match hint {
                Hint::DomainChanged { uuid } => {
                    agent_metrics::domain_events_received(1);
                    match uuid.parse() {
                        Ok(vm_id) => {
                            domains.insert(vm_id);
                        }
                        Err(_) => everything = true,
                    }
                }
                Hint::Missed { count } => {
                    agent_metrics::domain_events_dropped(count);
                    tracing::warn!(count, "libvirt events were dropped; polling every domain");
                    everything = true;
                }
                Hint::ConnectionClosed { reason } => {
                    tracing::warn!(%reason, "libvirt closed the connection; reconnecting");
                    everything = true;
                }
            }
        }
        if everything {
            Self::Everything
        } else {
            Self::Domains(domains)
        }
    }
}

/// The next hint of the current stream; never resolves without one.
async fn next_hint(stream: Option<&mut HintStream>) -> Option<Hint> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
#[path = "poller_tests.rs"]
mod tests;
