//! The real [`Hypervisor`]: one libvirt connection (`qemu:///system` in production,
//! `test:///default` anywhere else) and the storage pool the agent owns, with everything
//! that only libvirt needs: the XML the agent writes and reads ([`domain_xml`],
//! [`snapshot_xml`]), the statistics collection (`stats`), the cache of which domain is
//! which VM (`vm_ids`), reconnecting after libvirtd went away (`reconnect`), lifecycle
//! events as hints to the poller (`events`), snapshots (`snapshots`) and the start-up sweep
//! of orphaned disks (`sweep`).
//!
//! At open it decides once how VMs are run: the host's hvm guest arch, and `kvm` only when a
//! throw-away probe domain of that type really starts (a `/dev/kvm` that exists is not
//! proof); otherwise `qemu` (TCG), or whatever domain type the driver offers.
//!
//! Never touch a domain the product did not create except to read its state.

use std::collections::HashSet;
use std::fmt::Display;
use std::path::{Path, PathBuf};

use virt::connect::Connect;
use virt::domain::{Domain, DomainState, DomainStateReason};
use virt::enumutil::Enum;
use virt::error::{Error as LibvirtError, ErrorNumber};
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use vmm_shared::{SnapshotId, VmId};

use super::hints::HintOutlet;
use super::preconditions::{self, PowerAction, Proceed};
use super::{
    AlreadyThere, BYTES_PER_GIB, BaseImage, CachedBase, ConsoleAccess, ConsoleKind, Eviction,
    FailureKind, HostFacts, Hypervisor, HypervisorError, ImageId, NetworkMode, ObservedDomain,
    ObservedSnapshot, PowerState, SnapshotTaken, StatsSample, VmSpec, domain_name,
    seed_volume_name, volume_name,
};
use domain_xml::{DiskDefinition, DomainDefinition};

mod console;
pub mod domain_xml;
mod events;
mod images;
mod networking;
mod reconnect;
pub mod snapshot_xml;
mod snapshots;
mod stats;
mod sweep;
mod vm_ids;

/// Where and how the agent uses libvirt.
#[derive(Debug, Clone)]
pub struct LibvirtSettings {
    pub uri: String,
    /// Name of the storage pool that holds the VMs' disks.
    pub storage_pool: String,
    /// Absolute directory used as the pool's target if the agent has to define the pool.
    pub images_dir: PathBuf,
    /// Directory of the VMs' serial console sockets (`<vm-id>.serial`), made at open if
    /// missing. Never inside the storage pool's directory.
    pub consoles_dir: PathBuf,
    /// The NIC new VMs get.
    pub network: NetworkMode,
    /// Whether VMs may, must or must not use KVM.
    pub accel: GuestAccel,
}

/// How guests' CPUs are run (`GUEST_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum GuestAccel {
    /// KVM when a probe domain really runs under it, else TCG.
    #[default]
    Auto,
    /// KVM or nothing: the agent refuses to start when KVM does not work.
    Kvm,
    /// Software emulation (`type='qemu'`) always, also where KVM seems to work: for hosts
    /// whose KVM starts a guest's firmware but cannot run its boot loader.
    Tcg,
}

/// How new VMs are run on this host, decided once at open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GuestPlacement {
    domain_type: String,
    arch: String,
    kvm_usable: bool,
}

/// The agent's libvirt connection and what it learned about the host at open.
pub struct LibvirtHost {
    connection: Connect,
    settings: LibvirtSettings,
    guest: GuestPlacement,
    /// VM ID (or none, for unmanaged domains) per domain UUID, so each domain's metadata is
    /// read once rather than on every poll.
    vm_ids: vm_ids::VmIdCache,
    /// What the metrics' statistics remember between collections.
    stats_cache: stats::StatsCache,
    /// When to try again after libvirtd went away.
    reconnect: reconnect::ReconnectSchedule,
    /// Whether the driver's volumes are files with contents (false for the test driver).
    holds_files: bool,
    /// The connection's lifecycle-event registration and where its hints go.
    events: events::ConnectionEvents,
    /// The DAC label (`+uid:+gid`, the owner of the consoles directory: the agent) that
    /// libvirt gives every serial console socket.
    console_owner: String,
}

impl LibvirtHost {
    /// Opens the connection, decides the guest placement and makes sure the storage pool
    /// exists and is active. Starts libvirt's event loop first (once per process), so the
    /// connection can deliver lifecycle events.
    pub fn open(settings: LibvirtSettings) -> Result<Self, HypervisorError> {
        events::start_loop_before_connecting();
        let connection = Connect::open(Some(&settings.uri)).map_err(|error| {
            HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "cannot connect to libvirt at {}: {}",
                    settings.uri,
                    error.message()
                ),
            )
        })?;
        events::enable_keepalive(&connection);
        let guest = choose_guest_placement(&connection, settings.accel)?;
        let holds_files = !connection
            .driver_type()
            .map_err(failed("reading the driver type"))?
            .eq_ignore_ascii_case("test");
        tracing::info!(
            uri = %settings.uri,
            domain_type = %guest.domain_type,
            arch = %guest.arch,
            kvm_usable = guest.kvm_usable,
            accel = ?settings.accel,
            network = %settings.network,
            "connected to libvirt"
        );
        if !holds_files {
            tracing::warn!(uri = %settings.uri, "this driver keeps volumes without contents: VMs from images are refused here");
        }
        ensure_storage_pool(&connection, &settings)?;
        networking::check_network_mode(&connection, &settings)?;
        let console_owner = console::prepare_consoles_dir(&settings.consoles_dir)?;
        Ok(Self {
            connection,
            settings,
            guest,
            vm_ids: vm_ids::VmIdCache::default(),
            stats_cache: stats::StatsCache::default(),
            reconnect: reconnect::ReconnectSchedule::default(),
            holds_files,
            events: events::ConnectionEvents::default(),
            console_owner,
        })
    }

    fn storage_pool(&self) -> Result<StoragePool, HypervisorError> {
        self.connection
            .lookup_storage_pool_by_name(&self.settings.storage_pool)
            .map_err(failed(format!(
                "looking up storage pool {}",
                self.settings.storage_pool
            )))
    }

    fn lookup_domain(&self, vm_id: VmId) -> Result<Option<Domain>, HypervisorError> {
        match self
            .connection
            .lookup_domain_by_uuid_string(&vm_id.to_string())
        {
            Ok(domain) => Ok(Some(domain)),
            Err(error) if has_code(&error, ErrorNumber::NoDomain) => Ok(None),
            Err(error) => Err(failed(format!("looking up domain {}", domain_name(vm_id)))(
                error,
            )),
        }
    }

    /// The VM's domain, and how it looks now, if it has one.
    fn find_domain(
        &mut self,
        vm_id: VmId,
    ) -> Result<Option<(Domain, ObservedDomain)>, HypervisorError> {
        let Some(domain) = self.lookup_domain(vm_id)? else {
            return Ok(None);
        };
        match self.observe(&domain) {
            Ok(observed) => Ok(Some((domain, observed))),
            // Gone between the lookup and the query.
            Err(error) if has_code(&error, ErrorNumber::NoDomain) => Ok(None),
            Err(error) => Err(failed(format!("reading domain {}", domain_name(vm_id)))(
                error,
            )),
        }
    }

    /// The product domain of `vm_id` and how it looks now: `NotFound` without a domain,
    /// `Conflict` for a domain the product did not create.
    fn require_managed(
        &mut self,
        vm_id: VmId,
    ) -> Result<(Domain, ObservedDomain), HypervisorError> {
        let (domain, observed) = self
            .find_domain(vm_id)?
            .ok_or_else(|| preconditions::not_found(vm_id))?;
        preconditions::ensure_managed(vm_id, &observed)?;
        Ok((domain, observed))
    }

    /// Reads the domain back after an operation changed it.
    fn observe_after(
        &mut self,
        vm_id: VmId,
        domain: &Domain,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.observe(domain)
            .map_err(failed(format!("reading domain {}", domain_name(vm_id))))
    }

    fn observe(&mut self, domain: &Domain) -> Result<ObservedDomain, LibvirtError> {
        let uuid = domain.uuid_string()?;
        let name = domain.name()?;
        let (state, reason) = domain.state()?;
        let info = domain.info()?;
        let vm_id = self.vm_ids.vm_id(&uuid, domain);
        let detail = match reason {
            Enum::Known(DomainStateReason::Crashed(crash)) => format!("crashed: {crash}"),
            _ => String::new(),
        };
        let state = power_state(state);
        // Only product VMs: the coordinator has no use for a hand-made domain's network.
        let view = match vm_id {
            Some(_) => networking::observe(domain, state),
            None => networking::NetworkView::default(),
        };
        Ok(ObservedDomain {
            uuid,
            name,
            vm_id,
            state,
            cpu: info.nr_virt_cpu,
            memory_mib: info.max_mem / 1024,
            detail,
            addresses: view.addresses,
            ssh: view.ssh,
        })
    }

    /// Check, act and read back, for the power operations.
    fn power_operation(
        &mut self,
        vm_id: VmId,
        action: PowerAction,
        already: AlreadyThere,
        act: impl FnOnce(&Domain) -> Result<(), HypervisorError>,
    ) -> Result<ObservedDomain, HypervisorError> {
        let (domain, observed) = self.require_managed(vm_id)?;
        if preconditions::power(action, vm_id, &observed, already)? == Proceed::AlreadyThere {
            return Ok(observed);
        }
        act(&domain)?;
        self.observe_after(vm_id, &domain)
    }

    /// The XML of every domain on the host (persistent definitions and live ones).
    fn all_domain_xml(&self) -> Result<Vec<String>, HypervisorError> {
        let domains = self
            .connection
            .list_all_domains(0)
            .map_err(failed("listing domains"))?;
        Ok(domains
            .iter()
            .filter_map(|domain| domain.xml_desc(0).ok())
            .collect())
    }

    fn define_and_maybe_start(
        &mut self,
        vm_id: VmId,
        spec: &VmSpec,
        made: &CreatedVolumes,
    ) -> Result<ObservedDomain, HypervisorError> {
        let disk_path = made
            .disk
            .path()
            .map_err(failed("reading the disk volume's path"))?;
        let seed_path = made
            .seed
            .as_ref()
            .map(|seed| {
                seed.path()
                    .map_err(failed("reading the seed volume's path"))
            })
            .transpose()?;
        let backing = made
            .backing
            .as_ref()
            .map(|(path, format)| (path.as_str(), *format));
        let others = self.all_domain_xml()?;
        let mac_address = networking::unused_mac_address(&others)?;
        let nic = networking::NicChoice::for_new_vm(&self.settings.network, &others)?;
        let serial_socket = console::serial_socket_path(&self.settings.consoles_dir, vm_id);
        let xml = DomainDefinition {
            vm_id,
            display_name: &spec.display_name,
            domain_type: &self.guest.domain_type,
            arch: &self.guest.arch,
            cpu: spec.cpu,
            memory_mib: spec.memory_mib,
            disk: DiskDefinition {
                path: &disk_path,
                backing: backing.map(|(path, format)| domain_xml::BackingFile { path, format }),
            },
            seed_path: seed_path.as_deref(),
            nic: nic.definition(),
            mac_address: &mac_address,
            serial_socket: &serial_socket,
            serial_socket_owner: &self.console_owner,
        }
        .to_xml();
        let domain = self
            .connection
            .define_domain_xml(&xml)
            .map_err(failed(format!("defining domain {}", domain_name(vm_id))))?;
        if spec.start {
            domain
                .create()
                .map_err(failed(format!("starting domain {}", domain_name(vm_id))))?;
        }
        self.observe_after(vm_id, &domain)
    }

    /// Removes whatever a failed create left: the domain (if it got defined) and the
    /// volumes it made.
    fn undo_create(&mut self, vm_id: VmId, made: &CreatedVolumes) {
        match self.lookup_domain(vm_id) {
            Ok(Some(domain)) => {
                if let Err(error) = destroy_and_undefine(&domain) {
                    tracing::warn!(%vm_id, %error, "cannot remove the domain of a failed create");
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%vm_id, %error, "cannot look up a failed create"),
        }
        for volume in std::iter::once(&made.disk).chain(&made.seed) {
            if let Err(error) = volume.delete(0) {
                tracing::warn!(%vm_id, error = error.message(), "cannot delete a volume of a failed create");
            }
        }
        self.vm_ids.forget(&vm_id.to_string());
    }

    /// Deletes the volume `name` of the pool if it exists.
    fn delete_volume_if_present(
        &self,
        pool: &StoragePool,
        name: &str,
    ) -> Result<bool, HypervisorError> {
        match pool.lookup_storage_vol_by_name(name) {
            Ok(volume) => {
                volume
                    .delete(0)
                    .map_err(failed(format!("deleting volume {name}")))?;
                Ok(true)
            }
            Err(error) if has_code(&error, ErrorNumber::NoStorageVolume) => Ok(false),
            Err(error) => Err(failed(format!("looking up volume {name}"))(error)),
        }
    }
}

/// The volumes a create made, to define the domain with or to remove again.
struct CreatedVolumes {
    disk: StorageVol,
    /// The base image's path and format, for an overlay.
    backing: Option<(String, super::ImageFormat)>,
    seed: Option<StorageVol>,
}

impl Hypervisor for LibvirtHost {
    fn host_facts(&mut self) -> Result<HostFacts, HypervisorError> {
        self.reconnect_if_dead();
        let node = self
            .connection
            .node_info()
            .map_err(failed("reading node info"))?;
        let pool_info = self
            .storage_pool()?
            .info()
            .map_err(failed("reading storage pool info"))?;
        let library = self
            .connection
            .lib_version()
            .map_err(failed("reading libvirt version"))?;
        let driver = self
            .connection
            .driver_type()
            .map_err(failed("reading driver type"))?;
        let hypervisor_version = self
            .connection
            .hyp_version()
            .map_err(failed("reading hypervisor version"))?;
        Ok(HostFacts {
            cpus: node.cpus,
            memory_mib: node.memory / 1024,
            disk_gb: pool_info.capacity / BYTES_PER_GIB,
            libvirt_version: format_libvirt_version(library),
            hypervisor: format!("{driver} {}", format_libvirt_version(hypervisor_version)),
            kvm_usable: self.guest.kvm_usable,
        })
    }

    fn list_domains(&mut self) -> Result<Vec<ObservedDomain>, HypervisorError> {
        self.reconnect_if_dead();
        let domains = self
            .connection
            .list_all_domains(0)
            .map_err(failed("listing domains"))?;
        let mut observed = Vec::with_capacity(domains.len());
        for domain in &domains {
            match self.observe(domain) {
                Ok(one) => observed.push(one),
                // Gone between the listing and the query: the next poll reports it absent.
                Err(error) if has_code(&error, ErrorNumber::NoDomain) => {}
                Err(error) => return Err(failed("reading a domain's state")(error)),
            }
        }
        let present: HashSet<&str> = observed.iter().map(|domain| domain.uuid.as_str()).collect();
        self.vm_ids.retain_present(&present);
        Ok(observed)
    }

    fn find_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError> {
        self.reconnect_if_dead();
        Ok(self.find_domain(vm_id)?.map(|(_, observed)| observed))
    }

    fn create_vm(&mut self, vm_id: VmId, spec: &VmSpec) -> Result<ObservedDomain, HypervisorError> {
        if let Some((_, existing)) = self.find_domain(vm_id)? {
            preconditions::ensure_managed(vm_id, &existing)?;
            tracing::info!(%vm_id, "the VM's domain exists already (made by an earlier delivery)");
            return Ok(existing);
        }
        let pool = self.storage_pool()?;
        // No domain has this UUID, so volumes of these names are the leftovers of an earlier
        // attempt at this same VM that died half-way.
        for name in [volume_name(vm_id), seed_volume_name(vm_id)] {
            if self.delete_volume_if_present(&pool, &name)? {
                tracing::warn!(%vm_id, volume = %name, "deleted a leftover volume");
            }
        }
        let capacity_bytes = spec.disk_gb.checked_mul(BYTES_PER_GIB).ok_or_else(|| {
            HypervisorError::new(
                FailureKind::Invalid,
                format!("disk of {} GB is too large", spec.disk_gb),
            )
        })?;
        if spec.image.is_some() || spec.seed.is_some() {
            self.require_file_storage()?;
        }
        let (disk, backing) = match &spec.image {
            None => {
                let name = volume_name(vm_id);
                let disk = StorageVol::create_xml(
                    &pool,
                    &domain_xml::volume_xml(&name, capacity_bytes),
                    0,
                )
                .map_err(failed(format!("creating disk volume {name}")))?;
                (disk, None)
            }
            Some(image) => {
                let (disk, base_path) = self.create_overlay(&pool, vm_id, image, capacity_bytes)?;
                (disk, Some((base_path, image.format)))
            }
        };
        let mut made = CreatedVolumes {
            disk,
            backing,
            seed: None,
        };
        let outcome = match &spec.seed {
            Some(bytes) => self.create_seed(&pool, vm_id, bytes).map(|seed| {
                made.seed = Some(seed);
            }),
            None => Ok(()),
        }
        .and_then(|()| self.define_and_maybe_start(vm_id, spec, &made));
        match outcome {
            Ok(observed) => Ok(observed),
            Err(error) => {
                self.undo_create(vm_id, &made);
                Err(error)
            }
        }
    }

    fn start_vm(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.power_operation(vm_id, PowerAction::Start, already, |domain| {
            domain
                .create()
                .map_err(failed(format!("starting domain {}", domain_name(vm_id))))
        })
    }

    fn request_shutdown(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.power_operation(vm_id, PowerAction::Shutdown, already, |domain| {
            let action = format!("shutting down domain {}", domain_name(vm_id));
            match domain.shutdown_flags(virt::sys::VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) {
                Ok(()) => Ok(()),
                // Some drivers (the test driver) refuse to be told how; let them choose.
                Err(error) if is_unsupported(&error) => domain.shutdown().map_err(failed(action)),
                Err(error) => Err(failed(action)(error)),
            }
        })
    }

    fn force_stop(
        &mut self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.power_operation(vm_id, PowerAction::ForceStop, already, |domain| {
            domain
                .destroy()
                .map_err(failed(format!("destroying domain {}", domain_name(vm_id))))
        })
    }

    fn reboot_vm(&mut self, vm_id: VmId) -> Result<ObservedDomain, HypervisorError> {
        self.power_operation(vm_id, PowerAction::Reboot, AlreadyThere::Refuse, |domain| {
            let action = format!("rebooting domain {}", domain_name(vm_id));
            let error = match domain.reboot(virt::sys::VIR_DOMAIN_REBOOT_DEFAULT) {
                Ok(()) => return Ok(()),
                Err(error) if is_unsupported(&error) => error,
                Err(error) => return Err(failed(action)(error)),
            };
            tracing::debug!(%vm_id, error = error.message(), "reboot unsupported; resetting instead");
            match domain.reset() {
                Ok(()) => Ok(()),
                Err(error) if is_unsupported(&error) => {
                    domain.destroy().map_err(failed(action.clone()))?;
                    domain.create().map_err(failed(action))
                }
                Err(error) => Err(failed(action)(error)),
            }
        })
    }

    fn delete_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError> {
        let existing = match self.find_domain(vm_id)? {
            Some((domain, observed)) => {
                preconditions::ensure_managed(vm_id, &observed)?;
                destroy_and_undefine(&domain)
                    .map_err(failed(format!("deleting domain {}", domain_name(vm_id))))?;
                Some(observed)
            }
            None => None,
        };
        self.vm_ids.forget(&vm_id.to_string());
        let pool = self.storage_pool()?;
        // Never the cached image an overlay disk was made from: it stays for other VMs.
        for name in [volume_name(vm_id), seed_volume_name(vm_id)] {
            self.delete_volume_if_present(&pool, &name)?;
        }
        Ok(existing)
    }

    fn list_snapshots(&mut self, vm_id: VmId) -> Result<Vec<ObservedSnapshot>, HypervisorError> {
        self.snapshots_of(vm_id)
    }

    fn create_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<SnapshotTaken, HypervisorError> {
        self.take_snapshot(vm_id, snapshot_id)
    }

    fn restore_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.revert_to_snapshot(vm_id, snapshot_id)
    }

    fn delete_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedDomain, HypervisorError> {
        self.remove_snapshot(vm_id, snapshot_id)
    }

    fn remove_orphan_volumes(&mut self) -> Result<Vec<String>, HypervisorError> {
        self.sweep_orphan_volumes()
    }

    fn image_support(&mut self) -> Result<(), HypervisorError> {
        self.reconnect_if_dead();
        self.require_file_storage()
    }

    fn cached_images(&mut self) -> Result<Vec<CachedBase>, HypervisorError> {
        self.reconnect_if_dead();
        self.list_cached_images()
    }

    fn import_image(
        &mut self,
        image: &BaseImage,
        staged: &Path,
    ) -> Result<CachedBase, HypervisorError> {
        self.reconnect_if_dead();
        self.import_base(image, staged)
    }

    fn evict_image(&mut self, image_id: ImageId) -> Result<Eviction, HypervisorError> {
        self.reconnect_if_dead();
        self.evict_base(image_id)
    }

    fn stats_sample(&mut self) -> Result<StatsSample, HypervisorError> {
        self.reconnect_if_dead();
        stats::collect(
            &self.connection,
            &self.settings.storage_pool,
            &mut self.stats_cache,
            &mut self.vm_ids,
        )
    }

    fn send_hints_to(&mut self, outlet: HintOutlet) -> Result<(), HypervisorError> {
        self.send_hints_from_now_on(outlet)
    }

    fn open_console(
        &mut self,
        vm_id: VmId,
        kind: ConsoleKind,
    ) -> Result<ConsoleAccess, HypervisorError> {
        self.reconnect_if_dead();
        self.open_console_of(vm_id, kind)
    }
}

/// The consoles directory of every test host: short (socket paths must stay under 108
/// bytes) and one per user, shared by all tests and runs. Sockets in it are named by fresh
/// VM IDs, so tests never meet there, and runs leave no directory of their own behind.
#[cfg(test)]
pub(crate) fn test_consoles_dir() -> PathBuf {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |own| own.uid());
    std::env::temp_dir().join(format!("vmm-agent-test-consoles-{uid}"))
}

/// The agent's view of a libvirt domain state. `Shutdown` means "shutting down": the guest
/// still runs until it reaches `Shutoff`.
pub fn power_state(state: Enum<DomainState, virt::sys::virDomainState>) -> PowerState {
    match state {
        Enum::Known(DomainState::Running | DomainState::Blocked | DomainState::Shutdown) => {
            PowerState::Running
        }
        Enum::Known(DomainState::Paused | DomainState::PMSuspended) => PowerState::Paused,
        Enum::Known(DomainState::Shutoff | DomainState::NoState) => PowerState::Stopped,
        Enum::Known(DomainState::Crashed) => PowerState::Crashed,
        Enum::Unknown(_) => PowerState::Unknown,
    }
}

/// `major * 1_000_000 + minor * 1_000 + release` → `major.minor.release`.
pub fn format_libvirt_version(encoded: u32) -> String {
    format!(
        "{}.{}.{}",
        encoded / 1_000_000,
        encoded / 1_000 % 1_000,
        encoded % 1_000
    )
}

fn destroy_and_undefine(domain: &Domain) -> Result<(), LibvirtError> {
    if domain.is_active()? {
        match domain.destroy() {
            Ok(()) => {}
            // Stopped on its own meanwhile.
            Err(error) if has_code(&error, ErrorNumber::OperationInvalid) => {}
            Err(error) => return Err(error),
        }
    }
    // A transient domain is gone once destroyed.
    if !domain.is_persistent().unwrap_or(true) {
        return Ok(());
    }
    // Snapshot metadata must go too, or libvirt refuses to undefine a domain that has
    // snapshots; their data lives in the disk image, which the caller deletes. Drivers that
    // know no NVRAM (the test driver) refuse that flag, so it is dropped before the other.
    let snapshots = virt::sys::VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA;
    match domain.undefine_flags(snapshots | virt::sys::VIR_DOMAIN_UNDEFINE_NVRAM) {
        Ok(()) => Ok(()),
        Err(error) if is_unsupported(&error) => match domain.undefine_flags(snapshots) {
            Ok(()) => Ok(()),
            Err(error) if is_unsupported(&error) => domain.undefine(),
            Err(error) => Err(error),
        },
        Err(error) => Err(error),
    }
}

fn choose_guest_placement(
    connection: &Connect,
    accel: GuestAccel,
) -> Result<GuestPlacement, HypervisorError> {
    let capabilities = connection
        .capabilities()
        .map_err(failed("reading host capabilities"))?;
    let guest = domain_xml::parse_hvm_guest(&capabilities).ok_or_else(|| {
        HypervisorError::new(
            FailureKind::Unavailable,
            "libvirt offers no hvm guest on this host",
        )
    })?;
    let offers = |domain_type: &str| {
        guest
            .domain_types
            .iter()
            .any(|offered| offered == domain_type)
    };
    let try_kvm = accel != GuestAccel::Tcg && offers("kvm");
    let (domain_type, kvm_usable) = if try_kvm && kvm_works(connection, &guest.arch) {
        ("kvm".to_owned(), true)
    } else if accel == GuestAccel::Kvm {
        return Err(HypervisorError::new(
            FailureKind::Unavailable,
            "GUEST_ACCEL is kvm, but KVM does not work on this host (libvirt offers no kvm \
             domain, or a probe domain did not keep running): use auto or tcg",
        ));
    } else if offers("kvm") || offers("qemu") {
        ("qemu".to_owned(), false)
    } else {
        let first = guest.domain_types.first().cloned().ok_or_else(|| {
            HypervisorError::new(
                FailureKind::Unavailable,
                "libvirt offers no domain type for hvm guests",
            )
        })?;
        (first, false)
    };
    Ok(GuestPlacement {
        domain_type,
        arch: guest.arch,
        kvm_usable,
    })
}

/// How long the KVM probe domain must keep running to count as working.
const KVM_PROBE_SETTLE_TIME: std::time::Duration = std::time::Duration::from_millis(300);

/// Starts and destroys a tiny transient KVM domain: the only reliable test that KVM works.
/// The probe must still be running a moment after it started, because a vCPU that KVM
/// cannot run stops the guest only once it is scheduled.
fn kvm_works(connection: &Connect, arch: &str) -> bool {
    let name = format!("vmm-kvm-probe-{:08x}", rand::random::<u32>());
    let probe = match connection.create_domain_xml(&domain_xml::kvm_probe_xml(&name, arch), 0) {
        Ok(probe) => probe,
        Err(error) => {
            tracing::info!(
                error = error.message(),
                "KVM is not usable; VMs run as type 'qemu'"
            );
            return false;
        }
    };
    std::thread::sleep(KVM_PROBE_SETTLE_TIME);
    let still_running =
        matches!(probe.state(), Ok((state, _)) if power_state(state) == PowerState::Running);
    if let Err(error) = probe.destroy() {
        tracing::warn!(%name, error = error.message(), "cannot destroy the KVM probe domain");
    }
    if !still_running {
        tracing::info!("the KVM probe domain stopped by itself; VMs run as type 'qemu'");
    }
    still_running
}

fn ensure_storage_pool(
    connection: &Connect,
    settings: &LibvirtSettings,
) -> Result<(), HypervisorError> {
    let name = &settings.storage_pool;
    let pool = match connection.lookup_storage_pool_by_name(name) {
        Ok(pool) => pool,
        Err(error) if has_code(&error, ErrorNumber::NoStoragePool) => {
            define_dir_pool(connection, settings)?
        }
        Err(error) if has_code(&error, ErrorNumber::NoSupport) => {
            return Err(HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "libvirt at {} has no storage driver (install libvirt-daemon-driver-storage \
                     and restart libvirtd): {}",
                    settings.uri,
                    error.message()
                ),
            ));
        }
        Err(error) => return Err(failed(format!("looking up storage pool {name}"))(error)),
    };
    if !pool
        .is_active()
        .map_err(failed(format!("reading storage pool {name}")))?
    {
        tracing::info!(pool = %name, "starting storage pool");
        pool.create(0)
            .map_err(failed(format!("starting storage pool {name}")))?;
    }
    pool.refresh(0)
        .map_err(failed(format!("refreshing storage pool {name}")))
}

fn define_dir_pool(
    connection: &Connect,
    settings: &LibvirtSettings,
) -> Result<StoragePool, HypervisorError> {
    let name = &settings.storage_pool;
    let target = settings.images_dir.to_str().ok_or_else(|| {
        HypervisorError::new(
            FailureKind::Invalid,
            format!(
                "the images directory {} is not valid UTF-8",
                settings.images_dir.display()
            ),
        )
    })?;
    tracing::info!(pool = %name, %target, "defining directory storage pool");
    let pool = connection
        .define_storage_pool_xml(&domain_xml::dir_pool_xml(name, target), 0)
        .map_err(failed(format!("defining storage pool {name}")))?;
    let made_ready = pool
        .build(0)
        .and_then(|()| pool.set_autostart(true).map(drop))
        .map_err(failed(format!("building storage pool {name}")));
    if let Err(error) = made_ready {
        let _ = pool.undefine();
        return Err(error);
    }
    Ok(pool)
}

fn has_code(error: &LibvirtError, code: ErrorNumber) -> bool {
    error.code() == Enum::Known(code)
}

/// The driver does not implement the call, or not with these flags.
fn is_unsupported(error: &LibvirtError) -> bool {
    matches!(
        error.code(),
        Enum::Known(
            ErrorNumber::NoSupport
                | ErrorNumber::ArgumentUnsupported
                | ErrorNumber::OperationUnsupported
                | ErrorNumber::InvalidArg
        )
    )
}

fn failure_kind(error: &LibvirtError) -> FailureKind {
    match error.code() {
        Enum::Known(code) => match code {
            ErrorNumber::NoDomain
            | ErrorNumber::NoStoragePool
            | ErrorNumber::NoStorageVolume
            | ErrorNumber::NoDomainSnapshot => FailureKind::NotFound,
            ErrorNumber::OperationInvalid
            | ErrorNumber::SnapshotRevertRisky
            | ErrorNumber::DomExist
            | ErrorNumber::StorageVolExist
            | ErrorNumber::ResourceBusy => FailureKind::Conflict,
            ErrorNumber::XmlError
            | ErrorNumber::XmlDetail
            | ErrorNumber::XmlInvalidSchema
            | ErrorNumber::InvalidArg
            | ErrorNumber::NoSupport
            | ErrorNumber::ArgumentUnsupported
            | ErrorNumber::OperationUnsupported
            | ErrorNumber::ConfigUnsupported => FailureKind::Invalid,
            ErrorNumber::NoConnect
            | ErrorNumber::InvalidConn
            | ErrorNumber::Rpc
            | ErrorNumber::SystemError
            | ErrorNumber::NoMemory
            | ErrorNumber::NoStorage
            | ErrorNumber::OperationTimeout
            | ErrorNumber::OperationDenied
            | ErrorNumber::AuthFailed
            | ErrorNumber::AccessDenied => FailureKind::Unavailable,
            _ => FailureKind::Internal,
        },
        Enum::Unknown(_) => FailureKind::Internal,
    }
}

/// Turns a libvirt error into a [`HypervisorError`] that says what was being done.
fn failed(action: impl Display) -> impl FnOnce(LibvirtError) -> HypervisorError {
    move |error| {
        HypervisorError::new(
            failure_kind(&error),
            format!("{action}: {}", error.message()),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_states_map_to_power_states() {
        let cases = [
            (DomainState::Running, PowerState::Running),
            (DomainState::Blocked, PowerState::Running),
            (DomainState::Shutdown, PowerState::Running),
            (DomainState::Paused, PowerState::Paused),
            (DomainState::PMSuspended, PowerState::Paused),
            (DomainState::Shutoff, PowerState::Stopped),
            (DomainState::NoState, PowerState::Stopped),
            (DomainState::Crashed, PowerState::Crashed),
        ];
        for (libvirt_state, expected) in cases {
            assert_eq!(
                power_state(Enum::Known(libvirt_state)),
                expected,
                "{libvirt_state:?}"
            );
        }
        assert_eq!(power_state(Enum::Unknown(99)), PowerState::Unknown);
    }

    #[test]
    fn libvirt_versions_are_decoded() {
        assert_eq!(format_libvirt_version(11_003_000), "11.3.0");
        assert_eq!(format_libvirt_version(10_000_002), "10.0.2");
        assert_eq!(format_libvirt_version(2), "0.0.2");
    }
}

/// Against libvirt's built-in test driver: real libvirt code, no daemon, a fresh in-memory
/// host per connection.
#[cfg(test)]
pub(crate) mod test_driver_tests {
    use super::*;
    use crate::hypervisor::contract_tests::{
        ContractHost, ImageContractHost, contract_tests, image_spec, spec, stage_raw_image,
    };
    use crate::hypervisor::{image_id_of_volume, seed_volume_name};

    pub(crate) fn open_test_host() -> LibvirtHost {
        virt::error::clear_error_callback();
        let unique = uuid::Uuid::new_v4();
        let images_dir = std::env::temp_dir().join(format!("vmm-agent-test-{unique}"));
        LibvirtHost::open(LibvirtSettings {
            uri: "test:///default".into(),
            // Connections to test:///default opened while another one is still open share
            // one in-memory host, so tests running in parallel must not both define the
            // same pool.
            storage_pool: format!("vmm-test-{unique}"),
            consoles_dir: crate::hypervisor::libvirt::test_consoles_dir(),
            images_dir,
            network: NetworkMode::default(),
            accel: GuestAccel::Auto,
        })
        .expect("open test:///default")
    }

    impl ContractHost for LibvirtHost {
        fn pause(&mut self, vm_id: VmId) {
            self.lookup_domain(vm_id)
                .unwrap()
                .expect("domain exists")
                .suspend()
                .unwrap();
        }
        fn volume_names(&mut self) -> Vec<String> {
            self.storage_pool().unwrap().list_volumes().unwrap()
        }
        fn make_volume(&mut self, name: &str) {
            let pool = self.storage_pool().unwrap();
            StorageVol::create_xml(&pool, &domain_xml::volume_xml(name, BYTES_PER_GIB), 0).unwrap();
        }
        /// The driver's own sample domain, `test`: running, without instance metadata.
        fn foreign_domain(&mut self) -> VmId {
            self.connection
                .lookup_domain_by_name("test")
                .unwrap()
                .uuid_string()
                .unwrap()
                .parse()
                .unwrap()
        }
    }

    impl ImageContractHost for LibvirtHost {
        fn backing_image(&mut self, vm_id: VmId) -> Option<ImageId> {
            let pool = self.storage_pool().unwrap();
            let disk = pool.lookup_storage_vol_by_name(&volume_name(vm_id)).ok()?;
            let backing = domain_xml::volume_backing_path(&disk.xml_desc(0).unwrap())?;
            let file_name = Path::new(&backing).file_name()?.to_str()?.to_owned();
            image_id_of_volume(&file_name)
        }
        fn seed_bytes(&mut self, vm_id: VmId) -> Option<Vec<u8>> {
            let pool = self.storage_pool().unwrap();
            let seed = pool
                .lookup_storage_vol_by_name(&seed_volume_name(vm_id))
                .ok()?;
            std::fs::read(seed.path().unwrap()).ok()
        }
    }

    contract_tests!(open_test_host());

    /// The test driver keeps volumes without contents: images and seeds are refused,
    /// saying so, before anything is fetched or made; blank disks work.
    #[test]
    fn the_test_driver_refuses_images_and_seeds_clearly() {
        let mut host = open_test_host();
        let error = host.image_support().unwrap_err();
        assert_eq!(error.kind, FailureKind::Unavailable);
        assert!(
            error.message.contains("test:///default") && error.message.contains("qemu:///system"),
            "{error}"
        );
        assert!(host.cached_images().unwrap().is_empty());
        let dir = tempfile::tempdir().unwrap();
        let staged = stage_raw_image(dir.path(), 1);
        let image = BaseImage {
            image_id: ImageId::new_random(),
            format: super::super::ImageFormat::Raw,
        };
        assert_eq!(
            host.import_image(&image, &staged).unwrap_err().kind,
            FailureKind::Unavailable
        );
        assert!(staged.exists(), "nothing was taken");
        let vm_id = VmId::new_random();
        let refused = host
            .create_vm(vm_id, &image_spec(image, b"seed"))
            .unwrap_err();
        assert_eq!(refused.kind, FailureKind::Unavailable, "{refused}");
        let seed_only = VmSpec {
            seed: Some(b"seed".to_vec()),
            ..spec(false)
        };
        assert_eq!(
            host.create_vm(vm_id, &seed_only).unwrap_err().kind,
            FailureKind::Unavailable
        );
        assert_eq!(host.find_vm(vm_id).unwrap(), None);
        assert!(host.volume_names().is_empty(), "{:?}", host.volume_names());
        assert_eq!(
            host.evict_image(image.image_id).unwrap(),
            Eviction::NotCached
        );
        host.create_vm(vm_id, &spec(true)).unwrap();
    }

    /// Each network mode's NIC is what libvirt keeps, and a libvirt network that does not
    /// exist stops the agent at open, naming it.
    #[test]
    fn network_modes_give_their_nics_and_a_missing_network_is_named() {
        virt::error::clear_error_callback();
        let open = |network: NetworkMode| {
            let unique = uuid::Uuid::new_v4();
            LibvirtHost::open(LibvirtSettings {
                uri: "test:///default".into(),
                storage_pool: format!("vmm-test-{unique}"),
                images_dir: std::env::temp_dir().join(format!("vmm-agent-test-{unique}")),
                consoles_dir: crate::hypervisor::libvirt::test_consoles_dir(),
                network,
                accel: GuestAccel::Tcg,
            })
        };
        // The test driver has one network, `default`.
        let mut host = open(NetworkMode::Network("default".into())).unwrap();
        let vm_id = VmId::new_random();
        let created = host.create_vm(vm_id, &spec(true)).unwrap();
        assert_eq!(created.ssh, None);
        let xml = host
            .lookup_domain(vm_id)
            .unwrap()
            .unwrap()
            .xml_desc(0)
            .unwrap();
        assert!(xml.contains("<source network='default'"), "{xml}");
        assert!(domain_xml::domain_networking(&xml).guest_agent_channel);

        let mut host = open(NetworkMode::Bridge("br-test".into())).unwrap();
        let vm_id = VmId::new_random();
        host.create_vm(vm_id, &spec(false)).unwrap();
        let xml = host
            .lookup_domain(vm_id)
            .unwrap()
            .unwrap()
            .xml_desc(0)
            .unwrap();
        assert!(xml.contains("<source bridge='br-test'/>"), "{xml}");

        let error = open(NetworkMode::Network("nowhere".into()))
            .err()
            .expect("a missing network is refused");
        assert!(
            error.message.contains("nowhere") && error.message.contains("NETWORK"),
            "{error}"
        );
    }

    #[test]
    fn guest_accel_kvm_refuses_a_host_without_kvm() {
        virt::error::clear_error_callback();
        let unique = uuid::Uuid::new_v4();
        let error = LibvirtHost::open(LibvirtSettings {
            uri: "test:///default".into(),
            storage_pool: format!("vmm-test-{unique}"),
            images_dir: std::env::temp_dir().join(format!("vmm-agent-test-{unique}")),
            consoles_dir: crate::hypervisor::libvirt::test_consoles_dir(),
            network: NetworkMode::default(),
            accel: GuestAccel::Kvm,
        })
        .err()
        .expect("the test driver has no KVM");
        assert!(error.message.contains("GUEST_ACCEL"), "{error}");
    }

    #[test]
    fn host_facts_describe_the_test_driver() {
        let mut host = open_test_host();
        assert_eq!(host.guest.domain_type, "test");
        assert_eq!(host.guest.arch, "i686");
        let facts = host.host_facts().unwrap();
        assert!(facts.cpus > 0 && facts.memory_mib > 0);
        assert!(!facts.kvm_usable);
        assert!(
            facts.hypervisor.to_ascii_lowercase().starts_with("test "),
            "{}",
            facts.hypervisor
        );
        assert_eq!(facts.libvirt_version.split('.').count(), 3);
    }

    #[test]
    fn macs_are_not_reused() {
        let mut host = open_test_host();
        let first = VmId::new_random();
        host.create_vm(first, &spec(false)).unwrap();
        let first_xml = host
            .lookup_domain(first)
            .unwrap()
            .unwrap()
            .xml_desc(0)
            .unwrap();
        let first_macs = domain_xml::mac_addresses(&first_xml);
        assert_eq!(first_macs.len(), 1);
        assert!(first_macs[0].starts_with("52:54:00:"));
        let second = VmId::new_random();
        host.create_vm(second, &spec(false)).unwrap();
        let second_xml = host
            .lookup_domain(second)
            .unwrap()
            .unwrap()
            .xml_desc(0)
            .unwrap();
        assert_ne!(domain_xml::mac_addresses(&second_xml), first_macs);
    }
}

/// The image contract against real QEMU under libvirtd (`qemu:///system`, a pool of its own
/// in a temporary directory, TCG): real files, overlays made by libvirt with `qemu-img`,
/// seeds uploaded through streams. Leaves nothing behind, also when a test fails: no
/// domain, no volume, no pool, no directory. Fails, saying so, without libvirtd.
#[cfg(test)]
mod qemu_image_tests {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

    use super::*;
    use crate::hypervisor::contract_tests::{self as contract, image_spec, stage_raw_image};

    /// A host on its own pool, removed with everything in it on drop.
    struct Scratch {
        host: Option<LibvirtHost>,
        dir: PathBuf,
    }

    impl Scratch {
        fn open() -> Self {
            virt::error::clear_error_callback();
            let unique = uuid::Uuid::new_v4().simple().to_string();
            let dir = std::env::temp_dir().join(format!("vmm-agent-images-{unique}"));
            std::fs::create_dir_all(dir.join("pool")).unwrap();
            std::fs::create_dir_all(dir.join("staging")).unwrap();
            for path in [dir.clone(), dir.join("pool")] {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
            let opened = LibvirtHost::open(LibvirtSettings {
                uri: "qemu:///system".into(),
                storage_pool: format!("vmm-images-{unique}"),
                images_dir: dir.join("pool"),
                consoles_dir: crate::hypervisor::libvirt::test_consoles_dir(),
                network: NetworkMode::default(),
                accel: GuestAccel::Tcg,
            });
            match opened {
                Ok(host) => Self {
                    host: Some(host),
                    dir,
                },
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("this test needs libvirtd with QEMU at qemu:///system: {error}");
                }
            }
        }

        fn host(&mut self) -> &mut LibvirtHost {
            self.host.as_mut().expect("open")
        }

        fn staging(&self) -> PathBuf {
            self.dir.join("staging")
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            if let Some(host) = self.host.take() {
                let ours = self.dir.to_string_lossy().into_owned();
                if let Ok(domains) = host.connection.list_all_domains(0) {
                    for domain in domains {
                        if domain.xml_desc(0).is_ok_and(|xml| xml.contains(&ours)) {
                            let _ = destroy_and_undefine(&domain);
                        }
                    }
                }
                if let Ok(pool) = host.storage_pool() {
                    if let Ok(volumes) = pool.list_all_volumes(0) {
                        for volume in volumes {
                            let _ = volume.delete(0);
                        }
                    }
                    let _ = pool.destroy();
                    let _ = pool.undefine();
                }
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn qemu_vms_are_made_from_cached_images() {
        let mut scratch = Scratch::open();
        let staging = scratch.staging();
        contract::vms_are_made_from_cached_images(scratch.host(), &staging);
    }

    #[test]
    fn qemu_creates_from_images_that_cannot_be_used_leave_nothing() {
        let mut scratch = Scratch::open();
        let staging = scratch.staging();
        contract::creates_from_images_that_cannot_be_used_leave_nothing(scratch.host(), &staging);
    }

    #[test]
    fn qemu_orphan_seeds_are_swept_and_cached_images_never() {
        let mut scratch = Scratch::open();
        let staging = scratch.staging();
        contract::orphan_seeds_are_swept_and_cached_images_never(scratch.host(), &staging);
    }

    #[test]
    fn qemu_user_mode_vms_get_ssh_ports_of_their_own() {
        let mut scratch = Scratch::open();
        contract::user_mode_vms_get_ssh_ports_of_their_own(scratch.host());
    }

    /// A VM from an image runs under QEMU with its overlay, read-only seed and passt NIC,
    /// and the shared base keeps its owner and mode: libvirt never relabels it.
    #[test]
    fn qemu_a_vm_from_an_image_runs_and_leaves_the_base_alone() {
        let mut scratch = Scratch::open();
        let staging = scratch.staging();
        let host = scratch.host();
        let image = BaseImage {
            image_id: ImageId::new_random(),
            format: super::super::ImageFormat::Raw,
        };
        host.import_image(&image, &stage_raw_image(&staging, 0))
            .unwrap();
        let base_path = host
            .storage_pool()
            .unwrap()
            .lookup_storage_vol_by_name(&super::super::image_volume_name(image.image_id))
            .unwrap()
            .path()
            .unwrap();
        let vm_id = VmId::new_random();
        let spec = VmSpec {
            start: true,
            ..image_spec(image, b"seed bytes")
        };
        let created = host.create_vm(vm_id, &spec).unwrap();
        assert_eq!(created.state, PowerState::Running);
        let ssh = created.ssh.expect("a user-mode VM forwards SSH");
        let xml = host
            .lookup_domain(vm_id)
            .unwrap()
            .unwrap()
            .xml_desc(0)
            .unwrap();
        assert!(xml.contains("<backend type='passt'/>"), "{xml}");
        assert!(xml.contains(&format!("start='{}'", ssh.port)), "{xml}");
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(
            host.find_vm(vm_id).unwrap().map(|domain| domain.state),
            Some(PowerState::Running)
        );
        let metadata = std::fs::metadata(&base_path).unwrap();
        assert_eq!(metadata.uid(), 0, "libvirt changed the base's owner");
        assert_eq!(metadata.mode() & 0o777, 0o444);
        host.delete_vm(vm_id).unwrap();
        assert!(std::path::Path::new(&base_path).exists());
    }
}

/// Against real QEMU: `cargo test -p vmm-agent -- --ignored real_qemu` on a host with
/// libvirtd (storage driver included). Leaves nothing behind: no domain, no volume, no pool.
#[cfg(test)]
mod real_qemu_tests {
    use super::*;

    #[test]
    #[ignore = "needs libvirtd with QEMU at qemu:///system"]
    fn real_qemu_runs_and_deletes_a_vm() {
        virt::error::clear_error_callback();
        let images_dir =
            std::env::temp_dir().join(format!("vmm-agent-qemu-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&images_dir).unwrap();
        let pool_name = format!("vmm-smoke-{}", rand::random::<u16>());
        let mut host = LibvirtHost::open(LibvirtSettings {
            uri: "qemu:///system".into(),
            storage_pool: pool_name,
            images_dir: images_dir.clone(),
            consoles_dir: crate::hypervisor::libvirt::test_consoles_dir(),
            network: NetworkMode::default(),
            accel: GuestAccel::Auto,
        })
        .expect("open qemu:///system");
        println!("placement: {:?}", host.guest);
        println!("facts: {:?}", host.host_facts().unwrap());

        // The detected placement, then software emulation (what hosts without KVM use).
        let detected = host.guest.domain_type.clone();
        let mut outcomes = Vec::new();
        for domain_type in [detected, "qemu".to_owned()] {
            host.guest.domain_type = domain_type.clone();
            outcomes.push((domain_type, run_lifecycle(&mut host, &images_dir)));
        }

        let pool = host.storage_pool().unwrap();
        let _ = pool.destroy();
        let _ = pool.undefine();
        let leftovers: Vec<_> = std::fs::read_dir(&images_dir).unwrap().collect();
        let _ = std::fs::remove_dir_all(&images_dir);

        for (domain_type, outcome) in outcomes {
            outcome.unwrap_or_else(|error| panic!("type {domain_type}: {error}"));
        }
        assert!(leftovers.is_empty(), "left in the pool dir: {leftovers:?}");
    }

    /// Create (started), check it runs and has its disk file, reboot, stop, delete.
    fn run_lifecycle(host: &mut LibvirtHost, images_dir: &std::path::Path) -> Result<(), String> {
        let vm_id = VmId::new_random();
        let spec = VmSpec {
            display_name: "smoke".into(),
            cpu: 1,
            memory_mib: 64,
            disk_gb: 1,
            start: true,
            image: None,
            seed: None,
        };
        let steps = (|| -> Result<(), String> {
            let created = host.create_vm(vm_id, &spec).map_err(|e| e.to_string())?;
            println!("created: {created:?}");
            std::thread::sleep(std::time::Duration::from_secs(1));
            let state = host
                .find_vm(vm_id)
                .map_err(|e| e.to_string())?
                .map(|d| d.state);
            if state != Some(PowerState::Running) {
                return Err(format!("not running a second after start: {state:?}"));
            }
            if !images_dir.join(volume_name(vm_id)).exists() {
                return Err("no disk file in the pool directory".into());
            }
            host.reboot_vm(vm_id).map_err(|e| e.to_string())?;
            let stopped = host
                .force_stop(vm_id, AlreadyThere::Refuse)
                .map_err(|e| e.to_string())?;
            if stopped.state != PowerState::Stopped {
                return Err(format!("not stopped after a force stop: {stopped:?}"));
            }
            Ok(())
        })();
        let deleted = host.delete_vm(vm_id).map(drop).map_err(|e| e.to_string());
        steps.and(deleted)?;
        if images_dir.join(volume_name(vm_id)).exists() {
            return Err("the disk file survived delete".into());
        }
        Ok(())
    }
}
