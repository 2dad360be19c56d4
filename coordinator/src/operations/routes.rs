//! `GET /api/operations/{id}`: the caller's own operations (an admin's: all); anyone
//! else's answers 404, like one that does not exist. `GET /api/operations`: the caller's
//! operations (an admin's: everyone's), oldest first, a page at a time (see `http::page`),
//! filtered by `status`, `kind` and `vm`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use vmm_shared::{OperationId, OperationKind, SnapshotId, VmId};

use super::{OperationRecord, OperationStatus, store};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::ApiPath;
use crate::http::page::{self, ApiQuery, DEFAULT_CAP, Page};
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

/// `GET /api/operations`'s parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOperationsQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    status: Option<String>,
    kind: Option<String>,
    vm: Option<String>,
}

pub async fn list_operations(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListOperationsQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let status = page::filter::<OperationStatus>(
        "status",
        query.status.as_deref(),
        "an operation status (pending, succeeded, failed)",
        &mut echo,
    )?;
    let kind = page::filter::<OperationKind>(
        "kind",
        query.kind.as_deref(),
        "an operation kind (create, start, stop, force_stop, reboot, delete, snapshot_create, \
         snapshot_restore, snapshot_delete)",
        &mut echo,
    )?;
    let vm = page::filter::<VmId>("vm", query.vm.as_deref(), "a VM ID", &mut echo)?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    let filter = store::OperationFilter {
        user: (!user.is_admin()).then_some(user.id),
        vm,
        status,
        kind,
    };
    let operations = store::list(&app.db, &filter, &page).await?;
    Ok(operations
        .map(OperationView::from)
        .into_response("/api/operations", &echo))
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
