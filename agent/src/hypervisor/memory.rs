//! A whole host in memory, implementing every [`Hypervisor`] method for real: domains with
//! their power states, snapshots that capture and restore a domain's state and disk,
//! disk volumes in a pool, cached images (taken from a file, as libvirt's pool takes it),
//! overlays of them, seed volumes with their bytes, NICs per network mode with SSH port
//! forwards, guest addresses, host facts and statistics. No libvirt, no threads of its own, a
//! few hundred bytes per domain: tests of the layers above run on it in microseconds, and a
//! fleet simulator can give each of many agents in one process a host of its own.
//!
//! A [`MemoryHost`] is a cheap handle; clones share one host. One clone goes to the agent's
//! hypervisor thread, the test (or simulator) keeps another to act as everything the agent
//! does not control:
//! - the guest and the host's own tools, behind the agent's back: [`MemoryHost::set_state`]
//!   (a guest that powers itself off, crashes or is paused), [`MemoryHost::remove_domain`],
//!   [`MemoryHost::add_foreign_domain`] (a domain the product did not create),
//!   [`MemoryHost::add_volume`], a guest that ignores the ACPI power button, the disk's
//!   contents ([`MemoryHost::write_disk`]) so a restore can be seen to bring data back,
//!   and the addresses a guest got ([`MemoryHost::set_addresses`]); the guest's side of
//!   a console the agent opened ([`MemoryHost::take_console_guest`]: a socket to read what
//!   the agent sends and to write what the guest prints);
//! - failures: [`MemoryHost::fail_next`] makes the next call of one method fail with a
//!   given [`FailureKind`] before it does anything, and [`MemoryHost::disconnect`] makes
//!   every call fail as a lost connection does until [`MemoryHost::reconnect`];
//! - what the agent asked: [`MemoryHost::calls`] counts the calls per method, which is how
//!   tests see that a command made one trip to the hypervisor;
//! - hints, as libvirt's lifecycle events are ([`super::hints`]): once the agent asked
//!   for them, every change of a domain (by the agent or behind its back) hints at it, a
//!   [`MemoryHost::disconnect`] closes the stream and a [`MemoryHost::reconnect`] hands
//!   out a new one; [`MemoryHost::limit_hints`] makes the queue small enough to overflow.
//!
//! The rules every implementation shares (which domains may be changed, which state allows
//! what) come from [`super::preconditions`], as for libvirt.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::Read as _;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use vmm_shared::{SnapshotId, VmId};

use super::hints::{self, Hint, HintOutlet, HintSender};
use super::preconditions::{self, PowerAction, Proceed};
use super::sample::{
    BlockSample, DomainSample, HostSample, InterfaceSample, PoolSample, StatsSample, state_code,
};
use super::{
    AlreadyThere, BYTES_PER_GIB, BaseImage, CachedBase, ConsoleAccess, ConsoleKind, Eviction,
    FailureKind, HostFacts, Hypervisor, HypervisorError, HypervisorHandle, ImageFormat, ImageId,
    NetworkMode, ObservedDomain, ObservedSnapshot, PowerState, SnapshotTaken, SshForward, VmSpec,
    domain_name, image_volume_name, seed_volume_name, vm_id_of_seed_volume, vm_id_of_volume,
    volume_name,
};

/// The methods of [`Hypervisor`], for failure injection and call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    HostFacts,
    ListDomains,
    FindVm,
    CreateVm,
    StartVm,
    RequestShutdown,
    ForceStop,
    RebootVm,
    DeleteVm,
    ListSnapshots,
    CreateSnapshot,
    RestoreSnapshot,
    DeleteSnapshot,
    RemoveOrphanVolumes,
    StatsSample,
    ImageSupport,
    CachedImages,
    ImportImage,
    EvictImage,
    SendHintsTo,
    OpenConsole,
}

/// The name of the in-memory host's storage pool.
pub const POOL_NAME: &str = "memory";

/// How many hints the queue of a connection holds by default, as for libvirt.
const HINT_CAPACITY: usize = 4096;

/// CPU time a running vCPU adds between two statistics samples.
const CPU_NANOS_PER_SAMPLE: u64 = 10_000_000;

/// A host in memory; clones share it. See the module docs.
#[derive(Clone, Default)]
pub struct MemoryHost {
    shared: Arc<Mutex<HostState>>,
}

impl std::fmt::Debug for MemoryHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state();
        f.debug_struct("MemoryHost")
            .field("domains", &state.domains.len())
            .field("volumes", &state.volumes.len())
            .field("connected", &state.connected)
            .finish_non_exhaustive()
    }
}

struct HostState {
    facts: HostFacts,
    /// By domain UUID.
    domains: BTreeMap<String, MemoryDomain>,
    /// By volume name: capacity in bytes.
    volumes: BTreeMap<String, u64>,
    injected: HashMap<Call, VecDeque<FailureKind>>,
    connected: bool,
    calls: HashMap<Call, u64>,
    /// Numbers the domains' host-side network devices (`vnet0`, ...).
    next_device: u32,
    /// The NIC new VMs get.
    network: NetworkMode,
    /// Cached images, each also a volume `vmm-image-<id>` in `volumes`.
    images: BTreeMap<ImageId, CachedBase>,
    /// The bytes of each VM's seed volume, by VM.
    seeds: HashMap<VmId, Vec<u8>>,
    /// Where each connection's hint stream goes, once the agent asked for hints.
    hint_outlet: Option<HintOutlet>,
    /// The current connection's hints; `None` without an outlet or while disconnected.
    hints: Option<HintSender>,
    hint_capacity: usize,
    /// The guest's end of the console each VM opened last, until a test takes it.
    console_guests: HashMap<(VmId, ConsoleKind), UnixStream>,
}

impl Default for HostState {
    fn default() -> Self {
        Self {
            facts: MemoryHost::default_facts(),
            domains: BTreeMap::new(),
            volumes: BTreeMap::new(),
            injected: HashMap::new(),
            connected: true,
            calls: HashMap::new(),
            next_device: 0,
            network: NetworkMode::default(),
            images: BTreeMap::new(),
            seeds: HashMap::new(),
            hint_outlet: None,
            hints: None,
            hint_capacity: HINT_CAPACITY,
            console_guests: HashMap::new(),
        }
    }
}

struct MemoryDomain {
    uuid: String,
    name: String,
    vm_id: Option<VmId>,
    state: PowerState,
    detail: String,
    cpu: u32,
    memory_mib: u64,
    /// The guest does not react to the ACPI power button.
    ignores_shutdown: bool,
    /// The disk's contents, as a number a test writes and reads back.
    disk: u64,
    /// Oldest first.
    snapshots: Vec<MemorySnapshot>,
    /// How often the guest was (re)started.
    boots: u64,
    cpu_time_ns: u64,
    device: u32,
    /// The image the disk is an overlay of.
    base_image: Option<ImageId>,
    ssh: Option<SshForward>,
    /// What the guest's DHCP lease or guest agent says, shown while it runs.
    addresses: Vec<String>,
}

struct MemorySnapshot {
    id: SnapshotId,
    taken_in_state: PowerState,
    created_at_unix: i64,
    disk: u64,
}

impl MemoryDomain {
    fn observed(&self) -> ObservedDomain {
        ObservedDomain {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            vm_id: self.vm_id,
            state: self.state,
            cpu: self.cpu,
            memory_mib: self.memory_mib,
            detail: self.detail.clone(),
            addresses: if self.state == PowerState::Running && self.vm_id.is_some() {
                self.addresses.clone()
            } else {
                Vec::new()
            },
            ssh: self.ssh.clone(),
        }
    }

    fn set_state(&mut self, state: PowerState) {
        if state == PowerState::Running && !self.state.is_active() {
            self.boots += 1;
        }
        self.state = state;
        self.detail.clear();
    }
}

impl MemorySnapshot {
    fn observed(&self) -> ObservedSnapshot {
        ObservedSnapshot {
            snapshot_id: self.id,
            taken_in_state: self.taken_in_state,
            created_at_unix: self.created_at_unix,
        }
    }
}

impl MemoryHost {
    /// An empty host with [`MemoryHost::default_facts`].
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty host that reports `facts`.
    pub fn with_facts(facts: HostFacts) -> Self {
        let host = Self::default();
        host.state().facts = facts;
        host
    }

    /// 16 CPUs, 64 GiB of memory, a 1000 GB pool, no KVM.
    pub fn default_facts() -> HostFacts {
        HostFacts {
            cpus: 16,
            memory_mib: 65_536,
            disk_gb: 1_000,
            libvirt_version: "0.0.0".into(),
            hypervisor: "memory 0.0.0".into(),
            kvm_usable: false,
        }
    }

    /// Starts a hypervisor thread that serves this host (sharing it with `self`).
    pub async fn spawn_handle(&self) -> Result<HypervisorHandle, HypervisorError> {
        let host = self.clone();
        HypervisorHandle::spawn(move || Ok(host)).await
    }

    fn state(&self) -> MutexGuard<'_, HostState> {
        // Every change below is complete before it can panic, so a poisoned host is whole.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a domain the product did not create (no instance metadata), e.g. one made by
    /// hand with virsh. Returns its UUID, as a VM ID so commands can name it.
    pub fn add_foreign_domain(&self, name: &str, state: PowerState) -> VmId {
        let uuid = VmId::new_random();
        let mut host = self.state();
        let device = host.take_device();
        host.hint(&uuid.to_string());
        host.domains.insert(
            uuid.to_string(),
            MemoryDomain {
                uuid: uuid.to_string(),
                name: name.to_owned(),
                vm_id: None,
                state,
                detail: String::new(),
                cpu: 1,
                memory_mib: 128,
                ignores_shutdown: false,
                disk: 0,
                snapshots: Vec::new(),
                boots: u64::from(state.is_active()),
                cpu_time_ns: 0,
                device,
                base_image: None,
                ssh: None,
                addresses: Vec::new(),
            },
        );
        uuid
    }

    /// An empty host whose new VMs get `network`'s NIC.
    pub fn with_network(network: NetworkMode) -> Self {
        let host = Self::default();
        host.state().network = network;
        host
    }

    /// Sets the addresses the guest of a domain got (a DHCP lease, the guest agent's
    /// answer), shown while the domain runs. False if there is no such domain.
    pub fn set_addresses(&self, uuid: VmId, addresses: &[&str]) -> bool {
        let mut host = self.state();
        let Some(domain) = host.domains.get_mut(&uuid.to_string()) else {
            return false;
        };
        let mut sorted: Vec<String> = addresses.iter().map(|a| (*a).to_owned()).collect();
        sorted.sort();
        domain.addresses = sorted;
        true
    }

    /// The bytes of the VM's seed volume, if it has one.
    pub fn seed(&self, vm_id: VmId) -> Option<Vec<u8>> {
        self.state().seeds.get(&vm_id).cloned()
    }

    /// The image the VM's disk is an overlay of.
    pub fn base_image_of(&self, vm_id: VmId) -> Option<ImageId> {
        self.state()
            .domains
            .get(&vm_id.to_string())
            .and_then(|domain| domain.base_image)
    }

    /// Changes a domain's power state behind the agent's back (the guest powered off, it
    /// crashed with `detail` as the reason, someone paused it). False if there is no such
    /// domain.
    pub fn set_state(&self, uuid: VmId, state: PowerState, detail: &str) -> bool {
        let mut host = self.state();
        let Some(domain) = host.domains.get_mut(&uuid.to_string()) else {
            return false;
        };
        domain.set_state(state);
        detail.clone_into(&mut domain.detail);
        host.hint(&uuid.to_string());
        true
    }

    /// Undefines a domain behind the agent's back; its volume stays. False if there was none.
    pub fn remove_domain(&self, uuid: VmId) -> bool {
        let mut host = self.state();
        let removed = host.domains.remove(&uuid.to_string()).is_some();
        if removed {
            host.hint(&uuid.to_string());
        }
        removed
    }

    /// Makes the guest ignore (or again obey) the ACPI power button.
    pub fn set_ignores_shutdown(&self, uuid: VmId, ignores: bool) -> bool {
        let mut host = self.state();
        let Some(domain) = host.domains.get_mut(&uuid.to_string()) else {
            return false;
        };
        domain.ignores_shutdown = ignores;
        true
    }

    /// Writes `contents` onto the VM's disk. False if there is no such domain.
    pub fn write_disk(&self, uuid: VmId, contents: u64) -> bool {
        let mut host = self.state();
        let Some(domain) = host.domains.get_mut(&uuid.to_string()) else {
            return false;
        };
        domain.disk = contents;
        true
    }

    /// What the VM's disk holds.
    pub fn disk(&self, uuid: VmId) -> Option<u64> {
        self.state()
            .domains
            .get(&uuid.to_string())
            .map(|domain| domain.disk)
    }

    /// How often the domain's guest was started or rebooted.
    pub fn boots(&self, uuid: VmId) -> Option<u64> {
        self.state()
            .domains
            .get(&uuid.to_string())
            .map(|domain| domain.boots)
    }

    /// The domain as the agent would see it, without counting a call.
    pub fn domain(&self, uuid: VmId) -> Option<ObservedDomain> {
        self.state()
            .domains
            .get(&uuid.to_string())
            .map(MemoryDomain::observed)
    }

    /// Adds a volume to the pool (a leftover, say).
    /// The guest's end of the `kind` console of `vm_id` the agent opened last (the guest
    /// reads what the agent writes, and its writes are the console's output); `None` when
    /// none was opened since the last take.
    pub fn take_console_guest(&self, vm_id: VmId, kind: ConsoleKind) -> Option<UnixStream> {
        self.state().console_guests.remove(&(vm_id, kind))
    }

    pub fn add_volume(&self, name: &str, capacity_bytes: u64) {
        self.state().volumes.insert(name.to_owned(), capacity_bytes);
    }

    /// The names of the pool's volumes.
    pub fn volumes(&self) -> Vec<String> {
        self.state().volumes.keys().cloned().collect()
    }

    /// Makes the next call of `call` fail with `kind` before it does anything. Several
    /// injected failures of one call fail its next calls in turn.
    pub fn fail_next(&self, call: Call, kind: FailureKind) {
        self.state()
            .injected
            .entry(call)
            .or_default()
            .push_back(kind);
    }

    /// From now on every call fails as on a lost connection ([`FailureKind::Unavailable`]);
    /// what the test does to the host still works. The hint stream says the connection
    /// closed, and ends.
    pub fn disconnect(&self) {
        let mut host = self.state();
        host.connected = false;
        if let Some(hints) = host.hints.take() {
            hints.send(Hint::ConnectionClosed {
                reason: "the in-memory host was disconnected".into(),
            });
        }
    }

    /// Calls work again, as after a reconnect: a new hint stream goes out.
    pub fn reconnect(&self) {
        let mut host = self.state();
        if !host.connected {
            host.connected = true;
            host.open_hint_stream();
        }
    }

    /// Hint streams handed out from now on hold `capacity` hints (4096 by default) before
    /// they drop them.
    pub fn limit_hints(&self, capacity: usize) {
        self.state().hint_capacity = capacity;
    }

    /// How often each method was called (failed calls included).
    pub fn calls(&self) -> HashMap<Call, u64> {
        self.state().calls.clone()
    }

    /// How many calls were made, of every method.
    pub fn total_calls(&self) -> u64 {
        self.state().calls.values().sum()
    }
}

impl HostState {
    /// Counts the call and fails it if the connection is down or a failure was injected.
    fn enter(&mut self, call: Call) -> Result<(), HypervisorError> {
        *self.calls.entry(call).or_default() += 1;
        if !self.connected {
            return Err(HypervisorError::new(
                FailureKind::Unavailable,
                "the connection to the in-memory host is down",
            ));
        }
        if let Some(kind) = self.injected.get_mut(&call).and_then(VecDeque::pop_front) {
            return Err(HypervisorError::new(
                kind,
                format!("injected failure of {call:?}"),
            ));
        }
        Ok(())
    }

    /// Hints that the domain with `uuid` changed, if the agent asked for hints.
    fn hint(&self, uuid: &str) {
        if let Some(hints) = &self.hints {
            hints.send(Hint::DomainChanged {
                uuid: uuid.to_owned(),
            });
        }
    }

    /// A new hint stream for the current connection, handed out (if there is an outlet).
    fn open_hint_stream(&mut self) {
        let Some(outlet) = &self.hint_outlet else {
            return;
        };
        let (sender, stream) = hints::queue(self.hint_capacity);
        self.hints = outlet.hand_out(stream).then_some(sender);
    }

    fn take_device(&mut self) -> u32 {
        let device = self.next_device;
        self.next_device = self.next_device.wrapping_add(1);
        device
    }

    /// How many disks are overlays of the image.
    fn overlays_of(&self, image_id: ImageId) -> usize {
        self.domains
            .values()
            .filter(|domain| domain.base_image == Some(image_id))
            .count()
    }

    /// In user mode, a port of the range that no domain forwards yet (from a random
    /// point of the range, as on libvirt); `None` in the other modes.
    fn ssh_forward_for_new_vm(&self) -> Result<Option<SshForward>, HypervisorError> {
        let NetworkMode::User {
            forward_address,
            ports,
        } = &self.network
        else {
            return Ok(None);
        };
        let taken: HashSet<u16> = self
            .domains
            .values()
            .filter_map(|domain| domain.ssh.as_ref().map(|ssh| ssh.port))
            .collect();
        let port = ports
            .ports_from(rand::random())
            .find(|port| !taken.contains(port))
            .ok_or_else(|| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!("no free port in SSH_FORWARD_PORTS {ports}: all are forwarded to VMs"),
                )
            })?;
        Ok(Some(SshForward {
            address: forward_address.to_string(),
            port,
        }))
    }

    /// The product domain of `vm_id`: `NotFound` without one, `Conflict` for a domain of
    /// that UUID the product did not create.
    fn managed(&mut self, vm_id: VmId) -> Result<&mut MemoryDomain, HypervisorError> {
        let domain = self
            .domains
            .get_mut(&vm_id.to_string())
            .ok_or_else(|| preconditions::not_found(vm_id))?;
        preconditions::ensure_managed(vm_id, &domain.observed())?;
        Ok(domain)
    }

    fn power(
        &mut self,
        call: Call,
        vm_id: VmId,
        action: PowerAction,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.enter(call)?;
        let domain = self.managed(vm_id)?;
        if preconditions::power(action, vm_id, &domain.observed(), already)?
            == Proceed::AlreadyThere
        {
            return Ok(domain.observed());
        }
        match action {
            PowerAction::Start => domain.set_state(PowerState::Running),
            PowerAction::Shutdown if domain.ignores_shutdown => {}
            PowerAction::Shutdown | PowerAction::ForceStop => domain.set_state(PowerState::Stopped),
            PowerAction::Reboot => domain.boots += 1,
        }
        let observed = domain.observed();
        self.hint(&observed.uuid);
        Ok(observed)
    }
}

impl Hypervisor for MemoryHost {
    fn host_facts(&mut self) -> Result<HostFacts, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::HostFacts)?;
        Ok(host.facts.clone())
    }

    fn list_domains(&mut self) -> Result<Vec<ObservedDomain>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::ListDomains)?;
        Ok(host.domains.values().map(MemoryDomain::observed).collect())
    }

    fn find_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::FindVm)?;
        Ok(host
            .domains
            .get(&vm_id.to_string())
            .map(MemoryDomain::observed))
    }

    fn create_vm(&mut self, vm_id: VmId, spec: &VmSpec) -> Result<ObservedDomain, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::CreateVm)?;
        if let Some(existing) = host.domains.get(&vm_id.to_string()) {
            let existing = existing.observed();
            preconditions::ensure_managed(vm_id, &existing)?;
            return Ok(existing);
        }
        let name = domain_name(vm_id);
        if spec.cpu == 0 || spec.memory_mib == 0 {
            return Err(HypervisorError::new(
                FailureKind::Invalid,
                format!("defining domain {name}: a domain needs at least one vCPU and memory"),
            ));
        }
        let capacity_bytes = spec.disk_gb.checked_mul(BYTES_PER_GIB).ok_or_else(|| {
            HypervisorError::new(
                FailureKind::Invalid,
                format!("disk of {} GB is too large", spec.disk_gb),
            )
        })?;
        if let Some(image) = spec.image {
            let base = host.images.get(&image.image_id).ok_or_else(|| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!("image {} is not cached on this host", image.image_id),
                )
            })?;
            if capacity_bytes < base.virtual_size_bytes {
                return Err(HypervisorError::new(
                    FailureKind::Invalid,
                    format!(
                        "a disk of {capacity_bytes} bytes is smaller than image {}, which \
                         declares {} bytes",
                        image.image_id, base.virtual_size_bytes
                    ),
                ));
            }
        }
        let ssh = host.ssh_forward_for_new_vm()?;
        // No domain has this UUID, so volumes of these names are leftovers: replaced.
        host.volumes.insert(volume_name(vm_id), capacity_bytes);
        host.volumes.remove(&seed_volume_name(vm_id));
        host.seeds.remove(&vm_id);
        if let Some(seed) = &spec.seed {
            let length = u64::try_from(seed.len()).unwrap_or(u64::MAX);
            host.volumes.insert(seed_volume_name(vm_id), length);
            host.seeds.insert(vm_id, seed.clone());
        }
        let device = host.take_device();
        let state = if spec.start {
            PowerState::Running
        } else {
            PowerState::Stopped
        };
        let domain = MemoryDomain {
            uuid: vm_id.to_string(),
            name,
            vm_id: Some(vm_id),
            state,
            detail: String::new(),
            cpu: spec.cpu,
            memory_mib: spec.memory_mib,
            ignores_shutdown: false,
            disk: 0,
            snapshots: Vec::new(),
            boots: u64::from(spec.start),
            cpu_time_ns: 0,
            device,
            base_image: spec.image.map(|image| image.image_id),
            ssh,
            addresses: Vec::new(),
        };
        let observed = domain.observed();
        host.domains.insert(vm_id.to_string(), domain);
        host.hint(&observed.uuid);
        Ok(observed)
    }

    fn start_vm(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.state()
            .power(Call::StartVm, vm_id, PowerAction::Start, already)
    }

    fn request_shutdown(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.state()
            .power(Call::RequestShutdown, vm_id, PowerAction::Shutdown, already)
    }

    fn force_stop(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.state()
            .power(Call::ForceStop, vm_id, PowerAction::ForceStop, already)
    }

    fn reboot_vm(&mut self, vm_id: VmId) -> Result<ObservedDomain, HypervisorError> {
        self.state().power(
            Call::RebootVm,
            vm_id,
            PowerAction::Reboot,
            AlreadyThere::Refuse,
        )
    }

    fn delete_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::DeleteVm)?;
        let existing = match host.domains.get(&vm_id.to_string()) {
            Some(domain) => {
                let observed = domain.observed();
                preconditions::ensure_managed(vm_id, &observed)?;
                host.domains.remove(&vm_id.to_string());
                host.hint(&observed.uuid);
                Some(observed)
            }
            None => None,
        };
        host.volumes.remove(&volume_name(vm_id));
        host.volumes.remove(&seed_volume_name(vm_id));
        host.seeds.remove(&vm_id);
        Ok(existing)
    }

    fn list_snapshots(&mut self, vm_id: VmId) -> Result<Vec<ObservedSnapshot>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::ListSnapshots)?;
        let domain = host
            .domains
            .get(&vm_id.to_string())
            .ok_or_else(|| preconditions::not_found(vm_id))?;
        let mut snapshots: Vec<ObservedSnapshot> = domain
            .snapshots
            .iter()
            .map(MemorySnapshot::observed)
            .collect();
        snapshots.sort_by_key(|snapshot| (snapshot.created_at_unix, snapshot.snapshot_id));
        Ok(snapshots)
    }

    fn create_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<SnapshotTaken, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::CreateSnapshot)?;
        let domain = host.managed(vm_id)?;
        if let Some(existing) = domain.snapshots.iter().find(|s| s.id == snapshot_id) {
            return Ok(SnapshotTaken {
                snapshot: existing.observed(),
                domain: domain.observed(),
            });
        }
        let taken_in_state = preconditions::snapshot_state(vm_id, &domain.observed())?;
        let snapshot = MemorySnapshot {
            id: snapshot_id,
            taken_in_state,
            created_at_unix: now_unix(),
            disk: domain.disk,
        };
        let observed = snapshot.observed();
        domain.snapshots.push(snapshot);
        Ok(SnapshotTaken {
            domain: domain.observed(),
            snapshot: observed,
        })
    }

    fn restore_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::RestoreSnapshot)?;
        let domain = host.managed(vm_id)?;
        let (taken_in_state, disk) = domain
            .snapshots
            .iter()
            .find(|snapshot| snapshot.id == snapshot_id)
            .map(|snapshot| (snapshot.taken_in_state, snapshot.disk))
            .ok_or_else(|| preconditions::no_such_snapshot(vm_id, snapshot_id))?;
        // Back to a running checkpoint is a fresh guest process, as with QEMU.
        if taken_in_state == PowerState::Running {
            domain.state = PowerState::Stopped;
        }
        domain.set_state(taken_in_state);
        domain.disk = disk;
        let observed = domain.observed();
        host.hint(&observed.uuid);
        Ok(observed)
    }

    fn delete_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::DeleteSnapshot)?;
        let domain = host.managed(vm_id)?;
        domain
            .snapshots
            .retain(|snapshot| snapshot.id != snapshot_id);
        Ok(domain.observed())
    }

    fn remove_orphan_volumes(&mut self) -> Result<Vec<String>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::RemoveOrphanVolumes)?;
        let orphans: Vec<String> = host
            .volumes
            .keys()
            .filter(|name| {
                vm_id_of_volume(name)
                    .or_else(|| vm_id_of_seed_volume(name))
                    .is_some_and(|vm_id| !host.domains.contains_key(&vm_id.to_string()))
            })
            .cloned()
            .collect();
        for name in &orphans {
            host.volumes.remove(name);
            if let Some(vm_id) = vm_id_of_seed_volume(name) {
                host.seeds.remove(&vm_id);
            }
        }
        Ok(orphans)
    }

    fn image_support(&mut self) -> Result<(), HypervisorError> {
        self.state().enter(Call::ImageSupport)
    }

    fn cached_images(&mut self) -> Result<Vec<CachedBase>, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::CachedImages)?;
        Ok(host.images.values().cloned().collect())
    }

    fn import_image(
        &mut self,
        image: &BaseImage,
        staged: &Path,
    ) -> Result<CachedBase, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::ImportImage)?;
        let in_use = host.overlays_of(image.image_id);
        if host.images.contains_key(&image.image_id) && in_use > 0 {
            return Err(HypervisorError::new(
                FailureKind::Conflict,
                format!(
                    "image {} is cached already and {in_use} disk(s) are overlays of that \
                     copy; it is not replaced",
                    image.image_id
                ),
            ));
        }
        let (size_bytes, virtual_size_bytes) =
            read_image_sizes(staged, image.format).map_err(|error| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!(
                        "reading the fetched file of image {}: {error}",
                        image.image_id
                    ),
                )
            })?;
        // The pool takes the file.
        std::fs::remove_file(staged).map_err(|error| {
            HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "taking the fetched file of image {}: {error}",
                    image.image_id
                ),
            )
        })?;
        let cached = CachedBase {
            image_id: image.image_id,
            size_bytes,
            virtual_size_bytes,
        };
        host.volumes
            .insert(image_volume_name(image.image_id), size_bytes);
        host.images.insert(image.image_id, cached.clone());
        Ok(cached)
    }

    fn evict_image(&mut self, image_id: ImageId) -> Result<Eviction, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::EvictImage)?;
        if !host.images.contains_key(&image_id) {
            return Ok(Eviction::NotCached);
        }
        let disks = host.overlays_of(image_id);
        if disks > 0 {
            return Ok(Eviction::InUse { disks });
        }
        host.images.remove(&image_id);
        host.volumes.remove(&image_volume_name(image_id));
        Ok(Eviction::Removed)
    }

    fn stats_sample(&mut self) -> Result<StatsSample, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::StatsSample)?;
        let mut domains = Vec::with_capacity(host.domains.len());
        for domain in host.domains.values_mut() {
            domains.push(domain_sample(domain));
        }
        let capacity_bytes = host.facts.disk_gb.saturating_mul(BYTES_PER_GIB);
        let allocation_bytes = host
            .volumes
            .values()
            .fold(0_u64, |sum, bytes| sum.saturating_add(*bytes))
            .min(capacity_bytes);
        Ok(StatsSample {
            domains,
            host: HostSample {
                cpus: Some(host.facts.cpus),
                memory_bytes: Some(host.facts.memory_mib.saturating_mul(1024 * 1024)),
                pool: Some(PoolSample {
                    name: POOL_NAME.to_owned(),
                    capacity_bytes,
                    allocation_bytes,
                    available_bytes: capacity_bytes - allocation_bytes,
                }),
            },
        })
    }

    fn send_hints_to(&mut self, outlet: HintOutlet) -> Result<(), HypervisorError> {
        let mut host = self.state();
        host.hint_outlet = Some(outlet);
        host.enter(Call::SendHintsTo)?;
        host.open_hint_stream();
        Ok(())
    }

    fn open_console(
        &mut self,
        vm_id: VmId,
        kind: ConsoleKind,
    ) -> Result<ConsoleAccess, HypervisorError> {
        let mut host = self.state();
        host.enter(Call::OpenConsole)?;
        let state = host.managed(vm_id)?.state;
        if !state.is_active() {
            return Err(HypervisorError::new(
                FailureKind::Conflict,
                format!(
                    "VM {vm_id} is {}; its console exists only while it runs",
                    state.word()
                ),
            ));
        }
        let (agent_end, guest_end) = UnixStream::pair().map_err(|error| {
            HypervisorError::new(
                FailureKind::Unavailable,
                format!("cannot make a socket pair: {error}"),
            )
        })?;
        host.console_guests.insert((vm_id, kind), guest_end);
        Ok(ConsoleAccess::Connected(agent_end))
    }
}

/// One domain's figures; a running domain's CPU time grows with every sample.
fn domain_sample(domain: &mut MemoryDomain) -> DomainSample {
    let mut sample = DomainSample {
        name: domain.name.clone(),
        uuid: domain.uuid.clone(),
        vm_id: domain.vm_id,
        state: state_code::of(domain.state),
        ..DomainSample::default()
    };
    if !domain.state.is_active() {
        return sample;
    }
    if domain.state == PowerState::Running {
        domain.cpu_time_ns = domain
            .cpu_time_ns
            .saturating_add(CPU_NANOS_PER_SAMPLE.saturating_mul(u64::from(domain.cpu)));
    }
    let memory_kib = domain.memory_mib.saturating_mul(1024);
    sample.cpu_time_ns = Some(domain.cpu_time_ns);
    sample.virtual_cpus = Some(u64::from(domain.cpu));
    sample.maximum_memory_kib = Some(memory_kib);
    sample.memory_kib = Some(memory_kib);
    sample.blocks = vec![BlockSample {
        target_device: "vda".into(),
        source_file: domain.vm_id.map_or_else(String::new, |vm_id| {
            format!("/{POOL_NAME}/{}", volume_name(vm_id))
        }),
        read_bytes: Some(0),
        read_requests: Some(0),
        write_bytes: Some(0),
        write_requests: Some(0),
    }];
    sample.interfaces = vec![InterfaceSample {
        target_device: format!("vnet{}", domain.device),
        receive_bytes: Some(0),
        transmit_bytes: Some(0),
        ..InterfaceSample::default()
    }];
    sample
}

/// The size of an image file and the disk size it declares: a qcow2 header's size field,
/// or the file's size for a raw image.
fn read_image_sizes(path: &Path, format: ImageFormat) -> std::io::Result<(u64, u64)> {
    let size = std::fs::metadata(path)?.len();
    if format == ImageFormat::Raw {
        return Ok((size, size));
    }
    let mut header = [0_u8; 32];
    std::fs::File::open(path)?.read_exact(&mut header)?;
    if header[..4] != *b"QFI\xfb" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a qcow2 file",
        ));
    }
    let mut virtual_size = [0_u8; 8];
    virtual_size.copy_from_slice(&header[24..32]);
    Ok((size, u64::from_be_bytes(virtual_size)))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
