//! User administration, for administrators only: `GET /api/admin/users` (with each user's
//! quota usage), `POST /api/admin/users` (create an account: the only way when
//! `REGISTRATION=closed`), `PUT /api/admin/users/{id}/role` and
//! `DELETE /api/admin/users/{id}`.
//!
//! Guard rails: a user who still owns VMs cannot be deleted (409), and the last
//! administrator can neither be demoted nor deleted, so the system always keeps one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vmm_shared::UserId;

use crate::auth::AdminUser;
use crate::db;
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::quotas::QuotaUsage;
use crate::state::AppState;
use crate::users::{self, Role};

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct AdminUserView {
    id: UserId,
    username: String,
    role: Role,
    created_at: String,
    #[sqlx(flatten)]
    usage: QuotaUsage,
}

pub async fn list_users(
    State(app): State<AppState>,
    AdminUser(_admin): AdminUser,
) -> Result<Json<Vec<AdminUserView>>, ApiError> {
    // One query, one connection: usage is summed alongside each user.
    let views = sqlx::query_as(
        "SELECT u.id, u.username, u.role, u.created_at,
                (SELECT COUNT(*) FROM vms v WHERE v.owner_id = u.id) AS vms,
                (SELECT COALESCE(SUM(cpu), 0) FROM vms v WHERE v.owner_id = u.id) AS cpu,
                (SELECT COALESCE(SUM(memory_mib), 0) FROM vms v WHERE v.owner_id = u.id) AS memory,
                (SELECT COALESCE(SUM(disk_gb), 0) FROM vms v WHERE v.owner_id = u.id) AS disk_gb,
                (SELECT COUNT(*) FROM snapshots s WHERE s.owner_id = u.id) AS snapshots
         FROM users u ORDER BY u.created_at, u.username",
    )
    .fetch_all(&app.db)
    .await?;
    Ok(Json(views))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    username: String,
    password: String,
    #[serde(default = "user_role")]
    role: Role,
}

fn user_role() -> Role {
    Role::User
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `POST /api/admin/users` `{"username", "password", "role"?}`: 201 `{"id", "username",
/// "role"}`; the same rules as registration (422, 409 for a taken name).
pub async fn create_user(
    State(app): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<RoleView>), ApiError> {
    let user = users::routes::create_account(&app, &new.username, &new.password, new.role).await?;
    tracing::info!(admin = %admin.id, user_id = %user.id, username = %user.username, role = user.role.as_str(), "user created");
    Ok((
        StatusCode::CREATED,
        Json(RoleView {
            id: user.id,
            username: user.username,
            role: user.role,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: Role,
}

#[derive(Debug, Serialize)]
pub struct RoleView {
    id: UserId,
    username: String,
    role: Role,
}

async fn target_user(app: &AppState, id: &str) -> Result<users::User, ApiError> {
    let not_found = || ApiError::NotFound(format!("no user with ID {id}"));
    let id: UserId = id.parse().map_err(|_| not_found())?;
    users::store::find_by_id(&app.db, id)
        .await?
        .ok_or_else(not_found)
}

async fn admin_count(tx: &mut db::DbTransaction) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = ?")
        .bind(Role::Admin)
        .fetch_one(&mut **tx)
        .await
}

pub async fn set_role(
    State(app): State<AppState>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<RoleChange>,
) -> Result<Json<RoleView>, ApiError> {
    let target = target_user(&app, &id).await?;
    let mut tx = db::begin_write(&app.db).await?;
    if target.role == Role::Admin && change.role != Role::Admin && admin_count(&mut tx).await? <= 1
    {
        return Err(ApiError::Conflict(
            "cannot demote the last administrator".into(),
        ));
    }
    sqlx::query("UPDATE users SET role = ? WHERE id = ?")
        .bind(change.role)
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(admin = %user.id, user_id = %target.id, role = change.role.as_str(), "role changed");
    Ok(Json(RoleView {
        id: target.id,
        username: target.username,
        role: change.role,
    }))
}

pub async fn delete_user(
    State(app): State<AppState>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = target_user(&app, &id).await?;
    let mut tx = db::begin_write(&app.db).await?;
    let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE owner_id = ?")
        .bind(target.id)
        .fetch_one(&mut *tx)
        .await?;
    if owned > 0 {
        return Err(ApiError::Conflict(format!(
            "user {:?} still owns {owned} VM(s); delete them first",
            target.username
        )));
    }
    if target.role == Role::Admin && admin_count(&mut tx).await? <= 1 {
        return Err(ApiError::Conflict(
            "cannot delete the last administrator".into(),
        ));
    }
    sqlx::query("DELETE FROM users WHERE id = ?")
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(admin = %user.id, user_id = %target.id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
