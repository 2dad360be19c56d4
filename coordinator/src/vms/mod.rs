//! Virtual machines: the REST routes, the record in the database, and how host reports
//! change a VM's status. Which operation each status allows, and what each outcome does,
//! is decided in `lifecycle`; operations are carried out by `operations::runner`.

pub mod reports;
pub mod routes;
pub mod store;

use serde::Serialize;
use vmm_shared::{HostId, UserId, VmId, VmStatus};

/// A VM as recorded by the coordinator.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Vm {
    pub id: VmId,
    pub owner_id: UserId,
    pub name: String,
    pub host_id: HostId,
    #[sqlx(try_from = "i64")]
    pub cpu: u32,
    #[sqlx(try_from = "i64")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
    pub status: VmStatus,
    pub status_reason: Option<String>,
    #[sqlx(try_from = "i64")]
    pub generation: u64,
    pub created_at: String,
}

/// The JSON shape of a VM in every response.
#[derive(Debug, Serialize)]
pub struct VmView {
    pub id: VmId,
    pub name: String,
    pub status: VmStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    pub cpu: u32,
    /// MiB.
    pub memory: u64,
    pub disk_gb: u64,
    pub host: HostId,
    pub owner_id: UserId,
    pub created_at: String,
}

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
        }
    }
}
