//! The agent's view of its hypervisor: the [`Hypervisor`] trait (what the agent needs from a
//! host, in the agent's own terms), the facts, domain observations and statistics it
//! returns, and the error it fails with.
//!
//! Two implementations:
//! - [`libvirt::LibvirtHost`], the real one: one libvirt connection, everything libvirt-only
//!   (its XML, its statistics call, reconnecting) lives under [`libvirt`];
//! - [`memory::MemoryHost`], a whole host in memory for tests of the layers above and for
//!   simulating many agents in one process. It implements every method for real (domains,
//!   snapshots, volumes, statistics) and lets a test change the host behind the agent's back
//!   or make calls fail.
//!
//! Beside the calls, a host gives hints that domains changed ([`hints`]: libvirt's
//! lifecycle events, and the same from the in-memory host), which the poller follows.
//!
//! Each VM operation is ONE call, run as one job on the hypervisor thread (see [`worker`]):
//! it checks the precondition, acts, and reads the domain back for the report, so nothing
//! can change between the check and the act, and no command waits in the thread's queue
//! three times. The preconditions are written once, in [`preconditions`], and both
//! implementations apply them.
//!
//! Implementations are blocking and are only ever called from the hypervisor worker thread,
//! never from async code directly. No wire (`vmm_proto`) type and no `virt` type appears in
//! this module's interface: the reports the coordinator gets are built from these types one
//! layer up ([`crate::state`]).
//!
//! This layer decides nothing about the protocol: it does not know operation IDs or
//! generations, and it never stops a VM on its own.

pub mod console;
pub mod hints;
pub mod images;
pub mod libvirt;
pub mod memory;
pub mod naming;
pub mod network;
pub mod preconditions;
pub mod sample;
pub mod worker;

#[cfg(test)]
mod contract_tests;

use std::path::Path;

use vmm_shared::{SnapshotId, VmId};

pub use console::{ConsoleAccess, ConsoleKind};
pub use images::{BaseImage, CachedBase, Eviction, ImageFormat, ImageId};
pub use naming::{
    BYTES_PER_GIB, domain_name, image_id_of_volume, image_volume_name, seed_volume_name,
    vm_id_of_seed_volume, vm_id_of_volume, volume_name,
};
pub use network::{NetworkMode, PortRange, SshForward};
pub use sample::StatsSample;
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

/// A domain's power state as the agent understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Running, also while the guest is shutting down.
    Running,
    /// Paused or suspended: active, but its vCPUs do not run.
    Paused,
    /// Defined, not running.
    Stopped,
    /// Crashed and kept in that state.
    Crashed,
    /// A state the hypervisor reported that the agent does not know.
    Unknown,
}

impl PowerState {
    /// Whether the domain has a running QEMU process (running or paused).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }

    /// The word used in messages: "VM … is {word}".
    pub fn word(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
            Self::Crashed => "crashed",
            Self::Unknown => "in an unknown state",
        }
    }
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
    /// The guest's IP addresses as the host knows them (a libvirt network's DHCP leases,
    /// or the QEMU guest agent), without prefix, sorted; empty when unknown. Only for
    /// running product VMs.
    pub addresses: Vec<String>,
    /// Where a port forward on the host reaches the guest's SSH port (user-mode
    /// networking), as recorded in the domain's definition.
    pub ssh: Option<SshForward>,
}

/// One snapshot of a product VM, as the hypervisor shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedSnapshot {
    pub snapshot_id: SnapshotId,
    /// `Running` (a full system checkpoint) or `Stopped` (disks only) for the agent's own
    /// snapshots; whatever the hypervisor recorded for others.
    pub taken_in_state: PowerState,
    /// Unix seconds, as the hypervisor recorded them.
    pub created_at_unix: i64,
}

/// What [`Hypervisor::create_snapshot`] leaves: the snapshot, and the domain after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTaken {
    pub domain: ObservedDomain,
    pub snapshot: ObservedSnapshot,
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
    /// The cached image the disk is a copy-on-write overlay of; `None`: a blank disk.
    pub image: Option<BaseImage>,
    /// The bytes of the cloud-init seed volume to attach read-only; `None`: no seed.
    pub seed: Option<Vec<u8>>,
}

/// What a power operation does when the domain is already in the state the operation
/// would bring it to (running for a start, stopped for a stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlreadyThere {
    /// Refuse with [`FailureKind::Conflict`]: a new command asked for a change that makes
    /// no sense in the VM's state.
    Refuse,
    /// Report the domain as it is: the repeat of an interrupted operation that got there.
    Accept,
}

/// The class of a hypervisor failure, which decides what the coordinator is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The domain is not in a state that allows the operation, or is not the product's.
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
/// VM operations name domains by VM ID and change only domains the product created (whose
/// instance metadata names that VM ID): a domain with that UUID that the product did not
/// create is refused as [`FailureKind::Conflict`], a VM without a domain as
/// [`FailureKind::NotFound`]. Each operation checks its precondition, acts and reads the
/// domain back in the same call, and returns the domain as it left it.
pub trait Hypervisor {
    /// Capacity and versions; cheap enough to call on every registration.
    fn host_facts(&mut self) -> Result<HostFacts, HypervisorError>;

    /// Every domain on the host, managed by the product or not.
    fn list_domains(&mut self) -> Result<Vec<ObservedDomain>, HypervisorError>;

    /// The domain whose UUID is `vm_id`, if there is one (whoever created it).
    fn find_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError>;

    /// Creates the disk (blank, or an overlay of a cached image grown to `disk_gb`), the
    /// seed volume if there is one, and the domain with its NIC as the host's network mode
    /// says; starts it if asked. A product domain of that VM that exists already (made by an
    /// earlier delivery of the same create) is returned as it is. On failure nothing of the
    /// VM is left behind. An image that is not cached is `Unavailable`.
    fn create_vm(&mut self, vm_id: VmId, spec: &VmSpec) -> Result<ObservedDomain, HypervisorError>;

    /// Starts a stopped VM.
    fn start_vm(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError>;

    /// Asks the guest of a running VM to power off (ACPI power button) and returns at once,
    /// with the domain as it is right after the request (a guest may take a while).
    fn request_shutdown(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError>;

    /// Pulls the plug of a running VM.
    fn force_stop(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError>;

    /// Reboots a running VM.
    fn reboot_vm(&mut self, vm_id: VmId) -> Result<ObservedDomain, HypervisorError>;

    /// Destroys and undefines the domain and deletes its disk and seed (never the cached
    /// image its disk is an overlay of). Parts already gone are fine.
    /// The disk holds the VM's snapshots, so their data goes with it. Returns the domain as
    /// it was before, `None` if there was none.
    fn delete_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError>;

    /// The snapshots of the VM's domain, oldest first. Snapshots whose name is not a
    /// snapshot ID (made by hand) are left out. Only reads.
    fn list_snapshots(&mut self, vm_id: VmId) -> Result<Vec<ObservedSnapshot>, HypervisorError>;

    /// Takes a snapshot inside the VM's disk image: disks and memory of a running domain,
    /// disks only of a stopped one; any other state is a conflict. A snapshot of that ID
    /// that exists already (taken by an earlier delivery) is returned as it is, never taken
    /// twice. On failure no snapshot of that ID is left behind.
    fn create_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<SnapshotTaken, HypervisorError>;

    /// Reverts the domain to the snapshot and leaves it running if the snapshot was taken
    /// running, stopped if it was taken stopped. An unknown snapshot is `NotFound`.
    fn restore_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError>;

    /// Deletes the snapshot, its data included, from the disk image. A snapshot that does
    /// not exist is fine.
    fn delete_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError>;

    /// Deletes the disk and seed volumes of product VMs that have no domain, and half-made
    /// imports of images (what a create or an import cut short by the agent's death
    /// leaves), and returns their names. Only safe at start, before any command runs:
    /// later, such a volume may belong to a create in progress.
    fn remove_orphan_volumes(&mut self) -> Result<Vec<String>, HypervisorError>;

    /// Whether this host can keep images at all: `Ok`, or why not (a driver whose storage
    /// holds no file contents). Asked before an image is fetched.
    fn image_support(&mut self) -> Result<(), HypervisorError>;

    /// The images cached as base volumes in the pool. Only reads.
    fn cached_images(&mut self) -> Result<Vec<CachedBase>, HypervisorError>;

    /// Makes the verified file `staged` the base volume of `image` (`vmm-image-<id>`),
    /// taking the file (it is moved, not copied, where the file system allows). The base is
    /// made read-only and is never written or chowned afterwards. A stale base of that
    /// image that no disk uses is replaced; one in use is a `Conflict`.
    fn import_image(
        &mut self,
        image: &BaseImage,
        staged: &Path,
    ) -> Result<CachedBase, HypervisorError>;

    /// Removes the cached base of `image_id` unless a disk is an overlay of it.
    fn evict_image(&mut self, image_id: ImageId) -> Result<Eviction, HypervisorError>;

    /// Statistics of every domain and the host's capacity, for the metrics endpoint. Only
    /// reads.
    fn stats_sample(&mut self) -> Result<StatsSample, HypervisorError>;

    /// From now on, hints that domains may have changed (see [`hints`]): the
    /// [`hints::HintStream`] of the current connection goes out on `outlet` now, and that
    /// of every later connection (after a reconnect) as soon as it is open. Call it once.
    /// Fails when this connection cannot give hints; a later connection is tried again, and
    /// the poll covers everything meanwhile.
    fn send_hints_to(&mut self, outlet: hints::HintOutlet) -> Result<(), HypervisorError>;

    /// Access to a console of a running (or paused) product VM: its serial port, or its
    /// screen speaking RFB with security type None. Nothing listens on the network for
    /// either. A VM in another state is a `Conflict`, and so is a VM whose definition
    /// predates consoles (it says how to get one).
    fn open_console(
        &mut self,
        vm_id: VmId,
        kind: ConsoleKind,
    ) -> Result<ConsoleAccess, HypervisorError>;
}
