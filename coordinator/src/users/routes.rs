//! `POST /api/auth/register` and `POST /api/auth/login`.
//!
//! Registration is open unless `REGISTRATION=closed`; then it answers 403 and
//! administrators create accounts (`POST /api/admin/users`, [`create_account`]).
//! Every failed login, whatever the reason (unknown user, wrong password, a name or a
//! password that could never have been registered), does the same work and gets the same
//! 401.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vmm_shared::api::users::{Credentials, LoginResponse, RegisteredUser, UserView};

use super::{PASSWORD_BYTES, Role, User, store, validate_password, validate_username};
use crate::config::Registration;
use crate::error::ApiError;
use crate::http::ApiJson;
use crate::ratelimit::ClientIp;
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/auth/register", tag = "auth", security(()),
    request_body = vmm_shared::api::users::Credentials,
    responses(
        (status = 201, description = "The account was created", body = vmm_shared::api::users::RegisteredUser),
        (status = 403, description = "Registration is closed (`REGISTRATION=closed`)", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The username is taken (in any case)", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "The username or password breaks a rule", body = vmm_shared::api::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn register(
    State(app): State<AppState>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<RegisteredUser>), ApiError> {
    app.rate_limits.check_login(client, None)?;
    if app.settings.registration == Registration::Closed {
        return Err(ApiError::Forbidden(
            "registration is closed: an administrator creates accounts".into(),
        ));
    }
    let user = create_account(&app, &body.username, &body.password, Role::User).await?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisteredUser {
            id: user.id,
            username: user.username,
        }),
    ))
}

/// Checks the name and password and creates the account. A name taken in any case answers
/// 409.
pub async fn create_account(
    app: &AppState,
    username: &str,
    password: &str,
    role: Role,
) -> Result<User, ApiError> {
    validate_username(username).map_err(ApiError::Unprocessable)?;
    validate_password(password).map_err(ApiError::Unprocessable)?;
    let hash = app
        .passwords
        .hash(password)
        .await
        .map_err(ApiError::internal)?;
    Ok(store::insert(&app.db, username, &hash, role).await?)
}

#[utoipa::path(
    post, path = "/api/auth/login", tag = "auth", security(()),
    request_body = vmm_shared::api::users::Credentials,
    responses(
        (status = 200, description = "A bearer token", body = vmm_shared::api::users::LoginResponse),
        (status = 401, description = "Unknown user or wrong password", body = vmm_shared::api::ErrorBody),
        (status = 429, description = "Too many failed attempts", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn login(
    State(app): State<AppState>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<LoginResponse>, ApiError> {
    // Checked before the password, so a spent budget refuses even the right one.
    app.rate_limits.check_login(client, Some(&body.username))?;
    // bcrypt reads only the first 72 bytes: a longer password is refused here as at
    // registration, or `password + anything` would log in.
    let could_exist =
        validate_username(&body.username).is_ok() && body.password.len() <= PASSWORD_BYTES.1;
    let user = if could_exist {
        store::find_by_username(&app.db, &body.username).await?
    } else {
        None
    };
    let verified = app
        .passwords
        .verify(
            &body.password,
            user.as_ref().map(|u| u.password_hash.as_str()),
        )
        .await;
    let user = match user {
        Some(user) if verified => user,
        _ => {
            tracing::info!(username = %body.username, client = %client, "login refused");
            app.rate_limits.record_login_failure(client, &body.username);
            crate::telemetry::record_login(false);
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
    };
    let issued = app.tokens.issue(&user).map_err(ApiError::internal)?;
    app.rate_limits.record_login_success(client, &body.username);
    tracing::info!(user_id = %user.id, "user logged in");
    crate::telemetry::record_login(true);
    Ok(Json(LoginResponse {
        token: issued.token,
        expires_at: issued
            .expires_at
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        user: UserView {
            id: user.id,
            username: user.username,
            role: user.role,
        },
    }))
}
