//! The lifecycle of VMs and snapshots: the one place that decides which operation each
//! status allows, what each operation's outcome does to the records, and which host reports
//! may change a VM's status. Everything else asks here: the operation runner
//! (`operations::runner`) before and after every operation, the stores for the SQL
//! predicates derived from these rules ([`sql`]), the agent stream when a host is lost or
//! comes back. It never touches the database itself.
//!
//! ## What each operation needs
//!
//! The VM's status (`yes`: allowed; `-`: refused with 409 and a message saying why):
//!
//! | needs VM         | creating | running | paused | stopped | deleting | unknown | error |
//! |------------------|----------|---------|--------|---------|----------|---------|-------|
//! | start            |    -     |    -    |   -    |   yes   |    -     |    -    |   -   |
//! | stop             |    -     |   yes   |  yes   |    -    |    -     |    -    |   -   |
//! | force_stop       |    -     |   yes   |  yes   |    -    |    -     |    -    |  yes  |
//! | reboot           |    -     |   yes   |   -    |    -    |    -     |    -    |   -   |
//! | delete           |    -     |   yes   |  yes   |   yes   |    -     |    -    |  yes  |
//! | snapshot_create  |    -     |   yes   |   -    |   yes   |    -     |    -    |   -   |
//! | snapshot_restore |    -     |   yes   |  yes   |   yes   |    -     |    -    |  yes  |
//! | snapshot_delete  |   yes    |   yes   |  yes   |   yes   |   yes    |   yes   |  yes  |
//!
//! and, for the operations on an existing snapshot, the snapshot's status:
//!
//! | needs snapshot   | creating | ready | deleting | error |
//! |------------------|----------|-------|----------|-------|
//! | snapshot_restore |    -     |  yes  |    -     |   -   |
//! | snapshot_delete  |    -     |  yes  |    -     |  yes  |
//!
//! Two rules come before this table: a VM whose host is not connected (`unknown`) answers
//! 503 naming the host, and a VM with an operation in flight answers 409 (at most one
//! pending operation per VM, enforced by a unique index), which is also why a snapshot can
//! be deleted whatever its VM's status.
//!
//! ## What each outcome does
//!
//! An operation starts (its record is written `pending` in the same transaction as the
//! start's effect), is sent to its host, and ends in one of four outcomes:
//! - **succeeded**: the host carried it out and says how the domain is now;
//! - **failed**: the host refused it or failed at it, having changed nothing;
//! - **not sent**: it never reached the host (the host was gone when it was sent);
//! - **outcome unknown**: the host may or may not have carried it out: its session ended
//!   before it answered, or the coordinator restarted meanwhile.
//!
//! The VM record after each (`host's report`: the domain report in the answer is applied;
//! `as before`: the status it had before the operation; `removed`: the row is deleted, which
//! also releases its quota):
//!
//! | VM after         | start      | succeeded     | failed  | not sent  | outcome unknown |
//! |------------------|------------|---------------|---------|-----------|-----------------|
//! | create           | `creating` | host's report | removed | removed   | `error`         |
//! | start            |     -      | host's report |    -    |    -      |       -         |
//! | stop             |     -      | host's report |    -    |    -      |       -         |
//! | force_stop       |     -      | host's report |    -    |    -      |       -         |
//! | reboot           |     -      | host's report |    -    |    -      |       -         |
//! | delete           | `deleting` | removed       | `error` | as before | `error`         |
//! | snapshot_create  |     -      | host's report |    -    |    -      |       -         |
//! | snapshot_restore |     -      | host's report |    -    |    -      |       -         |
//! | snapshot_delete  |     -      |       -       |    -    |    -      |       -         |
//!
//! The snapshot record after each (`ready` also records which state the snapshot captured,
//! as the host says):
//!
//! | snapshot after   | start      | succeeded | failed  | not sent  | outcome unknown |
//! |------------------|------------|-----------|---------|-----------|-----------------|
//! | snapshot_create  | `creating` | `ready`   | removed | removed   | `error`         |
//! | snapshot_delete  | `deleting` | removed   | `error` | as before | `error`         |
//!
//! The operation itself becomes `succeeded` or `failed` (with the reason). An `error` VM
//! says why in its `status_reason` and allows `force_stop` and `delete`; an `error`
//! snapshot can be deleted. A host's next inventory settles both (see below).
//!
//! **Timeout.** A host that has not answered within `OPERATION_TIMEOUT_SECS` gets the
//! request answered with 504, and nothing changes: the operation stays `pending` (so the VM
//! still refuses a second operation with 409, as the host may still be busy with it) until
//! its answer comes. **A late result** is applied exactly as an on-time one would have been
//! (same row of the table, same transaction); `GET /api/operations/{id}` then shows the
//! real outcome. An answer can only come on the session that carried the command: when that
//! session ends, the operation's outcome is unknown; when the coordinator restarts, every
//! pending operation's outcome is unknown. Each outcome is applied at most once: finishing
//! the operation (`… WHERE status = 'pending'`) and changing the records are one
//! transaction, so of a late result and a session's end racing, the first wins.
//!
//! ## Reports and hosts
//!
//! A state report from a host applies only when its generation is newer than the stored one
//! ([`report_applies`]); and `creating` and `deleting` belong to the operation in flight, so
//! only its own result moves a VM out of them. The full inventory a host sends when it
//! (re)connects also settles `unknown` and `error` VMs at an equal generation. When a host is
//! lost, its VMs that were `running`, `paused` or `stopped` read as `unknown` — never
//! `stopped`: the coordinator does not know, so it does not say. The loss is recorded on the
//! host's row and the VMs keep their stored statuses ([`status_as_read`]); the inventory
//! that settles them clears it, in the same transaction. A VM the inventory lacks is
//! removed when its create was never acknowledged (it never came to be) and is otherwise
//! flagged `error`; snapshots follow the host's list ([`snapshot_after_inventory`]).

pub mod sql;

#[cfg(test)]
mod tests;

use vmm_shared::{OperationKind, VmStatus};

use crate::snapshots::SnapshotStatus;

/// The status a new VM is recorded with, while its create is in flight.
pub const VM_CREATED_AS: VmStatus = VmStatus::Creating;
/// The status a new snapshot is recorded with, while its create is in flight.
pub const SNAPSHOT_CREATED_AS: SnapshotStatus = SnapshotStatus::Creating;

/// A power action a user can ask for with `POST /api/vms/{id}/action`.
pub use vmm_shared::api::vms::VmAction;

/// An operation refused because of the status of its VM or snapshot (HTTP 409).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(String);

/// Whether the VM's status allows `kind` (the first table). A create has no VM yet.
pub fn vm_allows(kind: OperationKind, status: VmStatus) -> bool {
    use OperationKind as K;
    use VmStatus::*;
    match kind {
        K::Create => false,
        K::Start => status == Stopped,
        K::Stop => matches!(status, Running | Paused),
        K::ForceStop => matches!(status, Running | Paused | Error),
        K::Reboot => status == Running,
        K::Delete | K::SnapshotRestore => matches!(status, Running | Paused | Stopped | Error),
        K::SnapshotCreate => matches!(status, Running | Stopped),
        K::SnapshotDelete => true,
    }
}

/// Whether the snapshot's status allows `kind` (the second table); `None` for operations
/// that do not act on an existing snapshot.
pub fn snapshot_allows(kind: OperationKind, status: SnapshotStatus) -> Option<bool> {
    match kind {
        OperationKind::SnapshotRestore => Some(status == SnapshotStatus::Ready),
        OperationKind::SnapshotDelete => Some(matches!(
            status,
            SnapshotStatus::Ready | SnapshotStatus::Error
        )),
        _ => None,
    }
}

/// Checks `kind` against the status of its snapshot (when it acts on one) and of its VM,
/// saying why when refused.
pub fn check(
    kind: OperationKind,
    vm: VmStatus,
    snapshot: Option<SnapshotStatus>,
) -> Result<(), Refused> {
    if let Some(status) = snapshot
        && snapshot_allows(kind, status) == Some(false)
    {
        let verb = match kind {
            OperationKind::SnapshotRestore => "restore",
            _ => "delete",
        };
        return Err(Refused(format!(
            "cannot {verb} the snapshot: it is {status}"
        )));
    }
    if vm_allows(kind, vm) {
        return Ok(());
    }
    Err(Refused(vm_refusal(kind, vm)))
}

fn vm_refusal(kind: OperationKind, status: VmStatus) -> String {
    use OperationKind as K;
    use VmStatus::*;
    match kind {
        K::Delete => match status {
            Deleting => "the VM is already being deleted".to_owned(),
            _ => format!("cannot delete the VM: {}", why_not(kind, status)),
        },
        K::SnapshotCreate => format!(
            "cannot snapshot the VM while it is {status}; snapshots are taken of running or stopped VMs"
        ),
        K::SnapshotRestore => format!("cannot restore a snapshot while the VM is {status}"),
        _ => format!("cannot {kind} the VM: {}", why_not(kind, status)),
    }
}

fn why_not(kind: OperationKind, status: VmStatus) -> String {
    use OperationKind as K;
    use VmStatus::*;
    match (status, kind) {
        (Running | Paused, K::Start) => "it is already running".to_owned(),
        (Stopped, K::Stop | K::ForceStop) => "it is already stopped".to_owned(),
        (Stopped, K::Reboot) => "it is stopped; start it instead".to_owned(),
        (Creating, _) => "it is still being created".to_owned(),
        (Deleting, _) => "it is being deleted".to_owned(),
        (Unknown, _) => "its host is unreachable, so its state is unknown".to_owned(),
        (Error, _) => "it is in the error state; force_stop or delete it".to_owned(),
        (status, _) => format!("it is {status}"),
    }
}

/// Where an operation is: just started, or ended with one of the four outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Start,
    Succeeded,
    Failed,
    NotSent,
    OutcomeUnknown,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Start,
        Phase::Succeeded,
        Phase::Failed,
        Phase::NotSent,
        Phase::OutcomeUnknown,
    ];
}

/// What a phase of an operation does to its VM's record (the third table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEffect {
    Unchanged,
    /// The domain report in the host's answer is applied.
    HostReport,
    Set(VmStatus),
    /// The status (and reason) from before the operation is put back.
    AsBefore,
    /// The row is deleted, which releases its quota.
    Removed,
}

/// What a phase of an operation does to its snapshot's record (the fourth table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotEffect {
    Unchanged,
    Set(SnapshotStatus),
    AsBefore,
    Removed,
}

pub fn vm_effect(kind: OperationKind, phase: Phase) -> VmEffect {
    use OperationKind as K;
    use Phase::*;
    match (kind, phase) {
        (K::Create, Start) => VmEffect::Set(VM_CREATED_AS),
        (K::Create, Succeeded) => VmEffect::HostReport,
        (K::Create, Failed | NotSent) => VmEffect::Removed,
        (K::Create, OutcomeUnknown) => VmEffect::Set(VmStatus::Error),
        (K::Delete, Start) => VmEffect::Set(VmStatus::Deleting),
        (K::Delete, Succeeded) => VmEffect::Removed,
        (K::Delete, Failed | OutcomeUnknown) => VmEffect::Set(VmStatus::Error),
        (K::Delete, NotSent) => VmEffect::AsBefore,
        (K::SnapshotDelete, _) => VmEffect::Unchanged,
        (_, Succeeded) => VmEffect::HostReport,
        _ => VmEffect::Unchanged,
    }
}

pub fn snapshot_effect(kind: OperationKind, phase: Phase) -> SnapshotEffect {
    use OperationKind as K;
    use Phase::*;
    match (kind, phase) {
        (K::SnapshotCreate, Start) => SnapshotEffect::Set(SNAPSHOT_CREATED_AS),
        (K::SnapshotCreate, Succeeded) => SnapshotEffect::Set(SnapshotStatus::Ready),
        (K::SnapshotCreate, Failed | NotSent) => SnapshotEffect::Removed,
        (K::SnapshotCreate, OutcomeUnknown) => SnapshotEffect::Set(SnapshotStatus::Error),
        (K::SnapshotDelete, Start) => SnapshotEffect::Set(SnapshotStatus::Deleting),
        (K::SnapshotDelete, Succeeded) => SnapshotEffect::Removed,
        (K::SnapshotDelete, Failed | OutcomeUnknown) => SnapshotEffect::Set(SnapshotStatus::Error),
        (K::SnapshotDelete, NotSent) => SnapshotEffect::AsBefore,
        _ => SnapshotEffect::Unchanged,
    }
}

/// The `status_reason` of a VM that an outcome leaves `error`: what happened, and what the
/// user can do.
pub fn error_reason(kind: OperationKind, phase: Phase, message: &str) -> String {
    match (kind, phase) {
        (OperationKind::Create, _) => {
            format!("the outcome of the create is not known yet: {message}")
        }
        (OperationKind::Delete, _) => {
            format!("delete failed: {message}; delete it again to retry")
        }
        _ => format!("{kind} failed: {message}"),
    }
}

/// Statuses that belong to an operation in flight: those some operation sets when it
/// starts (`creating`, `deleting`). Only that operation's own outcome moves a VM out of them.
pub fn owned_by_operation(status: VmStatus) -> bool {
    OperationKind::ALL
        .into_iter()
        .any(|kind| vm_effect(kind, Phase::Start) == VmEffect::Set(status))
}

/// Where a state report about a VM comes from, which decides what it may override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportSource {
    /// A change the agent observed while connected.
    Change,
    /// The agent's full inventory at (re)connect.
    Inventory,
    /// The answer to an operation on this VM.
    OperationResult,
}

impl ReportSource {
    pub const ALL: [ReportSource; 3] = [
        ReportSource::Change,
        ReportSource::Inventory,
        ReportSource::OperationResult,
    ];
}

/// Statuses a (re)connecting host's inventory settles even at an equal generation: the
/// coordinator lost track of them, the host did not change its mind.
pub fn settled_by_inventory(status: VmStatus) -> bool {
    matches!(status, VmStatus::Unknown | VmStatus::Error)
}

/// Whether a report may change a VM whose status is `status`; `newer`: the report's
/// generation is above the stored one. [`sql::report_applies`] is the same rule in SQL.
pub fn report_applies(source: ReportSource, status: VmStatus, newer: bool) -> bool {
    match source {
        ReportSource::OperationResult => newer,
        ReportSource::Change => newer && !owned_by_operation(status),
        ReportSource::Inventory => {
            (newer || settled_by_inventory(status)) && !owned_by_operation(status)
        }
    }
}

/// Whether a VM with this status reads as `unknown` while its host is lost: every status a
/// host's report set (`running`, `paused`, `stopped`). Operations in flight keep theirs
/// (their outcome settles them), and `error` keeps its reason.
pub fn unknown_when_host_lost(status: VmStatus) -> bool {
    matches!(
        status,
        VmStatus::Running | VmStatus::Paused | VmStatus::Stopped
    )
}

/// The status a VM stored as `stored` reads as (in the API, the metrics and every rule
/// here): `unknown` while its host is lost (`host_lost`) and `stored` is one that
/// [`unknown_when_host_lost`] names, `stored` otherwise. The loss is recorded once on the
/// host's row, not on each of its VMs, so losing a host and its coming back cost a write
/// per host rather than per VM; [`sql::read_status_sql`] is the same rule in SQL.
pub fn status_as_read(stored: VmStatus, host_lost: bool) -> VmStatus {
    if host_lost && unknown_when_host_lost(stored) {
        VmStatus::Unknown
    } else {
        stored
    }
}

/// What to do with a recorded VM that its host's inventory does not list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissingFromInventory {
    /// Its create was never acknowledged: it never came to be. Removing the record releases
    /// its quota.
    Remove,
    /// It existed and is gone: flagged `error` for its owner to see and delete.
    MarkError,
    /// An operation in flight owns it; its outcome settles it.
    Leave,
}

pub fn vm_missing_from_inventory(
    status: VmStatus,
    create_acknowledged: bool,
) -> MissingFromInventory {
    if status == VmStatus::Error && !create_acknowledged {
        MissingFromInventory::Remove
    } else if owned_by_operation(status) {
        MissingFromInventory::Leave
    } else {
        MissingFromInventory::MarkError
    }
}

/// A snapshot's status after its host's inventory (which lists the snapshots it has), or
/// `None` for no change: a `ready` snapshot the host lacks is `error`; an `error` snapshot
/// the host has (its operation was cut off after it was made) is `ready`. Snapshots with an
/// operation in flight are left to it.
pub fn snapshot_after_inventory(status: SnapshotStatus, on_host: bool) -> Option<SnapshotStatus> {
    match status {
        SnapshotStatus::Ready if !on_host => Some(SnapshotStatus::Error),
        SnapshotStatus::Error if on_host => Some(SnapshotStatus::Ready),
        _ => None,
    }
}
