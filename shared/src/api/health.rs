//! `GET /api/health`.

use serde::{Deserialize, Serialize};

/// Whether the coordinator's database answers, and how many agents are connected. While
/// the database is unreachable the answer is 503 and also carries `code` and `message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `ok` or `unreachable`.
    pub database: String,
    pub agents_connected: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
