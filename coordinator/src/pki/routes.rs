//! `POST /api/hosts/join-tokens` `{"host_id", "ttl"}`: a single-use join token for one host
//! ID, shown in this answer only. Administrators only. `ttl` is seconds or a duration such as
//! `"30m"` (default 1 hour, at most 7 days).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use vmm_shared::HostId;
use vmm_shared::api::hosts::{JoinTokenRequest, JoinTokenTtl as Ttl, JoinTokenView};

use super::join_tokens::{self, DEFAULT_TTL, MAX_TTL, MIN_TTL};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::ApiJson;
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/hosts/join-tokens", tag = "hosts",
    request_body = JoinTokenRequest,
    responses(
        (status = 201, description = "The join token, shown only here", body = JoinTokenView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The coordinator runs with the development AGENT_TOKEN", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A bad host ID or ttl", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_join_token(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<JoinTokenRequest>,
) -> Result<(StatusCode, Json<JoinTokenView>), ApiError> {
    user.require_admin()?;
    let Some(pki) = app.settings.agent_auth.pki() else {
        return Err(ApiError::Conflict(
            "this coordinator authenticates agents with the shared AGENT_TOKEN (development \
             mode), so it has no certificates to enrol hosts with: start it without \
             AGENT_TOKEN to use join tokens"
                .into(),
        ));
    };
    let host: HostId = body
        .host_id
        .parse()
        .map_err(|err| ApiError::Unprocessable(format!("host_id {:?}: {err}", body.host_id)))?;
    let ttl = match body.ttl {
        None => DEFAULT_TTL,
        Some(Ttl::Seconds(seconds)) => std::time::Duration::from_secs(seconds),
        Some(Ttl::Text(text)) => vmm_shared::duration::seconds(&text)
            .map_err(|err| ApiError::Unprocessable(format!("ttl: {err}")))?,
    };
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(ApiError::Unprocessable(format!(
            "ttl must be between {} and {}",
            vmm_shared::duration::display(MIN_TTL),
            vmm_shared::duration::display(MAX_TTL)
        )));
    }
    let made =
        join_tokens::create(&app.db, &host, ttl, &pki.ca.fingerprint_bytes(), user.id).await?;
    tracing::info!(host = %host, by = %user.username, expires_at = %made.expires_at,
        "join token made");
    Ok((
        StatusCode::CREATED,
        Json(JoinTokenView {
            host_id: made.host,
            token: made.token.expose(),
            ca_sha256: made.token.ca_sha256().to_owned(),
            expires_at: made.expires_at,
        }),
    ))
}
