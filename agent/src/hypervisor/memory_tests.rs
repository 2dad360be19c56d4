//! The in-memory host: the contract every implementation keeps, then what only it offers
//! (changes behind the agent's back, failure injection, call counts, statistics).

use super::*;
use crate::hypervisor::contract_tests::{
    ContractHost, ImageContractHost, contract_tests, image_contract_tests, spec,
};

impl ContractHost for MemoryHost {
    fn pause(&mut self, vm_id: VmId) {
        assert!(self.set_state(vm_id, PowerState::Paused, ""));
    }
    fn volume_names(&mut self) -> Vec<String> {
        self.volumes()
    }
    fn make_volume(&mut self, name: &str) {
        self.add_volume(name, BYTES_PER_GIB);
    }
    fn foreign_domain(&mut self) -> VmId {
        self.add_foreign_domain("test", PowerState::Running)
    }
}

impl ImageContractHost for MemoryHost {
    fn backing_image(&mut self, vm_id: VmId) -> Option<ImageId> {
        self.base_image_of(vm_id)
    }
    fn seed_bytes(&mut self, vm_id: VmId) -> Option<Vec<u8>> {
        self.seed(vm_id)
    }
}

contract_tests!(MemoryHost::new());
image_contract_tests!(MemoryHost::new(), tempfile::tempdir().unwrap());

#[test]
fn addresses_a_guest_gets_are_shown_while_it_runs() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    assert!(host.set_addresses(vm_id, &["192.0.2.20", "192.0.2.10"]));
    assert_eq!(
        host.find_vm(vm_id).unwrap().unwrap().addresses,
        ["192.0.2.10", "192.0.2.20"]
    );
    host.force_stop(vm_id, AlreadyThere::Refuse).unwrap();
    assert!(host.find_vm(vm_id).unwrap().unwrap().addresses.is_empty());
}

#[test]
fn other_network_modes_forward_no_ssh() {
    for mode in [
        NetworkMode::Network("default".into()),
        NetworkMode::Bridge("br0".into()),
    ] {
        let mut host = MemoryHost::with_network(mode);
        let created = host.create_vm(VmId::new_random(), &spec(false)).unwrap();
        assert_eq!(created.ssh, None);
    }
    let full = NetworkMode::User {
        forward_address: "127.0.0.1".parse().unwrap(),
        ports: crate::hypervisor::PortRange::new(2222, 2222).unwrap(),
    };
    let mut host = MemoryHost::with_network(full);
    host.create_vm(VmId::new_random(), &spec(false)).unwrap();
    let error = host
        .create_vm(VmId::new_random(), &spec(false))
        .unwrap_err();
    assert_eq!(error.kind, FailureKind::Unavailable);
    assert!(error.message.contains("SSH_FORWARD_PORTS"), "{error}");
}

#[test]
fn clones_share_a_host_and_new_hosts_are_separate() {
    let host = MemoryHost::new();
    let mut agent_side = host.clone();
    let vm_id = VmId::new_random();
    agent_side.create_vm(vm_id, &spec(true)).unwrap();
    assert_eq!(
        host.domain(vm_id).map(|domain| domain.state),
        Some(PowerState::Running)
    );
    assert_eq!(MemoryHost::new().domain(vm_id), None);
    assert_eq!(
        MemoryHost::new().host_facts().unwrap(),
        MemoryHost::default_facts()
    );
    let facts = HostFacts {
        cpus: 3,
        ..MemoryHost::default_facts()
    };
    assert_eq!(
        MemoryHost::with_facts(facts.clone()).host_facts().unwrap(),
        facts
    );
}

#[test]
fn an_injected_failure_fails_the_next_call_of_that_method_and_changes_nothing() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(false)).unwrap();
    host.fail_next(Call::StartVm, FailureKind::Unavailable);
    host.fail_next(Call::StartVm, FailureKind::Internal);

    // Other methods are not affected.
    assert!(host.find_vm(vm_id).unwrap().is_some());
    let first = host.start_vm(vm_id, AlreadyThere::Refuse).unwrap_err();
    assert_eq!(first.kind, FailureKind::Unavailable);
    let second = host.start_vm(vm_id, AlreadyThere::Refuse).unwrap_err();
    assert_eq!(second.kind, FailureKind::Internal);
    assert_eq!(host.domain(vm_id).unwrap().state, PowerState::Stopped);
    assert_eq!(host.boots(vm_id), Some(0));

    let started = host.start_vm(vm_id, AlreadyThere::Refuse).unwrap();
    assert_eq!(started.state, PowerState::Running);
    assert_eq!(host.boots(vm_id), Some(1));

    // A failed create leaves nothing.
    let other = VmId::new_random();
    host.fail_next(Call::CreateVm, FailureKind::Unavailable);
    assert!(host.create_vm(other, &spec(true)).is_err());
    assert_eq!(host.domain(other), None);
    assert!(!host.volumes().contains(&volume_name(other)));
}

#[test]
fn a_dropped_connection_fails_every_call_until_it_is_back() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    host.disconnect();
    let failures = [
        host.host_facts().map(drop),
        host.list_domains().map(drop),
        host.find_vm(vm_id).map(drop),
        host.create_vm(VmId::new_random(), &spec(true)).map(drop),
        host.force_stop(vm_id, AlreadyThere::Refuse).map(drop),
        host.list_snapshots(vm_id).map(drop),
        host.remove_orphan_volumes().map(drop),
        host.stats_sample().map(drop),
    ];
    for failure in failures {
        assert_eq!(failure.unwrap_err().kind, FailureKind::Unavailable);
    }
    // The host itself goes on: the guest powers off meanwhile.
    assert!(host.set_state(vm_id, PowerState::Stopped, ""));
    host.reconnect();
    assert_eq!(
        host.find_vm(vm_id).unwrap().unwrap().state,
        PowerState::Stopped
    );
    assert_eq!(host.list_domains().unwrap().len(), 1);
}

#[test]
fn changes_behind_the_agents_back_are_seen() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();

    assert!(host.set_state(vm_id, PowerState::Crashed, "crashed: panicked"));
    let crashed = host.find_vm(vm_id).unwrap().unwrap();
    assert_eq!(crashed.state, PowerState::Crashed);
    assert_eq!(crashed.detail, "crashed: panicked");
    // A crashed guest can be started again, which clears the reason.
    let started = host.start_vm(vm_id, AlreadyThere::Refuse).unwrap();
    assert_eq!(
        (started.state, started.detail.as_str()),
        (PowerState::Running, "")
    );

    // Undefined by hand: the domain is gone, its disk stays until the start-up sweep.
    assert!(host.remove_domain(vm_id));
    assert!(!host.remove_domain(vm_id));
    assert_eq!(host.find_vm(vm_id).unwrap(), None);
    assert_eq!(host.volumes(), [volume_name(vm_id)]);
    assert_eq!(host.remove_orphan_volumes().unwrap(), [volume_name(vm_id)]);
    assert!(host.volumes().is_empty());
    assert!(!host.set_state(vm_id, PowerState::Running, ""));
}

#[test]
fn a_guest_that_ignores_the_power_button_keeps_running_until_forced() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    assert!(host.set_ignores_shutdown(vm_id, true));
    let asked = host.request_shutdown(vm_id, AlreadyThere::Refuse).unwrap();
    assert_eq!(asked.state, PowerState::Running);
    let forced = host.force_stop(vm_id, AlreadyThere::Refuse).unwrap();
    assert_eq!(forced.state, PowerState::Stopped);
}

#[test]
fn a_restore_brings_back_the_disk_and_the_state_the_snapshot_captured() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(false)).unwrap();
    assert!(host.write_disk(vm_id, 0xaa));
    let stopped = SnapshotId::new_random();
    host.create_snapshot(vm_id, stopped).unwrap();
    host.write_disk(vm_id, 0xbb);
    host.start_vm(vm_id, AlreadyThere::Refuse).unwrap();
    let running = SnapshotId::new_random();
    host.create_snapshot(vm_id, running).unwrap();
    host.write_disk(vm_id, 0xcc);

    let restored = host.restore_snapshot(vm_id, stopped).unwrap();
    assert_eq!(restored.state, PowerState::Stopped);
    assert_eq!(host.disk(vm_id), Some(0xaa));
    let boots = host.boots(vm_id).unwrap();
    let restored = host.restore_snapshot(vm_id, running).unwrap();
    assert_eq!(restored.state, PowerState::Running);
    assert_eq!(host.disk(vm_id), Some(0xbb));
    // A running checkpoint comes back as a fresh guest process, also from running.
    host.restore_snapshot(vm_id, running).unwrap();
    assert_eq!(host.boots(vm_id), Some(boots + 2));

    // Deleting a snapshot keeps the disk as it is.
    host.delete_snapshot(vm_id, stopped).unwrap();
    assert_eq!(host.disk(vm_id), Some(0xbb));
}

#[test]
fn statistics_describe_every_domain_and_the_pool() {
    let mut host = MemoryHost::new();
    let running = VmId::new_random();
    let stopped = VmId::new_random();
    host.create_vm(running, &spec(true)).unwrap();
    host.create_vm(stopped, &spec(false)).unwrap();
    let foreign = host.add_foreign_domain("hand-made", PowerState::Paused);

    let first = host.stats_sample().unwrap();
    assert_eq!(first.domains.len(), 3);
    let sample_of = |sample: &StatsSample, uuid: VmId| {
        sample
            .domains
            .iter()
            .find(|domain| domain.uuid == uuid.to_string())
            .cloned()
            .unwrap()
    };
    let vm = sample_of(&first, running);
    assert_eq!(vm.state, state_code::RUNNING);
    assert_eq!(vm.vm_id, Some(running));
    assert_eq!(vm.name, domain_name(running));
    assert_eq!(vm.virtual_cpus, Some(2));
    assert_eq!(vm.maximum_memory_kib, Some(256 * 1024));
    assert_eq!(vm.blocks[0].target_device, "vda");
    assert!(vm.blocks[0].source_file.ends_with(&volume_name(running)));
    assert!(vm.interfaces[0].target_device.starts_with("vnet"));
    let off = sample_of(&first, stopped);
    assert!(!off.is_active());
    assert_eq!((off.cpu_time_ns, off.blocks.len()), (None, 0));
    let paused = sample_of(&first, foreign);
    assert_eq!((paused.state, paused.vm_id), (state_code::PAUSED, None));

    let second = host.stats_sample().unwrap();
    assert!(
        sample_of(&second, running).cpu_time_ns > vm.cpu_time_ns,
        "a running guest uses CPU time"
    );
    assert_eq!(
        sample_of(&second, foreign).cpu_time_ns,
        paused.cpu_time_ns,
        "a paused one does not"
    );

    let pool = first.host.pool.unwrap();
    assert_eq!(pool.name, POOL_NAME);
    assert_eq!(pool.capacity_bytes, 1_000 * BYTES_PER_GIB);
    assert_eq!(pool.allocation_bytes, 2 * BYTES_PER_GIB);
    assert_eq!(
        pool.available_bytes,
        pool.capacity_bytes - pool.allocation_bytes
    );
    assert_eq!(first.host.cpus, Some(16));
    assert_eq!(first.host.memory_bytes, Some(64 << 30));
}

#[test]
fn every_call_is_counted_by_method() {
    let mut host = MemoryHost::new();
    let vm_id = VmId::new_random();
    host.create_vm(vm_id, &spec(true)).unwrap();
    host.reboot_vm(vm_id).unwrap();
    host.reboot_vm(vm_id).unwrap();
    let _ = host.start_vm(vm_id, AlreadyThere::Refuse);
    let calls = host.calls();
    assert_eq!(calls.get(&Call::CreateVm), Some(&1));
    assert_eq!(calls.get(&Call::RebootVm), Some(&2));
    assert_eq!(calls.get(&Call::StartVm), Some(&1), "a refused call counts");
    assert_eq!(host.total_calls(), 4);
    assert_eq!(host.boots(vm_id), Some(3));
}

/// The thread that serves the host runs on after a call panicked (the worker's promise),
/// and the host is whole.
#[tokio::test]
async fn the_host_survives_a_panicking_call_on_its_thread() {
    let host = MemoryHost::new();
    let handle = host.spawn_handle().await.unwrap();
    let vm_id = VmId::new_random();
    let panicked = handle
        .call(move |hv| -> Result<(), HypervisorError> {
            hv.create_vm(vm_id, &spec(true))?;
            panic!("a bug in the middle of a call")
        })
        .await;
    assert_eq!(panicked.unwrap_err().kind, FailureKind::Unavailable);
    let listed = handle.call(|hv| hv.list_domains()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(host.domain(vm_id).unwrap().state, PowerState::Running);
}
