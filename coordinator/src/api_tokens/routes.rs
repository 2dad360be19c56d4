//! The token routes: `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{id}`.
//! Users work on their own tokens; administrators may list (`?user=`, `?all=true`) and
//! revoke anyone's. Another user's token answers 404, like one that does not exist.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use vmm_shared::api::tokens::{
    ApiTokenView, CreateTokenRequest, CreatedTokenView, ListTokensQuery,
};
use vmm_shared::{ApiTokenId, UserId, validate_resource_name};

use super::MAX_EXPIRES_IN_SECS;
use super::store::{self, ApiToken, Owners};
use crate::auth::CurrentUser;
use crate::error::ApiError;
use crate::http::page::{ApiQuery, Cursor, DEFAULT_CAP, Page, Paged};
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;
use crate::users;

impl From<ApiToken> for ApiTokenView {
    fn from(token: ApiToken) -> Self {
        ApiTokenView {
            id: token.id,
            name: token.name,
            scope: token.scope,
            prefix: token.prefix,
            owner_id: token.owner_id,
            owner: token.owner,
            created_at: token.created_at,
            expires_at: token.expires_at,
            last_used_at: token.last_used_at,
        }
    }
}

#[utoipa::path(
    post, path = "/api/tokens", tag = "tokens",
    request_body = vmm_shared::api::tokens::CreateTokenRequest,
    responses(
        (status = 201, description = "The token, shown this once", body = vmm_shared::api::tokens::CreatedTokenView),
        (status = 403, description = "Sent with an API token: tokens are created with a password login", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The caller has a token of this name", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A bad name, scope or expires_in, or too many tokens", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_token(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiJson(body): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedTokenView>), ApiError> {
    if user.api_token.is_some() {
        return Err(ApiError::Forbidden(
            "API tokens are created with a password login (POST /api/auth/login), not with \
             another API token"
                .into(),
        ));
    }
    validate_resource_name(&body.name).map_err(ApiError::Unprocessable)?;
    let expires_at = match body.expires_in {
        None => None,
        Some(secs) if (1..=MAX_EXPIRES_IN_SECS).contains(&secs) => {
            Some(chrono::Utc::now() + chrono::Duration::seconds(secs as i64))
        }
        Some(secs) => {
            return Err(ApiError::Unprocessable(format!(
                "expires_in must be between 1 and {MAX_EXPIRES_IN_SECS} seconds (about five \
                 years), not {secs}; leave it out for a token that lasts until revoked"
            )));
        }
    };
    let (record, token) =
        store::insert(&app.db, user.id, &body.name, body.scope, expires_at).await?;
    tracing::info!(user_id = %user.id, token_id = %record.id, scope = %record.scope,
        expires_at = record.expires_at.as_deref().unwrap_or("never"), "API token created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedTokenView {
            record: record.into(),
            token,
        }),
    ))
}

#[utoipa::path(
    get, path = "/api/tokens", tag = "tokens",
    params(vmm_shared::api::tokens::ListTokensQuery),
    responses(
        (status = 200, description = "A page of tokens (never the tokens themselves), oldest first", body = Vec<vmm_shared::api::tokens::ApiTokenView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 403, description = "`user` (another's) or `all` without being an administrator", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such user", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_tokens(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiQuery(query): ApiQuery<ListTokensQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let owners = match (&query.user, query.all) {
        (Some(_), true) => {
            return Err(ApiError::Unprocessable(
                "give either user or all=true, not both".into(),
            ));
        }
        (None, false) => Owners::One(user.id),
        (None, true) => {
            require_admin_for_others(&user)?;
            echo.push(("all", "true".to_owned()));
            Owners::Everyone
        }
        (Some(named), false) => {
            let owner = find_user(&app, named).await?;
            if owner != Some(user.id) {
                require_admin_for_others(&user)?;
            }
            let owner = owner.ok_or_else(|| ApiError::NotFound(format!("no user {named:?}")))?;
            echo.push(("user", owner.to_string()));
            Owners::One(owner)
        }
    };
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    let rows = store::list(&app.db, owners, &page).await?;
    let tokens = Paged::from_rows(rows, &page, |token| Cursor {
        created_at: token.created_at.clone(),
        id: token.id.to_string(),
    })
    .map(ApiTokenView::from);
    Ok(tokens.into_response("/api/tokens", &echo))
}

fn require_admin_for_others(user: &CurrentUser) -> Result<(), ApiError> {
    if user.is_admin() {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only administrators may list other users' tokens".into(),
        ))
    }
}

/// A user named by ID or username.
async fn find_user(app: &AppState, named: &str) -> Result<Option<UserId>, ApiError> {
    let found = match named.parse::<UserId>() {
        Ok(id) => users::store::find_by_id(&app.db, id).await?,
        Err(_) => users::store::find_by_username(&app.db, named).await?,
    };
    Ok(found.map(|user| user.id))
}

#[utoipa::path(
    delete, path = "/api/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "The token's ID")),
    responses(
        (status = 204, description = "The token is revoked: refused from the next request on"),
        (status = 404, description = "No such token (or another user's)", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_token(
    State(app): State<AppState>,
    user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("no API token with ID {id}"));
    let token_id: ApiTokenId = id.parse().map_err(|_| not_found())?;
    let token = store::find(&app.db, token_id)
        .await?
        .filter(|token| token.owner_id == user.id || user.is_admin())
        .ok_or_else(not_found)?;
    if !store::delete(&app.db, token.id).await? {
        return Err(not_found());
    }
    tracing::info!(user_id = %user.id, token_id = %token.id, owner_id = %token.owner_id,
        "API token revoked");
    Ok(StatusCode::NO_CONTENT)
}
