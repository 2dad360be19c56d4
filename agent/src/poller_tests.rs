//! The poller while libvirt is away: the test driver behind a switch that makes every call
//! fail the way a dead libvirtd connection does. While it is off the poller says libvirt is
//! not connected (heartbeats carry that) and reports nothing (no VM is claimed gone); once
//! it is back, the next poll resynchronises and publishes what changed meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use vmm_proto::PowerState;
use vmm_shared::{SnapshotId, VmId};

use crate::hypervisor::libvirt::LibvirtHost;
use crate::hypervisor::libvirt::test_driver_tests::open_test_host;
use crate::hypervisor::{
    FailureKind, HostFacts, Hypervisor, HypervisorError, HypervisorHandle, ObservedDomain,
    ObservedSnapshot, VmSpec,
};
use crate::poller::StatePoller;
use crate::state::StateTracker;

/// The test driver, unreachable while `down` is set.
struct SwitchableHost {
    inner: LibvirtHost,
    down: Arc<AtomicBool>,
}

impl SwitchableHost {
    fn up(&mut self) -> Result<&mut LibvirtHost, HypervisorError> {
        if self.down.load(Ordering::SeqCst) {
            Err(HypervisorError::new(
                FailureKind::Unavailable,
                "listing domains: End of file while reading data: Input/output error",
            ))
        } else {
            Ok(&mut self.inner)
        }
    }
}

impl Hypervisor for SwitchableHost {
    fn host_facts(&mut self) -> Result<HostFacts, HypervisorError> {
        self.up()?.host_facts()
    }
    fn list_domains(&mut self) -> Result<Vec<ObservedDomain>, HypervisorError> {
        self.up()?.list_domains()
    }
    fn find_vm(&mut self, vm_id: VmId) -> Result<Option<ObservedDomain>, HypervisorError> {
        self.up()?.find_vm(vm_id)
    }
    fn create_vm(&mut self, vm_id: VmId, spec: &VmSpec) -> Result<ObservedDomain, HypervisorError> {
        self.up()?.create_vm(vm_id, spec)
    }
    fn start_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError> {
        self.up()?.start_vm(vm_id)
    }
    fn request_shutdown(&mut self, vm_id: VmId) -> Result<(), HypervisorError> {
        self.up()?.request_shutdown(vm_id)
    }
    fn force_stop(&mut self, vm_id: VmId) -> Result<(), HypervisorError> {
        // The host's own tools still work while the agent's connection is down.
        self.inner.force_stop(vm_id)
    }
    fn reboot_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError> {
        self.up()?.reboot_vm(vm_id)
    }
    fn delete_vm(&mut self, vm_id: VmId) -> Result<(), HypervisorError> {
        self.up()?.delete_vm(vm_id)
    }
    fn list_snapshots(&mut self, vm_id: VmId) -> Result<Vec<ObservedSnapshot>, HypervisorError> {
        self.up()?.list_snapshots(vm_id)
    }
    fn find_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<Option<ObservedSnapshot>, HypervisorError> {
        self.up()?.find_snapshot(vm_id, snapshot_id)
    }
    fn create_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<ObservedSnapshot, HypervisorError> {
        self.up()?.create_snapshot(vm_id, snapshot_id)
    }
    fn restore_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<(), HypervisorError> {
        self.up()?.restore_snapshot(vm_id, snapshot_id)
    }
    fn delete_snapshot(
        &mut self,
        vm_id: VmId,
        snapshot_id: SnapshotId,
    ) -> Result<(), HypervisorError> {
        self.up()?.delete_snapshot(vm_id, snapshot_id)
    }
}

#[tokio::test]
async fn while_libvirt_is_away_nothing_is_claimed_and_the_next_poll_resynchronises() {
    let down = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&down);
    let hypervisor = HypervisorHandle::spawn(move || {
        Ok(SwitchableHost {
            inner: open_test_host(),
            down: switch,
        })
    })
    .await
    .unwrap();
    let vm_id = VmId::new_random();
    let spec = VmSpec {
        display_name: "steady".into(),
        cpu: 1,
        memory_mib: 128,
        disk_gb: 1,
        start: true,
    };
    hypervisor
        .call(move |hv| hv.create_vm(vm_id, &spec))
        .await
        .unwrap();
    let poller = StatePoller::new(hypervisor.clone(), Arc::new(StateTracker::new()));
    let mut changes = poller.subscribe();
    poller.poll_once().await.unwrap();
    assert!(poller.libvirt_connected());
    while changes.try_recv().is_ok() {}

    down.store(true, Ordering::SeqCst);
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
    assert_eq!(before.state(), PowerState::Running);

    // Changed behind the agent's back while it could not look.
    hypervisor
        .call(move |hv| hv.force_stop(vm_id))
        .await
        .unwrap();
    down.store(false, Ordering::SeqCst);
    poller.poll_once().await.unwrap();
    assert!(poller.libvirt_connected());
    let change = changes.try_recv().expect("the resync reports the change");
    assert_eq!(change.vm_id, vm_id.to_string());
    assert_eq!(change.state(), PowerState::Stopped);
    assert!(change.generation > before.generation);
}
