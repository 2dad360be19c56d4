//! The coordinator's side of the agent stream (`AgentControl.Session`).
//!
//! An agent proves who it is ([`identity::authenticate`]: its client certificate, or the
//! shared development token), then registers as the host it may speak for: the host is
//! recorded as connected under a new session epoch, its inventory settles every VM recorded
//! on it, and a session loop applies what it sends afterwards. A host that stays silent for
//! `HOST_DEAD_AFTER`, or whose stream ends, becomes unreachable and its VMs `unknown` —
//! unless a newer session of the host registered meanwhile: a session's heartbeats and its
//! clean-up apply only while its epoch is the host's ([`open_session`], [`close_session`]).
//!
//! An agent can only speak about its own host: reports and results are applied only to VMs
//! recorded on the host that registered on this stream.
//!
//! Certificates reach hosts from here too ([`host_identity`]).
//!
//! Images reach hosts only from here (`FetchImage`, [`image_transfer`]): with the same
//! credential as the stream, for the host it names, which must have a session, only ready images, read from
//! the file in chunks as the host takes them. A registration's `cached_images` are recorded
//! per host, and every copy the coordinator no longer has (or has as another file) is
//! answered with `EvictImage` after `Registered`.
//!
//! Consoles are attached here too (`Console`, [`crate::console::agent_side`]): same
//! credential, only by the host the console was asked of.

use std::pin::Pin;
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use vmm_proto::agent_control_server::AgentControl;
use vmm_proto::{
    AgentMessage, CoordinatorMessage, EvictImage, Register, Registered, agent_message,
    coordinator_message,
};
use vmm_shared::{HostId, VmId};

use crate::hosts::registry::TaskGuard;
use crate::hosts::store::{self as host_store, HostRegistration, SessionEpoch};
use crate::images::store as image_store;
use crate::lifecycle::ReportSource;
use crate::operations::runner;
use crate::state::AppState;
use crate::vms::reports;

pub mod host_identity;
pub mod identity;
mod listener;
pub use listener::{incoming, incoming_tls};

/// How long a freshly connected agent has to send its `Register`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bounds for what a host may claim, against absurd or hostile registrations.
const MAX_HOST_CPUS: u64 = 65_536;
const MAX_HOST_MEMORY_MIB: u64 = 1 << 40;
const MAX_HOST_DISK_GB: u64 = 1 << 40;
/// Most cached images a registration may list.
const MAX_CACHED_IMAGES: usize = 4096;

pub struct AgentControlService {
    app: AppState,
}

impl AgentControlService {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }
}

type OutboundStream = Pin<Box<dyn Stream<Item = Result<CoordinatorMessage, Status>> + Send>>;
type ImageStream = Pin<Box<dyn Stream<Item = Result<vmm_proto::ImageChunk, Status>> + Send>>;

#[tonic::async_trait]
impl AgentControl for AgentControlService {
    type SessionStream = OutboundStream;
    type FetchImageStream = ImageStream;
    type ConsoleStream = crate::console::agent_side::DownStream;

    async fn console(
        &self,
        request: Request<Streaming<vmm_proto::ConsoleFrame>>,
    ) -> Result<Response<Self::ConsoleStream>, Status> {
        let caller = identity::authenticate(&self.app, &request).await?;
        let peer = request.remote_addr();
        let down =
            crate::console::agent_side::attach(&self.app, &caller, request.into_inner(), peer)
                .await?;
        Ok(Response::new(down))
    }

    async fn fetch_image(
        &self,
        request: Request<vmm_proto::FetchImageRequest>,
    ) -> Result<Response<Self::FetchImageStream>, Status> {
        let caller = identity::authenticate(&self.app, &request).await?;
        caller.speaks_for(&request.get_ref().host_id)?;
        let peer = request.remote_addr();
        let chunks = image_transfer::open(&self.app, request.into_inner(), peer).await?;
        Ok(Response::new(chunks))
    }

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = identity::authenticate(&self.app, &request).await?;
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();

        let register = match tokio::time::timeout(REGISTER_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(AgentMessage {
                body: Some(agent_message::Body::Register(register)),
            }))) => register,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "the first message must be Register",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before Register")),
            Ok(Err(status)) => return Err(status),
            Err(_) => return Err(Status::deadline_exceeded("no Register within 10 s")),
        };
        caller.speaks_for(&register.host_id)?;
        let registration = validate_registration(&register)?;
        let host = registration.id.clone();
        let (sender, receiver) = mpsc::channel(256);
        // `Registered` goes first into the new stream, before the session is attached to the
        // registry: from the attach on, a command for the host (an operation of this
        // coordinator, or one routed from another) can be queued at any moment, and the
        // agent must see `Registered` before any command.
        sender
            .try_send(Ok(registered(&self.app)))
            .map_err(|_| Status::internal("a new session's stream is full"))?;
        let _task = self.app.registry.track_task();
        let session = open_session(&self.app, &registration, &register, sender.clone()).await?;
        // A deletion of the host (or its enrolment anew) that committed before this session
        // was attached could not end it: it ends here instead.
        if !identity::still_valid(&self.app, &caller)
            .await
            .map_err(internal)?
        {
            self.app.registry.detach(&host, session.epoch);
            crate::hosts::admin::forget_revoked(&self.app.db, &host)
                .await
                .map_err(internal)?;
            return Err(Status::unauthenticated(format!(
                "the certificate of host {host} was revoked"
            )));
        }
        tracing::info!(host = %host, ?peer, session = session.epoch, cpus = registration.cpus, memory_mib = registration.memory_mib,
            disk_gb = registration.disk_gb, hypervisor = %registration.hypervisor, kvm = registration.kvm_usable,
            domains = register.inventory.len(), cached_images = register.cached_images.len(), "agent registered");

        let evicted = send_evictions(&host, &sender, session.evict).await;
        if let Err(status) = evicted {
            close_session(
                &self.app,
                &host,
                session.epoch,
                "the agent went away while registering",
            )
            .await;
            return Err(status);
        }
        tokio::spawn(run_session(
            self.app.clone(),
            host,
            session.epoch,
            inbound,
            self.app.registry.track_task(),
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// A registration recorded: its session epoch, and the cached images the host must evict.
#[derive(Debug)]
pub struct OpenedSession {
    pub epoch: SessionEpoch,
    pub evict: Vec<String>,
}

/// Records a registration: the host connected under a new session epoch, the session
/// attached (ending any older one), what the older one left unanswered settled, the
/// inventory reconciled, the cached images recorded. On any failure after the host was
/// recorded connected, the session is closed again, so no host stays `connected` without a
/// session.
pub async fn open_session(
    app: &AppState,
    registration: &HostRegistration,
    register: &Register,
    sender: mpsc::Sender<Result<CoordinatorMessage, Status>>,
) -> Result<OpenedSession, Status> {
    let host = &registration.id;
    let epoch = {
        let registration = registration.clone();
        crate::db::group_write(&app.db, move |conn| {
            Box::pin(async move { host_store::register_session(conn, &registration).await })
        })
        .await
        .map_err(internal)?
    };
    let abandoned = match app.registry.attach(host.clone(), epoch, sender) {
        Ok(abandoned) => abandoned,
        Err(refused) => {
            // Nothing of this session is attached; a newer one (or the shutdown) owns the
            // host's record.
            tracing::warn!(host = %host, session = epoch, reason = %refused, "registration refused");
            return Err(Status::aborted(refused.to_string()));
        }
    };
    let recorded = async {
        // What the previous session left unanswered is settled first, so that the inventory
        // below finds it settled.
        runner::settle_abandoned(&app.db, &abandoned, "the host reconnected before answering")
            .await?;
        // The inventory and the cached images in one write, grouped with other hosts'.
        let (host, inventory, cached) = (
            host.clone(),
            register.inventory.clone(),
            register.cached_images.clone(),
        );
        crate::db::group_write(&app.db, move |conn| {
            Box::pin(async move {
                reports::reconcile_inventory_in(conn, &host, &inventory).await?;
                image_store::record_host_copies_in(conn, &host, &cached).await
            })
        })
        .await
    }
    .await;
    match recorded {
        Ok(evict) => Ok(OpenedSession { epoch, evict }),
        Err(err) => {
            close_session(app, host, epoch, "its registration could not be recorded").await;
            Err(internal(err))
        }
    }
}

/// The first message of every session: the registration is accepted.
fn registered(app: &AppState) -> CoordinatorMessage {
    CoordinatorMessage {
        body: Some(coordinator_message::Body::Registered(Registered {
            heartbeat_interval_ms: heartbeat_interval_ms(app.settings.host_dead_after),
        })),
    }
}

/// Sends a new session the evictions of the cached images this coordinator no longer has.
async fn send_evictions(
    host: &HostId,
    sender: &mpsc::Sender<Result<CoordinatorMessage, Status>>,
    evict: Vec<String>,
) -> Result<(), Status> {
    for image_id in evict {
        tracing::info!(host = %host, %image_id, "host caches an image this coordinator no longer has; evicting it");
        let evict = CoordinatorMessage {
            body: Some(coordinator_message::Body::EvictImage(EvictImage {
                image_id,
            })),
        };
        sender
            .send(Ok(evict))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
    }
    Ok(())
}

/// Ends session `epoch` of `host`: unless a newer session replaced it (or the coordinator
/// is shutting down), the operations it left unanswered are settled and the host is marked
/// unreachable, its VMs `unknown`, but only while `epoch` is still the host's session in
/// the database (a late clean-up never undoes a newer registration).
pub async fn close_session(app: &AppState, host: &HostId, epoch: SessionEpoch, reason: &str) {
    let Some(abandoned) = app.registry.detach(host, epoch) else {
        return;
    };
    tracing::warn!(host = %host, session = epoch, reason, "host is unreachable");
    let why = format!("host {host} disconnected before answering");
    if let Err(err) = runner::settle_abandoned(&app.db, &abandoned, &why).await {
        tracing::error!(host = %host, error = %err, "cannot settle the operations the host left unanswered");
    }
    match host_store::mark_unreachable(&app.db, host, epoch).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!(host = %host, session = epoch, "a newer session of the host registered meanwhile; it stays connected")
        }
        Err(err) => {
            tracing::error!(host = %host, error = %err, "cannot record the host as unreachable")
        }
    }
}

/// Agents are asked to beat several times within the dead-host bound.
fn heartbeat_interval_ms(dead_after: Duration) -> u32 {
    u32::try_from((dead_after / 4).as_millis())
        .unwrap_or(u32::MAX)
        .max(100)
}

fn internal(err: sqlx::Error) -> Status {
    tracing::error!(error = %err, "database error on the agent stream");
    Status::internal("internal error")
}

fn validate_registration(register: &Register) -> Result<HostRegistration, Status> {
    let id: HostId = register.host_id.parse().map_err(|err| {
        Status::invalid_argument(format!("host_id {:?}: {err}", register.host_id))
    })?;
    let capacity = register
        .capacity
        .ok_or_else(|| Status::invalid_argument("Register has no capacity"))?;
    let (cpus, memory_mib, disk_gb) = (
        u64::from(capacity.cpus),
        capacity.memory_mib,
        capacity.disk_gb,
    );
    if cpus == 0
        || cpus > MAX_HOST_CPUS
        || memory_mib > MAX_HOST_MEMORY_MIB
        || disk_gb > MAX_HOST_DISK_GB
    {
        return Err(Status::invalid_argument(format!(
            "implausible capacity: {cpus} CPUs, {memory_mib} MiB, {disk_gb} GB"
        )));
    }
    if register.cached_images.len() > MAX_CACHED_IMAGES {
        return Err(Status::invalid_argument(format!(
            "implausible registration: {} cached images",
            register.cached_images.len()
        )));
    }
    let text = |s: &str| s.chars().take(128).collect::<String>();
    Ok(HostRegistration {
        id,
        cpus,
        memory_mib,
        disk_gb,
        libvirt_version: text(&register.libvirt_version),
        hypervisor: text(&register.hypervisor),
        kvm_usable: register.kvm_usable,
        agent_version: text(&register.agent_version),
    })
}

/// Ends `host`'s session, if it has one, the way a lost stream does (its unanswered
/// operations settled as abandoned, the host unreachable): for a host whose certificates
/// were just revoked.
pub async fn end_session(app: &AppState, host: &HostId, why: &str) {
    let Some((epoch, abandoned)) = app.registry.disconnect(host) else {
        return;
    };
    tracing::warn!(host = %host, reason = why, "host session ended");
    let why = format!("host {host}: {why}");
    if let Err(err) = runner::settle_abandoned(&app.db, &abandoned, &why).await {
        tracing::error!(host = %host, error = %err, "cannot settle the operations the host left unanswered");
    }
    if let Err(err) = host_store::mark_unreachable(&app.db, host, epoch).await {
        tracing::error!(host = %host, error = %err, "cannot record the host as unreachable");
    }
}

/// Which of a session's heartbeats are written to the database. The session's liveness is
/// watched in memory (the loop in [`run_session`]); the record's `last_seen_at` is what
/// other coordinators judge the host by once this one is gone, and what `GET /api/hosts`
/// shows. So a heartbeat is written when its libvirt connection changed, or when the last
/// one written is two fifths of the liveness bound old: every other heartbeat (agents beat
/// four times per bound, and a beat that comes a little early still leaves the next one
/// due), half the writes of a steady fleet.
struct HeartbeatRecord {
    every: Duration,
    last: Option<(Instant, bool)>,
}

impl HeartbeatRecord {
    fn new(dead_after: Duration) -> Self {
        HeartbeatRecord {
            every: dead_after * 2 / 5,
            last: None,
        }
    }

    /// The record of a session whose registration was written at `at`: a registration
    /// writes `last_seen_at` with libvirt connected, so the first heartbeat is not due
    /// unless it says otherwise (or comes late).
    fn registered(dead_after: Duration, at: Instant) -> Self {
        HeartbeatRecord {
            last: Some((at, true)),
            ..HeartbeatRecord::new(dead_after)
        }
    }

    /// Whether a heartbeat received `now` is to be written; if so, it counts as written.
    fn due(&mut self, libvirt_connected: bool, now: Instant) -> bool {
        let due = match self.last {
            None => true,
            Some((written, connected)) => {
                connected != libvirt_connected || now.duration_since(written) >= self.every
            }
        };
        if due {
            self.last = Some((now, libvirt_connected));
        }
        due
    }
}

async fn run_session(
    app: AppState,
    host: HostId,
    session: SessionEpoch,
    mut inbound: Streaming<AgentMessage>,
    _task: TaskGuard,
) {
    let dead_after = app.settings.host_dead_after;
    let mut heartbeats = HeartbeatRecord::registered(dead_after, Instant::now());
    let end = loop {
        let message = tokio::select! {
            received = tokio::time::timeout(dead_after, inbound.message()) => match received {
                Ok(Ok(Some(message))) => message,
                Ok(Ok(None)) => break "the agent closed its stream".to_owned(),
                Ok(Err(status)) => break format!("the stream failed: {}", status.message()),
                Err(_) => break format!("no message for {dead_after:?}"),
            },
            // The shutdown records every host itself.
            () = app.registry.stopped() => return,
        };
        if !app.registry.is_current(&host, session) {
            return; // A newer session of the same host took over.
        }
        if let Err(err) = handle_message(&app, &host, session, &mut heartbeats, message).await {
            tracing::error!(host = %host, error = %err, "cannot apply an agent message");
        }
    };
    close_session(&app, &host, session, &end).await;
}

async fn handle_message(
    app: &AppState,
    host: &HostId,
    session: SessionEpoch,
    heartbeats: &mut HeartbeatRecord,
    message: AgentMessage,
) -> Result<(), sqlx::Error> {
    match message.body {
        Some(agent_message::Body::Heartbeat(beat)) => {
            if heartbeats.due(beat.libvirt_connected, Instant::now()) {
                host_store::record_heartbeat(&app.db, host, session, beat.libvirt_connected)
                    .await?;
            }
        }
        Some(agent_message::Body::VmStateChanged(change)) => {
            let Some(report) = change.domain else {
                tracing::warn!(host = %host, "state change without a domain ignored");
                return Ok(());
            };
            if report.vm_id.is_empty() {
                return Ok(()); // A hand-made domain: not the product's business.
            }
            match report.vm_id.parse::<VmId>() {
                Ok(vm) => {
                    // Applies only to a VM recorded on this very host (the query checks it).
                    let applied = {
                        let host = host.clone();
                        crate::db::group_write(&app.db, move |conn| {
                            Box::pin(async move {
                                reports::apply(conn, &host, vm, &report, ReportSource::Change).await
                            })
                        })
                        .await?
                    };
                    if !applied {
                        let recorded_here = crate::vms::store::find(&app.db, vm)
                            .await?
                            .is_some_and(|recorded| &recorded.host_id == host);
                        if !recorded_here {
                            tracing::warn!(host = %host, vm_id = %vm,
                                "state change about a VM not recorded on this host rejected");
                        }
                    }
                }
                Err(_) => {
                    tracing::warn!(host = %host, vm_id = %report.vm_id, "state change with a malformed VM ID ignored")
                }
            }
        }
        Some(agent_message::Body::CommandResult(result)) => app.registry.complete(host, result),
        Some(agent_message::Body::Register(_)) => {
            tracing::warn!(host = %host, "second Register on one stream ignored");
        }
        None => tracing::warn!(host = %host, "empty agent message ignored"),
    }
    Ok(())
}

mod image_transfer;
#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_heartbeat_is_written_and_every_libvirt_change() {
        let dead_after = Duration::from_secs(10);
        let beat = dead_after / 4;
        let mut record = HeartbeatRecord::new(dead_after);
        let start = Instant::now();
        let written: Vec<bool> = (0..8).map(|n| record.due(true, start + beat * n)).collect();
        assert_eq!(
            written,
            [true, false, true, false, true, false, true, false]
        );
        // A beat a little early still leaves the next one due.
        let mut record = HeartbeatRecord::new(dead_after);
        assert!(record.due(true, start));
        assert!(!record.due(true, start + beat));
        assert!(record.due(true, start + beat * 2 - Duration::from_millis(900)));
        // A change of the libvirt connection is written at once, both ways.
        assert!(record.due(false, start + beat * 2));
        assert!(record.due(true, start + beat * 2 + Duration::from_millis(1)));
        assert!(!record.due(true, start + beat * 3));
        // Right after a registration (which wrote the same), the first beat is not written
        // unless libvirt's connection is down.
        let mut record = HeartbeatRecord::registered(dead_after, start);
        assert!(!record.due(true, start + beat));
        assert!(record.due(true, start + beat * 2));
        let mut record = HeartbeatRecord::registered(dead_after, start);
        assert!(record.due(false, start + beat));
    }

    #[test]
    fn registrations_with_absurd_values_are_refused() {
        let good = Register {
            host_id: "kvm-1".into(),
            capacity: Some(vmm_proto::HostCapacity {
                cpus: 8,
                memory_mib: 32768,
                disk_gb: 500,
            }),
            ..Default::default()
        };
        assert!(validate_registration(&good).is_ok());
        let mut bad = good.clone();
        bad.host_id = "<script>".into();
        assert!(validate_registration(&bad).is_err());
        let mut bad = good.clone();
        bad.capacity = Some(vmm_proto::HostCapacity {
            cpus: 0,
            memory_mib: 1,
            disk_gb: 1,
        });
        assert!(validate_registration(&bad).is_err());
        let mut bad = good;
        bad.capacity = None;
        assert!(validate_registration(&bad).is_err());
    }
}
