//! `GET /api/operations/{id}`: the caller's own operations (an admin's: all); anyone
//! else's answers 404, like one that does not exist. `GET /api/operations`: the caller's
//! operations (an admin's: everyone's), oldest first, a page at a time (see `http::page`),
//! filtered by `status`, `kind` and `vm`.

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use vmm_shared::api::operations::{ListOperationsQuery, OperationView};
use vmm_shared::{OperationId, OperationKind, VmId};

use super::{OperationRecord, OperationStatus, store};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::ApiPath;
use crate::http::page::{self, ApiQuery, DEFAULT_CAP, Page};
use crate::state::AppState;

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

#[utoipa::path(
    get, path = "/api/operations", tag = "operations",
    params(vmm_shared::api::operations::ListOperationsQuery),
    responses(
        (status = 200, description = "A page of the caller's operations (an admin's: everyone's), oldest first", body = Vec<vmm_shared::api::operations::OperationView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
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

#[utoipa::path(
    get, path = "/api/operations/{id}", tag = "operations",
    params(("id" = String, Path, description = "The operation's ID (the `Operation-Id` header of its request)")),
    responses(
        (status = 200, description = "The operation and its outcome", body = vmm_shared::api::operations::OperationView),
        (status = 404, description = "No such operation (or another user's)", body = vmm_shared::api::ErrorBody),
    )
)]
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
