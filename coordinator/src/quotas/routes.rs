//! `GET /api/quota` (the caller's), `GET /api/quota/{user_id}` and
//! `PUT /api/quota/{user_id}` (administrators only; a user changing any quota, their own
//! included, gets 403).

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use vmm_shared::UserId;

use super::store::{self, LimitOverrides};
use super::{QuotaLimits, QuotaUsage};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::users;

#[derive(Debug, Serialize)]
pub struct QuotaView {
    pub quota: QuotaLimits,
    pub usage: QuotaUsage,
}

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

pub async fn my_quota(
    State(app): State<AppState>,
    user: CurrentUser,
) -> Result<Json<QuotaView>, ApiError> {
    Ok(Json(quota_of(&app, user.id).await?))
}

pub async fn user_quota(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<QuotaView>, ApiError> {
    user.require_admin()?;
    let target = existing_user(&app, &id).await?;
    Ok(Json(quota_of(&app, target).await?))
}

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
    let mut conn = app.db.acquire().await?;
    store::update(&mut conn, target, &changes).await?;
    let limits = store::limits(&mut *conn, target, &app.settings.default_quota).await?;
    tracing::info!(admin = %user.id, user_id = %target, ?limits, "quota changed");
    Ok(Json(limits))
}
