//! The snapshot routes (see the module doc of `snapshots`). Each operation is carried out
//! by `operations::runner`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use vmm_shared::api::snapshots::{CreateSnapshotRequest, ListSnapshotsQuery};
use vmm_shared::{OperationKind, SnapshotId, validate_resource_name};

use super::store::{self, NewSnapshot};
use super::{Snapshot, SnapshotStatus, SnapshotView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::page::{self, ApiQuery, Page};
use crate::http::{ApiJson, ApiPath};
use crate::idempotency::{self, IdempotentRequest};
use crate::operations::Operation;
use crate::operations::runner::{self, Began};
use crate::state::AppState;
use crate::vms::routes::{load_visible, repeat_patience};
use crate::vms::store::Recorded;
use crate::vms::{Vm, store as vm_store};

/// Longest snapshot description, in characters.
const MAX_DESCRIPTION_LEN: usize = 1024;

/// The snapshot with this ID and its VM, when the user may see them; otherwise 404.
async fn load_visible_snapshot(
    app: &AppState,
    user: &CurrentUser,
    id: &str,
) -> Result<(Snapshot, Vm), ApiError> {
    let not_found = || ApiError::NotFound(format!("no snapshot with ID {id}"));
    let id: SnapshotId = id.parse().map_err(|_| not_found())?;
    let snapshot = store::find(&app.db, id).await?.ok_or_else(not_found)?;
    if snapshot.owner_id != user.id && !user.is_admin() {
        return Err(not_found());
    }
    let vm = vm_store::find(&app.db, snapshot.vm_id)
        .await?
        .ok_or_else(not_found)?;
    Ok((snapshot, vm))
}

#[utoipa::path(
    post, path = "/api/vms/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "The VM's ID"), ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Makes a retry of the same request answer the first one's outcome: 1-255 visible ASCII characters")),
    request_body = vmm_shared::api::snapshots::CreateSnapshotRequest,
    responses(
        (status = 201, description = "The snapshot was taken", body = vmm_shared::api::snapshots::SnapshotView, headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 400, description = "The snapshot quota would be exceeded", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The name is taken, the VM's status does not allow it, or another operation is in flight", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A value breaks a rule", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_snapshot(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(vm_id): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateSnapshotRequest>,
) -> Result<Response, ApiError> {
    let request_json = serde_json::to_value(&body).map_err(ApiError::internal)?;
    let path = format!("/api/vms/{vm_id}/snapshots");
    let idempotency =
        IdempotentRequest::from_headers(&headers, user.id, "POST", &path, &request_json)?;
    validate_resource_name(&body.name).map_err(ApiError::Unprocessable)?;
    if body.description.chars().count() > MAX_DESCRIPTION_LEN {
        return Err(ApiError::Unprocessable(format!(
            "description is longer than {MAX_DESCRIPTION_LEN} characters"
        )));
    }
    let vm = load_visible(&app, &user, &vm_id).await?;
    runner::ensure_host_connected(&app, &vm).await?;
    let operation = Operation::begin(OperationKind::SnapshotCreate);
    let new = NewSnapshot {
        id: SnapshotId::new_random(),
        name: body.name,
        description: body.description,
    };
    let recorded = store::record_new(
        &app.db,
        vm.id,
        &new,
        operation.id,
        user.id,
        &app.settings.default_quota,
        idempotency.as_ref(),
    )
    .await?;
    let snapshot = match recorded {
        Recorded::New(snapshot) => snapshot,
        Recorded::Repeat => {
            let patience = repeat_patience(&app);
            return idempotency::answer_repeat(&app.db, idempotency.as_ref(), patience).await;
        }
    };
    tracing::info!(operation = %operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "creating snapshot");
    let began = Began {
        operation,
        vm,
        snapshot: Some(snapshot),
        idempotency,
        create: None,
    };
    Ok(runner::run_operation(&app, began).await)
}

/// The VM's snapshots, oldest first; all of them without `limit`.
#[utoipa::path(
    get, path = "/api/vms/{id}/snapshots", tag = "snapshots",
    params(("id" = String, Path, description = "The VM's ID"), vmm_shared::api::snapshots::ListSnapshotsQuery),
    responses(
        (status = 200, description = "A page of the VM's snapshots, oldest first", body = Vec<vmm_shared::api::snapshots::SnapshotView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_snapshots(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(vm_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ListSnapshotsQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let status = page::filter::<SnapshotStatus>(
        "status",
        query.status.as_deref(),
        "a snapshot status (creating, ready, deleting, error)",
        &mut echo,
    )?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), None)?;
    let vm = load_visible(&app, &user, &vm_id).await?;
    let snapshots = store::list_page(&app.db, vm.id, status, &page).await?;
    let path = format!("/api/vms/{}/snapshots", vm.id);
    Ok(snapshots
        .map(SnapshotView::from)
        .into_response(&path, &echo))
}

#[utoipa::path(
    post, path = "/api/snapshots/{id}/restore", tag = "snapshots",
    params(("id" = String, Path, description = "The snapshot's ID")),
    responses(
        (status = 200, description = "The VM is back to the snapshot", body = vmm_shared::api::vms::VmView, headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 404, description = "No such snapshot (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The snapshot's or VM's status does not allow it, or another operation is in flight", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn restore_snapshot(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(snapshot_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (snapshot, vm) = load_visible_snapshot(&app, &user, &snapshot_id).await?;
    let kind = OperationKind::SnapshotRestore;
    let began = runner::begin(&app, user.id, kind, &vm, Some(&snapshot)).await?;
    tracing::info!(operation = %began.operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "restoring snapshot");
    Ok(runner::run_operation(&app, began).await)
}

#[utoipa::path(
    delete, path = "/api/snapshots/{id}", tag = "snapshots",
    params(("id" = String, Path, description = "The snapshot's ID")),
    responses(
        (status = 204, description = "The snapshot is gone", headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 404, description = "No such snapshot (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The snapshot's status does not allow it, or another operation is in flight", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_snapshot(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(snapshot_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (snapshot, vm) = load_visible_snapshot(&app, &user, &snapshot_id).await?;
    let kind = OperationKind::SnapshotDelete;
    let began = runner::begin(&app, user.id, kind, &vm, Some(&snapshot)).await?;
    tracing::info!(operation = %began.operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "deleting snapshot");
    Ok(runner::run_operation(&app, began).await)
}
