//! Several coordinators on one PostgreSQL database: each coordinator's identity and lease,
//! the settling of what a dead coordinator left, and commands for hosts whose session
//! another coordinator holds, routed through the database (migration 0011).
//!
//! - **Leases.** Every coordinator has a row in `coordinators` whose lease it renews every
//!   [`RENEW_EVERY`]; once [`LEASE`] passes without a renewal it is dead. A host's lease is
//!   its `last_seen_at` (renewed by each heartbeat its session holder records) plus
//!   `HOST_DEAD_AFTER`. A living coordinator marks a host unreachable only when the host's
//!   own lease has expired and its holder is dead: the death of a coordinator alone never
//!   marks a host down (its agent reconnects to another coordinator within that bound), and
//!   the operations a dead coordinator left pending are settled as after a restart.
//! - **Routing.** A command for a host whose session this coordinator does not hold is
//!   written to `routed_commands` for the holder, which is woken by `NOTIFY vmm_routed`,
//!   sends it down its session, and writes the host's answer back (`NOTIFY vmm_answered`).
//!   The requester applies the outcome exactly as for a command it sent itself, so every
//!   operation has one coordinator that completes it. No coordinator talks to another
//!   except through the database.
//!
//! On SQLite a coordinator is alone with its database: it still records its identity on
//! hosts and operations, but none of the above runs, and start and stop settle everything as
//! they always did. This module never applies an operation's outcome itself.

use std::sync::OnceLock;
use std::time::Duration;

use prost::Message;
use tokio::sync::{Notify, watch};
use vmm_proto::{Command, CommandResult};
use vmm_shared::{HostId, OperationId, VmId};

use crate::db::{self, Backend, Db};
use crate::hosts::DispatchError;
use crate::hosts::registry::{CommandSuccess, outcome_of};
use crate::state::AppState;

/// How long a coordinator's lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a coordinator renews its lease and sweeps what dead ones left.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);
/// How often a waiting side looks at the database when no notification came.
const POLL: Duration = Duration::from_millis(200);

/// This process's coordinator ID: a new one at every start.
pub fn this_coordinator() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// Wakes the routing worker (a command for one of our hosts) and the requesters (an answer).
fn wake() -> &'static (Notify, Notify) {
    static WAKE: OnceLock<(Notify, Notify)> = OnceLock::new();
    WAKE.get_or_init(|| (Notify::new(), Notify::new()))
}

/// Whether several coordinators may share `db` (PostgreSQL).
pub fn is_shared(db: &Db) -> bool {
    Backend::of(db) == Backend::Postgres
}

fn time_in(offset: Duration) -> String {
    let at = chrono::Utc::now()
        + chrono::Duration::from_std(offset).unwrap_or_else(|_| chrono::Duration::zero());
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn time_ago(offset: Duration) -> String {
    let at = chrono::Utc::now()
        - chrono::Duration::from_std(offset).unwrap_or_else(|_| chrono::Duration::zero());
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Where this coordinator can be reached, as recorded in its lease row.
#[derive(Clone, Debug)]
pub struct Advertised {
    /// Its agents' address (`GRPC_ADDR`).
    pub grpc_addr: String,
    /// The URL clients reach it at directly (`PUBLIC_URL`), if it has one.
    pub public_url: Option<String>,
}

/// Records this coordinator as running (or renews its lease).
pub async fn renew(db: &Db, advertised: &Advertised) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO coordinators (id, grpc_addr, public_url, started_at, lease_expires_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET lease_expires_at = excluded.lease_expires_at",
    )
    .bind(this_coordinator())
    .bind(&advertised.grpc_addr)
    .bind(advertised.public_url.as_deref())
    .bind(db::now())
    .bind(time_in(LEASE))
    .execute(db)
    .await?;
    Ok(())
}

/// A clean stop: this coordinator's row goes, so what it left is settled at once.
pub async fn leave(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM coordinators WHERE id = $1")
        .bind(this_coordinator())
        .execute(db)
        .await?;
    Ok(())
}

/// Settles what dead coordinators left: their pending operations (outcome unknown, as
/// after a restart) and the hosts whose own lease has expired under a dead holder
/// (unreachable, their VMs `unknown`). Returns how many of each.
pub async fn sweep(db: &Db, host_dead_after: Duration) -> Result<(usize, usize), sqlx::Error> {
    let now = db::now();
    sqlx::query("DELETE FROM coordinators WHERE lease_expires_at < $1")
        .bind(&now)
        .execute(db)
        .await?;
    let orphaned: Vec<OperationId> = sqlx::query_scalar(
        "SELECT id FROM operations
         WHERE status = 'pending'
           AND (coordinator_id IS NULL
                OR coordinator_id NOT IN (SELECT id FROM coordinators))",
    )
    .fetch_all(db)
    .await?;
    if !orphaned.is_empty() {
        crate::operations::runner::settle_abandoned(
            db,
            &orphaned,
            "the coordinator carrying the operation stopped before the host answered",
        )
        .await?;
    }
    let lapsed: Vec<(HostId, i64)> = sqlx::query_as(
        "SELECT id, session_epoch FROM hosts
         WHERE status = 'connected' AND last_seen_at < $1
           AND (coordinator_id IS NULL
                OR coordinator_id NOT IN (SELECT id FROM coordinators))",
    )
    .bind(time_ago(host_dead_after))
    .fetch_all(db)
    .await?;
    let mut marked = 0;
    for (host, epoch) in &lapsed {
        let epoch = u64::try_from(*epoch).unwrap_or(0);
        if crate::hosts::store::mark_unreachable(db, host, epoch).await? {
            tracing::warn!(host = %host, session = epoch, "host is unreachable: its lease expired and the coordinator holding its session is gone");
            marked += 1;
        }
    }
    Ok((orphaned.len(), marked))
}

/// Keeps this coordinator's lease, sweeps every [`RENEW_EVERY`], and (on PostgreSQL)
/// listens for routed commands and answers, until `stop`.
pub async fn run(
    app: AppState,
    url: String,
    advertised: Advertised,
    mut stop: watch::Receiver<bool>,
) {
    if !is_shared(&app.db) {
        return;
    }
    let listener = tokio::spawn(listen(url));
    let router = tokio::spawn(serve_routed(app.clone(), stop.clone()));
    let mut every = tokio::time::interval(RENEW_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(err) = renew(&app.db, &advertised).await {
            tracing::warn!(error = %err, "cannot renew the coordinator's lease");
            continue;
        }
        match sweep(&app.db, app.settings.host_dead_after).await {
            Ok((0, 0)) => {}
            Ok((operations, hosts)) => {
                tracing::warn!(operations, hosts, "settled what a stopped coordinator left")
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot settle what stopped coordinators left")
            }
        }
    }
    listener.abort();
    let _ = router.await;
}

/// Wakes the waiting sides on `NOTIFY vmm_routed` / `vmm_answered` addressed to us. Without
/// it (connection lost), they still look every [`POLL`].
async fn listen(url: String) {
    loop {
        match sqlx::postgres::PgListener::connect(&url).await {
            Ok(mut listener) => {
                if let Err(err) = listener.listen_all(["vmm_routed", "vmm_answered"]).await {
                    tracing::warn!(error = %err, "cannot LISTEN for routed commands");
                } else {
                    while let Ok(note) = listener.recv().await {
                        if note.payload() != this_coordinator() {
                            continue;
                        }
                        if note.channel() == "vmm_routed" {
                            wake().0.notify_waiters();
                        } else {
                            wake().1.notify_waiters();
                        }
                    }
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot connect to LISTEN for routed commands")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn notify(db: &Db, channel: &str, coordinator: &str) {
    let sent = sqlx::query("SELECT 1 FROM pg_notify($1, $2)")
        .bind(channel)
        .bind(coordinator)
        .execute(db)
        .await;
    if let Err(err) = sent {
        tracing::debug!(error = %err, "NOTIFY failed; the other side polls");
    }
}

/// Sends a command to `host`: down this coordinator's own session of the host, or routed
/// through the database to the coordinator holding it. Waits for the answer as long as
/// the host's session lasts, wherever it is.
pub async fn dispatch(
    app: &AppState,
    host: &HostId,
    operation_id: OperationId,
    vm: VmId,
    action: vmm_proto::command::Action,
) -> Result<CommandSuccess, DispatchError> {
    if app.registry.is_connected(host) || !is_shared(&app.db) {
        return app.registry.dispatch(host, operation_id, vm, action).await;
    }
    let command = Command {
        operation_id: operation_id.to_string(),
        vm_id: vm.to_string(),
        action: Some(action),
    };
    let lost = |err: sqlx::Error| {
        tracing::warn!(host = %host, operation = %operation_id, error = %err, "routing a command failed");
        DispatchError::Disconnected(host.clone())
    };
    let Some(holder) = holder_of(&app.db, host).await.map_err(|err| {
        tracing::warn!(error = %err, "cannot read the host's session holder");
        DispatchError::NotConnected(host.clone())
    })?
    else {
        return Err(DispatchError::NotConnected(host.clone()));
    };
    sqlx::query(
        "INSERT INTO routed_commands (operation_id, host_id, holder, requester, command, status,
                                      created_at)
         VALUES ($1, $2, $3, $4, $5, 'queued', $6)",
    )
    .bind(operation_id)
    .bind(host)
    .bind(&holder)
    .bind(this_coordinator())
    .bind(command.encode_to_vec())
    .bind(db::now())
    .execute(&app.db)
    .await
    .map_err(|err| {
        tracing::warn!(error = %err, "cannot route a command");
        DispatchError::NotConnected(host.clone())
    })?;
    notify(&app.db, "vmm_routed", &holder).await;
    let answered = wait_for_answer(app, host, operation_id, &holder).await;
    let _ = sqlx::query("DELETE FROM routed_commands WHERE operation_id = $1")
        .bind(operation_id)
        .execute(&app.db)
        .await;
    outcome_of(answered.map_err(lost)??)
}

/// Whether another living coordinator holds `host`'s session (never on SQLite).
pub async fn held_elsewhere(db: &Db, host: &HostId) -> Result<bool, sqlx::Error> {
    if !is_shared(db) {
        return Ok(false);
    }
    Ok(holder_of(db, host)
        .await?
        .is_some_and(|holder| holder != this_coordinator()))
}

/// Where a console of `host` opens when another living coordinator holds its session:
/// `Some(public URL of that coordinator, if it has one)`; `None` when this coordinator
/// holds it, or nobody does (never anything else on SQLite).
pub async fn console_elsewhere(
    db: &Db,
    host: &HostId,
) -> Result<Option<Option<String>>, sqlx::Error> {
    if !is_shared(db) {
        return Ok(None);
    }
    Ok(holder_with_url(db, host)
        .await?
        .filter(|(id, _)| id != this_coordinator())
        .map(|(_, public_url)| public_url))
}

/// The living coordinator holding `host`'s session, if the host is connected.
async fn holder_of(db: &Db, host: &HostId) -> Result<Option<String>, sqlx::Error> {
    Ok(holder_with_url(db, host).await?.map(|(id, _)| id))
}

/// The living coordinator holding `host`'s session and its `PUBLIC_URL`, if the host is
/// connected.
async fn holder_with_url(
    db: &Db,
    host: &HostId,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id, c.public_url FROM hosts h JOIN coordinators c ON c.id = h.coordinator_id
         WHERE h.id = $1 AND h.status = 'connected' AND c.lease_expires_at >= $2",
    )
    .bind(host)
    .bind(db::now())
    .fetch_optional(db)
    .await
}

/// Waits until the holder answers, gives up the command, or dies (or the host's session
/// moves), and says which.
async fn wait_for_answer(
    app: &AppState,
    host: &HostId,
    operation_id: OperationId,
    holder: &str,
) -> Result<Result<CommandResult, DispatchError>, sqlx::Error> {
    loop {
        let woken = wake().1.notified();
        let row: Option<(String, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT status, result FROM routed_commands WHERE operation_id = $1")
                .bind(operation_id)
                .fetch_optional(&app.db)
                .await?;
        let sent = match row {
            Some((status, Some(result))) if status == "answered" => {
                return Ok(CommandResult::decode(result.as_slice()).map_err(|err| {
                    DispatchError::Failed {
                        kind: vmm_proto::ErrorKind::Internal,
                        message: format!("the routed answer cannot be read: {err}"),
                    }
                }));
            }
            Some((status, _)) if status == "undeliverable" => {
                return Ok(Err(DispatchError::NotConnected(host.clone())));
            }
            Some((status, _)) if status == "lost" => {
                return Ok(Err(DispatchError::Disconnected(host.clone())));
            }
            Some((status, _)) => status == "sent",
            None => return Ok(Err(DispatchError::Disconnected(host.clone()))),
        };
        // The holder died, or the host's session moved: no answer will come this way.
        if holder_of(&app.db, host).await?.as_deref() != Some(holder) {
            return Ok(Err(if sent {
                DispatchError::Disconnected(host.clone())
            } else {
                DispatchError::NotConnected(host.clone())
            }));
        }
        let _ = tokio::time::timeout(POLL, woken).await;
    }
}

/// The holder's side: sends every command routed to this coordinator down its session of
/// the host, and writes the answer back.
async fn serve_routed(app: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        let woken = wake().0.notified();
        match claim_routed(&app.db).await {
            Ok(claimed) => {
                for (operation_id, host, command) in claimed {
                    let guard = app.registry.track_task();
                    let app = app.clone();
                    tokio::spawn(async move {
                        let _guard = guard;
                        carry_routed(&app, operation_id, host, command).await;
                    });
                }
            }
            Err(err) => tracing::warn!(error = %err, "cannot read routed commands"),
        }
        tokio::select! {
            _ = tokio::time::timeout(POLL, woken) => {}
            _ = stop.changed() => return,
        }
    }
}

type Routed = (OperationId, HostId, Vec<u8>);

async fn claim_routed(db: &Db) -> Result<Vec<Routed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE routed_commands SET status = 'sent'
         WHERE holder = $1 AND status = 'queued'
         RETURNING operation_id, host_id, command",
    )
    .bind(this_coordinator())
    .fetch_all(db)
    .await
}

async fn carry_routed(app: &AppState, operation_id: OperationId, host: HostId, command: Vec<u8>) {
    let (status, result) = match Command::decode(command.as_slice()) {
        Err(err) => {
            tracing::warn!(operation = %operation_id, error = %err, "a routed command cannot be read");
            ("undeliverable", None)
        }
        Ok(command) => match app.registry.dispatch_command(&host, command).await {
            Ok(result) => ("answered", Some(result.encode_to_vec())),
            Err(DispatchError::NotConnected(_)) => ("undeliverable", None),
            Err(_) => ("lost", None),
        },
    };
    let requester: Option<String> = sqlx::query_scalar(
        "UPDATE routed_commands SET status = $1, result = $2 WHERE operation_id = $3
         RETURNING requester",
    )
    .bind(status)
    .bind(result)
    .bind(operation_id)
    .fetch_optional(&app.db)
    .await
    .unwrap_or_else(|err| {
        tracing::warn!(operation = %operation_id, error = %err, "cannot write a routed answer back");
        None
    });
    if let Some(requester) = requester {
        notify(&app.db, "vmm_answered", &requester).await;
    }
}
