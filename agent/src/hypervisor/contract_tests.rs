//! What every [`Hypervisor`] implementation must do, written once and run against each:
//! libvirt's test driver (in [`super::libvirt`]) and the in-memory host (in
//! [`super::memory`]). A behaviour the in-memory host fakes differently from libvirt fails
//! here.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use vmm_shared::{SnapshotId, VmId};

use super::hints::{self, Hint, HintStream};
use super::{
    AlreadyThere, BYTES_PER_GIB, BaseImage, Eviction, FailureKind, Hypervisor, ImageFormat,
    ImageId, ObservedSnapshot, PowerState, VmSpec, domain_name, image_volume_name,
    seed_volume_name, volume_name,
};

/// What a contract test needs beyond the trait: the hand of someone on the host.
pub(crate) trait ContractHost: Hypervisor {
    /// Pauses the domain behind the agent's back.
    fn pause(&mut self, vm_id: VmId);
    /// The pool's volume names.
    fn volume_names(&mut self) -> Vec<String>;
    /// Makes a volume of that name in the pool.
    fn make_volume(&mut self, name: &str);
    /// A running domain the product did not create; its UUID as a VM ID.
    fn foreign_domain(&mut self) -> VmId;
}

/// What the image contract tests need beyond [`ContractHost`]: looking into a host that
/// holds images.
pub(crate) trait ImageContractHost: ContractHost {
    /// The image the VM's disk is an overlay of, as the host's storage says.
    fn backing_image(&mut self, vm_id: VmId) -> Option<ImageId>;
    /// The bytes of the VM's seed volume, as stored.
    fn seed_bytes(&mut self, vm_id: VmId) -> Option<Vec<u8>>;
}

pub(crate) fn spec(start: bool) -> VmSpec {
    VmSpec {
        // Not a valid name for the coordinator, but this layer must still keep it inert.
        display_name: "a'><x/>&".into(),
        cpu: 2,
        memory_mib: 256,
        disk_gb: 1,
        start,
        image: None,
        seed: None,
    }
}

fn state_of(host: &mut impl Hypervisor, vm_id: VmId) -> PowerState {
    host.find_vm(vm_id).unwrap().expect("domain exists").state
}

fn has_volume(host: &mut impl ContractHost, vm_id: VmId) -> bool {
    host.volume_names().contains(&volume_name(vm_id))
}

fn ids(snapshots: &[ObservedSnapshot]) -> Vec<SnapshotId> {
    let mut ids: Vec<_> = snapshots.iter().map(|s| s.snapshot_id).collect();
    ids.sort();
    ids
}

pub(crate) fn a_vm_goes_through_its_whole_life(host: &mut impl ContractHost) {
    use AlreadyThere::Refuse;
    let vm_id = VmId::new_random();
    let foreign = host.foreign_domain();

    let created = host.create_vm(vm_id, &spec(true)).unwrap();
    assert_eq!(created.state, PowerState::Running);
    assert_eq!(created.vm_id, Some(vm_id));
    assert_eq!(created.uuid, vm_id.to_string());
    assert_eq!(created.name, domain_name(vm_id));
    assert_eq!((created.cpu, created.memory_mib), (2, 256));
    assert!(has_volume(host, vm_id));
    let listed = host.list_domains().unwrap();
    assert!(listed.iter().any(|domain| domain.vm_id == Some(vm_id)));
    // A domain the product did not create is listed too, as unmanaged.
    assert!(
        listed
            .iter()
            .any(|domain| domain.uuid == foreign.to_string() && domain.vm_id.is_none())
    );

    // Every operation answers with the domain as it left it.
    let stopped = host.request_shutdown(vm_id, Refuse).unwrap();
    assert_eq!(stopped.state, PowerState::Stopped);
    assert_eq!(state_of(host, vm_id), PowerState::Stopped);
    assert_eq!(
        host.start_vm(vm_id, Refuse).unwrap().state,
        PowerState::Running
    );
    assert_eq!(state_of(host, vm_id), PowerState::Running);
    assert_eq!(host.reboot_vm(vm_id).unwrap().state, PowerState::Running);
    assert_eq!(
        host.force_stop(vm_id, Refuse).unwrap().state,
        PowerState::Stopped
    );
    assert_eq!(state_of(host, vm_id), PowerState::Stopped);
    host.start_vm(vm_id, Refuse).unwrap();

    let deleted = host.delete_vm(vm_id).unwrap().expect("the domain existed");
    assert_eq!(deleted.uuid, vm_id.to_string());
    assert_eq!(host.find_vm(vm_id).unwrap(), None);
    assert!(!has_volume(host, vm_id));
    // Deleting again is fine.
    assert_eq!(host.delete_vm(vm_id).unwrap(), None);
}

/// A running VM's serial console can be reached; a stopped VM, an unknown one and a domain
/// the product did not create have none (the screen is checked where a host has one: on
/// real QEMU, end to end).
pub(crate) fn serial_consoles_are_there_while_a_vm_runs(host: &mut impl ContractHost) {
    use super::{ConsoleAccess, ConsoleKind};
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    match host.open_console(vm_id, ConsoleKind::Serial).unwrap() {
        ConsoleAccess::Socket(path) => {
            assert!(
                path.to_string_lossy().contains(&vm_id.to_string()),
                "{path:?}"
            )
        }
        ConsoleAccess::Connected(_) => {}
    }
    host.force_stop(vm_id, AlreadyThere::Refuse).unwrap();
    let stopped = host.open_console(vm_id, ConsoleKind::Serial).unwrap_err();
    assert_eq!(stopped.kind, FailureKind::Conflict, "{stopped}");
    assert!(stopped.message.contains("stopped"), "{stopped}");
    let unknown = host
        .open_console(VmId::new_random(), ConsoleKind::Vnc)
        .unwrap_err();
    assert_eq!(unknown.kind, FailureKind::NotFound, "{unknown}");
    let foreign = host.foreign_domain();
    let foreign = host.open_console(foreign, ConsoleKind::Serial).unwrap_err();
    assert_eq!(foreign.kind, FailureKind::Conflict, "{foreign}");
}

pub(crate) fn refused_operations_say_why(host: &mut impl ContractHost) {
    use AlreadyThere::Refuse;
    let vm_id = VmId::new_random();
    for error in [
        host.start_vm(vm_id, Refuse).unwrap_err(),
        host.request_shutdown(vm_id, Refuse).unwrap_err(),
        host.force_stop(vm_id, Refuse).unwrap_err(),
        host.reboot_vm(vm_id).unwrap_err(),
    ] {
        assert_eq!(error.kind, FailureKind::NotFound, "{error}");
        assert!(error.message.contains(&vm_id.to_string()), "{error}");
    }
    host.create_vm(vm_id, &spec(false)).unwrap();
    assert_eq!(state_of(host, vm_id), PowerState::Stopped);
    for error in [
        host.force_stop(vm_id, Refuse).unwrap_err(),
        host.reboot_vm(vm_id).unwrap_err(),
        host.request_shutdown(vm_id, Refuse).unwrap_err(),
    ] {
        assert_eq!(error.kind, FailureKind::Conflict, "{error}");
    }
    host.start_vm(vm_id, Refuse).unwrap();
    let again = host.start_vm(vm_id, Refuse).unwrap_err();
    assert_eq!(again.kind, FailureKind::Conflict, "{again}");

    host.pause(vm_id);
    assert_eq!(state_of(host, vm_id), PowerState::Paused);
    for error in [
        host.start_vm(vm_id, AlreadyThere::Accept).unwrap_err(),
        host.request_shutdown(vm_id, AlreadyThere::Accept)
            .unwrap_err(),
        host.reboot_vm(vm_id).unwrap_err(),
    ] {
        assert_eq!(error.kind, FailureKind::Conflict, "{error}");
    }
    assert_eq!(state_of(host, vm_id), PowerState::Paused);
    host.delete_vm(vm_id).unwrap();
}

/// The repeat of an interrupted operation reports what is there instead of refusing it.
pub(crate) fn repeats_that_got_there_are_reported(host: &mut impl ContractHost) {
    use AlreadyThere::Accept;
    let vm_id = VmId::new_random();
    let created = host.create_vm(vm_id, &spec(true)).unwrap();
    // A second create of the same VM finds it; there is still one domain.
    let again = host.create_vm(vm_id, &spec(false)).unwrap();
    assert_eq!(again.uuid, created.uuid);
    assert_eq!(again.state, PowerState::Running, "left as it was");
    let domains = host.list_domains().unwrap();
    assert_eq!(
        domains
            .iter()
            .filter(|domain| domain.uuid == vm_id.to_string())
            .count(),
        1
    );

    assert_eq!(
        host.start_vm(vm_id, Accept).unwrap().state,
        PowerState::Running
    );
    host.force_stop(vm_id, Accept).unwrap();
    for stopped in [
        host.request_shutdown(vm_id, Accept).unwrap(),
        host.force_stop(vm_id, Accept).unwrap(),
    ] {
        assert_eq!(stopped.state, PowerState::Stopped);
    }
    host.delete_vm(vm_id).unwrap();
}

pub(crate) fn a_failed_create_leaves_nothing_behind(host: &mut impl ContractHost) {
    let vm_id = VmId::new_random();
    // A domain without vCPUs is refused.
    let bad = VmSpec {
        cpu: 0,
        ..spec(true)
    };
    let error = host.create_vm(vm_id, &bad).unwrap_err();
    assert!(error.message.contains(&domain_name(vm_id)), "{error}");
    assert_eq!(host.find_vm(vm_id).unwrap(), None);
    assert!(!has_volume(host, vm_id));

    // A leftover disk of an earlier attempt is replaced, not in the way.
    host.make_volume(&volume_name(vm_id));
    host.create_vm(vm_id, &spec(false)).unwrap();
    assert!(has_volume(host, vm_id));
    host.delete_vm(vm_id).unwrap();
}

pub(crate) fn foreign_domains_are_left_alone(host: &mut impl ContractHost) {
    use AlreadyThere::{Accept, Refuse};
    let foreign = host.foreign_domain();
    let snapshot_id = SnapshotId::new_random();
    for error in [
        host.create_vm(foreign, &spec(true)).unwrap_err(),
        host.start_vm(foreign, Accept).unwrap_err(),
        host.request_shutdown(foreign, Refuse).unwrap_err(),
        host.force_stop(foreign, Refuse).unwrap_err(),
        host.reboot_vm(foreign).unwrap_err(),
        host.delete_vm(foreign).unwrap_err(),
        host.create_snapshot(foreign, snapshot_id).unwrap_err(),
        host.restore_snapshot(foreign, snapshot_id).unwrap_err(),
        host.delete_snapshot(foreign, snapshot_id).unwrap_err(),
    ] {
        assert_eq!(error.kind, FailureKind::Conflict, "{error}");
    }
    let still = host.find_vm(foreign).unwrap().expect("still there");
    assert_eq!(still.state, PowerState::Running);
    assert_eq!(still.vm_id, None);
}

pub(crate) fn snapshots_are_taken_restored_and_deleted(host: &mut impl ContractHost) {
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    let while_running = SnapshotId::new_random();
    let taken = host.create_snapshot(vm_id, while_running).unwrap();
    assert_eq!(taken.snapshot.snapshot_id, while_running);
    assert_eq!(taken.snapshot.taken_in_state, PowerState::Running);
    assert!(taken.snapshot.created_at_unix > 1_600_000_000, "{taken:?}");
    assert_eq!(taken.domain.state, PowerState::Running);
    let running_snapshot = taken.snapshot;

    host.force_stop(vm_id, AlreadyThere::Refuse).unwrap();
    let while_stopped = SnapshotId::new_random();
    let taken = host.create_snapshot(vm_id, while_stopped).unwrap();
    assert_eq!(taken.snapshot.taken_in_state, PowerState::Stopped);
    assert_eq!(taken.domain.state, PowerState::Stopped);

    let listed = host.list_snapshots(vm_id).unwrap();
    assert_eq!(
        ids(&listed),
        ids(&[running_snapshot.clone(), taken.snapshot.clone()])
    );
    assert!(
        listed
            .windows(2)
            .all(|pair| pair[0].created_at_unix <= pair[1].created_at_unix)
    );

    // Stopped now; the running snapshot brings it back running, and back again.
    let restored = host.restore_snapshot(vm_id, while_running).unwrap();
    assert_eq!(restored.state, PowerState::Running);
    assert_eq!(state_of(host, vm_id), PowerState::Running);
    let restored = host.restore_snapshot(vm_id, while_stopped).unwrap();
    assert_eq!(restored.state, PowerState::Stopped);
    host.start_vm(vm_id, AlreadyThere::Refuse).unwrap();
    let restored = host.restore_snapshot(vm_id, while_running).unwrap();
    assert_eq!(restored.state, PowerState::Running);

    let after_delete = host.delete_snapshot(vm_id, while_running).unwrap();
    assert_eq!(after_delete.state, PowerState::Running);
    assert_eq!(ids(&host.list_snapshots(vm_id).unwrap()), [while_stopped]);
    // Gone already: still fine.
    host.delete_snapshot(vm_id, while_running).unwrap();

    // A VM with snapshots can be deleted.
    host.delete_vm(vm_id).unwrap();
    assert_eq!(host.find_vm(vm_id).unwrap(), None);
}

pub(crate) fn refused_snapshot_operations_say_why(host: &mut impl ContractHost) {
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    let unknown = SnapshotId::new_random();
    let error = host.restore_snapshot(vm_id, unknown).unwrap_err();
    assert_eq!(error.kind, FailureKind::NotFound, "{error}");
    assert!(error.message.contains(&unknown.to_string()), "{error}");

    let other_vm = VmId::new_random();
    for error in [
        host.create_snapshot(other_vm, unknown).unwrap_err(),
        host.restore_snapshot(other_vm, unknown).unwrap_err(),
        host.delete_snapshot(other_vm, unknown).unwrap_err(),
        host.list_snapshots(other_vm).unwrap_err(),
    ] {
        assert_eq!(error.kind, FailureKind::NotFound, "{error}");
    }

    // Taking the same snapshot again returns the first, never a second one.
    let taken = host.create_snapshot(vm_id, unknown).unwrap();
    let again = host.create_snapshot(vm_id, unknown).unwrap();
    assert_eq!(again.snapshot, taken.snapshot);
    assert_eq!(host.list_snapshots(vm_id).unwrap(), [taken.snapshot]);

    host.pause(vm_id);
    let paused = host
        .create_snapshot(vm_id, SnapshotId::new_random())
        .unwrap_err();
    assert_eq!(paused.kind, FailureKind::Conflict, "{paused}");
    assert!(paused.message.contains("paused"), "{paused}");
    assert_eq!(host.list_snapshots(vm_id).unwrap().len(), 1);
    host.delete_vm(vm_id).unwrap();
}

pub(crate) fn only_product_volumes_without_a_domain_are_swept(host: &mut impl ContractHost) {
    let orphan = VmId::new_random();
    host.make_volume(&volume_name(orphan));
    let someone_elses = format!("someone-elses-{}.qcow2", VmId::new_random());
    host.make_volume(&someone_elses);
    let alive = VmId::new_random();
    host.create_vm(alive, &spec(false)).unwrap();

    let removed = host.remove_orphan_volumes().unwrap();
    assert_eq!(removed, vec![volume_name(orphan)]);
    let left = host.volume_names();
    assert!(left.contains(&someone_elses), "{left:?}");
    assert!(left.contains(&volume_name(alive)), "{left:?}");
    assert!(!left.contains(&volume_name(orphan)), "{left:?}");
    assert!(host.remove_orphan_volumes().unwrap().is_empty());
    host.delete_vm(alive).unwrap();
}

/// The next hint of `stream`, or `None` after a generous wait (libvirt delivers events on
/// its own thread, within milliseconds).
fn next_hint(stream: &mut HintStream) -> Option<Hint> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.recv())
            .await
            .ok()
            .flatten()
    })
}

/// Hints until one names `vm_id` (other domains' hints are skipped).
fn hinted(stream: &mut HintStream, vm_id: VmId) -> bool {
    let uuid = vm_id.to_string();
    while let Some(hint) = next_hint(stream) {
        if hint == (Hint::DomainChanged { uuid: uuid.clone() }) {
            return true;
        }
    }
    false
}

pub(crate) fn changes_are_hinted_on_the_stream_handed_out(host: &mut impl ContractHost) {
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(false)).unwrap();
    let (outlet, mut streams) = hints::outlet();
    host.send_hints_to(outlet).unwrap();
    let mut stream = streams
        .streams_now()
        .pop()
        .expect("the current connection's stream is handed out at once");

    // Through the agent's own operations, and behind its back.
    host.start_vm(vm_id, AlreadyThere::Refuse).unwrap();
    assert!(hinted(&mut stream, vm_id), "no hint after a start");
    host.pause(vm_id);
    assert!(hinted(&mut stream, vm_id), "no hint after a pause");
    host.delete_vm(vm_id).unwrap();
    assert!(hinted(&mut stream, vm_id), "no hint after a delete");
}

/// A raw image of 1 MiB in `dir` (a file the host is to take as a base).
pub(crate) fn stage_raw_image(dir: &Path, fill: u8) -> PathBuf {
    let path = dir.join(format!("staged-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, vec![fill; 1024 * 1024]).unwrap();
    path
}

pub(crate) fn image_spec(image: BaseImage, seed: &[u8]) -> VmSpec {
    VmSpec {
        display_name: "from-image".into(),
        cpu: 1,
        memory_mib: 128,
        disk_gb: 1,
        start: false,
        image: Some(image),
        seed: Some(seed.to_vec()),
    }
}

/// Import, overlays with seeds, eviction refused while in use, deletion keeping the base.
pub(crate) fn vms_are_made_from_cached_images(host: &mut impl ImageContractHost, dir: &Path) {
    let image = BaseImage {
        image_id: ImageId::new_random(),
        format: ImageFormat::Raw,
    };
    host.image_support().unwrap();
    let staged = stage_raw_image(dir, 0x5a);
    let cached = host.import_image(&image, &staged).unwrap();
    assert_eq!(cached.image_id, image.image_id);
    assert_eq!(cached.virtual_size_bytes, 1024 * 1024);
    assert!(!staged.exists(), "the host takes the staged file");
    assert!(
        host.cached_images()
            .unwrap()
            .iter()
            .any(|base| base.image_id == image.image_id)
    );
    assert!(
        host.volume_names()
            .contains(&image_volume_name(image.image_id))
    );

    let (first, second) = (VmId::new_random(), VmId::new_random());
    let seed = b"a seed volume's bytes".repeat(100);
    for vm_id in [first, second] {
        let created = host.create_vm(vm_id, &image_spec(image, &seed)).unwrap();
        assert_eq!(created.state, PowerState::Stopped);
        assert_eq!(host.backing_image(vm_id), Some(image.image_id));
        assert_eq!(host.seed_bytes(vm_id).as_deref(), Some(&seed[..]));
        let volumes = host.volume_names();
        assert!(volumes.contains(&volume_name(vm_id)), "{volumes:?}");
        assert!(volumes.contains(&seed_volume_name(vm_id)), "{volumes:?}");
    }
    assert_eq!(
        host.evict_image(image.image_id).unwrap(),
        Eviction::InUse { disks: 2 }
    );
    host.delete_vm(first).unwrap();
    let volumes = host.volume_names();
    assert!(!volumes.contains(&volume_name(first)), "{volumes:?}");
    assert!(!volumes.contains(&seed_volume_name(first)), "{volumes:?}");
    assert!(
        volumes.contains(&image_volume_name(image.image_id)),
        "the base stays"
    );
    assert_eq!(
        host.evict_image(image.image_id).unwrap(),
        Eviction::InUse { disks: 1 }
    );
    // A stale copy in use is not replaced.
    let again = stage_raw_image(dir, 0x11);
    let refused = host.import_image(&image, &again).unwrap_err();
    assert_eq!(refused.kind, FailureKind::Conflict, "{refused}");
    let _ = std::fs::remove_file(&again);
    host.delete_vm(second).unwrap();
    assert_eq!(host.evict_image(image.image_id).unwrap(), Eviction::Removed);
    assert!(
        !host
            .volume_names()
            .contains(&image_volume_name(image.image_id))
    );
    assert!(host.cached_images().unwrap().is_empty());
    assert_eq!(
        host.evict_image(image.image_id).unwrap(),
        Eviction::NotCached
    );
}

pub(crate) fn creates_from_images_that_cannot_be_used_leave_nothing(
    host: &mut impl ImageContractHost,
    dir: &Path,
) {
    let vm_id = VmId::new_random();
    let missing = BaseImage {
        image_id: ImageId::new_random(),
        format: ImageFormat::Raw,
    };
    let error = host
        .create_vm(vm_id, &image_spec(missing, b"seed"))
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::Unavailable, "{error}");
    assert!(error.message.contains("not cached"), "{error}");

    // An image larger than the disk is refused, naming it.
    let image = BaseImage {
        image_id: ImageId::new_random(),
        format: ImageFormat::Raw,
    };
    let staged = dir.join(format!("big-{}", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&staged).unwrap();
    file.set_len(2 * BYTES_PER_GIB).unwrap();
    drop(file);
    host.import_image(&image, &staged).unwrap();
    let error = host
        .create_vm(vm_id, &image_spec(image, b"seed"))
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::Invalid, "{error}");
    assert!(
        error.message.contains(&image.image_id.to_string()),
        "{error}"
    );
    assert_eq!(host.find_vm(vm_id).unwrap(), None);
    let volumes = host.volume_names();
    assert!(!volumes.contains(&volume_name(vm_id)), "{volumes:?}");
    assert!(!volumes.contains(&seed_volume_name(vm_id)), "{volumes:?}");
    assert_eq!(host.evict_image(image.image_id).unwrap(), Eviction::Removed);
}

pub(crate) fn orphan_seeds_are_swept_and_cached_images_never(
    host: &mut impl ImageContractHost,
    dir: &Path,
) {
    let image = BaseImage {
        image_id: ImageId::new_random(),
        format: ImageFormat::Raw,
    };
    host.import_image(&image, &stage_raw_image(dir, 1)).unwrap();
    let orphan = VmId::new_random();
    host.make_volume(&seed_volume_name(orphan));
    let alive = VmId::new_random();
    host.create_vm(alive, &image_spec(image, b"seed")).unwrap();
    let removed = host.remove_orphan_volumes().unwrap();
    assert_eq!(removed, vec![seed_volume_name(orphan)]);
    let left = host.volume_names();
    for kept in [
        image_volume_name(image.image_id),
        volume_name(alive),
        seed_volume_name(alive),
    ] {
        assert!(left.contains(&kept), "{kept} in {left:?}");
    }
    host.delete_vm(alive).unwrap();
    assert_eq!(host.evict_image(image.image_id).unwrap(), Eviction::Removed);
}

/// In user mode every VM gets a port of its own from the range, recorded with the domain.
pub(crate) fn user_mode_vms_get_ssh_ports_of_their_own(host: &mut impl ContractHost) {
    let vms: Vec<VmId> = (0..3).map(|_| VmId::new_random()).collect();
    let mut ports = HashSet::new();
    for vm_id in &vms {
        let created = host.create_vm(*vm_id, &spec(false)).unwrap();
        let ssh = created.ssh.expect("user mode forwards SSH");
        assert_eq!(ssh.address, "127.0.0.1");
        assert!((22000..=22999).contains(&ssh.port), "{ssh:?}");
        assert!(ports.insert(ssh.port), "port {} given twice", ssh.port);
        // Read back from the host: the port is the domain's.
        assert_eq!(host.find_vm(*vm_id).unwrap().unwrap().ssh, Some(ssh));
    }
    let listed = host.list_domains().unwrap();
    for vm_id in &vms {
        let domain = listed.iter().find(|d| d.vm_id == Some(*vm_id)).unwrap();
        assert!(ports.contains(&domain.ssh.as_ref().unwrap().port));
        assert!(
            domain.addresses.is_empty(),
            "a stopped guest has no addresses"
        );
    }
    for vm_id in vms {
        host.delete_vm(vm_id).unwrap();
    }
}

/// Declares one `#[test]` per image contract test, each on a fresh host from `$open` with
/// a directory for staged files from `$dir`.
macro_rules! image_contract_tests {
    ($open:expr, $dir:expr) => {
        mod image_contract {
            use super::*;
            use crate::hypervisor::contract_tests as contract;

            #[test]
            fn vms_are_made_from_cached_images() {
                let dir = $dir;
                contract::vms_are_made_from_cached_images(&mut $open, dir.path());
            }
            #[test]
            fn creates_from_images_that_cannot_be_used_leave_nothing() {
                let dir = $dir;
                contract::creates_from_images_that_cannot_be_used_leave_nothing(
                    &mut $open,
                    dir.path(),
                );
            }
            #[test]
            fn orphan_seeds_are_swept_and_cached_images_never() {
                let dir = $dir;
                contract::orphan_seeds_are_swept_and_cached_images_never(&mut $open, dir.path());
            }
        }
    };
}
pub(crate) use image_contract_tests;

/// Declares one `#[test]` per contract test, each on a fresh host from `$open`.
macro_rules! contract_tests {
    ($open:expr) => {
        mod contract {
            use super::*;
            use crate::hypervisor::contract_tests as contract;

            #[test]
            fn a_vm_goes_through_its_whole_life() {
                contract::a_vm_goes_through_its_whole_life(&mut $open);
            }
            #[test]
            fn refused_operations_say_why() {
                contract::refused_operations_say_why(&mut $open);
            }
            #[test]
            fn repeats_that_got_there_are_reported() {
                contract::repeats_that_got_there_are_reported(&mut $open);
            }
            #[test]
            fn a_failed_create_leaves_nothing_behind() {
                contract::a_failed_create_leaves_nothing_behind(&mut $open);
            }
            #[test]
            fn foreign_domains_are_left_alone() {
                contract::foreign_domains_are_left_alone(&mut $open);
            }
            #[test]
            fn snapshots_are_taken_restored_and_deleted() {
                contract::snapshots_are_taken_restored_and_deleted(&mut $open);
            }
            #[test]
            fn refused_snapshot_operations_say_why() {
                contract::refused_snapshot_operations_say_why(&mut $open);
            }
            #[test]
            fn only_product_volumes_without_a_domain_are_swept() {
                contract::only_product_volumes_without_a_domain_are_swept(&mut $open);
            }
            #[test]
            fn user_mode_vms_get_ssh_ports_of_their_own() {
                contract::user_mode_vms_get_ssh_ports_of_their_own(&mut $open);
            }
            #[test]
            fn changes_are_hinted_on_the_stream_handed_out() {
                contract::changes_are_hinted_on_the_stream_handed_out(&mut $open);
            }
            #[test]
            fn serial_consoles_are_there_while_a_vm_runs() {
                contract::serial_consoles_are_there_while_a_vm_runs(&mut $open);
            }
        }
    };
}
pub(crate) use contract_tests;
