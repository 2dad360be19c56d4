//! The key routes: `POST /api/keys`, `GET /api/keys`, `DELETE /api/keys/{id}`, each on the
//! caller's own keys only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use vmm_shared::{SshKeyId, validate_resource_name};

use super::{SshKeyView, parse_public_key, store};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddKeyRequest {
    name: String,
    public_key: String,
}

pub async fn add_key(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<AddKeyRequest>,
) -> Result<(StatusCode, Json<SshKeyView>), ApiError> {
    validate_resource_name(&body.name).map_err(ApiError::Unprocessable)?;
    let key = parse_public_key(&body.public_key)
        .map_err(|why| ApiError::Unprocessable(format!("public_key: {why}")))?;
    let stored = store::insert(&app.db, user.id, &body.name, &key).await?;
    tracing::info!(user_id = %user.id, key_id = %stored.id, key_type = %stored.key_type,
        fingerprint = %stored.fingerprint, "SSH key added");
    Ok((StatusCode::CREATED, Json(stored.into())))
}

pub async fn list_keys(
    State(app): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Vec<SshKeyView>>, ApiError> {
    let keys = store::list(&app.db, user.id).await?;
    Ok(Json(keys.into_iter().map(SshKeyView::from).collect()))
}

pub async fn delete_key(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("no key with ID {id}"));
    let key: SshKeyId = id.parse().map_err(|_| not_found())?;
    if !store::delete_owned(&app.db, user.id, key).await? {
        return Err(not_found());
    }
    tracing::info!(user_id = %user.id, key_id = %key, "SSH key deleted");
    Ok(StatusCode::NO_CONTENT)
}
