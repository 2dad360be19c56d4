//! The operation runner: every operation on a VM or snapshot — create, start, stop,
//! force_stop, reboot, delete, snapshot create, restore and delete — is carried out here, the
//! same way, through the rules of [`crate::lifecycle`]:
//!
//! 1. **start** ([`begin`], or the create's own claim in `vms::store` / `snapshots::store`):
//!    in one write transaction, the statuses are read again and checked against the
//!    lifecycle's preconditions (409 when refused), the operation is recorded `pending`
//!    (409 when another one is in flight on the VM) and the start's effect is written;
//! 2. **send and wait** ([`run_operation`]): the command goes to the VM's host from a task
//!    of its own, which waits for the answer as long as the host's session lasts. The
//!    request waits up to `OPERATION_TIMEOUT_SECS` and then answers 504 with the operation's
//!    ID, while the task goes on waiting: a client that hangs up or times out never leaves
//!    an operation half done;
//! 3. **complete** ([`complete`]): the outcome is applied in one write transaction —
//!    operation finished (only if still `pending`), VM and snapshot changed as the
//!    lifecycle's tables say. On time or late, an answer takes this same path; so do the
//!    outcomes nobody answers: a session's end ([`settle_abandoned`]) and a restart
//!    ([`settle_after_restart`]).
//!
//! A create's `Idempotency-Key` is answered when the operation completes, late or not, so a
//! retry after a 504 gets the real answer once there is one.
//!
//! It never decides a rule itself: preconditions and effects come from `lifecycle`.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sqlx::AnyConnection;
use vmm_proto::{PowerState, command};
use vmm_shared::{HostId, OperationId, OperationKind, SnapshotId, UserId, VmId, VmStatus};

use super::store::{self, NewOperation};
use super::{OPERATION_ID_HEADER, Operation, OperationRecord};
use crate::db::{self, Db};
use crate::error::ApiError;
use crate::hosts::DispatchError;
use crate::hosts::registry::CommandSuccess;
use crate::idempotency::{self, IdempotentRequest};
use crate::images::store as image_store;
use crate::lifecycle::{self, Phase, ReportSource, SnapshotEffect, VmEffect};
use crate::snapshots::store as snapshot_store;
use crate::snapshots::{CapturedState, Snapshot, SnapshotStatus, SnapshotView};
use crate::state::AppState;
use crate::vms::{Vm, VmView, reports, store as vm_store};

/// Why an operation could not start, or has no answer yet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("host {0} of this VM is not connected; try again when its agent is back")]
    HostNotConnected(HostId),
    #[error("no VM with ID {0}")]
    VmGone(VmId),
    #[error("no snapshot with ID {0}")]
    SnapshotGone(SnapshotId),
    #[error(transparent)]
    Refused(#[from] lifecycle::Refused),
    #[error(transparent)]
    Operation(#[from] store::Error),
    #[error(
        "host {host} did not answer within {waited:?}; the operation may still complete, \
         see GET /api/operations/{operation}"
    )]
    NoAnswerYet {
        host: HostId,
        waited: Duration,
        operation: OperationId,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An operation that has started (recorded `pending`, its start's effect written) and is
/// ready to be sent.
#[derive(Debug)]
pub struct Began {
    pub operation: Operation,
    /// The VM as it was before the operation started (for a create: as recorded).
    pub vm: Vm,
    /// The snapshot a snapshot operation acts on, as it was before the operation started
    /// (for a snapshot create: as recorded).
    pub snapshot: Option<Snapshot>,
    /// A create's idempotency key, answered when the operation completes.
    pub idempotency: Option<IdempotentRequest>,
    /// What a create sends besides the VM's record; `None` for every other operation.
    pub create: Option<CreateInputs>,
}

/// What a create tells the host besides the VM's name and size: the image its disk is made
/// from and what its cloud-init is given (both unset: a blank disk, no seed). Sent once, with
/// the command, and not stored: user data may hold secrets.
#[derive(Clone, Debug, Default)]
pub struct CreateInputs {
    pub image: Option<vmm_proto::ImageRef>,
    pub cloud_init: Option<vmm_proto::CloudInit>,
}

/// 503 unless the VM's host is connected now, to this coordinator or (on a shared
/// database) to another living one.
pub async fn ensure_host_connected(app: &AppState, vm: &Vm) -> Result<(), Error> {
    if app.registry.is_connected(&vm.host_id)
        || crate::cluster::held_elsewhere(&app.db, &vm.host_id).await?
    {
        Ok(())
    } else {
        Err(Error::HostNotConnected(vm.host_id.clone()))
    }
}

/// Starts `kind` on an existing VM (and, for a restore or a snapshot delete, on its
/// snapshot), as `user`. Refusals come in the order a user can act on: the snapshot's
/// status, then the host's connection, then the VM's status and operations in flight.
pub async fn begin(
    app: &AppState,
    user: UserId,
    kind: OperationKind,
    vm: &Vm,
    snapshot: Option<&Snapshot>,
) -> Result<Began, Error> {
    if let Some(snapshot) = snapshot
        && lifecycle::snapshot_allows(kind, snapshot.status) == Some(false)
    {
        lifecycle::check(kind, vm.status, Some(snapshot.status))?;
    }
    ensure_host_connected(app, vm).await?;
    let operation = Operation::begin(kind);
    let (vm, snapshot) =
        record_start(&app.db, operation, user, vm.id, snapshot.map(|s| s.id)).await?;
    Ok(Began {
        operation,
        vm,
        snapshot,
        idempotency: None,
        create: None,
    })
}

/// The start of `operation` on an existing VM (and snapshot), in one write transaction:
/// statuses read again and checked, the operation recorded `pending`, the start's effect
/// written. Returns the VM and snapshot as they were before it.
pub async fn record_start(
    db: &Db,
    operation: Operation,
    user: UserId,
    vm: VmId,
    snapshot: Option<SnapshotId>,
) -> Result<(Vm, Option<Snapshot>), Error> {
    db::group_write(db, move |conn| {
        Box::pin(async move { record_start_in(conn, operation, user, vm, snapshot).await })
    })
    .await
}

async fn record_start_in(
    tx: &mut AnyConnection,
    operation: Operation,
    user: UserId,
    vm: VmId,
    snapshot: Option<SnapshotId>,
) -> Result<(Vm, Option<Snapshot>), Error> {
    let kind = operation.kind;
    let vm = vm_store::find(&mut *tx, vm)
        .await?
        .ok_or(Error::VmGone(vm))?;
    let snapshot = match snapshot {
        Some(id) => Some(
            snapshot_store::find(&mut *tx, id)
                .await?
                .filter(|snapshot| snapshot.vm_id == vm.id)
                .ok_or(Error::SnapshotGone(id))?,
        ),
        None => None,
    };
    lifecycle::check(kind, vm.status, snapshot.as_ref().map(|s| s.status))?;
    store::insert_pending(
        &mut *tx,
        &NewOperation {
            id: operation.id,
            kind,
            vm: vm.id,
            snapshot: snapshot.as_ref().map(|s| s.id),
            host: &vm.host_id,
            user,
        },
    )
    .await?;
    let subject = Subject::of(operation, &vm, snapshot.as_ref());
    apply_effects(tx, &subject, Phase::Start, None, "").await?;
    Ok((vm, snapshot))
}

/// What the client gets when an operation succeeds: a status and, but for deletes, a body.
#[derive(Debug)]
pub struct Answer {
    status: StatusCode,
    body: Option<Value>,
}

/// Sends a started operation to its host and answers the request: with the operation's
/// success or failure when the host answers within `OPERATION_TIMEOUT_SECS`, else with 504
/// while the operation goes on. Every response carries the `Operation-Id` header.
pub async fn run_operation(app: &AppState, began: Began) -> Response {
    let operation = began.operation.id;
    let host = began.vm.host_id.clone();
    let waited = app.settings.operation_timeout;
    let guard = app.registry.track_task();
    let task = tokio::spawn({
        let app = app.clone();
        async move {
            let _guard = guard;
            carry_out(app, began).await
        }
    });
    let result = match tokio::time::timeout(waited, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(failed)) => Err(ApiError::internal(failed)),
        Err(_) => {
            tracing::warn!(%operation, host = %host, ?waited, "no answer yet; the operation stays pending");
            Err(Error::NoAnswerYet {
                host,
                waited,
                operation,
            }
            .into())
        }
    };
    let mut response = match result {
        Ok(Answer { status, body }) => match body {
            Some(body) => (status, Json(body)).into_response(),
            None => status.into_response(),
        },
        Err(err) => err.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&operation.to_string()) {
        response.headers_mut().insert(OPERATION_ID_HEADER, value);
    }
    response
}

/// Sends, waits for the outcome however late, completes, answers the idempotency key.
async fn carry_out(app: AppState, began: Began) -> Result<Answer, ApiError> {
    let Began {
        operation,
        vm,
        snapshot,
        idempotency,
        create,
    } = began;
    let kind = operation.kind;
    let action = command_for(kind, &vm, snapshot.as_ref(), create.unwrap_or_default());
    let dispatched = crate::cluster::dispatch(&app, &vm.host_id, operation.id, vm.id, action).await;
    crate::telemetry::record_operation(kind.as_str(), dispatched.is_ok(), operation.elapsed());
    let outcome = Outcome::from(dispatched);
    let subject = Subject::of(operation, &vm, snapshot.as_ref());
    let applied = complete(&app.db, &subject, &outcome).await?;
    let phase = outcome.phase();
    if let (Phase::Succeeded, Some(image)) =
        (phase, vm.image_id.filter(|_| kind == OperationKind::Create))
    {
        // A host makes a VM from an image only on a verified copy it then keeps.
        if let Err(err) = image_store::record_copy(&app.db, &vm.host_id, image).await {
            tracing::warn!(host = %vm.host_id, image_id = %image, error = %err, "cannot record the host's copy of an image");
        }
    }
    let result = match outcome.failure() {
        None => {
            tracing::info!(operation = %operation.id, %kind, vm_id = %vm.id, elapsed = ?operation.elapsed(), applied, "operation succeeded");
            answer(&app.db, kind, vm.id, subject.snapshot).await
        }
        Some(failure) => {
            tracing::warn!(operation = %operation.id, %kind, vm_id = %vm.id, error = %failure, applied, "operation failed");
            Err(outcome.into_error())
        }
    };
    // A create whose record the failure removed never happened: its key is forgotten,
    // so a retry is carried out afresh.
    let record_kept = lifecycle::vm_effect(kind, phase) != VmEffect::Removed
        && lifecycle::snapshot_effect(kind, phase) != SnapshotEffect::Removed;
    let answered = result.as_ref().map(|answer| (answer.status, &answer.body));
    idempotency::remember(&app.db, idempotency.as_ref(), answered, record_kept).await?;
    result
}

/// What a successful operation answers: the VM or snapshot as recorded now, or nothing.
async fn answer(
    db: &Db,
    kind: OperationKind,
    vm: VmId,
    snapshot: Option<SnapshotId>,
) -> Result<Answer, ApiError> {
    use OperationKind as K;
    let (status, body) = match (kind, snapshot) {
        (K::Delete | K::SnapshotDelete, _) => {
            return Ok(Answer {
                status: StatusCode::NO_CONTENT,
                body: None,
            });
        }
        (K::SnapshotCreate, Some(id)) => {
            let snapshot = snapshot_store::find(db, id).await?.ok_or_else(|| {
                ApiError::NotFound("the snapshot was deleted in the meantime".into())
            })?;
            (StatusCode::CREATED, to_json(SnapshotView::from(snapshot))?)
        }
        _ => {
            let vm = vm_store::find(db, vm).await?.ok_or_else(|| {
                ApiError::NotFound(format!("VM {vm} was deleted in the meantime"))
            })?;
            let status = if kind == K::Create {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, to_json(VmView::from(vm))?)
        }
    };
    Ok(Answer {
        status,
        body: Some(body),
    })
}

fn to_json(value: impl serde::Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// The command that carries `kind` out on the host.
fn command_for(
    kind: OperationKind,
    vm: &Vm,
    snapshot: Option<&Snapshot>,
    create: CreateInputs,
) -> command::Action {
    use OperationKind as K;
    let snapshot_id = || snapshot.map(|s| s.id.to_string()).unwrap_or_default();
    match kind {
        K::Create => command::Action::Create(vmm_proto::CreateVm {
            name: vm.name.clone(),
            cpu: vm.cpu,
            memory_mib: vm.memory_mib,
            disk_gb: vm.disk_gb,
            start: true,
            image: create.image,
            cloud_init: create.cloud_init,
        }),
        K::Start => command::Action::Start(vmm_proto::StartVm {}),
        K::Stop => command::Action::Stop(vmm_proto::StopVm {}),
        K::ForceStop => command::Action::ForceStop(vmm_proto::ForceStopVm {}),
        K::Reboot => command::Action::Reboot(vmm_proto::RebootVm {}),
        K::Delete => command::Action::Delete(vmm_proto::DeleteVm {}),
        K::SnapshotCreate => command::Action::CreateSnapshot(vmm_proto::CreateSnapshot {
            snapshot_id: snapshot_id(),
        }),
        K::SnapshotRestore => command::Action::RestoreSnapshot(vmm_proto::RestoreSnapshot {
            snapshot_id: snapshot_id(),
        }),
        K::SnapshotDelete => command::Action::DeleteSnapshot(vmm_proto::DeleteSnapshot {
            snapshot_id: snapshot_id(),
        }),
    }
}

/// How an operation ended.
#[derive(Debug)]
pub enum Outcome {
    /// The host carried it out.
    Succeeded(CommandSuccess),
    /// The host refused or failed it, never got it, or went away before answering.
    Dispatch(DispatchError),
    /// Nobody can answer any more: the host's session ended, or the coordinator restarted.
    Abandoned(String),
}

impl From<Result<CommandSuccess, DispatchError>> for Outcome {
    fn from(result: Result<CommandSuccess, DispatchError>) -> Self {
        match result {
            Ok(success) => Outcome::Succeeded(success),
            Err(err) => Outcome::Dispatch(err),
        }
    }
}

impl Outcome {
    /// The lifecycle's name for it.
    pub fn phase(&self) -> Phase {
        match self {
            Outcome::Succeeded(_) => Phase::Succeeded,
            Outcome::Dispatch(DispatchError::Failed { .. }) => Phase::Failed,
            Outcome::Dispatch(DispatchError::NotConnected(_)) => Phase::NotSent,
            Outcome::Dispatch(DispatchError::Disconnected(_)) | Outcome::Abandoned(_) => {
                Phase::OutcomeUnknown
            }
        }
    }

    /// What went wrong, for the operation's record and the VM's reason.
    fn failure(&self) -> Option<String> {
        match self {
            Outcome::Succeeded(_) => None,
            Outcome::Dispatch(err) => Some(err.to_string()),
            Outcome::Abandoned(why) => Some(why.clone()),
        }
    }

    /// The error a client gets for an operation that did not succeed.
    fn into_error(self) -> ApiError {
        match self {
            Outcome::Dispatch(err) => err.into(),
            Outcome::Abandoned(why) => ApiError::Unavailable(why),
            Outcome::Succeeded(_) => ApiError::internal(anyhow::anyhow!(
                "a successful operation was answered as failed"
            )),
        }
    }
}

/// What an operation acts on, and what it found there when it started.
#[derive(Clone, Debug)]
pub struct Subject {
    pub operation: OperationId,
    pub kind: OperationKind,
    pub vm: VmId,
    pub host: HostId,
    pub snapshot: Option<SnapshotId>,
    /// The statuses before the start, for an outcome that puts them back; unknown when the
    /// outcome is settled from the operation's record alone.
    pub before: Option<Before>,
}

#[derive(Clone, Debug)]
pub struct Before {
    pub vm_status: VmStatus,
    pub vm_reason: Option<String>,
    pub snapshot_status: Option<SnapshotStatus>,
}

impl Subject {
    fn of(operation: Operation, vm: &Vm, snapshot: Option<&Snapshot>) -> Self {
        Subject {
            operation: operation.id,
            kind: operation.kind,
            vm: vm.id,
            host: vm.host_id.clone(),
            snapshot: snapshot.map(|s| s.id),
            before: Some(Before {
                vm_status: vm.status,
                vm_reason: vm.status_reason.clone(),
                snapshot_status: snapshot.map(|s| s.status),
            }),
        }
    }

    fn of_record(record: &OperationRecord) -> Self {
        Subject {
            operation: record.id,
            kind: record.kind,
            vm: record.vm_id,
            host: record.host_id.clone(),
            snapshot: record.snapshot_id,
            before: None,
        }
    }
}

/// Applies `outcome` to `subject` in one write transaction: finishes the operation (only
/// if it is still pending) and changes its VM and snapshot as the lifecycle says. Returns
/// false, changing nothing, when the operation was already finished.
pub async fn complete(db: &Db, subject: &Subject, outcome: &Outcome) -> Result<bool, sqlx::Error> {
    let failure = outcome.failure();
    let phase = outcome.phase();
    let success = match outcome {
        Outcome::Succeeded(success) => Some(success.clone()),
        _ => None,
    };
    let subject = subject.clone();
    // Among the other writes of its turn (see `db::group_write`).
    db::group_write(db, move |conn| {
        Box::pin(async move {
            let finished = store::finish(
                &mut *conn,
                subject.operation,
                failure.as_deref().map_or(Ok(()), Err),
            )
            .await?;
            if !finished {
                return Ok(false);
            }
            apply_effects(
                conn,
                &subject,
                phase,
                success.as_ref(),
                failure.as_deref().unwrap_or_default(),
            )
            .await?;
            Ok(true)
        })
    })
    .await
}

/// Writes what `phase` of the operation does to its snapshot and its VM.
async fn apply_effects(
    conn: &mut AnyConnection,
    subject: &Subject,
    phase: Phase,
    success: Option<&CommandSuccess>,
    failure: &str,
) -> Result<(), sqlx::Error> {
    let kind = subject.kind;
    if let Some(snapshot) = subject.snapshot {
        match lifecycle::snapshot_effect(kind, phase) {
            SnapshotEffect::Unchanged => {}
            SnapshotEffect::Set(SnapshotStatus::Ready) => {
                snapshot_store::mark_ready(&mut *conn, snapshot, captured_state(success)).await?;
            }
            SnapshotEffect::Set(status) => {
                snapshot_store::set_status(&mut *conn, snapshot, status).await?;
            }
            SnapshotEffect::AsBefore => {
                let before = subject.before.as_ref().and_then(|b| b.snapshot_status);
                let status = before.unwrap_or(SnapshotStatus::Error);
                snapshot_store::set_status(&mut *conn, snapshot, status).await?;
            }
            SnapshotEffect::Removed => snapshot_store::delete(&mut *conn, snapshot).await?,
        }
    }
    match lifecycle::vm_effect(kind, phase) {
        VmEffect::Unchanged => {}
        VmEffect::HostReport => {
            if let Some(success) = success {
                let source = ReportSource::OperationResult;
                reports::apply(
                    &mut *conn,
                    &subject.host,
                    subject.vm,
                    &success.domain,
                    source,
                )
                .await?;
            }
        }
        VmEffect::Set(status) => {
            let reason =
                (status == VmStatus::Error).then(|| lifecycle::error_reason(kind, phase, failure));
            vm_store::set_status(&mut *conn, subject.vm, status, reason.as_deref()).await?;
        }
        VmEffect::AsBefore => match &subject.before {
            Some(before) => {
                let reason = before.vm_reason.as_deref();
                vm_store::set_status(&mut *conn, subject.vm, before.vm_status, reason).await?;
            }
            None => {
                let reason = lifecycle::error_reason(kind, phase, failure);
                vm_store::set_status(&mut *conn, subject.vm, VmStatus::Error, Some(&reason))
                    .await?;
            }
        },
        VmEffect::Removed => vm_store::delete(&mut *conn, subject.vm).await?,
    }
    Ok(())
}

/// The state a snapshot captured, as its host says (`None`: keep the one recorded).
fn captured_state(success: Option<&CommandSuccess>) -> Option<CapturedState> {
    let made = success?.snapshot.as_ref()?;
    let state = PowerState::try_from(made.taken_in_state).ok()?;
    Some(if state == PowerState::Running {
        CapturedState::Running
    } else {
        CapturedState::Stopped
    })
}

/// Settles operations whose host session ended before they were answered: no answer can
/// come for them any more (a host answers on the session that carried the command), so
/// their outcome is unknown. Runs before the host's next inventory is read, which then
/// settles what they left `error`. Operations already finished are left as they are.
pub async fn settle_abandoned(
    db: &Db,
    operations: &[OperationId],
    why: &str,
) -> Result<(), sqlx::Error> {
    for id in operations {
        let Some(record) = store::find(db, *id).await? else {
            continue;
        };
        if complete(
            db,
            &Subject::of_record(&record),
            &Outcome::Abandoned(why.to_owned()),
        )
        .await?
        {
            tracing::warn!(operation = %id, kind = %record.kind, vm_id = %record.vm_id, reason = why, "operation abandoned; its outcome is unknown");
        }
    }
    Ok(())
}

/// At start: operations left pending by the previous run can no longer be answered, so
/// their outcome is unknown (a create or delete leaves its VM `error`, a snapshot create or
/// delete its snapshot `error`, until the host's next inventory settles them). Records an
/// older version left mid-operation without one are marked the same way, and creates cut
/// off before they answered tell their `Idempotency-Key`'s repeats so at once.
pub async fn settle_after_restart(db: &Db) -> Result<(), sqlx::Error> {
    let why = "the coordinator restarted before the host answered";
    let pending = store::pending(db).await?;
    for record in &pending {
        complete(
            db,
            &Subject::of_record(record),
            &Outcome::Abandoned(why.to_owned()),
        )
        .await?;
    }
    let mut tx = db::begin_write(db).await?;
    let reason = "the coordinator restarted during an operation; waiting for the host to report";
    vm_store::mark_orphaned_operations(&mut tx, reason).await?;
    snapshot_store::mark_orphaned_operations(&mut tx).await?;
    let interrupted = ApiError::Unavailable(
        "the first request with this Idempotency-Key was interrupted by a coordinator restart; \
         see GET /api/vms for what it created"
            .into(),
    );
    idempotency::answer_all_unanswered(&mut tx, interrupted.status(), &interrupted.body_value())
        .await?;
    tx.commit().await?;
    if !pending.is_empty() {
        tracing::warn!(
            failed = pending.len(),
            "failed the operations left pending by the previous run"
        );
    }
    Ok(())
}
