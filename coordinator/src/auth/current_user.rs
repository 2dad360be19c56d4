//! `CurrentUser`: the extractor that protects a route. It reads `Authorization: Bearer
//! <token>`, verifies the token (a login JWT, or an API token: `vmm_pat_…`, looked up in the
//! database), and loads the user's account, so a deleted user's tokens stop working, a
//! revoked API token stops at once and a changed role takes effect at once (within a second
//! on another coordinator of a shared database: accounts are kept that long, see
//! [`crate::users::cache`]).
//!
//! An API token of `read` scope authenticates GET and HEAD requests only: any other method
//! answers 403 here, before the handler runs, so no route can forget the check.

use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::Method;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use vmm_shared::UserId;

use crate::api_tokens::{self, Scope, TokenGrant, store::Lookup};
use crate::error::ApiError;
use crate::state::AppState;
use crate::users::cache::Account;
use crate::users::{self, Role};

#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    /// The API token the request came with; `None` for a login token.
    pub api_token: Option<TokenGrant>,
}

impl CurrentUser {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this endpoint is for administrators only".into(),
            ))
        }
    }
}

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthorized(
                "missing `Authorization: Bearer <token>` header; log in at /api/auth/login".into(),
            )
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        if api_tokens::is_api_token(token) {
            return api_token_user(parts, state, token).await;
        }
        let user_id = state.tokens.user_of(token).map_err(|_| {
            ApiError::Unauthorized("the token is invalid or expired; log in again".into())
        })?;
        let account = match state.users.get(user_id, Instant::now()) {
            Some(account) => account,
            None => {
                let read_at = Instant::now();
                let user = users::store::find_by_id(&state.db, user_id)
                    .await?
                    .ok_or_else(|| {
                        ApiError::Unauthorized("the token's user no longer exists".into())
                    })?;
                let account = Account {
                    username: user.username,
                    role: user.role,
                };
                state.users.put(user_id, account.clone(), read_at);
                account
            }
        };
        Ok(CurrentUser {
            id: user_id,
            username: account.username,
            role: account.role,
            api_token: None,
        })
    }
}

/// The owner of a live API token, within its scope. The rate limiter may have looked the
/// token up already for this request ([`ApiTokenLookup`]); otherwise it is looked up here.
async fn api_token_user(
    parts: &Parts,
    state: &AppState,
    token: &str,
) -> Result<CurrentUser, ApiError> {
    let lookup = match parts.extensions.get::<ApiTokenLookup>() {
        Some(ApiTokenLookup(lookup)) => lookup.clone(),
        None => api_tokens::authenticate(&state.db, token).await?,
    };
    let (grant, username, role) = match lookup {
        Lookup::Valid {
            grant,
            username,
            role,
        } => (grant, username, role),
        Lookup::Expired(at) => {
            return Err(ApiError::Unauthorized(format!(
                "this API token expired at {at}; create a new one"
            )));
        }
        Lookup::Unknown => {
            return Err(ApiError::Unauthorized(
                "this API token is invalid or was revoked".into(),
            ));
        }
    };
    if grant.scope == Scope::Read && !matches!(parts.method, Method::GET | Method::HEAD) {
        return Err(ApiError::Forbidden(format!(
            "this API token has read scope: it may only read (GET); {} {} needs a token of \
             write scope",
            parts.method,
            parts.uri.path()
        )));
    }
    Ok(CurrentUser {
        id: grant.owner,
        username,
        role,
        api_token: Some(grant),
    })
}

/// An API token already looked up for this request (by the rate limiter, which needs its
/// owner), in the request's extensions.
#[derive(Clone, Debug)]
pub struct ApiTokenLookup(pub Lookup);

/// A `CurrentUser` who is an administrator. As an extractor it refuses anyone else with
/// 403 before the request body is even read.
#[derive(Clone, Debug)]
pub struct AdminUser(pub CurrentUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        user.require_admin()?;
        Ok(AdminUser(user))
    }
}
