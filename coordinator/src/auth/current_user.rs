//! `CurrentUser`: the extractor that protects a route. It reads `Authorization: Bearer
//! <token>`, verifies the token, and loads the user from the database, so a deleted user's
//! tokens stop working and a changed role takes effect at once.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use vmm_shared::UserId;

use crate::error::ApiError;
use crate::state::AppState;
use crate::users::{self, Role};

#[derive(Clone, Debug)]
pub struct CurrentUser {
    pub id: UserId,
    pub username: String,
    pub role: Role,
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
        let claims = state.tokens.verify(token).map_err(|_| {
            ApiError::Unauthorized("the token is invalid or expired; log in again".into())
        })?;
        let user = users::store::find_by_id(&state.db, claims.sub)
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the token's user no longer exists".into()))?;
        Ok(CurrentUser {
            id: user.id,
            username: user.username,
            role: user.role,
        })
    }
}

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
