//! Hosts: `GET /api/hosts`, drain, undrain, delete (administrators only).

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{HostId, ImageId};

api_enum! {
    /// Whether a host's agent has its stream open. `draining`: connected, but an admin
    /// drained it, so no new VM goes there (stored as `connected` with a drain time).
    pub enum HostStatus {
        Connected => "connected",
        Draining => "draining",
        Unreachable => "unreachable",
    }
}

/// What the VMs recorded on a host take of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Allocation {
    pub cpu: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

/// An image a host keeps as a verified base volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CachedImage {
    pub id: ImageId,
    pub name: String,
    pub size_bytes: u64,
}

/// A host: capacity, allocation, connection state and cached images.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HostView {
    pub id: HostId,
    pub status: HostStatus,
    /// Whether an admin drained the host (also while it is unreachable).
    pub drained: bool,
    pub cpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub kvm_usable: bool,
    pub hypervisor: String,
    pub libvirt_version: String,
    pub agent_version: String,
    pub libvirt_connected: bool,
    pub last_seen_at: String,
    /// The epoch of its agent's latest registration: grows with every (re)connect.
    pub session: u64,
    pub allocated: Allocation,
    /// VMs recorded on the host.
    pub vms: u64,
    pub cached_images: Vec<CachedImage>,
}

/// `GET /api/hosts`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListHostsQuery {
    /// Items per page, 1-1000 (default: 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only hosts of this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<HostStatus>))]
    pub status: Option<String>,
}

/// `POST /api/hosts/join-tokens`: a single-use join token for one host ID.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct JoinTokenRequest {
    pub host_id: String,
    /// How long the token may wait to be used: seconds, or a duration such as `"30m"`
    /// (default 1 hour, 1 s to 7 days).
    #[serde(default)]
    pub ttl: Option<JoinTokenTtl>,
}

/// A join token's lifetime: seconds, or a duration with a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum JoinTokenTtl {
    Seconds(u64),
    Text(String),
}

/// A join token, shown in this answer only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTokenView {
    pub host_id: HostId,
    /// Give it to the agent (`JOIN_TOKEN_FILE` or `--join-token`); it is not shown again.
    pub token: String,
    /// The SHA-256 of the coordinator's CA certificate, which the token also carries.
    pub ca_sha256: String,
    pub expires_at: String,
}
