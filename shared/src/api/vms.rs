//! VMs: `POST /api/vms`, `GET /api/vms`, `GET /api/vms/{id}`, `POST /api/vms/{id}/action`,
//! `DELETE /api/vms/{id}`.

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::{HostId, ImageId, OperationKind, UserId, VmId, VmStatus};

/// `POST /api/vms`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    /// 1-63 letters, digits and `-`, unique among the owner's VMs.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")
    )]
    pub name: String,
    /// vCPUs.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 64))]
    pub cpu: u32,
    /// MiB.
    #[cfg_attr(feature = "openapi", schema(minimum = 64, maximum = 1048576))]
    pub memory: u64,
    /// GB; absent: the image's minimum (or the default for a blank disk).
    // Written even when absent (`null`): a stored `Idempotency-Key` compares requests by
    // their JSON, as the coordinator has always written it.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4096))]
    pub disk_gb: Option<u64>,
    /// ID or name of a ready image; absent: a blank disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// IDs of the caller's stored keys; absent: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_keys: Option<Vec<String>>,
    /// Public keys given inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_authorized_keys: Option<Vec<String>>,
    /// cloud-config or a script, at most 64 KiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
}

api_enum! {
    /// A power action on a VM.
    pub enum VmAction {
        Start => "start",
        Stop => "stop",
        ForceStop => "force_stop",
        Reboot => "reboot",
    }
}

impl VmAction {
    /// The operation that carries the action out.
    pub fn kind(self) -> OperationKind {
        match self {
            VmAction::Start => OperationKind::Start,
            VmAction::Stop => OperationKind::Stop,
            VmAction::ForceStop => OperationKind::ForceStop,
            VmAction::Reboot => OperationKind::Reboot,
        }
    }
}

/// `POST /api/vms/{id}/action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    pub action: VmAction,
}

/// Where SSH reaches a VM through its host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshView {
    pub host: String,
    pub port: u16,
    /// The login user of the VM's image; `null` for a VM without an image.
    pub user: Option<String>,
}

/// A VM, in every response that shows one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VmView {
    pub id: VmId,
    pub name: String,
    pub status: VmStatus,
    /// Why the VM is in `error` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub cpu: u32,
    /// MiB.
    pub memory: u64,
    pub disk_gb: u64,
    pub host: HostId,
    pub owner_id: UserId,
    pub created_at: String,
    /// The image the VM was made from.
    pub image: Option<ImageId>,
    /// The guest's IP addresses, as its host knows them (empty while unknown).
    pub addresses: Vec<String>,
    /// Set when the host forwards a port to the guest's SSH server.
    pub ssh: Option<SshView>,
}

/// `GET /api/vms`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListVmsQuery {
    /// Items per page, 1-1000 (default: a user's whole list; an admin's: 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only VMs of this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::VmStatus>))]
    pub status: Option<String>,
    /// Only VMs on this host.
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::HostId>))]
    pub host: Option<String>,
    /// Only VMs of this user (ID).
    #[cfg_attr(feature = "openapi", param(value_type = Option<crate::UserId>))]
    pub owner: Option<String>,
}
