//! The races a fleet runs into, each forced into its bad interleaving deterministically,
//! against the coordinator's real session code and a temporary SQLite database:
//!
//! - a session's clean-up that commits after its host registered again (it waited for the
//!   write lock behind other writes) must not mark the host unreachable;
//! - heartbeats of a replaced session change nothing, and an older session never replaces
//!   a newer one;
//! - a shutdown ends every session without recording per host, waits for its own tasks,
//!   and leaves every host unreachable and every VM `unknown` (never `running`);
//! - at start, every VM of a host that is not connected is `unknown`.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use vmm_coordinator::agents::{AgentControlService, close_session, open_session};
use vmm_coordinator::app::record_shutdown;
use vmm_coordinator::config::Placement;
use vmm_coordinator::hosts::store::{self as host_store, HostRegistration, HostStatus};
use vmm_coordinator::quotas::QuotaLimits;
use vmm_coordinator::state::AppState;
use vmm_coordinator::users::{Role, store as user_store};
use vmm_coordinator::vms::store::{self as vm_store, NewVm, Recorded};
use vmm_proto::agent_control_client::AgentControlClient;
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::{AgentMessage, DomainReport, HostCapacity, PowerState, Register, agent_message};
use vmm_shared::{HostId, OperationId, VmId, VmSize, VmStatus};

mod support;

const AGENT_TOKEN: &str = "fleet-races-agent-token";

const UNLIMITED: QuotaLimits = QuotaLimits {
    max_vms: u64::MAX,
    max_cpu: u64::MAX,
    max_memory: u64::MAX,
    max_disk_gb: u64::MAX,
    max_snapshots: u64::MAX,
};

async fn state(dir: &std::path::Path) -> AppState {
    support::app_state(dir, support::TestSettings::new(AGENT_TOKEN)).await
}

fn registration(host: &str) -> HostRegistration {
    HostRegistration {
        id: host.parse().unwrap(),
        cpus: 64,
        memory_mib: 1 << 20,
        disk_gb: 100_000,
        libvirt_version: "0.0.0".into(),
        hypervisor: "memory".into(),
        kvm_usable: false,
        agent_version: "test".into(),
    }
}

fn report(vm: VmId, generation: u64) -> DomainReport {
    DomainReport {
        vm_id: vm.to_string(),
        domain_name: format!("vmm-{vm}"),
        state: PowerState::Running as i32,
        generation,
        cpu: 1,
        memory_mib: 128,
        ..Default::default()
    }
}

fn register_message(host: &str, inventory: Vec<DomainReport>) -> Register {
    Register {
        host_id: host.into(),
        agent_version: "test".into(),
        capacity: Some(HostCapacity {
            cpus: 64,
            memory_mib: 1 << 20,
            disk_gb: 100_000,
        }),
        inventory,
        ..Default::default()
    }
}

/// A sender standing for a session's stream down to its agent.
fn stream_down() -> mpsc::Sender<Result<vmm_proto::CoordinatorMessage, tonic::Status>> {
    let (sender, receiver) = mpsc::channel(16);
    // Keep the receiving end alive for the test's duration.
    std::mem::forget(receiver);
    sender
}

/// Records `count` VMs on `host` (which must be connected), as created and then reported
/// running by their host.
async fn running_vms(app: &AppState, host: &HostId, count: usize) -> Vec<VmId> {
    let user = user_store::insert(&app.db, &format!("owner-{host}"), "hash", Role::User)
        .await
        .unwrap();
    let mut vms = Vec::new();
    for i in 0..count {
        let new = NewVm {
            id: VmId::new_random(),
            owner_id: user.id,
            name: format!("vm-{i}"),
            size: VmSize {
                cpu: 1,
                memory_mib: 128,
                disk_gb: 1,
            },
            image: None,
            login_user: None,
        };
        let Recorded::New(vm) = vm_store::place_and_record(
            &app.db,
            &new,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await
        .unwrap() else {
            panic!("not a repeat")
        };
        assert_eq!(&vm.host_id, host);
        vms.push(vm.id);
    }
    // The creates' answers: the operations succeeded, the VMs run.
    sqlx::query("UPDATE operations SET status = 'succeeded' WHERE status = 'pending'")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE vms SET status = 'running', generation = 1")
        .execute(&app.db)
        .await
        .unwrap();
    vms
}

async fn host_status(app: &AppState, host: &str) -> HostStatus {
    host_store::list(&app.db)
        .await
        .unwrap()
        .into_iter()
        .find(|view| view.id.as_str() == host)
        .unwrap()
        .status
}

async fn vm_statuses(app: &AppState) -> Vec<VmStatus> {
    let page = vmm_coordinator::http::page::Page::new(None, None, None).unwrap();
    vm_store::list(&app.reads, &vm_store::VmFilter::default(), &page)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|vm| vm.status)
        .collect()
}

/// The storm race: session 1's stream ends and its clean-up is held behind the write lock
/// (another write holds it, as hundreds of writes did in a storm); the agent redials and
/// registers as session 2 first; then session 1's clean-up commits. The host must stay
/// connected and its VMs running.
#[tokio::test]
async fn a_late_clean_up_of_a_replaced_session_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let host = "storm-host";
    let first = open_session(
        &app,
        &registration(host),
        &register_message(host, Vec::new()),
        stream_down(),
    )
    .await
    .unwrap();
    let host_id: HostId = host.parse().unwrap();
    let vms = running_vms(&app, &host_id, 3).await;

    // Someone holds the write lock.
    let mut blocker = vmm_coordinator::db::begin_write(&app.db).await.unwrap();
    let stale = tokio::spawn({
        let (app, host_id) = (app.clone(), host_id.clone());
        async move { close_session(&app, &host_id, first.epoch, "the stream failed").await }
    });
    // Session 1 is detached, and its clean-up waits for the lock.
    for _ in 0..200 {
        if !app.registry.is_connected(&host_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!app.registry.is_connected(&host_id));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !stale.is_finished(),
        "the clean-up waits for the write lock"
    );

    // The agent's new registration gets the lock first (its write is the blocker's).
    let second = host_store::register_session(&mut blocker, &registration(host))
        .await
        .unwrap();
    assert!(second > first.epoch);
    blocker.commit().await.unwrap();
    stale.await.unwrap();
    app.registry
        .attach(host_id.clone(), second, stream_down())
        .unwrap();

    assert_eq!(host_status(&app, host).await, HostStatus::Connected);
    assert_eq!(vm_statuses(&app).await, vec![VmStatus::Running; vms.len()]);
    // The new session's own end still marks the host.
    close_session(&app, &host_id, second, "the stream failed").await;
    assert_eq!(host_status(&app, host).await, HostStatus::Unreachable);
    assert_eq!(vm_statuses(&app).await, vec![VmStatus::Unknown; vms.len()]);
}

/// Heartbeats of a replaced session are refused by the database; an older session never
/// replaces a newer one in the registry.
#[tokio::test]
async fn a_replaced_session_can_neither_beat_nor_take_over() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let host = "replaced-host";
    let host_id: HostId = host.parse().unwrap();
    let old =
        host_store::register_session(&mut app.db.acquire().await.unwrap(), &registration(host))
            .await
            .unwrap();
    let new = open_session(
        &app,
        &registration(host),
        &register_message(host, Vec::new()),
        stream_down(),
    )
    .await
    .unwrap();
    assert!(
        !host_store::record_heartbeat(&app.db, &host_id, old, true)
            .await
            .unwrap()
    );
    assert!(
        host_store::record_heartbeat(&app.db, &host_id, new.epoch, true)
            .await
            .unwrap()
    );
    let refused = app.registry.attach(host_id.clone(), old, stream_down());
    assert!(refused.is_err(), "an older session replaced a newer one");
    assert!(app.registry.is_current(&host_id, new.epoch));
    // The old session's end finds a newer one current: nothing changes.
    close_session(&app, &host_id, old, "the stream failed").await;
    assert_eq!(host_status(&app, host).await, HostStatus::Connected);
}

/// At start, whatever the database said: every host unreachable, every VM that was
/// running, paused or stopped `unknown`.
#[tokio::test]
async fn at_start_no_vm_of_an_unconnected_host_is_running() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let host = "restart-host";
    open_session(
        &app,
        &registration(host),
        &register_message(host, Vec::new()),
        stream_down(),
    )
    .await
    .unwrap();
    let vms = running_vms(&app, &host.parse().unwrap(), 4).await;
    host_store::mark_all_unreachable(&app.db, "the coordinator restarted")
        .await
        .unwrap();
    assert_eq!(host_status(&app, host).await, HostStatus::Unreachable);
    assert_eq!(vm_statuses(&app).await, vec![VmStatus::Unknown; vms.len()]);
}

/// An agent over the real gRPC stream: registers with its inventory and beats.
async fn connect_agent(
    grpc: SocketAddr,
    host: &str,
    inventory: Vec<DomainReport>,
) -> (
    mpsc::Sender<AgentMessage>,
    tonic::Streaming<vmm_proto::CoordinatorMessage>,
) {
    let (outgoing, mut incoming) = open_stream(grpc, host, inventory).await;
    let registered = incoming.message().await.unwrap().unwrap();
    assert!(matches!(
        registered.body,
        Some(vmm_proto::coordinator_message::Body::Registered(_))
    ));
    (outgoing, incoming)
}

/// Opens a session's stream and sends `Register`; reads nothing.
async fn open_stream(
    grpc: SocketAddr,
    host: &str,
    inventory: Vec<DomainReport>,
) -> (
    mpsc::Sender<AgentMessage>,
    tonic::Streaming<vmm_proto::CoordinatorMessage>,
) {
    let mut client = AgentControlClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let (outgoing, queue) = mpsc::channel(16);
    outgoing
        .send(AgentMessage {
            body: Some(agent_message::Body::Register(register_message(
                host, inventory,
            ))),
        })
        .await
        .unwrap();
    let mut request = tonic::Request::new(ReceiverStream::new(queue));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {AGENT_TOKEN}").parse().unwrap(),
    );
    let incoming = client.session(request).await.unwrap().into_inner();
    (outgoing, incoming)
}

/// The shutdown race: twenty hosts with running VMs are connected when the coordinator
/// stops. Their sessions end without recording anything per host (nothing can race the
/// database's close), the stop waits for them, and what it records is every host
/// unreachable and every VM `unknown`, never `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_records_every_host_once_and_never_races_its_own_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(AgentControlService::new(
                app.clone(),
            )))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stop_rx.await;
            }),
    );
    let mut agents = Vec::new();
    let mut all_vms = 0;
    for i in 0..20 {
        let host = format!("host-{i}");
        let (outgoing, incoming) = connect_agent(grpc, &host, Vec::new()).await;
        let vms = running_vms(&app, &host.parse().unwrap(), 2).await;
        all_vms += vms.len();
        agents.push((outgoing, incoming));
    }
    sqlx::query("UPDATE vms SET status = 'running'")
        .execute(&app.db)
        .await
        .unwrap();

    app.registry.begin_shutdown();
    let _ = stop_tx.send(());
    // Every stream down to an agent ends.
    for (_, incoming) in &mut agents {
        let end = tokio::time::timeout(Duration::from_secs(10), incoming.message())
            .await
            .expect("the session ends at shutdown");
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    }
    record_shutdown(&app).await;
    assert!(
        app.registry.tasks_finished(Duration::ZERO).await,
        "no session or operation runs once the stop is recorded"
    );
    app.db.close().await;
    drop(agents);
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;

    let reopened =
        vmm_coordinator::db::connect(&vmm_coordinator::db::test_database_url(dir.path()).await)
            .await
            .unwrap();
    let statuses: Vec<String> = sqlx::query_scalar("SELECT DISTINCT status FROM hosts")
        .fetch_all(&reopened)
        .await
        .unwrap();
    assert_eq!(statuses, ["unreachable"]);
    // As read (the API, the metrics): every VM `unknown`, saying why (alone on its database,
    // the coordinator marks every host lost as it stops; beside others, the hosts it held).
    let page = vmm_coordinator::http::page::Page::new(None, None, None).unwrap();
    let vms = vm_store::list(
        &vmm_coordinator::db::Reads::of(&reopened).unwrap(),
        &vm_store::VmFilter::default(),
        &page,
    )
    .await
    .unwrap()
    .items;
    assert_eq!(vms.len(), all_vms);
    for vm in &vms {
        assert_eq!(vm.status, VmStatus::Unknown, "{vm:?}");
        assert!(
            vm.status_reason.as_deref().is_some_and(|reason| {
                reason.contains("the coordinator stopped")
                    || reason == format!("host {} is unreachable", vm.host_id)
            }),
            "{vm:?}"
        );
    }
}

/// Counters kept in the claim's transaction equal the sums of the rows after creates, a
/// failed create, deletes and a removal by an inventory (the ledger holds).
#[tokio::test]
async fn the_ledger_matches_the_rows_after_every_kind_of_change() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let host = "ledger-host";
    let host_id: HostId = host.parse().unwrap();
    let session = open_session(
        &app,
        &registration(host),
        &register_message(host, Vec::new()),
        stream_down(),
    )
    .await
    .unwrap();
    let vms = running_vms(&app, &host_id, 5).await;
    let mut conn = app.db.acquire().await.unwrap();
    assert!(
        vmm_coordinator::ledger::discrepancies(&mut conn)
            .await
            .unwrap()
            .is_empty()
    );
    // Two VMs deleted, one of them twice: released once.
    let mut tx = vmm_coordinator::db::begin_write(&app.db).await.unwrap();
    assert!(
        vmm_coordinator::ledger::delete_vm(&mut tx, vms[0])
            .await
            .unwrap()
    );
    assert!(
        !vmm_coordinator::ledger::delete_vm(&mut tx, vms[0])
            .await
            .unwrap()
    );
    assert!(
        vmm_coordinator::ledger::delete_vm(&mut tx, vms[1])
            .await
            .unwrap()
    );
    tx.commit().await.unwrap();
    // One more is missing from its host's inventory with an unacknowledged create: removed.
    sqlx::query("UPDATE vms SET status = 'error' WHERE id = $1")
        .bind(vms[2])
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM operations WHERE vm_id = $1")
        .bind(vms[2])
        .execute(&app.db)
        .await
        .unwrap();
    let inventory = vec![report(vms[3], 2), report(vms[4], 2)];
    vmm_coordinator::vms::reports::reconcile_inventory(&app.db, &host_id, &inventory)
        .await
        .unwrap();
    assert_eq!(vm_statuses(&app).await.len(), 2);
    assert!(
        vmm_coordinator::ledger::discrepancies(&mut conn)
            .await
            .unwrap()
            .is_empty()
    );
    let usage: (i64, i64) =
        sqlx::query_as("SELECT vms, cpu FROM host_allocations WHERE host_id = $1")
            .bind(host)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    assert_eq!(usage, (2, 2));
    drop(session);
}

/// A message for a host queued the moment its session is attached (by an operation of this
/// coordinator, or a command routed from another) reaches the agent after `Registered`,
/// never before it: an agent ends a session whose first message is anything else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_is_the_first_message_even_when_a_command_is_queued_at_attach() {
    let dir = tempfile::tempdir().unwrap();
    let app = state(dir.path()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AgentControlServer::new(AgentControlService::new(
                app.clone(),
            )))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    for round in 0..10 {
        let host: HostId = format!("host-{round}").parse().unwrap();
        // Queues a message as soon as the registry has a session for the host.
        let eager = tokio::spawn({
            let app = app.clone();
            let host = host.clone();
            async move {
                let probe =
                    vmm_proto::coordinator_message::Body::EvictImage(vmm_proto::EvictImage {
                        image_id: "probe".into(),
                    });
                while !app.registry.notify(&host, probe.clone()).await {
                    tokio::task::yield_now().await;
                }
            }
        });
        let (outgoing, mut incoming) = open_stream(grpc, host.as_str(), Vec::new()).await;
        let first = incoming.message().await.unwrap().unwrap();
        assert!(
            matches!(
                first.body,
                Some(vmm_proto::coordinator_message::Body::Registered(_))
            ),
            "round {round}: the first message was {first:?}"
        );
        tokio::time::timeout(Duration::from_secs(10), eager)
            .await
            .expect("the probe was queued once the session was attached")
            .unwrap();
        let second = incoming.message().await.unwrap().unwrap();
        assert!(
            matches!(
                second.body,
                Some(vmm_proto::coordinator_message::Body::EvictImage(_))
            ),
            "round {round}: {second:?}"
        );
        drop(outgoing);
    }
}
