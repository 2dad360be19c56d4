//! Virtual machines: the REST routes, the record in the database, and how host reports
//! change a VM's status. Which operation each status allows, and what each outcome does,
//! is decided in `lifecycle`; operations are carried out by `operations::runner`.

pub mod boot;
pub mod reports;
pub mod routes;
pub mod store;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use vmm_shared::{HostId, ImageId, UserId, VmId, VmStatus};

use crate::db::{self, Columns, FromColumns};

/// A VM as recorded by the coordinator.
#[derive(Clone, Debug)]
pub struct Vm {
    pub id: VmId,
    pub owner_id: UserId,
    pub name: String,
    pub host_id: HostId,
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub status: VmStatus,
    pub status_reason: Option<String>,
    pub generation: u64,
    pub created_at: String,
    /// The image its disk was made from; `None`: a blank disk.
    pub image_id: Option<ImageId>,
    /// The image's login user when the VM was created.
    pub login_user: Option<String>,
    /// The guest's addresses, from its host's reports.
    pub addresses: Addresses,
    /// Where the host forwards SSH to the guest, from its host's reports.
    pub ssh_host: Option<String>,
    /// The forward's port (1-65535), as stored.
    pub ssh_port: Option<i64>,
}

impl FromColumns for Vm {
    fn from_columns(row: &impl Columns) -> Result<Self, BoxDynError> {
        Ok(Vm {
            id: row.parsed("id")?,
            owner_id: row.parsed("owner_id")?,
            name: row.text("name")?,
            host_id: row.parsed("host_id")?,
            cpu: row.int_as("cpu")?,
            memory_mib: row.int_as("memory_mib")?,
            disk_gb: row.int_as("disk_gb")?,
            status: row.parsed("status")?,
            status_reason: row.text_opt("status_reason")?,
            generation: row.int_as("generation")?,
            created_at: row.text("created_at")?,
            image_id: row.parsed_opt("image_id")?,
            login_user: row.text_opt("login_user")?,
            addresses: row.parsed("addresses")?,
            ssh_host: row.text_opt("ssh_host")?,
            ssh_port: row.int_opt("ssh_port")?,
        })
    }
}

impl sqlx::FromRow<'_, AnyRow> for Vm {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        db::from_any_row(row)
    }
}

/// A guest's IP addresses as its host reported them, stored as a JSON array of strings.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Addresses(pub Vec<String>);

impl std::fmt::Display for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(&self.0).map_err(|_| std::fmt::Error)?;
        f.write_str(&json)
    }
}

impl std::str::FromStr for Addresses {
    type Err = serde_json::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_str(s).map(Addresses)
    }
}

vmm_shared::text_column!(Addresses);

pub use vmm_shared::api::vms::{SshView, VmView};

impl From<Vm> for VmView {
    fn from(vm: Vm) -> Self {
        VmView {
            id: vm.id,
            name: vm.name,
            status: vm.status,
            status_reason: vm.status_reason,
            cpu: vm.cpu,
            memory: vm.memory_mib,
            disk_gb: vm.disk_gb,
            host: vm.host_id,
            owner_id: vm.owner_id,
            created_at: vm.created_at,
            image: vm.image_id,
            addresses: vm.addresses.0,
            ssh: match (
                vm.ssh_host,
                vm.ssh_port.and_then(|port| u16::try_from(port).ok()),
            ) {
                (Some(host), Some(port)) => Some(SshView {
                    host,
                    port,
                    user: vm.login_user,
                }),
                _ => None,
            },
        }
    }
}
