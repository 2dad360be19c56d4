//! The executor with its journal, on an in-memory host: repeats after a restart are
//! answered from the journal without acting, interrupted operations resume without doubling
//! anything, and reused operation IDs are refused.
//!
//! A "restart" is a new executor over the same journal file and the same host.

use std::sync::Arc;
use std::time::Duration;

use vmm_proto::command::Action;
use vmm_proto::{DeleteVm, ErrorKind, ForceStopVm, PowerState, RebootVm, StartVm, StopVm};
use vmm_shared::{OperationKind, VmId};

use super::CommandExecutor;
use super::tests::{command, create, domain_of, error_kind_of};
use crate::hypervisor::memory::MemoryHost;
use crate::hypervisor::{AlreadyThere, HypervisorHandle, VmSpec};
use crate::journal::Journal;
use crate::state::{StateTracker, wire_power_state};

struct Host {
    memory: MemoryHost,
    hypervisor: HypervisorHandle,
    dir: tempfile::TempDir,
}

impl Host {
    async fn new() -> Self {
        let memory = MemoryHost::new();
        Self {
            hypervisor: memory.spawn_handle().await.unwrap(),
            memory,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An executor as a freshly started agent has it: a new tracker, the journal reopened.
    fn start_agent(&self) -> CommandExecutor {
        CommandExecutor::new(
            self.hypervisor.clone(),
            Arc::new(StateTracker::new()),
            Duration::from_secs(2),
            Journal::open(self.dir.path()).unwrap(),
            Arc::new(crate::images::ImageCache::new(
                self.hypervisor.clone(),
                Arc::new(crate::images::NoImageSource),
                self.dir.path().join("image-cache"),
            )),
        )
    }

    fn journal(&self) -> Journal {
        Journal::open(self.dir.path()).unwrap()
    }

    async fn state(&self, vm_id: VmId) -> Option<PowerState> {
        self.hypervisor
            .call(move |hv| hv.find_vm(vm_id))
            .await
            .unwrap()
            .map(|domain| wire_power_state(domain.state))
    }
}

#[tokio::test]
async fn a_finished_operation_is_answered_from_the_journal_after_a_restart() {
    let host = Host::new().await;
    let vm_id = VmId::new_random();
    let first = host.start_agent();
    let created = first
        .execute(command("op-create", vm_id, create("web")))
        .await;
    assert_eq!(domain_of(&created).state(), PowerState::Running);
    drop(first);

    let restarted = host.start_agent();
    let deleted = restarted
        .execute(command("op-delete", vm_id, Action::Delete(DeleteVm {})))
        .await;
    assert_eq!(domain_of(&deleted).state(), PowerState::Absent);

    // The create re-sent after the restart gets its stored answer and makes nothing.
    let repeated = restarted
        .execute(command("op-create", vm_id, create("web")))
        .await;
    assert_eq!(repeated, created, "byte-for-byte the first answer");
    assert_eq!(host.state(vm_id).await, None, "the create was not redone");
}

#[tokio::test]
async fn an_interrupted_create_is_carried_out_when_nothing_exists() {
    let host = Host::new().await;
    let vm_id = VmId::new_random();
    // The earlier run journaled the create and died before making anything.
    host.journal()
        .accept("op-create", &vm_id.to_string(), OperationKind::Create)
        .await
        .unwrap();

    let agent = host.start_agent();
    let result = agent
        .execute(command("op-create", vm_id, create("web")))
        .await;
    assert_eq!(domain_of(&result).state(), PowerState::Running);
    assert_eq!(host.state(vm_id).await, Some(PowerState::Running));
    // Now journaled as done: a further repeat is the same answer.
    let again = agent
        .execute(command("op-create", vm_id, create("web")))
        .await;
    assert_eq!(again, result);
}

#[tokio::test]
async fn an_interrupted_create_whose_domain_exists_reports_it_without_a_second_domain() {
    let host = Host::new().await;
    let vm_id = VmId::new_random();
    host.journal()
        .accept("op-create", &vm_id.to_string(), OperationKind::Create)
        .await
        .unwrap();
    // The earlier run got as far as defining the domain (stopped), then died.
    let spec = VmSpec {
        display_name: "web".into(),
        cpu: 1,
        memory_mib: 128,
        disk_gb: 1,
        start: false,
        image: None,
        seed: None,
    };
    host.hypervisor
        .call(move |hv| hv.create_vm(vm_id, &spec))
        .await
        .unwrap();

    let result = host
        .start_agent()
        .execute(command("op-create", vm_id, create("web")))
        .await;
    let report = domain_of(&result);
    assert_eq!(report.vm_id, vm_id.to_string());
    assert_eq!(report.state(), PowerState::Stopped, "reported as it is");
    let domains = host.hypervisor.call(|hv| hv.list_domains()).await.unwrap();
    assert_eq!(
        domains
            .iter()
            .filter(|domain| domain.uuid == vm_id.to_string())
            .count(),
        1
    );
}

#[tokio::test]
async fn interrupted_power_operations_that_got_there_are_done_not_conflicts() {
    let host = Host::new().await;
    let vm_id = VmId::new_random();
    let agent = host.start_agent();
    agent.execute(command("op-1", vm_id, create("web"))).await;

    // A stop that the earlier run carried out but never answered.
    let journal = host.journal();
    journal
        .accept("op-stop", &vm_id.to_string(), OperationKind::Stop)
        .await
        .unwrap();
    host.hypervisor
        .call(move |hv| hv.force_stop(vm_id, AlreadyThere::Refuse))
        .await
        .unwrap();
    let agent = host.start_agent();
    let stopped = agent
        .execute(command("op-stop", vm_id, Action::Stop(StopVm {})))
        .await;
    assert_eq!(domain_of(&stopped).state(), PowerState::Stopped);
    // A fresh stop of a stopped VM is still a conflict.
    let fresh = agent
        .execute(command("op-stop-2", vm_id, Action::Stop(StopVm {})))
        .await;
    assert_eq!(error_kind_of(&fresh), ErrorKind::Conflict);

    journal
        .accept("op-start", &vm_id.to_string(), OperationKind::Start)
        .await
        .unwrap();
    host.hypervisor
        .call(move |hv| hv.start_vm(vm_id, AlreadyThere::Refuse))
        .await
        .unwrap();
    let started = host
        .start_agent()
        .execute(command("op-start", vm_id, Action::Start(StartVm {})))
        .await;
    assert_eq!(domain_of(&started).state(), PowerState::Running);

    // An interrupted force stop that had not happened yet is carried out.
    journal
        .accept("op-force", &vm_id.to_string(), OperationKind::ForceStop)
        .await
        .unwrap();
    let forced = host
        .start_agent()
        .execute(command(
            "op-force",
            vm_id,
            Action::ForceStop(ForceStopVm {}),
        ))
        .await;
    assert_eq!(domain_of(&forced).state(), PowerState::Stopped);
    assert_eq!(host.state(vm_id).await, Some(PowerState::Stopped));
}

#[tokio::test]
async fn an_interrupted_reboot_reboots_again_and_an_interrupted_start_does_not_start_twice() {
    let host = Host::new().await;
    let vm_id = VmId::new_random();
    host.start_agent()
        .execute(command("op-1", vm_id, create("web")))
        .await;
    let boots = host.memory.boots(vm_id).unwrap();

    // The earlier run accepted each operation, then died; a restarted agent gets the repeat.
    for (action, boots_after) in [
        // Rebooted again: at least once, and a second reboot doubles nothing.
        (Action::Reboot(RebootVm {}), boots + 1),
        // Started already: reported, the guest not started twice.
        (Action::Start(StartVm {}), boots + 1),
    ] {
        let kind = super::operation_kind(&action);
        let operation_id = format!("op-{kind}");
        host.journal()
            .accept(&operation_id, &vm_id.to_string(), kind)
            .await
            .unwrap();
        let repeated = host
            .start_agent()
            .execute(command(&operation_id, vm_id, action))
            .await;
        assert_eq!(domain_of(&repeated).state(), PowerState::Running, "{kind}");
        assert_eq!(host.memory.boots(vm_id), Some(boots_after), "{kind}");
    }
}

#[tokio::test]
async fn an_operation_id_reused_for_another_command_is_refused() {
    let host = Host::new().await;
    let agent = host.start_agent();
    let vm_id = VmId::new_random();
    agent.execute(command("op-1", vm_id, create("web"))).await;

    let other_vm = agent
        .execute(command("op-1", VmId::new_random(), create("web")))
        .await;
    assert_eq!(error_kind_of(&other_vm), ErrorKind::Invalid);
    let other_kind = agent
        .execute(command("op-1", vm_id, Action::Delete(DeleteVm {})))
        .await;
    assert_eq!(error_kind_of(&other_kind), ErrorKind::Invalid);
    assert_eq!(host.state(vm_id).await, Some(PowerState::Running));
}

#[tokio::test]
async fn concurrent_deliveries_of_one_operation_act_once() {
    let host = Host::new().await;
    let agent = Arc::new(host.start_agent());
    let vm_id = VmId::new_random();
    let mut deliveries = Vec::new();
    for _ in 0..8 {
        let agent = Arc::clone(&agent);
        deliveries.push(tokio::spawn(async move {
            agent.execute(command("op-1", vm_id, create("web"))).await
        }));
    }
    let mut results = Vec::new();
    for delivery in deliveries {
        results.push(delivery.await.unwrap());
    }
    assert!(
        results.iter().all(|result| *result == results[0]),
        "every delivery gets the one answer: {results:?}"
    );
    assert_eq!(domain_of(&results[0]).state(), PowerState::Running);
}
