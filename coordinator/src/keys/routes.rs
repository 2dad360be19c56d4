//! The key routes: `POST /api/keys`, `GET /api/keys`, `DELETE /api/keys/{id}`, each on the
//! caller's own keys only.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use vmm_shared::api::keys::{AddKeyRequest, ListKeysQuery};
use vmm_shared::{SshKeyId, validate_resource_name};

use super::{SshKeyView, parse_public_key, store};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::page::{ApiQuery, Page};
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;

#[utoipa::path(
    post, path = "/api/keys", tag = "keys",
    request_body = vmm_shared::api::keys::AddKeyRequest,
    responses(
        (status = 201, description = "The key is stored", body = vmm_shared::api::keys::SshKeyView),
        (status = 409, description = "The name is taken, or the key is stored already", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "Not an acceptable public key, a bad name, or too many keys", body = vmm_shared::api::ErrorBody),
    )
)]
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

#[utoipa::path(
    get, path = "/api/keys", tag = "keys",
    params(vmm_shared::api::keys::ListKeysQuery),
    responses(
        (status = 200, description = "A page of the caller's keys, oldest first", body = Vec<vmm_shared::api::keys::SshKeyView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_keys(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListKeysQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), None)?;
    let keys = store::list_page(&app.db, user.id, &page).await?;
    Ok(keys.map(SshKeyView::from).into_response("/api/keys", &echo))
}

#[utoipa::path(
    delete, path = "/api/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "The key's ID")),
    responses(
        (status = 204, description = "The key is gone"),
        (status = 404, description = "No such key (or another user's)", body = vmm_shared::api::ErrorBody),
    )
)]
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
