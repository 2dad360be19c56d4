//! `GET /api/quota` (the caller's), `GET /api/quota/{user_id}` and
//! `PUT /api/quota/{user_id}` (administrators only; a user changing any quota, their own
//! included, gets 403).

use axum::Json;
use axum::extract::State;
use vmm_shared::UserId;

use super::store::{self, LimitOverrides};
pub use vmm_shared::api::quotas::QuotaView;

use super::QuotaLimits;
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::users;

pub async fn quota_of(app: &AppState, user: UserId) -> Result<QuotaView, ApiError> {
    let mut conn = app.db.acquire().await?;
    let quota = store::limits(&mut *conn, user, &app.settings.default_quota).await?;
    let usage = store::usage(&mut *conn, user).await?;
    Ok(QuotaView { quota, usage })
}

async fn existing_user(app: &AppState, id: &str) -> Result<UserId, ApiError> {
    let not_found = || ApiError::NotFound(format!("no user with ID {id}"));
    let id: UserId = id.parse().map_err(|_| not_found())?;
    users::store::find_by_id(&app.db, id)
        .await?
        .map(|user| user.id)
        .ok_or_else(not_found)
}

#[utoipa::path(
    get, path = "/api/quota", tag = "quotas",
    responses(
        (status = 200, description = "The caller's limits and usage", body = vmm_shared::api::quotas::QuotaView),
    )
)]
pub async fn my_quota(
    State(app): State<AppState>,
    user: CurrentUser,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(quota_of(&app, user.id).await?))
}

#[utoipa::path(
    get, path = "/api/quota/{user_id}", tag = "quotas",
    params(("user_id" = String, Path, description = "The user's ID")),
    responses(
        (status = 200, description = "The user's limits and usage", body = vmm_shared::api::quotas::QuotaView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such user", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn user_quota(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<QuotaView>, ApiError> {
    user.require_admin()?;
    let target = existing_user(&app, &id).await?;
    Ok(Json(quota_of(&app, target).await?))
}

#[utoipa::path(
    put, path = "/api/quota/{user_id}", tag = "quotas",
    params(("user_id" = String, Path, description = "The user's ID")),
    request_body = vmm_shared::api::quotas::LimitOverrides,
    responses(
        (status = 200, description = "The user's limits now", body = vmm_shared::api::quotas::QuotaLimits),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such user", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "No limit given, or a value is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn set_user_quota(
    State(app): State<AppState>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(changes): ApiJson<LimitOverrides>,
) -> Result<Json<QuotaLimits>, ApiError> {
    let target = existing_user(&app, &id).await?;
    if changes == LimitOverrides::default() {
        return Err(ApiError::Unprocessable(
            "give at least one of max_vms, max_cpu, max_memory, max_disk_gb, max_snapshots".into(),
        ));
    }
    let given = [
        ("max_vms", changes.max_vms),
        ("max_cpu", changes.max_cpu),
        ("max_memory", changes.max_memory),
        ("max_disk_gb", changes.max_disk_gb),
        ("max_snapshots", changes.max_snapshots),
    ];
    for (name, value) in given {
        if let Some(value) = value
            && i64::try_from(value).is_err()
        {
            return Err(ApiError::Unprocessable(format!(
                "{name} must be at most {} (got {value})",
                i64::MAX
            )));
        }
    }
    let mut conn = app.db.acquire().await?;
    store::update(&mut conn, target, &changes).await?;
    let limits = store::limits(&mut *conn, target, &app.settings.default_quota).await?;
    tracing::info!(admin = %user.id, user_id = %target, ?limits, "quota changed");
    Ok(Json(limits))
}
