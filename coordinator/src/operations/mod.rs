//! Operations: every state-changing request on a VM or snapshot gets an ID, recorded with
//! its outcome, returned in the `Operation-Id` response header and readable later at
//! `GET /api/operations/{id}`. At most one operation per VM is pending at a time (a unique
//! index enforces it).
//!
//! - [`runner`]: carries every operation out, through the lifecycle's rules;
//! - [`store`]: operation records;
//! - [`routes`]: `GET /api/operations/{id}`.
//!
//! An operation is `pending` from its request until its outcome is known — also past the
//! request's timeout, until its host answers, its host's session ends, or the coordinator
//! restarts — then `succeeded` or `failed` (with the reason).

pub mod routes;
pub mod runner;
pub mod store;

use std::time::{Duration, Instant};

use axum::http::HeaderName;
use vmm_shared::{HostId, OperationId, OperationKind, SnapshotId, UserId, VmId};

/// The response header that carries a request's operation ID.
pub const OPERATION_ID_HEADER: HeaderName = HeaderName::from_static("operation-id");

pub use vmm_shared::api::operations::OperationStatus;

/// An operation as recorded.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: OperationId,
    pub kind: OperationKind,
    pub vm_id: VmId,
    /// The snapshot a snapshot create or delete acts on.
    pub snapshot_id: Option<SnapshotId>,
    pub host_id: HostId,
    pub user_id: UserId,
    pub status: OperationStatus,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
}

/// An operation being carried out by this process: its ID, kind and start time.
#[derive(Clone, Copy, Debug)]
pub struct Operation {
    pub id: OperationId,
    pub kind: OperationKind,
    started: Instant,
}

impl Operation {
    pub fn begin(kind: OperationKind) -> Self {
        Self {
            id: OperationId::new_random(),
            kind,
            started: Instant::now(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}
