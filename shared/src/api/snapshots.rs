//! Snapshots: `POST /api/vms/{id}/snapshots`, `GET /api/vms/{id}/snapshots`,
//! `POST /api/snapshots/{id}/restore`, `DELETE /api/snapshots/{id}`.

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{SnapshotId, VmId};

api_enum! {
    /// Where a snapshot is in its life.
    pub enum SnapshotStatus {
        Creating => "creating",
        Ready => "ready",
        Deleting => "deleting",
        Error => "error",
    }
}

api_enum! {
    /// The VM's state when the snapshot was taken: a restore brings the VM back to it.
    pub enum CapturedState {
        Running => "running",
        Stopped => "stopped",
    }
}

/// `POST /api/vms/{id}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    /// Unique among the VM's snapshots.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")
    )]
    pub name: String,
    /// At most 1024 characters.
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    #[serde(default)]
    pub description: String,
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotView {
    pub id: SnapshotId,
    pub vm_id: VmId,
    pub name: String,
    pub description: String,
    pub vm_status: CapturedState,
    pub status: SnapshotStatus,
    pub created_at: String,
}

/// `GET /api/vms/{id}/snapshots`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListSnapshotsQuery {
    /// Items per page, 1-1000 (default: all of them).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only snapshots of this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<SnapshotStatus>))]
    pub status: Option<String>,
}
