//! The VM routes: `POST /api/vms`, `GET /api/vms`, `GET /api/vms/{id}`,
//! `POST /api/vms/{id}/action` and `DELETE /api/vms/{id}`.
//!
//! A user sees only their own VMs (an admin sees all); any other VM answers 404, exactly
//! like one that does not exist. Each state-changing request becomes an operation whose ID
//! is returned in the `Operation-Id` header. The work with the host runs in its own task,
//! so a client that hangs up mid-request cannot leave a VM half-created or an operation
//! pending forever.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use vmm_proto::{Command, command};
use vmm_shared::{OperationKind, VmId, VmSize, VmStatus, validate_resource_name};

use super::lifecycle::{self, VmAction};
use super::reports::{self, ReportSource};
use super::store::{self, NewVm, Recorded};
use super::{Vm, VmView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::hosts::DispatchError;
use crate::hosts::registry::CommandSuccess;
use crate::http::{ApiJson, ApiPath};
use crate::idempotency::{self, IdempotentRequest};
use crate::operations::{self, Operation};
use crate::state::AppState;

pub const OPERATION_ID_HEADER: HeaderName = HeaderName::from_static("operation-id");

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    name: String,
    cpu: u32,
    /// MiB.
    memory: u64,
    disk_gb: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    action: VmAction,
}

pub(crate) fn with_operation(
    status: StatusCode,
    operation: Operation,
    body: impl IntoResponse,
) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&operation.id.to_string()) {
        headers.insert(OPERATION_ID_HEADER, value);
    }
    (status, headers, body).into_response()
}

/// The VM with this ID when the user may see it; otherwise 404.
pub(crate) async fn load_visible(
    app: &AppState,
    user: &CurrentUser,
    id: &str,
) -> Result<Vm, ApiError> {
    let not_found = || ApiError::NotFound(format!("no VM with ID {id}"));
    let id: VmId = id.parse().map_err(|_| not_found())?;
    let vm = store::find(&app.db, id).await?.ok_or_else(not_found)?;
    if vm.owner_id == user.id || user.is_admin() {
        Ok(vm)
    } else {
        Err(not_found())
    }
}

pub(crate) async fn reload(app: &AppState, id: VmId) -> Result<Vm, ApiError> {
    store::find(&app.db, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("VM {id} was deleted in the meantime")))
}

pub(crate) fn ensure_host_connected(app: &AppState, vm: &Vm) -> Result<(), ApiError> {
    if app.registry.is_connected(&vm.host_id) {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!(
            "host {} of this VM is not connected; try again when its agent is back",
            vm.host_id
        )))
    }
}

/// Runs `work` to completion even if the request that started it is dropped.
pub(crate) async fn run_detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(ApiError::internal)?
}

pub async fn create_vm(
    State(app): State<AppState>,
    user: CurrentUser,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateVmRequest>,
) -> Result<Response, ApiError> {
    let request_json = serde_json::to_value(&body).map_err(ApiError::internal)?;
    let idempotency =
        IdempotentRequest::from_headers(&headers, user.id, "POST", "/api/vms", &request_json)?;
    validate_resource_name(&body.name).map_err(ApiError::Unprocessable)?;
    let size = VmSize {
        cpu: body.cpu,
        memory_mib: body.memory,
        disk_gb: body.disk_gb.unwrap_or(VmSize::DEFAULT_DISK_GB),
    };
    size.validate()
        .map_err(|err| ApiError::Unprocessable(err.to_string()))?;

    let operation = Operation::begin(OperationKind::Create);
    let new = NewVm {
        id: VmId::new_random(),
        owner_id: user.id,
        name: body.name,
        size,
    };
    let recorded = store::place_and_record(
        &app.db,
        &new,
        operation.id,
        app.settings.placement,
        app.settings.cpu_allocation_ratio,
        &app.settings.default_quota,
        idempotency.as_ref(),
    )
    .await?;
    let vm = match (recorded, &idempotency) {
        (Recorded::New(vm), _) => vm,
        (Recorded::Repeat, request) => return answer_repeat(&app, request.as_ref()).await,
    };
    tracing::info!(operation = %operation.id, vm_id = %vm.id, host = %vm.host_id, "creating VM");

    let view = run_detached(async move {
        let vm_id = vm.id;
        let result = create_on_host(app.clone(), vm, operation)
            .await
            .map(VmView::from);
        let kept = result.is_ok() || store::find(&app.db, vm_id).await?.is_some();
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

/// Answers a create that repeats an earlier one's Idempotency-Key with that one's answer,
/// waiting for it while the first is still being carried out.
pub(crate) async fn answer_repeat(
    app: &AppState,
    request: Option<&IdempotentRequest>,
) -> Result<Response, ApiError> {
    let request = request.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("a repeat without an Idempotency-Key"))
    })?;
    tracing::info!(key = %request.key, "repeated create answered from its Idempotency-Key");
    let patience = app.settings.operation_timeout + std::time::Duration::from_secs(5);
    idempotency::replay(&app.db, request, patience).await
}

async fn create_on_host(app: AppState, vm: Vm, operation: Operation) -> Result<Vm, ApiError> {
    let command = Command {
        operation_id: operation.id.to_string(),
        vm_id: vm.id.to_string(),
        action: Some(command::Action::Create(vmm_proto::CreateVm {
            name: vm.name.clone(),
            cpu: vm.cpu,
            memory_mib: vm.memory_mib,
            disk_gb: vm.disk_gb,
            start: true,
        })),
    };
    match app
        .registry
        .dispatch(&vm.host_id, command, app.settings.operation_timeout)
        .await
    {
        Ok(CommandSuccess { domain: report, .. }) => {
            reports::apply(
                &app.db,
                &vm.host_id,
                vm.id,
                &report,
                ReportSource::OperationResult,
            )
            .await?;
            operations::finish(&app.db, operation, Ok(())).await?;
            tracing::info!(operation = %operation.id, vm_id = %vm.id, "VM created");
            reload(&app, vm.id).await
        }
        Err(err) => {
            let message = err.to_string();
            match &err {
                // The host refused or never got the command: nothing exists there, so
                // nothing is kept here either.
                DispatchError::Failed { .. } | DispatchError::NotConnected(_) => {
                    store::delete(&app.db, vm.id).await?;
                }
                // The host may or may not have made the VM; keep the record so the host's
                // next report settles it.
                DispatchError::Disconnected(_) | DispatchError::TimedOut { .. } => {
                    let reason = format!("the outcome of the create is not known yet: {message}");
                    store::set_status(&app.db, vm.id, VmStatus::Error, Some(&reason)).await?;
                }
            }
            operations::finish(&app.db, operation, Err(&message)).await?;
            tracing::warn!(operation = %operation.id, vm_id = %vm.id, error = %message, "VM create failed");
            Err(err.into())
        }
    }
}

pub async fn list_vms(
    State(app): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<VmView>>, ApiError> {
    let owner = if user.is_admin() { None } else { Some(user.id) };
    let vms = store::list(&app.db, owner).await?;
    Ok(Json(vms.into_iter().map(VmView::from).collect()))
}

pub async fn get_vm(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmView>, ApiError> {
    Ok(Json(load_visible(&app, &user, &id).await?.into()))
}

pub async fn vm_action(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ActionRequest>,
) -> Result<Response, ApiError> {
    let vm = load_visible(&app, &user, &id).await?;
    ensure_host_connected(&app, &vm)?;
    lifecycle::check_action(vm.status, body.action)?;
    let (kind, action) = match body.action {
        VmAction::Start => (
            OperationKind::Start,
            command::Action::Start(vmm_proto::StartVm {}),
        ),
        VmAction::Stop => (
            OperationKind::Stop,
            command::Action::Stop(vmm_proto::StopVm {}),
        ),
        VmAction::ForceStop => (
            OperationKind::ForceStop,
            command::Action::ForceStop(vmm_proto::ForceStopVm {}),
        ),
        VmAction::Reboot => (
            OperationKind::Reboot,
            command::Action::Reboot(vmm_proto::RebootVm {}),
        ),
    };
    let operation = Operation::begin(kind);
    store::begin_operation(&app.db, &vm, operation.id, kind, user.id, None).await?;
    tracing::info!(operation = %operation.id, vm_id = %vm.id, action = body.action.as_str(), "VM action");

    let vm = run_vm_operation(app, vm, operation, action).await?;
    Ok(with_operation(
        StatusCode::OK,
        operation,
        Json(VmView::from(vm)),
    ))
}

/// Sends `action` for `vm` as `operation` (already recorded as pending), applies the host's
/// answer to the VM's record and finishes the operation. Runs to completion even if the
/// request that started it is dropped.
pub(crate) async fn run_vm_operation(
    app: AppState,
    vm: Vm,
    operation: Operation,
    action: command::Action,
) -> Result<Vm, ApiError> {
    run_detached(async move {
        let command = Command {
            operation_id: operation.id.to_string(),
            vm_id: vm.id.to_string(),
            action: Some(action),
        };
        let timeout = app.settings.operation_timeout;
        match app.registry.dispatch(&vm.host_id, command, timeout).await {
            Ok(CommandSuccess { domain, .. }) => {
                let source = ReportSource::OperationResult;
                reports::apply(&app.db, &vm.host_id, vm.id, &domain, source).await?;
                operations::finish(&app.db, operation, Ok(())).await?;
                reload(&app, vm.id).await
            }
            Err(err) => {
                operations::finish(&app.db, operation, Err(&err.to_string())).await?;
                tracing::warn!(operation = %operation.id, vm_id = %vm.id, kind = operation.kind.as_str(),
                    error = %err, "operation failed");
                Err(err.into())
            }
        }
    })
    .await
}

pub async fn delete_vm(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let vm = load_visible(&app, &user, &id).await?;
    ensure_host_connected(&app, &vm)?;
    lifecycle::check_delete(vm.status)?;
    let operation = Operation::begin(OperationKind::Delete);
    store::begin_operation(
        &app.db,
        &vm,
        operation.id,
        OperationKind::Delete,
        user.id,
        Some(VmStatus::Deleting),
    )
    .await?;
    tracing::info!(operation = %operation.id, vm_id = %vm.id, "deleting VM");

    run_detached(async move {
        let command = Command {
            operation_id: operation.id.to_string(),
            vm_id: vm.id.to_string(),
            action: Some(command::Action::Delete(vmm_proto::DeleteVm {})),
        };
        match app
            .registry
            .dispatch(&vm.host_id, command, app.settings.operation_timeout)
            .await
        {
            Ok(_) => {
                store::delete(&app.db, vm.id).await?;
                operations::finish(&app.db, operation, Ok(())).await?;
                tracing::info!(operation = %operation.id, vm_id = %vm.id, "VM deleted");
                Ok(())
            }
            Err(err) => {
                let message = err.to_string();
                match &err {
                    DispatchError::NotConnected(_) => {
                        store::set_status(&app.db, vm.id, vm.status, vm.status_reason.as_deref())
                            .await?;
                    }
                    _ => {
                        let reason = format!("delete failed: {message}; delete it again to retry");
                        store::set_status(&app.db, vm.id, VmStatus::Error, Some(&reason)).await?;
                    }
                }
                operations::finish(&app.db, operation, Err(&message)).await?;
                tracing::warn!(operation = %operation.id, vm_id = %vm.id, error = %message, "VM delete failed");
                Err(err.into())
            }
        }
    })
    .await?;
    Ok(with_operation(StatusCode::NO_CONTENT, operation, ()))
}
