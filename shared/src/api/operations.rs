//! Operations: `GET /api/operations`, `GET /api/operations/{id}`. Every state-changing
//! request on a VM or snapshot returns its operation's ID in the `Operation-Id` header.

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{OperationId, OperationKind, SnapshotId, VmId};

/// The response header that carries a request's operation ID.
pub const OPERATION_ID_HEADER: &str = "operation-id";

api_enum! {
    /// Whether an operation's outcome is known.
    pub enum OperationStatus {
        /// Its outcome is not known yet.
        Pending => "pending",
        Succeeded => "succeeded",
        Failed => "failed",
    }
}

/// An operation and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OperationView {
    pub id: OperationId,
    pub kind: OperationKind,
    pub vm_id: VmId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<SnapshotId>,
    pub status: OperationStatus,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

/// `GET /api/operations`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListOperationsQuery {
    /// Items per page, 1-1000 (default: 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only operations of this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<OperationStatus>))]
    pub status: Option<String>,
    /// Only operations of this kind.
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::OperationKind>))]
    pub kind: Option<String>,
    /// Only operations on this VM (ID).
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::VmId>))]
    pub vm: Option<String>,
}
