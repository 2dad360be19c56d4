//! What every [`Hypervisor`] implementation must do, written once and run against each:
//! libvirt's test driver (in [`super::libvirt`]) and the in-memory host (in
//! [`super::memory`]). A behaviour the in-memory host fakes differently from libvirt fails
//! here.

use vmm_shared::{SnapshotId, VmId};

use super::hints::{self, Hint, HintStream};
use super::{
    AlreadyThere, FailureKind, Hypervisor, ObservedSnapshot, PowerState, VmSpec, domain_name,
    volume_name,
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

pub(crate) fn spec(start: bool) -> VmSpec {
    VmSpec {
        // Not a valid name for the coordinator, but this layer must still keep it inert.
        display_name: "a'><x/>&".into(),
        cpu: 2,
        memory_mib: 256,
        disk_gb: 1,
        start,
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
            fn changes_are_hinted_on_the_stream_handed_out() {
                contract::changes_are_hinted_on_the_stream_handed_out(&mut $open);
            }
        }
    };
}
pub(crate) use contract_tests;
