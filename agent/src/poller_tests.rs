//! The poller on an in-memory host, including while the connection to the host is down:
//! the poller then says libvirt is not connected (heartbeats carry that) and reports
//! nothing (no VM is claimed gone); once it is back, the next poll resynchronises and
//! publishes what changed meanwhile. Then the hints, as libvirt's events give them: one
//! read of the domain that changed, a full poll after dropped hints, a closed connection
//! noticed without waiting for the poll interval.

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

// ---- hints: the poller reads what changed at once, and polls everything when it must ----

use std::time::Duration;

use tokio::sync::broadcast;
use vmm_proto::DomainReport;

use crate::hypervisor::hints;
use crate::hypervisor::memory::Call;

/// Longer than any look takes; the poll interval of these tests is far longer still, so
/// whatever arrives within it came through the hints.
const WAIT: Duration = Duration::from_secs(10);
const NO_POLL: Duration = Duration::from_secs(3600);

/// The next published change, or a failure after [`WAIT`].
async fn next_change(changes: &mut broadcast::Receiver<DomainReport>) -> DomainReport {
    tokio::time::timeout(WAIT, changes.recv())
        .await
        .expect("a change is published in time")
        .expect("the channel is open")
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A host with one running VM, hints turned on, and the poller running with polls an hour
/// apart. Returns once the start-up poll is done (the first tick's and the first stream's
/// are one when they come together, two otherwise).
async fn watched_host() -> (
    MemoryHost,
    Arc<StatePoller>,
    VmId,
    broadcast::Receiver<DomainReport>,
) {
    let (host, poller, vm_id) = poller_on_a_host_with_a_vm().await;
    let poller = Arc::new(poller);
    let mut changes = poller.subscribe();
    let (outlet, streams) = hints::outlet();
    poller
        .hypervisor
        .call(|hv| hv.send_hints_to(outlet))
        .await
        .unwrap();
    let running = Arc::clone(&poller);
    tokio::spawn(async move { running.run(NO_POLL, streams).await });
    assert_eq!(next_change(&mut changes).await.vm_id, vm_id.to_string());
    settle(&host).await;
    (host, poller, vm_id, changes)
}

fn calls_of(host: &MemoryHost, call: Call) -> u64 {
    host.calls().get(&call).copied().unwrap_or(0)
}

/// Waits until the host has seen no call for a while: the poller is idle.
async fn settle(host: &MemoryHost) {
    let mut last = host.total_calls();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = host.total_calls();
        if now == last {
            return;
        }
        last = now;
    }
}

#[tokio::test]
async fn a_hint_makes_the_poller_read_that_domain_and_only_it() {
    let (host, _poller, vm_id, mut changes) = watched_host().await;
    let polls = calls_of(&host, Call::ListDomains);
    let foreign = host.add_foreign_domain("hand-made", PowerState::Running);
    let appeared = next_change(&mut changes).await;
    assert_eq!(appeared.domain_name, "hand-made");

    host.set_state(vm_id, PowerState::Crashed, "crashed: panicked");
    let crashed = next_change(&mut changes).await;
    assert_eq!(crashed.vm_id, vm_id.to_string());
    assert_eq!(crashed.state(), vmm_proto::PowerState::Crashed);
    assert!(crashed.generation > appeared.generation);

    host.remove_domain(foreign);
    let gone = next_change(&mut changes).await;
    assert_eq!(gone.domain_name, "hand-made");
    assert_eq!(gone.state(), vmm_proto::PowerState::Absent);

    assert_eq!(calls_of(&host, Call::FindVm), 3, "one read per hint");
    assert_eq!(
        calls_of(&host, Call::ListDomains),
        polls,
        "no poll since start-up"
    );
}

#[tokio::test]
async fn hints_queued_together_are_one_read_of_each_domain() {
    let (host, _poller, vm_id, mut changes) = watched_host().await;
    let finds_before = calls_of(&host, Call::FindVm);
    // Two changes (as a destroy's pair of events) before the poller gets to run: this
    // runtime has one thread, and the test does not yield between them.
    host.set_state(vm_id, PowerState::Paused, "");
    host.set_state(vm_id, PowerState::Stopped, "");
    let change = next_change(&mut changes).await;
    assert_eq!(change.state(), vmm_proto::PowerState::Stopped);
    until("the read to finish", || {
        calls_of(&host, Call::FindVm) > finds_before
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(calls_of(&host, Call::FindVm), finds_before + 1);
    assert!(
        changes.try_recv().is_err(),
        "the paused state was never seen"
    );
}

#[tokio::test]
async fn dropped_hints_make_the_poller_read_every_domain() {
    let host = MemoryHost::new();
    host.limit_hints(1);
    let hypervisor = host.spawn_handle().await.unwrap();
    let poller = Arc::new(StatePoller::new(hypervisor, Arc::new(StateTracker::new())));
    let mut changes = poller.subscribe();
    let (outlet, streams) = hints::outlet();
    poller
        .hypervisor
        .call(|hv| hv.send_hints_to(outlet))
        .await
        .unwrap();
    let running = Arc::clone(&poller);
    tokio::spawn(async move { running.run(NO_POLL, streams).await });
    until("the start-up poll", || {
        calls_of(&host, Call::ListDomains) > 0
    })
    .await;
    settle(&host).await;
    let polls = calls_of(&host, Call::ListDomains);

    // Three changes into a queue of one: two hints are dropped.
    for name in ["one", "two", "three"] {
        host.add_foreign_domain(name, PowerState::Running);
    }
    let mut seen: Vec<String> = Vec::new();
    for _ in 0..3 {
        seen.push(next_change(&mut changes).await.domain_name);
    }
    seen.sort();
    assert_eq!(seen, ["one", "three", "two"]);
    assert_eq!(
        calls_of(&host, Call::ListDomains),
        polls + 1,
        "the drop made it poll"
    );
}

#[tokio::test]
async fn a_closed_connection_is_noticed_at_once_and_the_next_one_resynchronises() {
    let (host, poller, vm_id, mut changes) = watched_host().await;
    assert!(poller.libvirt_connected());

    host.disconnect();
    until("the poller to see libvirt gone", || {
        !poller.libvirt_connected()
    })
    .await;
    // Changed while the agent could not look: no hint can tell.
    host.set_state(vm_id, PowerState::Stopped, "");
    assert!(changes.try_recv().is_err(), "nothing claimed while away");

    host.reconnect();
    let change = next_change(&mut changes).await;
    assert_eq!(change.vm_id, vm_id.to_string());
    assert_eq!(change.state(), vmm_proto::PowerState::Stopped);
    assert!(poller.libvirt_connected());
}

/// The same path on libvirt (its test driver): libvirt's lifecycle event, on its event
/// loop thread, makes the poller read the domain.
#[tokio::test]
async fn a_libvirt_event_makes_the_poller_read_the_domain() {
    let hypervisor = crate::hypervisor::HypervisorHandle::spawn(|| {
        Ok(crate::hypervisor::libvirt::test_driver_tests::open_test_host())
    })
    .await
    .unwrap();
    let vm_id = VmId::new_random();
    let spec = VmSpec {
        display_name: "evented".into(),
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
    let poller = Arc::new(StatePoller::new(
        hypervisor.clone(),
        Arc::new(StateTracker::new()),
    ));
    let mut changes = poller.subscribe();
    let (outlet, streams) = hints::outlet();
    hypervisor
        .call(|hv| hv.send_hints_to(outlet))
        .await
        .unwrap();
    let running = Arc::clone(&poller);
    tokio::spawn(async move { running.run(NO_POLL, streams).await });
    let ours = |report: &DomainReport| report.vm_id == vm_id.to_string();
    loop {
        if ours(&next_change(&mut changes).await) {
            break;
        }
    }

    // Stopped without the tracker being told: only the event can make the poller look.
    hypervisor
        .call(move |hv| hv.force_stop(vm_id, crate::hypervisor::AlreadyThere::Refuse))
        .await
        .unwrap();
    let stopped = loop {
        let change = next_change(&mut changes).await;
        if ours(&change) {
            break change;
        }
    };
    assert_eq!(stopped.state(), vmm_proto::PowerState::Stopped);
    hypervisor
        .call(move |hv| hv.delete_vm(vm_id))
        .await
        .unwrap();
    let gone = loop {
        let change = next_change(&mut changes).await;
        if ours(&change) {
            break change;
        }
    };
    assert_eq!(gone.state(), vmm_proto::PowerState::Absent);
}

/// A guest's lease comes without a lifecycle event: with the poll an hour away, the
/// address watch reads the running VM again and publishes its addresses; once it has them,
/// it is not read for them any more.
#[tokio::test]
async fn addresses_are_watched_for_between_polls() {
    let host = MemoryHost::new();
    let hypervisor = host.spawn_handle().await.unwrap();
    let vm_id = VmId::new_random();
    let spec = VmSpec {
        display_name: "leased".into(),
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
    let poller = Arc::new(
        StatePoller::new(hypervisor, Arc::new(StateTracker::new()))
            .watching_addresses(Duration::from_millis(50)),
    );
    let mut changes = poller.subscribe();
    let (_outlet, streams) = hints::outlet();
    let watching = Arc::clone(&poller);
    let watcher = tokio::spawn(async move { watching.run(NO_POLL, streams).await });
    let first = next_change(&mut changes).await;
    assert!(first.addresses.is_empty());

    host.set_addresses(vm_id, &["192.0.2.80"]);
    let leased = next_change(&mut changes).await;
    assert_eq!(leased.addresses, ["192.0.2.80"]);
    assert!(leased.generation > first.generation);
    let finds = calls_of(&host, Call::FindVm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls_of(&host, Call::FindVm),
        finds,
        "a VM with addresses is left to the poll"
    );
    watcher.abort();
}
