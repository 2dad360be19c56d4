//! The snapshot routes (see the module doc of `snapshots`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use vmm_proto::{Command, PowerState, command};
use vmm_shared::{OperationKind, SnapshotId, VmStatus, validate_resource_name};

use super::store::{self, NewSnapshot};
use super::{Snapshot, SnapshotStatus, SnapshotView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::hosts::DispatchError;
use crate::hosts::registry::CommandSuccess;
use crate::http::{ApiJson, ApiPath};
use crate::idempotency::{self, IdempotentRequest};
use crate::operations::{self, Operation};
use crate::state::AppState;
use crate::vms::reports::{self, ReportSource};
use crate::vms::routes::{
    answer_repeat, ensure_host_connected, load_visible, run_detached, run_vm_operation,
    with_operation,
};
use crate::vms::store::Recorded;
use crate::vms::{Vm, VmView, store as vm_store};

/// Longest snapshot description, in characters.
const MAX_DESCRIPTION_LEN: usize = 1024;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    name: String,
    #[serde(default)]
    description: String,
}

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

fn snapshot_command(operation: Operation, vm: &Vm, action: command::Action) -> Command {
    Command {
        operation_id: operation.id.to_string(),
        vm_id: vm.id.to_string(),
        action: Some(action),
    }
}

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
    ensure_host_connected(&app, &vm)?;
    let vm_status = match vm.status {
        VmStatus::Running => "running",
        VmStatus::Stopped => "stopped",
        other => {
            return Err(ApiError::Conflict(format!(
                "cannot snapshot the VM while it is {other}; snapshots are taken of running or stopped VMs"
            )));
        }
    };
    let operation = Operation::begin(OperationKind::SnapshotCreate);
    let new = NewSnapshot {
        id: SnapshotId::new_random(),
        name: body.name,
        description: body.description,
        vm_status,
    };
    let recorded = store::record_new(
        &app.db,
        &vm,
        &new,
        operation.id,
        user.id,
        &app.settings.default_quota,
        idempotency.as_ref(),
    )
    .await?;
    let snapshot = match (recorded, &idempotency) {
        (Recorded::New(snapshot), _) => snapshot,
        (Recorded::Repeat, request) => return answer_repeat(&app, request.as_ref()).await,
    };
    tracing::info!(operation = %operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "creating snapshot");

    let view = run_detached(async move {
        let snapshot_id = snapshot.id;
        let result = create_on_host(app.clone(), vm, snapshot, operation)
            .await
            .map(SnapshotView::from);
        let kept = result.is_ok() || store::find(&app.db, snapshot_id).await?.is_some();
        idempotency::remember(
            &app.db,
            idempotency.as_ref(),
            StatusCode::CREATED,
            &result,
            kept,
        )
        .await?;
        result
    })
    .await?;
    Ok(with_operation(StatusCode::CREATED, operation, Json(view)))
}

async fn create_on_host(
    app: AppState,
    vm: Vm,
    snapshot: Snapshot,
    operation: Operation,
) -> Result<Snapshot, ApiError> {
    let action = command::Action::CreateSnapshot(vmm_proto::CreateSnapshot {
        snapshot_id: snapshot.id.to_string(),
    });
    match app
        .registry
        .dispatch(
            &vm.host_id,
            snapshot_command(operation, &vm, action),
            app.settings.operation_timeout,
        )
        .await
    {
        Ok(CommandSuccess {
            domain,
            snapshot: made,
        }) => {
            let captured = made
                .and_then(|made| PowerState::try_from(made.taken_in_state).ok())
                .map(|state| {
                    if state == PowerState::Running {
                        "running"
                    } else {
                        "stopped"
                    }
                })
                .unwrap_or(snapshot.vm_status.as_str())
                .to_owned();
            store::mark_ready(&app.db, snapshot.id, &captured).await?;
            reports::apply(
                &app.db,
                &vm.host_id,
                vm.id,
                &domain,
                ReportSource::OperationResult,
            )
            .await?;
            operations::finish(&app.db, operation, Ok(())).await?;
            store::find(&app.db, snapshot.id).await?.ok_or_else(|| {
                ApiError::NotFound("the snapshot was deleted in the meantime".into())
            })
        }
        Err(err) => {
            let message = err.to_string();
            match &err {
                // Refused, or never sent: nothing was made on the host.
                DispatchError::Failed { .. } | DispatchError::NotConnected(_) => {
                    store::delete(&app.db, snapshot.id).await?;
                }
                DispatchError::Disconnected(_) | DispatchError::TimedOut { .. } => {
                    store::set_status(&app.db, snapshot.id, SnapshotStatus::Error).await?;
                }
            }
            operations::finish(&app.db, operation, Err(&message)).await?;
            tracing::warn!(operation = %operation.id, snapshot_id = %snapshot.id, error = %message, "snapshot create failed");
            Err(err.into())
        }
    }
}

pub async fn list_snapshots(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(vm_id): ApiPath<String>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    let vm = load_visible(&app, &user, &vm_id).await?;
    let snapshots = store::list_for_vm(&app.db, vm.id).await?;
    Ok(Json(
        snapshots.into_iter().map(SnapshotView::from).collect(),
    ))
}

pub async fn restore_snapshot(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(snapshot_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (snapshot, vm) = load_visible_snapshot(&app, &user, &snapshot_id).await?;
    if snapshot.status != SnapshotStatus::Ready {
        return Err(ApiError::Conflict(format!(
            "cannot restore the snapshot: it is {}",
            snapshot.status.as_str()
        )));
    }
    ensure_host_connected(&app, &vm)?;
    if !matches!(
        vm.status,
        VmStatus::Running | VmStatus::Stopped | VmStatus::Paused | VmStatus::Error
    ) {
        return Err(ApiError::Conflict(format!(
            "cannot restore a snapshot while the VM is {}",
            vm.status
        )));
    }
    let operation = Operation::begin(OperationKind::SnapshotRestore);
    vm_store::begin_operation(
        &app.db,
        &vm,
        operation.id,
        OperationKind::SnapshotRestore,
        user.id,
        None,
    )
    .await?;
    tracing::info!(operation = %operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "restoring snapshot");

    let action = command::Action::RestoreSnapshot(vmm_proto::RestoreSnapshot {
        snapshot_id: snapshot.id.to_string(),
    });
    let vm = run_vm_operation(app, vm, operation, action).await?;
    Ok(with_operation(
        StatusCode::OK,
        operation,
        Json(VmView::from(vm)),
    ))
}

pub async fn delete_snapshot(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(snapshot_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let (snapshot, vm) = load_visible_snapshot(&app, &user, &snapshot_id).await?;
    ensure_host_connected(&app, &vm)?;
    let operation = Operation::begin(OperationKind::SnapshotDelete);
    store::begin_delete(&app.db, &vm, snapshot.id, operation.id, user.id).await?;
    tracing::info!(operation = %operation.id, vm_id = %vm.id, snapshot_id = %snapshot.id, "deleting snapshot");

    run_detached(async move {
        let action = command::Action::DeleteSnapshot(vmm_proto::DeleteSnapshot { snapshot_id: snapshot.id.to_string() });
        match app.registry.dispatch(&vm.host_id, snapshot_command(operation, &vm, action), app.settings.operation_timeout).await {
            Ok(_) => {
                store::delete(&app.db, snapshot.id).await?;
                operations::finish(&app.db, operation, Ok(())).await?;
                Ok(())
            }
            Err(err) => {
                let status = match &err {
                    DispatchError::NotConnected(_) => snapshot.status,
                    _ => SnapshotStatus::Error,
                };
                store::set_status(&app.db, snapshot.id, status).await?;
                operations::finish(&app.db, operation, Err(&err.to_string())).await?;
                tracing::warn!(operation = %operation.id, snapshot_id = %snapshot.id, error = %err, "snapshot delete failed");
                Err(err.into())
            }
        }
    })
    .await?;
    Ok(with_operation(StatusCode::NO_CONTENT, operation, ()))
}
