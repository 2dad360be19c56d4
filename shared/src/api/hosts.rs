//! Hosts: `GET /api/hosts` (administrators only).

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{HostId, ImageId};

api_enum! {
    /// Whether a host's agent has its stream open.
    pub enum HostStatus {
        Connected => "connected",
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
