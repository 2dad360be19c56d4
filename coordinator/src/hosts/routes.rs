//! The admin's view and handling of hosts, administrators only:
//! - `GET /api/hosts`: every host with its capacity, allocation, connection state (and
//!   whether it is drained) and the images it caches, by ID, a page at a time (see
//!   `http::page`), filtered by `status`;
//! - `POST /api/hosts/{id}/drain`, `POST /api/hosts/{id}/undrain`: keep new VMs off a host
//!   (status `draining` while connected), or take it back; answer the host;
//! - `DELETE /api/hosts/{id}`: only with no VM on it; revokes its certificates, ends its
//!   session, forgets its record (`hosts::admin`).
//!
//! Host IDs in paths are case-insensitive, like everywhere.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use vmm_shared::HostId;
use vmm_shared::api::hosts::ListHostsQuery;

use super::admin::{self, DeleteRefused};
use super::store::{self, HostStatus, HostView};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::ApiPath;
use crate::http::page::{self, ApiQuery, DEFAULT_CAP, Page};
use crate::state::AppState;

#[utoipa::path(
    get, path = "/api/hosts", tag = "hosts",
    params(vmm_shared::api::hosts::ListHostsQuery),
    responses(
        (status = 200, description = "A page of the hosts, by ID", body = Vec<vmm_shared::api::hosts::HostView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_hosts(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListHostsQuery>,
) -> Result<Response, ApiError> {
    user.require_admin()?;
    let mut echo = Vec::new();
    let status = page::filter::<HostStatus>(
        "status",
        query.status.as_deref(),
        "a host status (connected, draining, unreachable)",
        &mut echo,
    )?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    let hosts = store::list_page(&app.db, status, &page).await?;
    Ok(hosts.into_response("/api/hosts", &echo))
}

fn host_in_path(id: &str) -> Result<HostId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no host with ID {id:?}")))
}

async fn set_drained(
    app: &AppState,
    user: &CurrentUser,
    id: &str,
    drained: bool,
) -> Result<Json<HostView>, ApiError> {
    user.require_admin()?;
    let host = host_in_path(id)?;
    if !admin::set_drained(&app.db, &host, drained).await? {
        return Err(ApiError::NotFound(format!("no host with ID {host}")));
    }
    tracing::info!(host = %host, by = %user.username, drained, "host drain changed");
    let view = store::get(&app.db, &host)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no host with ID {host}")))?;
    Ok(Json(view))
}

#[utoipa::path(
    post, path = "/api/hosts/{id}/drain", tag = "hosts",
    params(("id" = String, Path, description = "The host's ID (any case)")),
    responses(
        (status = 200, description = "The host, now drained: no new VM goes there", body = HostView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such host", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn drain_host(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    set_drained(&app, &user, &id, true).await
}

#[utoipa::path(
    post, path = "/api/hosts/{id}/undrain", tag = "hosts",
    params(("id" = String, Path, description = "The host's ID (any case)")),
    responses(
        (status = 200, description = "The host, back in service", body = HostView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such host", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn undrain_host(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<HostView>, ApiError> {
    set_drained(&app, &user, &id, false).await
}

#[utoipa::path(
    delete, path = "/api/hosts/{id}", tag = "hosts",
    params(("id" = String, Path, description = "The host's ID (any case)")),
    responses(
        (status = 204, description = "The host is gone: its certificates revoked, its session ended"),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such host", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "VMs are still on the host", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_host(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    user.require_admin()?;
    let host = host_in_path(&id)?;
    let deleted = match admin::delete(&app.db, &host).await? {
        Ok(deleted) => deleted,
        Err(refused @ DeleteRefused::NotFound(_)) => {
            return Err(ApiError::NotFound(refused.to_string()));
        }
        Err(refused @ DeleteRefused::HasVms { .. }) => {
            return Err(ApiError::Conflict(refused.to_string()));
        }
    };
    crate::agents::end_session(&app, &host, "the host was deleted").await;
    tracing::warn!(host = %host, by = %user.username,
        certificates_revoked = deleted.certificates_revoked,
        join_tokens_withdrawn = deleted.join_tokens_withdrawn, "host deleted");
    Ok(StatusCode::NO_CONTENT)
}
