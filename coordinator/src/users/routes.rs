//! `POST /api/auth/register` and `POST /api/auth/login`.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use vmm_shared::UserId;

use super::{Role, store, validate_password, validate_username};
use crate::error::ApiError;
use crate::http::ApiJson;
use crate::ratelimit::ClientIp;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
pub struct RegisteredUser {
    id: UserId,
    username: String,
}

pub async fn register(
    State(app): State<AppState>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<RegisteredUser>), ApiError> {
    app.rate_limits.check_login(client, None)?;
    validate_username(&body.username).map_err(ApiError::Unprocessable)?;
    validate_password(&body.password).map_err(ApiError::Unprocessable)?;
    let hash = app
        .passwords
        .hash(&body.password)
        .await
        .map_err(ApiError::internal)?;
    let user = store::insert(&app.db, &body.username, &hash, Role::User).await?;
    tracing::info!(user_id = %user.id, username = %user.username, "user registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisteredUser {
            id: user.id,
            username: user.username,
        }),
    ))
}

#[derive(Serialize)]
pub struct LoginResponse {
    token: String,
    expires_at: String,
    user: UserView,
}

#[derive(Serialize)]
pub struct UserView {
    id: UserId,
    username: String,
    role: Role,
}

pub async fn login(
    State(app): State<AppState>,
    Extension(ClientIp(client)): Extension<ClientIp>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<LoginResponse>, ApiError> {
    // Checked before the password, so a spent budget refuses even the right one.
    app.rate_limits.check_login(client, Some(&body.username))?;
    let user = store::find_by_username(&app.db, &body.username).await?;
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
            tracing::info!(username = %body.username, "login refused");
            crate::telemetry::record_login(false);
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
    };
    let issued = app.tokens.issue(&user).map_err(ApiError::internal)?;
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
