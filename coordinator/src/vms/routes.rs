//! The VM routes: `POST /api/vms`, `GET /api/vms` (paginated and filtered, see
//! `http::page`), `GET /api/vms/{id}`,
//! `POST /api/vms/{id}/action` and `DELETE /api/vms/{id}`.
//!
//! A user sees only their own VMs (an admin sees all); any other VM answers 404, exactly
//! like one that does not exist. Each state-changing request becomes an operation, carried
//! out by `operations::runner`, whose ID is returned in the `Operation-Id` header.

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use vmm_shared::{HostId, OperationKind, UserId, VmId, VmSize, VmStatus, validate_resource_name};

use super::boot::{self, BootRequest};
use super::store::{self, NewVm, Recorded};
use super::{Vm, VmView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::page::{ApiQuery, DEFAULT_CAP, Page, Paged};
use crate::http::{ApiJson, ApiPath};
use crate::idempotency::{self, IdempotentRequest};
use crate::operations::Operation;
use crate::operations::runner::{self, Began, CreateInputs};
use crate::state::AppState;
use vmm_shared::api::vms::{ActionRequest, CreateVmRequest, ListVmsQuery};

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

/// How long a repeated create waits for the first one's answer.
pub(crate) fn repeat_patience(app: &AppState) -> std::time::Duration {
    app.settings.operation_timeout + std::time::Duration::from_secs(5)
}

#[utoipa::path(
    post, path = "/api/vms", tag = "vms",
    request_body = vmm_shared::api::vms::CreateVmRequest,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[!-~]+$", description = "Makes a retry of the same request answer the first one's outcome: 1-255 visible ASCII characters")),
    responses(
        (status = 201, description = "The VM was created and runs", body = vmm_shared::api::vms::VmView, headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 400, description = "A quota limit would be exceeded", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The name is taken, or the image is not ready", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A value breaks a rule, or no host could hold the VM even when empty", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "No connected host has room", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
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
    let request = BootRequest {
        image: body.image.as_deref(),
        ssh_keys: body.ssh_keys.as_deref(),
        ssh_authorized_keys: body.ssh_authorized_keys.as_deref(),
        user_data: body.user_data.as_deref(),
        disk_gb: body.disk_gb,
    };
    let boot = boot::resolve(&app, user.id, &body.name, &request).await?;
    let size = VmSize {
        cpu: body.cpu,
        memory_mib: body.memory,
        disk_gb: boot.disk_gb,
    };
    size.validate()
        .map_err(|err| ApiError::Unprocessable(err.to_string()))?;

    let operation = Operation::begin(OperationKind::Create);
    let new = NewVm {
        id: VmId::new_random(),
        owner_id: user.id,
        name: body.name,
        size,
        image: boot.image.as_ref().map(|image| image.id),
        login_user: boot.image.as_ref().map(|image| image.default_user.clone()),
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
    let vm = match recorded {
        Recorded::New(vm) => vm,
        Recorded::Repeat => {
            let patience = repeat_patience(&app);
            return idempotency::answer_repeat(&app.db, idempotency.as_ref(), patience).await;
        }
    };
    tracing::info!(operation = %operation.id, vm_id = %vm.id, host = %vm.host_id,
        image = ?vm.image_id, "creating VM");
    let create = CreateInputs {
        image: boot.image_ref(),
        cloud_init: boot.cloud_init,
    };
    let began = Began {
        operation,
        vm,
        snapshot: None,
        idempotency,
        create: Some(create),
    };
    Ok(runner::run_operation(&app, began).await)
}

/// The caller's VMs (an admin's: everyone's, or `owner`'s), filtered by `status` and `host`,
/// a page at a time. Without `limit` a user gets all of their VMs; an admin's list is
/// capped with a next cursor. Another user's `owner` gives a user an empty list.
#[utoipa::path(
    get, path = "/api/vms", tag = "vms",
    params(vmm_shared::api::vms::ListVmsQuery),
    responses(
        (status = 200, description = "A page of the caller's VMs (an admin's: everyone's)", body = Vec<vmm_shared::api::vms::VmView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_vms(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListVmsQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let status = match &query.status {
        Some(text) => {
            let status = text.parse::<VmStatus>().map_err(|_| {
                ApiError::Unprocessable(format!(
                    "status {text:?} is not a VM status (one of {})",
                    VmStatus::ALL.map(|s| s.as_str()).join(", ")
                ))
            })?;
            echo.push(("status", status.to_string()));
            Some(status)
        }
        None => None,
    };
    let host = match &query.host {
        Some(text) => {
            let host = text.parse::<HostId>().map_err(|_| {
                ApiError::Unprocessable(format!("host {text:?} is not a valid host ID"))
            })?;
            echo.push(("host", host.to_string()));
            Some(host)
        }
        None => None,
    };
    let owner = match &query.owner {
        Some(text) => {
            let owner = text
                .parse::<UserId>()
                .map_err(|_| ApiError::Unprocessable(format!("owner {text:?} is not a user ID")))?;
            echo.push(("owner", owner.to_string()));
            Some(owner)
        }
        None => None,
    };
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let default = user.is_admin().then_some(DEFAULT_CAP);
    // Checked before anything is answered, also the empty list below.
    let page = Page::new(query.limit, query.cursor.as_deref(), default)?;
    let owner = if user.is_admin() {
        owner
    } else {
        if owner.is_some_and(|owner| owner != user.id) {
            return Ok(Paged::<VmView> {
                items: Vec::new(),
                next: None,
            }
            .into_response("/api/vms", &echo));
        }
        Some(user.id)
    };
    let filter = store::VmFilter {
        owner,
        host,
        status,
    };
    let vms = store::list(&app.reads, &filter, &page).await?;
    Ok(vms.map(VmView::from).into_response("/api/vms", &echo))
}

#[utoipa::path(
    get, path = "/api/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "The VM's ID")),
    responses(
        (status = 200, description = "The VM", body = vmm_shared::api::vms::VmView),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn get_vm(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<VmView>, ApiError> {
    Ok(Json(load_visible(&app, &user, &id).await?.into()))
}

#[utoipa::path(
    post, path = "/api/vms/{id}/action", tag = "vms",
    params(("id" = String, Path, description = "The VM's ID")),
    request_body = vmm_shared::api::vms::ActionRequest,
    responses(
        (status = 200, description = "The action was carried out", body = vmm_shared::api::vms::VmView, headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The VM's status does not allow the action, or another operation is in flight", body = vmm_shared::api::ErrorBody),
        (status = 502, description = "The host failed to carry it out", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn vm_action(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<ActionRequest>,
) -> Result<Response, ApiError> {
    let vm = load_visible(&app, &user, &id).await?;
    let began = runner::begin(&app, user.id, body.action.kind(), &vm, None).await?;
    tracing::info!(operation = %began.operation.id, vm_id = %vm.id, action = body.action.as_str(), "VM action");
    Ok(runner::run_operation(&app, began).await)
}

#[utoipa::path(
    delete, path = "/api/vms/{id}", tag = "vms",
    params(("id" = String, Path, description = "The VM's ID")),
    responses(
        (status = 204, description = "The VM and its disk are gone", headers(("Operation-Id" = String, description = "The operation's ID"))),
        (status = 404, description = "No such VM (or another user's)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The VM's status does not allow it, or another operation is in flight", body = vmm_shared::api::ErrorBody),
        (status = 503, description = "The VM's host is not connected", body = vmm_shared::api::ErrorBody),
        (status = 504, description = "The host has not answered yet; the operation goes on", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_vm(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let vm = load_visible(&app, &user, &id).await?;
    let began = runner::begin(&app, user.id, OperationKind::Delete, &vm, None).await?;
    tracing::info!(operation = %began.operation.id, vm_id = %vm.id, "deleting VM");
    Ok(runner::run_operation(&app, began).await)
}
