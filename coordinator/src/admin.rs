//! User administration, for administrators only: `GET /api/admin/users` (with each user's
//! quota usage, a page at a time: see `http::page`), `POST /api/admin/users` (create an account: the only way when
//! `REGISTRATION=closed`), `PUT /api/admin/users/{id}/role` and
//! `DELETE /api/admin/users/{id}`.
//!
//! Guard rails: a user who still owns VMs cannot be deleted (409), and the last
//! administrator can neither be demoted nor deleted, so the system always keeps one.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use vmm_shared::UserId;
use vmm_shared::api::users::{AdminUserView, ListUsersQuery, NewUser, RoleChange, UserView};

use crate::auth::AdminUser;
use crate::db;
use crate::error::ApiError;
use crate::http::page::{self, ApiQuery, Cursor, DEFAULT_CAP, Page, Paged, push_keyset};
use crate::http::{ApiJson, ApiPath};
use crate::quotas::UsageRow;
use crate::state::AppState;
use crate::users::{self, Role};

/// A user and their usage, as read.
#[derive(Debug, sqlx::FromRow)]
struct UserRow {
    id: UserId,
    username: String,
    role: Role,
    created_at: String,
    #[sqlx(flatten)]
    usage: UsageRow,
}

impl From<UserRow> for AdminUserView {
    fn from(row: UserRow) -> Self {
        AdminUserView {
            id: row.id,
            username: row.username,
            role: row.role,
            created_at: row.created_at,
            usage: row.usage.into(),
        }
    }
}

/// Every user (of `role`, if given) with their usage, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/api/admin/users", tag = "users",
    params(vmm_shared::api::users::ListUsersQuery),
    responses(
        (status = 200, description = "A page of the users with their usage, oldest first", body = Vec<vmm_shared::api::users::AdminUserView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_users(
    State(app): State<AppState>,
    AdminUser(_admin): AdminUser,
    ApiQuery(query): ApiQuery<ListUsersQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let role = page::filter::<Role>(
        "role",
        query.role.as_deref(),
        "a role (admin, user)",
        &mut echo,
    )?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    // One query, one connection: usage comes from each user's running totals.
    let mut sql = crate::db::SqlBuilder::new(
        "SELECT u.id, u.username, u.role, u.created_at,
                COALESCE(x.vms, 0) AS vms, COALESCE(x.cpu, 0) AS cpu,
                COALESCE(x.memory_mib, 0) AS memory, COALESCE(x.disk_gb, 0) AS disk_gb,
                COALESCE(x.snapshots, 0) AS snapshots
         FROM users u LEFT JOIN user_usage x ON x.user_id = u.id WHERE 1 = 1",
    );
    if let Some(role) = role {
        sql.push(" AND u.role = ").push_bind(role);
    }
    push_keyset(&mut sql, &page, "u.", true);
    let rows: Vec<UserRow> = sql.build_query_as()?.fetch_all(&app.db).await?;
    let users = Paged::from_rows(rows, &page, |user| Cursor {
        created_at: user.created_at.clone(),
        id: user.id.to_string(),
    });
    Ok(users
        .map(AdminUserView::from)
        .into_response("/api/admin/users", &echo))
}

/// `POST /api/admin/users` `{"username", "password", "role"?}`: 201 `{"id", "username",
/// "role"}`; the same rules as registration (422, 409 for a taken name).
#[utoipa::path(
    post, path = "/api/admin/users", tag = "users",
    request_body = vmm_shared::api::users::NewUser,
    responses(
        (status = 201, description = "The account was created", body = vmm_shared::api::users::UserView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The username is taken (in any case)", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "The username or password breaks a rule", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_user(
    State(app): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let user = users::routes::create_account(&app, &new.username, &new.password, new.role).await?;
    tracing::info!(admin = %admin.id, user_id = %user.id, username = %user.username, role = user.role.as_str(), "user created");
    Ok((
        StatusCode::CREATED,
        Json(UserView {
            id: user.id,
            username: user.username,
            role: user.role,
        }),
    ))
}

async fn target_user(app: &AppState, id: &str) -> Result<users::User, ApiError> {
    let not_found = || ApiError::NotFound(format!("no user with ID {id}"));
    let id: UserId = id.parse().map_err(|_| not_found())?;
    users::store::find_by_id(&app.db, id)
        .await?
        .ok_or_else(not_found)
}

async fn admin_count(tx: &mut db::WriteTransaction) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = $1")
        .bind(Role::Admin)
        .fetch_one(&mut **tx)
        .await
}

#[utoipa::path(
    put, path = "/api/admin/users/{id}/role", tag = "users",
    params(("id" = String, Path, description = "The user's ID")),
    request_body = vmm_shared::api::users::RoleChange,
    responses(
        (status = 200, description = "The user with their new role", body = vmm_shared::api::users::UserView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such user", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The last administrator cannot be demoted", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn set_role(
    State(app): State<AppState>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<RoleChange>,
) -> Result<Json<UserView>, ApiError> {
    let target = target_user(&app, &id).await?;
    let mut tx = db::begin_write(&app.db).await?;
    if target.role == Role::Admin && change.role != Role::Admin && admin_count(&mut tx).await? <= 1
    {
        return Err(ApiError::Conflict(
            "cannot demote the last administrator".into(),
        ));
    }
    sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
        .bind(change.role)
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    app.users.forget(target.id);
    tracing::info!(admin = %user.id, user_id = %target.id, role = change.role.as_str(), "role changed");
    Ok(Json(UserView {
        id: target.id,
        username: target.username,
        role: change.role,
    }))
}

#[utoipa::path(
    delete, path = "/api/admin/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user's ID")),
    responses(
        (status = 204, description = "The user is gone"),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such user", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The user still owns VMs, or is the last administrator", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_user(
    State(app): State<AppState>,
    AdminUser(user): AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let target = target_user(&app, &id).await?;
    let mut tx = db::begin_write(&app.db).await?;
    let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE owner_id = $1")
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
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(target.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    app.users.forget(target.id);
    tracing::info!(admin = %user.id, user_id = %target.id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
