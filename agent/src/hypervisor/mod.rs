//! The agent's view of its hypervisor: the [`Hypervisor`] trait (what the agent needs from
//! libvirt, in the agent's own terms), the facts and domain observations it returns, and the
//! error it fails with.
//!
//! Implementations are blocking and are only ever called from the hypervisor worker thread
//! (see [`worker`]), never from async code directly. [`libvirt::LibvirtHost`] is the real
//! implementation; a fake can implement the same trait for tests of the layers above.
//!
//! This layer decides nothing about the protocol: it does not know operation IDs or
//! generations, and it never stops a VM on its own.

pub mod domain_xml;
pub mod libvirt;
pub mod reconnect;
pub mod snapshot_xml;
pub mod stats;
pub mod vm_ids;
pub mod worker;

use vmm_proto::PowerState;
use vmm_shared::{SnapshotId, VmId};

pub use worker::HypervisorHandle;

/// What the host offers, reported to the coordinator on every registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    pub cpus: u32,
    pub memory_mib: u64,
    /// Capacity of the agent's storage pool.
    pub disk_gb: u64,
    /// libvirt library version, e.g. `11.3.0`.
    pub libvirt_version: String,
    /// Driver and hypervisor version, e.g. `QEMU 10.0.2`.
    pub hypervisor: String,
    pub kvm_usable: bool,
}

/// One domain as the hypervisor shows it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedDomain {
    /// The domain's UUID, which for product VMs is the VM ID.
    pub uuid: String,
    pub name: String,
    /// From the instance metadata; `None` for domains the product did not create.
    pub vm_id: Option<VmId>,
    pub state: PowerState,
    pub cpu: u32,
    pub memory_mib: u64,
    /// Why the domain is in its state, where that matters (e.g. the crash reason).
    pub detail: String,
}

/// One snapshot of a product VM, as the hypervisor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSnapshot {
    pub snapshot_id: SnapshotId,
    /// `Running` (a full system checkpoint) or `Stopped` (disks only) for the agent's own
    /// snapshots; whatever libvirt recorded for others.
    pub taken_in_state: PowerState,
    /// Unix seconds, as libvirt recorded them.
    pub created_at_unix: i64,
}

/// What to create for a new VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// The user's name, display only.
    pub display_name: String,
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk_gb: u64,
    /// Start the domain once it is defined.
    pub start: bool,
}

/// The class of a hypervisor failure, which decides what the coordinator is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The domain is not in a state that allows the operation.
    Conflict,
    NotFound,
    /// The request was refused as malformed or unsupported.
    Invalid,
    /// The host cannot do it now (libvirt gone, out of space, ...).
    Unavailable,
    Internal,
}

/// A failed hypervisor operation, with a message that says what was being done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HypervisorError {
    pub kind: FailureKind,
    pub message: String,
}

impl HypervisorError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// Everything the agent does with its hypervisor. All calls block.
///
/// VM operations name domains by VM ID. State preconditions ("must be running") are checked
/// by the caller, which holds the VM's lock; implementations still fail with
/// [`FailureKind::Conflict`] when the hypervisor refuses an operation for the domain's state.
pub trait Hypervisor {
    /// Capacity and versions; cheap enough to call on every registration.
    fn host_facts(&mut self) -> Result<HostFacts, HypervisorError>;

    /// Every domain on the host, managed by the product or not.
    fn list_domains(&mut self) -> Result<Vec<ObservedDomain>, HypervisorError>;

    /// The domain whose UUID is `vm_id`, if there is one (whoever created it).
    fn find_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError>;

    /// Creates the disk and the domain, and starts it if asked. On failure nothing of the VM
    /// is left behind.
    fn create_vm(&mut self, vm_id: VmId, spec: &VmSpec) -> Result<ObservedDomain, HypervisorError>;

    fn start_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError>;

    /// Asks the guest to power off (ACPI power button) and returns at once.
    fn request_shutdown(&mut self, vm_id: VmId) -> Result<(), HypervisorError>;

    /// Pulls the plug.
    fn force_stop(&mut self, vm_id: VmId) -> Result<(), HypervisorError>;

    fn reboot_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError>;

    /// Destroys and undefines the domain and deletes its disk. Parts already gone are fine.
    /// The disk holds the VM's snapshots, so their data goes with it.
    fn delete_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError>;

    /// The snapshots of the VM's domain, oldest first. Snapshots whose name is not a
    /// snapshot ID (made by hand) are left out.
    fn list_snapshots(&mut self, vm_id: VmId) -> Result<Vec<ObservedSnapshot>, HypervisorError>;

    /// The snapshot of that ID, if the VM's domain has one.
    fn find_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<Option<ObservedSnapshot>, HypervisorError>;

    /// Takes an internal snapshot inside the VM's disk image: disks and memory of a running
    /// domain, disks only of a stopped one; any other state is a conflict. On failure no
    /// snapshot of that ID is left behind.
    fn create_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedSnapshot, HypervisorError>;

    /// Reverts the domain to the snapshot and leaves it running if the snapshot was taken
    /// running, stopped if it was taken stopped. An unknown snapshot is `NotFound`.
    fn restore_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<(), HypervisorError>;

    /// Deletes the snapshot, its data included, from the disk image. A snapshot that does
    /// not exist is fine.
    fn delete_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<(), HypervisorError>;

    /// Deletes the disk volumes of product VMs that have no domain (what a create cut short
    /// by the agent's death leaves) and returns their names. Only safe at start, before any
    /// command runs: later, such a volume may belong to a create in progress.
    fn remove_orphan_volumes(&mut self) -> Result<Vec<String>, HypervisorError> {
        Ok(Vec::new())
    }

    /// Statistics of every domain, from one bulk call, and the host's capacity, for the
    /// metrics endpoint. Only reads.
    fn stats_sample(&mut self) -> Result<stats::StatsSample, HypervisorError> {
        Err(HypervisorError::new(
            FailureKind::Unavailable,
            "this hypervisor has no statistics",
        ))
    }
}
