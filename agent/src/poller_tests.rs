//! The poller on an in-memory host, including while the connection to the host is down:
//! the poller then says libvirt is not connected (heartbeats carry that) and reports
//! nothing (no VM is claimed gone); once it is back, the next poll resynchronises and
//! publishes what changed meanwhile.

use std::sync::Arc;

use vmm_shared::VmId;

use crate::hypervisor::memory::MemoryHost;
use crate::hypervisor::{PowerState, VmSpec};
use crate::poller::StatePoller;
use crate::state::StateTracker;

/// An in-memory host with one running VM, and a poller on it.
async fn poller_on_a_host_with_a_vm() -> (MemoryHost, StatePoller, VmId) {
    let host = MemoryHost::new();
    let hypervisor = host.spawn_handle().await.unwrap();
    let vm_id = VmId::new_random();
    let spec = VmSpec {
        display_name: "steady".into(),
        cpu: 1,
        memory_mib: 128,
        disk_gb: 1,
        start: true,
        image: None,
        seed: None,
    };
    hypervisor
        .call(move |hv| hv.create_vm(vm_id, &spec))
        .await
        .unwrap();
    let poller = StatePoller::new(hypervisor, Arc::new(StateTracker::new()));
    (host, poller, vm_id)
}

#[tokio::test]
async fn changes_behind_the_agents_back_are_published_once() {
    let (host, poller, vm_id) = poller_on_a_host_with_a_vm().await;
    let mut changes = poller.subscribe();
    let foreign = host.add_foreign_domain("hand-made", PowerState::Stopped);

    poller.poll_once().await.unwrap();
    let mut first: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok()).collect();
    first.sort_by(|a, b| a.domain_name.cmp(&b.domain_name));
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(first[0].domain_name, "hand-made");
    assert!(first[0].vm_id.is_empty());
    assert_eq!(first[1].vm_id, vm_id.to_string());
    poller.poll_once().await.unwrap();
    assert!(changes.try_recv().is_err(), "nothing changed, nothing sent");

    // The guest crashed; the foreign domain was removed by hand.
    host.set_state(vm_id, PowerState::Crashed, "crashed: panicked");
    host.remove_domain(foreign);
    poller.poll_once().await.unwrap();
    let mut second: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok()).collect();
    second.sort_by(|a, b| a.domain_name.cmp(&b.domain_name));
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0].state(), vmm_proto::PowerState::Absent);
    assert_eq!(second[1].state(), vmm_proto::PowerState::Crashed);
    assert_eq!(second[1].detail, "crashed: panicked");
    assert!(second[1].generation > first[1].generation);
}

#[tokio::test]
async fn while_libvirt_is_away_nothing_is_claimed_and_the_next_poll_resynchronises() {
    let (host, poller, vm_id) = poller_on_a_host_with_a_vm().await;
    let mut changes = poller.subscribe();
    poller.poll_once().await.unwrap();
    assert!(poller.libvirt_connected());
    while changes.try_recv().is_ok() {}

    host.disconnect();
    for _ in 0..3 {
        assert!(poller.poll_once().await.is_err());
        assert!(
            !poller.libvirt_connected(),
            "heartbeats say libvirt is down"
        );
    }
    assert!(
        changes.try_recv().is_err(),
        "nothing is reported while libvirt is away: no VM is claimed gone"
    );
    let before = poller
        .tracker()
        .reports()
        .into_iter()
        .find(|report| report.vm_id == vm_id.to_string())
        .unwrap();
    assert_eq!(before.state(), vmm_proto::PowerState::Running);

    // Changed behind the agent's back while it could not look.
    host.set_state(vm_id, PowerState::Stopped, "");
    host.reconnect();
    poller.poll_once().await.unwrap();
    assert!(poller.libvirt_connected());
    let change = changes.try_recv().expect("the resync reports the change");
    assert_eq!(change.vm_id, vm_id.to_string());
    assert_eq!(change.state(), vmm_proto::PowerState::Stopped);
    assert!(change.generation > before.generation);
}

#[tokio::test]
async fn the_inventory_fails_rather_than_leave_snapshots_out() {
    let (host, poller, _) = poller_on_a_host_with_a_vm().await;
    host.fail_next(
        crate::hypervisor::memory::Call::ListSnapshots,
        crate::hypervisor::FailureKind::Unavailable,
    );
    assert!(poller.inventory().await.is_err());
    let inventory = poller.inventory().await.unwrap();
    assert_eq!(inventory.len(), 1);
    assert!(inventory[0].snapshots.is_empty());
}

#[tokio::test]
async fn a_guest_getting_addresses_is_published_with_a_new_generation() {
    let (host, poller, vm_id) = poller_on_a_host_with_a_vm().await;
    let mut changes = poller.subscribe();
    poller.poll_once().await.unwrap();
    let first = changes.try_recv().unwrap();
    assert!(first.addresses.is_empty());
    let ssh = first.ssh.clone().expect("user mode forwards SSH");

    // The guest's DHCP client got a lease.
    host.set_addresses(vm_id, &["192.0.2.44"]);
    poller.poll_once().await.unwrap();
    let second = changes.try_recv().unwrap();
    assert_eq!(second.addresses, ["192.0.2.44"]);
    assert_eq!(second.ssh, Some(ssh));
    assert!(second.generation > first.generation);
    poller.poll_once().await.unwrap();
    assert!(
        changes.try_recv().is_err(),
        "the same addresses are no change"
    );
}
