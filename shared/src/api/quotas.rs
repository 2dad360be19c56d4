//! Quotas: `GET /api/quota`, `GET /api/quota/{user_id}`, `PUT /api/quota/{user_id}`.

use serde::{Deserialize, Serialize};

/// A user's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaLimits {
    pub max_vms: u64,
    pub max_cpu: u64,
    /// MiB.
    pub max_memory: u64,
    pub max_disk_gb: u64,
    pub max_snapshots: u64,
}

/// What a user's resources take now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaUsage {
    pub vms: u64,
    pub cpu: u64,
    /// MiB.
    pub memory: u64,
    pub disk_gb: u64,
    pub snapshots: u64,
}

/// A user's limits and usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuotaView {
    pub quota: QuotaLimits,
    pub usage: QuotaUsage,
}

/// `PUT /api/quota/{user_id}`: the limits to change (at least one); the others stay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_gb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_snapshots: Option<u64>,
}
