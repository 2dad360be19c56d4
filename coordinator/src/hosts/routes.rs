//! `GET /api/hosts`: every host with its capacity, allocation, connection state and the
//! images it caches, by ID, a page at a time (see `http::page`), filtered by `status`.
//! Administrators only.

use axum::extract::State;
use axum::response::Response;
use vmm_shared::api::hosts::ListHostsQuery;

use super::store::{self, HostStatus};
use crate::auth::CurrentUser;
use crate::error::ApiError;
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
        "a host status (connected, unreachable)",
        &mut echo,
    )?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    let hosts = store::list_page(&app.db, status, &page).await?;
    Ok(hosts.into_response("/api/hosts", &echo))
}
