//! API tokens: `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{id}`.

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{ApiTokenId, UserId};

api_enum! {
    /// What an API token may do.
    pub enum TokenScope {
        /// GET (and HEAD) requests only: any other method answers 403.
        Read => "read",
        /// Everything its owner may do, but create API tokens.
        Write => "write",
    }
}

/// `POST /api/tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// 1-64 letters, digits, `_`, `.` and `-`, unique among the owner's tokens.
    pub name: String,
    /// Seconds until the token expires (1 to about five years); absent: until revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    pub scope: TokenScope,
}

/// An API token as lists show it: never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenView {
    pub id: ApiTokenId,
    pub name: String,
    pub scope: TokenScope,
    /// The token's first characters (`vmm_pat_` and six more), to recognise it by.
    pub prefix: String,
    pub owner_id: UserId,
    /// The owner's username.
    pub owner: String,
    pub created_at: String,
    /// `null`: never expires.
    pub expires_at: Option<String>,
    /// Updated at most once a minute; `null`: never used.
    pub last_used_at: Option<String>,
}

/// The answer to `POST /api/tokens`: the record and, this once, the token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedTokenView {
    #[serde(flatten)]
    pub record: ApiTokenView,
    /// `vmm_pat_` and 32 random bytes (base64url): send as `Authorization: Bearer <token>`.
    /// Shown once; the coordinator keeps only its SHA-256.
    pub token: String,
}

impl std::fmt::Debug for CreatedTokenView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedTokenView")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// `GET /api/tokens`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListTokensQuery {
    /// Another user's tokens (ID or username): administrators only.
    pub user: Option<String>,
    /// Every user's tokens: administrators only.
    #[serde(default)]
    pub all: bool,
    /// Items per page, 1-1000 (default: 1000).
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
}
