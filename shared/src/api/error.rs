//! The body of every error answer: `{"code", "message"}`, plus the quota fields when a
//! request would take a user past a quota limit.

use serde::{Deserialize, Serialize};

/// An error answer. `code` repeats the HTTP status; `message` says what to fix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// The HTTP status code.
    pub code: u16,
    /// What went wrong, in words a user can act on.
    pub message: String,
    /// Quota refusals: the resource whose limit would be exceeded (`vms`, `cpu`, `memory`,
    /// `disk_gb`, `snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Quota refusals: what the user's resources take now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    /// Quota refusals: the user's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// Quota refusals: what the request would add.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            resource: None,
            current: None,
            limit: None,
            requested: None,
        }
    }
}
