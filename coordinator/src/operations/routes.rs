//! `GET /api/operations/{id}`: the caller's own operations (an admin's: all); anyone
//! else's answers 404, like one that does not exist.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use vmm_shared::{OperationId, OperationKind, SnapshotId, VmId};

use super::{OperationRecord, OperationStatus, store};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::ApiPath;
use crate::state::AppState;

#[derive(Debug, Serialize)]
pub struct OperationView {
    id: OperationId,
    kind: OperationKind,
    vm_id: VmId,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_id: Option<SnapshotId>,
    status: OperationStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
}

impl From<OperationRecord> for OperationView {
    fn from(record: OperationRecord) -> Self {
        OperationView {
            id: record.id,
            kind: record.kind,
            vm_id: record.vm_id,
            snapshot_id: record.snapshot_id,
            status: record.status,
            error: record.error,
            created_at: record.created_at,
            finished_at: record.finished_at,
        }
    }
}

pub async fn get_operation(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<OperationView>, ApiError> {
    let not_found = || ApiError::NotFound(format!("no operation with ID {id}"));
    let id: OperationId = id.parse().map_err(|_| not_found())?;
    let record = store::find(&app.db, id).await?.ok_or_else(not_found)?;
    if !user.is_admin() && record.user_id != user.id {
        return Err(not_found());
    }
    Ok(Json(record.into()))
}
