//! The snapshot commands: take, restore and delete a VM's snapshots.
//!
//! They run under the VM's lock and are remembered by operation ID like every other command
//! (see the parent module). The snapshot ID is the coordinator's and is also the snapshot's
//! name in libvirt. Every result carries the domain as the command left it, with a fresh
//! generation, so the coordinator learns e.g. that a restore stopped or started the VM.

use vmm_shared::{SnapshotId, VmId};

use super::{CommandExecutor, CommandFailure, Done};
use crate::hypervisor::ObservedDomain;
use crate::state::snapshot_report;

impl CommandExecutor {
    /// Takes the snapshot. A snapshot of that ID that already exists was taken by an earlier
    /// delivery of this command whose answer was lost (the agent restarted, say): it is
    /// answered as taken, not taken twice.
    pub(super) async fn create_snapshot(
        &self,
        vm_id: VmId,
        snapshot_id: &str,
    ) -> Result<Done, CommandFailure> {
        let snapshot_id = parse_snapshot_id(snapshot_id)?;
        let taken = self
            .hypervisor
            .call(move |hv| hv.create_snapshot(vm_id, snapshot_id))
            .await?;
        Ok(Done {
            domain: self.tracker.record_result(&taken.domain),
            snapshot: Some(snapshot_report(&taken.snapshot)),
        })
    }

    /// Reverts the VM to the snapshot; it ends up running or stopped as it was when the
    /// snapshot was taken.
    pub(super) async fn restore_snapshot(
        &self,
        vm_id: VmId,
        snapshot_id: &str,
    ) -> Result<ObservedDomain, CommandFailure> {
        let snapshot_id = parse_snapshot_id(snapshot_id)?;
        Ok(self
            .hypervisor
            .call(move |hv| hv.restore_snapshot(vm_id, snapshot_id))
            .await?)
    }

    /// Deletes the snapshot and its data; one that is already gone is fine.
    pub(super) async fn delete_snapshot(
        &self,
        vm_id: VmId,
        snapshot_id: &str,
    ) -> Result<ObservedDomain, CommandFailure> {
        let snapshot_id = parse_snapshot_id(snapshot_id)?;
        Ok(self
            .hypervisor
            .call(move |hv| hv.delete_snapshot(vm_id, snapshot_id))
            .await?)
    }
}

fn parse_snapshot_id(raw: &str) -> Result<SnapshotId, CommandFailure> {
    raw.parse()
        .map_err(|_| CommandFailure::invalid(format!("snapshot_id {raw:?} is not a UUID")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vmm_proto::command::Action;
    use vmm_proto::{
        CommandResult, CreateSnapshot, DeleteSnapshot, DeleteVm, ErrorKind, ForceStopVm,
        PowerState, RestoreSnapshot, SnapshotReport, StartVm,
    };

    use super::*;
    use crate::commands::tests::{command, create, domain_of, error_kind_of, memory_executor};
    use crate::poller::StatePoller;

    fn create_snapshot(snapshot_id: SnapshotId) -> Action {
        Action::CreateSnapshot(CreateSnapshot {
            snapshot_id: snapshot_id.to_string(),
        })
    }

    fn restore_snapshot(snapshot_id: SnapshotId) -> Action {
        Action::RestoreSnapshot(RestoreSnapshot {
            snapshot_id: snapshot_id.to_string(),
        })
    }

    fn delete_snapshot(snapshot_id: SnapshotId) -> Action {
        Action::DeleteSnapshot(DeleteSnapshot {
            snapshot_id: snapshot_id.to_string(),
        })
    }

    fn snapshot_of(result: &CommandResult) -> &SnapshotReport {
        result
            .snapshot
            .as_ref()
            .unwrap_or_else(|| panic!("expected a snapshot, got {result:?}"))
    }

    #[tokio::test]
    async fn snapshot_commands_take_restore_and_delete() {
        let (executor, _host) = memory_executor().await;
        let vm_id = VmId::new_random();
        let created = executor.execute(command("op-1", vm_id, create("db"))).await;
        let mut last_generation = domain_of(&created).generation;

        let while_running = SnapshotId::new_random();
        let taken = executor
            .execute(command("op-2", vm_id, create_snapshot(while_running)))
            .await;
        assert_eq!(domain_of(&taken).state(), PowerState::Running);
        assert!(domain_of(&taken).generation > last_generation);
        last_generation = domain_of(&taken).generation;
        let snapshot = snapshot_of(&taken);
        assert_eq!(snapshot.snapshot_id, while_running.to_string());
        assert_eq!(snapshot.taken_in_state(), PowerState::Running);
        assert!(snapshot.created_at_unix > 1_600_000_000);

        // Repeated delivery: the stored answer. A new operation for the same snapshot (its
        // answer lost with an agent restart, say) finds it taken and says so.
        let repeated = executor
            .execute(command("op-2", vm_id, create_snapshot(while_running)))
            .await;
        assert_eq!(repeated, taken);
        let retaken = executor
            .execute(command("op-3", vm_id, create_snapshot(while_running)))
            .await;
        assert_eq!(snapshot_of(&retaken), snapshot);
        assert!(domain_of(&retaken).generation > last_generation);

        let stopped = executor
            .execute(command("op-4", vm_id, Action::ForceStop(ForceStopVm {})))
            .await;
        assert_eq!(domain_of(&stopped).state(), PowerState::Stopped);
        let while_stopped = SnapshotId::new_random();
        let taken_stopped = executor
            .execute(command("op-5", vm_id, create_snapshot(while_stopped)))
            .await;
        assert_eq!(
            snapshot_of(&taken_stopped).taken_in_state(),
            PowerState::Stopped
        );
        assert_eq!(domain_of(&taken_stopped).state(), PowerState::Stopped);

        // Restores bring the VM back to the state each snapshot was taken in, and say so
        // with a newer generation.
        let restored = executor
            .execute(command("op-6", vm_id, restore_snapshot(while_running)))
            .await;
        assert_eq!(domain_of(&restored).state(), PowerState::Running);
        assert!(domain_of(&restored).generation > domain_of(&taken_stopped).generation);
        assert_eq!(restored.snapshot, None);
        let restored = executor
            .execute(command("op-7", vm_id, restore_snapshot(while_stopped)))
            .await;
        assert_eq!(domain_of(&restored).state(), PowerState::Stopped);

        let deleted = executor
            .execute(command("op-8", vm_id, delete_snapshot(while_running)))
            .await;
        assert_eq!(domain_of(&deleted).state(), PowerState::Stopped);
        let deleted_again = executor
            .execute(command("op-9", vm_id, delete_snapshot(while_running)))
            .await;
        assert_eq!(domain_of(&deleted_again).state(), PowerState::Stopped);
        let restore_deleted = executor
            .execute(command("op-10", vm_id, restore_snapshot(while_running)))
            .await;
        assert_eq!(error_kind_of(&restore_deleted), ErrorKind::NotFound);

        // A VM with a snapshot left is deleted, and its snapshots with it.
        let vm_deleted = executor
            .execute(command("op-11", vm_id, Action::Delete(DeleteVm {})))
            .await;
        assert_eq!(domain_of(&vm_deleted).state(), PowerState::Absent);
        let restore_gone = executor
            .execute(command("op-12", vm_id, restore_snapshot(while_stopped)))
            .await;
        assert_eq!(error_kind_of(&restore_gone), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn refused_snapshot_commands_map_to_error_kinds() {
        let (executor, _host) = memory_executor().await;
        let vm_id = VmId::new_random();
        let unknown_vm = VmId::new_random();
        let snapshot_id = SnapshotId::new_random();

        for (op, action) in [
            ("op-1", create_snapshot(snapshot_id)),
            ("op-2", restore_snapshot(snapshot_id)),
            ("op-3", delete_snapshot(snapshot_id)),
        ] {
            let result = executor.execute(command(op, unknown_vm, action)).await;
            assert_eq!(error_kind_of(&result), ErrorKind::NotFound, "{op}");
            assert_eq!(result.snapshot, None);
        }

        executor
            .execute(command("op-4", vm_id, create("app")))
            .await;
        for (op, action) in [
            ("op-5", Action::CreateSnapshot(CreateSnapshot::default())),
            (
                "op-6",
                Action::RestoreSnapshot(RestoreSnapshot {
                    snapshot_id: "not-a-uuid".into(),
                }),
            ),
            (
                "op-7",
                Action::DeleteSnapshot(DeleteSnapshot {
                    snapshot_id: "x'/><y".into(),
                }),
            ),
        ] {
            let result = executor.execute(command(op, vm_id, action)).await;
            assert_eq!(error_kind_of(&result), ErrorKind::Invalid, "{op}");
        }

        let unknown_snapshot = executor
            .execute(command("op-8", vm_id, restore_snapshot(snapshot_id)))
            .await;
        assert_eq!(error_kind_of(&unknown_snapshot), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn snapshot_commands_leave_foreign_domains_alone() {
        let (executor, host) = memory_executor().await;
        let foreign_uuid = host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let snapshot_id = SnapshotId::new_random();
        for (op, action) in [
            ("op-1", create_snapshot(snapshot_id)),
            ("op-2", restore_snapshot(snapshot_id)),
            ("op-3", delete_snapshot(snapshot_id)),
        ] {
            let result = executor.execute(command(op, foreign_uuid, action)).await;
            assert_eq!(error_kind_of(&result), ErrorKind::Conflict, "{op}");
        }
    }

    #[tokio::test]
    async fn the_inventory_carries_each_vms_snapshots() {
        let (executor, host) = memory_executor().await;
        host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        let poller = StatePoller::new(executor.hypervisor.clone(), Arc::clone(&executor.tracker));
        let (with_snapshots, without) = (VmId::new_random(), VmId::new_random());
        executor
            .execute(command("op-1", with_snapshots, create("a")))
            .await;
        executor
            .execute(command("op-2", without, create("b")))
            .await;
        let (first, second) = (SnapshotId::new_random(), SnapshotId::new_random());
        executor
            .execute(command("op-3", with_snapshots, create_snapshot(first)))
            .await;
        executor
            .execute(command(
                "op-4",
                with_snapshots,
                Action::ForceStop(ForceStopVm {}),
            ))
            .await;
        executor
            .execute(command("op-5", with_snapshots, create_snapshot(second)))
            .await;
        executor
            .execute(command("op-6", with_snapshots, Action::Start(StartVm {})))
            .await;

        let inventory = poller.inventory().await.unwrap();
        let report_of = |vm_id: VmId| {
            inventory
                .iter()
                .find(|report| report.vm_id == vm_id.to_string())
                .unwrap_or_else(|| panic!("{vm_id} is not in {inventory:?}"))
        };
        let mut snapshots: Vec<(String, PowerState)> = report_of(with_snapshots)
            .snapshots
            .iter()
            .map(|snapshot| (snapshot.snapshot_id.clone(), snapshot.taken_in_state()))
            .collect();
        snapshots.sort();
        let mut expected = vec![
            (first.to_string(), PowerState::Running),
            (second.to_string(), PowerState::Stopped),
        ];
        expected.sort();
        assert_eq!(snapshots, expected);
        assert!(report_of(without).snapshots.is_empty());
        // The driver's own domain is not the product's: no snapshot listing for it.
        let foreign = inventory
            .iter()
            .find(|report| report.domain_name == "test")
            .unwrap();
        assert!(foreign.vm_id.is_empty() && foreign.snapshots.is_empty());
        // State changes after the inventory carry no snapshots.
        assert!(
            executor
                .tracker
                .reports()
                .iter()
                .all(|report| report.snapshots.is_empty())
        );
    }
}
