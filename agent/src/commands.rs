//! Carries out the coordinator's commands on the hypervisor and turns the outcome into a
//! `CommandResult`.
//!
//! - Operations on one VM run one at a time (a lock per VM); different VMs run concurrently.
//! - An operation ID that was already carried out is answered with the stored result, without
//!   doing anything again (the coordinator re-sends commands after reconnects). The memory of
//!   finished operations is bounded and lives only as long as the process.
//! - Only domains the product created (carrying our metadata) are ever changed.
//! - Failures are mapped to the protocol's `ErrorKind` here, in one place.
//!
//! Snapshot commands live in [`snapshots`] and follow the same rules.

mod snapshots;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use vmm_proto::command::Action;
use vmm_proto::{
    Command, CommandError, CommandResult, CreateVm, DomainReport, ErrorKind, PowerState,
    SnapshotReport, command_result,
};
use vmm_shared::{VmId, VmSize, validate_resource_name};

use crate::hypervisor::domain_xml::domain_name;
use crate::hypervisor::{FailureKind, HypervisorError, HypervisorHandle, ObservedDomain, VmSpec};
use crate::state::StateTracker;

/// How many finished operations are remembered for answering repeats.
const REMEMBERED_OPERATIONS: usize = 1024;

/// How often `stop` looks whether the guest has powered off.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Executes commands; shared by every coordinator session of the process.
pub struct CommandExecutor {
    hypervisor: HypervisorHandle,
    tracker: Arc<StateTracker>,
    shutdown_timeout: Duration,
    vm_locks: Mutex<HashMap<VmId, Arc<tokio::sync::Mutex<()>>>>,
    finished: Mutex<FinishedOperations>,
}

impl CommandExecutor {
    pub fn new(
        hypervisor: HypervisorHandle,
        tracker: Arc<StateTracker>,
        shutdown_timeout: Duration,
    ) -> Self {
        Self {
            hypervisor,
            tracker,
            shutdown_timeout,
            vm_locks: Mutex::new(HashMap::new()),
            finished: Mutex::new(FinishedOperations::default()),
        }
    }

    /// Carries out one command (or recalls its earlier result) and says how it went.
    pub async fn execute(&self, command: Command) -> CommandResult {
        let operation_id = command.operation_id.clone();
        if let Some(result) = self.recall(&operation_id) {
            tracing::info!(%operation_id, "repeated operation; answering with its stored result");
            return result;
        }
        let vm_id = match command.vm_id.parse::<VmId>() {
            Ok(vm_id) => vm_id,
            Err(_) => {
                return failure_result(
                    operation_id,
                    &CommandFailure::invalid(format!("vm_id {:?} is not a UUID", command.vm_id)),
                );
            }
        };
        let Some(action) = command.action else {
            return failure_result(
                operation_id,
                &CommandFailure::invalid("the command names no action"),
            );
        };

        let vm_lock = self.vm_lock(vm_id);
        let guard = vm_lock.lock().await;
        // A repeat may have waited for the lock while the first delivery ran.
        let result = match self.recall(&operation_id) {
            Some(result) => result,
            None => {
                let action_name = action_name(&action);
                tracing::info!(%operation_id, %vm_id, action = action_name, "executing command");
                let outcome = self.run(vm_id, action).await;
                match &outcome {
                    Ok(done) => tracing::info!(
                        %operation_id, %vm_id, action = action_name,
                        state = ?done.domain.state(), "command done"
                    ),
                    Err(failure) => tracing::warn!(
                        %operation_id, %vm_id, action = action_name,
                        kind = ?failure.kind, message = %failure.message, "command failed"
                    ),
                }
                let result = match outcome {
                    Ok(done) => CommandResult {
                        operation_id: operation_id.clone(),
                        outcome: Some(command_result::Outcome::Domain(done.domain)),
                        snapshot: done.snapshot,
                    },
                    Err(failure) => failure_result(operation_id.clone(), &failure),
                };
                self.remember(&operation_id, &result);
                result
            }
        };
        drop(guard);
        drop(vm_lock);
        self.release_idle_vm_locks();
        result
    }

    async fn run(&self, vm_id: VmId, action: Action) -> Result<Done, CommandFailure> {
        let domain = match action {
            Action::Create(create) => self.create(vm_id, create).await,
            Action::Start(_) => {
                self.require_state(
                    vm_id,
                    |state| state != PowerState::Running,
                    "is already running",
                )
                .await?;
                self.hypervisor.call(move |hv| hv.start_vm(vm_id)).await?;
                self.report(vm_id).await
            }
            Action::Stop(_) => {
                self.require_running(vm_id).await?;
                self.stop(vm_id).await?;
                self.report(vm_id).await
            }
            Action::ForceStop(_) => {
                self.require_running(vm_id).await?;
                self.hypervisor.call(move |hv| hv.force_stop(vm_id)).await?;
                self.report(vm_id).await
            }
            Action::Reboot(_) => {
                self.require_running(vm_id).await?;
                self.hypervisor.call(move |hv| hv.reboot_vm(vm_id)).await?;
                self.report(vm_id).await
            }
            Action::Delete(_) => self.delete(vm_id).await,
            Action::CreateSnapshot(create) => {
                return self.create_snapshot(vm_id, &create.snapshot_id).await;
            }
            Action::RestoreSnapshot(restore) => {
                self.restore_snapshot(vm_id, &restore.snapshot_id).await
            }
            Action::DeleteSnapshot(delete) => {
                self.delete_snapshot(vm_id, &delete.snapshot_id).await
            }
        }?;
        Ok(Done {
            domain,
            snapshot: None,
        })
    }

    async fn create(&self, vm_id: VmId, create: CreateVm) -> Result<DomainReport, CommandFailure> {
        validate_resource_name(&create.name).map_err(CommandFailure::invalid)?;
        let size = VmSize {
            cpu: create.cpu,
            memory_mib: create.memory_mib,
            disk_gb: create.disk_gb,
        };
        size.validate()
            .map_err(|error| CommandFailure::invalid(error.to_string()))?;

        if let Some(existing) = self.hypervisor.call(move |hv| hv.find_vm(vm_id)).await? {
            if existing.vm_id == Some(vm_id) {
                // Created by an earlier delivery of this create (or a lost answer to it).
                return Ok(self.tracker.record_result(&existing));
            }
            return Err(CommandFailure::conflict(format!(
                "a domain with UUID {vm_id} already exists ({}) and was not created by this product",
                existing.name
            )));
        }
        let spec = VmSpec {
            display_name: create.name,
            cpu: size.cpu,
            memory_mib: size.memory_mib,
            disk_gb: size.disk_gb,
            start: create.start,
        };
        let created = self
            .hypervisor
            .call(move |hv| hv.create_vm(vm_id, &spec))
            .await?;
        Ok(self.tracker.record_result(&created))
    }

    /// ACPI shutdown, then destroy once the timeout has passed. The wait happens here, in
    /// async code, so the hypervisor thread stays free for other VMs.
    async fn stop(&self, vm_id: VmId) -> Result<(), CommandFailure> {
        self.hypervisor
            .call(move |hv| hv.request_shutdown(vm_id))
            .await?;
        let deadline = Instant::now() + self.shutdown_timeout;
        loop {
            let state = self.managed_domain(vm_id).await?.state;
            if state != PowerState::Running && state != PowerState::Paused {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::info!(%vm_id, timeout = ?self.shutdown_timeout, "guest did not power off; destroying it");
                return match self.hypervisor.call(move |hv| hv.force_stop(vm_id)).await {
                    // It powered off just now.
                    Err(error) if error.kind == FailureKind::Conflict => Ok(()),
                    other => other.map_err(CommandFailure::from),
                };
            }
            tokio::time::sleep(SHUTDOWN_POLL_INTERVAL).await;
        }
    }

    async fn delete(&self, vm_id: VmId) -> Result<DomainReport, CommandFailure> {
        let existing = self.hypervisor.call(move |hv| hv.find_vm(vm_id)).await?;
        if let Some(existing) = &existing {
            ensure_managed(vm_id, existing)?;
        }
        self.hypervisor.call(move |hv| hv.delete_vm(vm_id)).await?;
        let name = existing.map_or_else(|| domain_name(vm_id), |domain| domain.name);
        Ok(self
            .tracker
            .record_absent(&vm_id.to_string(), &vm_id.to_string(), &name))
    }

    async fn managed_domain(&self, vm_id: VmId) -> Result<ObservedDomain, CommandFailure> {
        let domain = self
            .hypervisor
            .call(move |hv| hv.find_vm(vm_id))
            .await?
            .ok_or_else(|| {
                CommandFailure::new(
                    ErrorKind::NotFound,
                    format!("VM {vm_id} does not exist on this host"),
                )
            })?;
        ensure_managed(vm_id, &domain)?;
        Ok(domain)
    }

    async fn require_state(
        &self,
        vm_id: VmId,
        allowed: impl FnOnce(PowerState) -> bool,
        refusal: &str,
    ) -> Result<(), CommandFailure> {
        let domain = self.managed_domain(vm_id).await?;
        if allowed(domain.state) {
            Ok(())
        } else {
            Err(CommandFailure::conflict(format!("VM {vm_id} {refusal}")))
        }
    }

    async fn require_running(&self, vm_id: VmId) -> Result<(), CommandFailure> {
        self.require_state(
            vm_id,
            |state| state == PowerState::Running,
            "is not running",
        )
        .await
    }

    /// The domain as it is now, recorded with a fresh generation.
    async fn report(&self, vm_id: VmId) -> Result<DomainReport, CommandFailure> {
        let domain = self.managed_domain(vm_id).await?;
        Ok(self.tracker.record_result(&domain))
    }

    fn vm_lock(&self, vm_id: VmId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .vm_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(locks.entry(vm_id).or_default())
    }

    /// Drops the locks of VMs no operation holds or waits for, so the map stays small.
    fn release_idle_vm_locks(&self) {
        let mut locks = self
            .vm_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    }

    fn recall(&self, operation_id: &str) -> Option<CommandResult> {
        let finished = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        finished.get(operation_id)
    }

    fn remember(&self, operation_id: &str, result: &CommandResult) {
        // Without an ID there is nothing to recognise a repeat by.
        if operation_id.is_empty() {
            return;
        }
        let mut finished = self
            .finished
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        finished.insert(operation_id.to_owned(), result.clone());
    }
}

fn ensure_managed(vm_id: VmId, domain: &ObservedDomain) -> Result<(), CommandFailure> {
    if domain.vm_id == Some(vm_id) {
        Ok(())
    } else {
        Err(CommandFailure::conflict(format!(
            "domain {} has UUID {vm_id} but was not created by this product; the agent leaves it alone",
            domain.name
        )))
    }
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::Create(_) => "create",
        Action::Start(_) => "start",
        Action::Stop(_) => "stop",
        Action::ForceStop(_) => "force_stop",
        Action::Reboot(_) => "reboot",
        Action::Delete(_) => "delete",
        Action::CreateSnapshot(_) => "create_snapshot",
        Action::RestoreSnapshot(_) => "restore_snapshot",
        Action::DeleteSnapshot(_) => "delete_snapshot",
    }
}

/// What a successful command produced.
#[derive(Debug)]
struct Done {
    /// The domain as the command left it.
    domain: DomainReport,
    /// The snapshot a `CreateSnapshot` made.
    snapshot: Option<SnapshotReport>,
}

/// Results of the last [`REMEMBERED_OPERATIONS`] operations, by operation ID.
#[derive(Default)]
struct FinishedOperations {
    results: HashMap<String, CommandResult>,
    order: VecDeque<String>,
}

impl FinishedOperations {
    fn get(&self, operation_id: &str) -> Option<CommandResult> {
        self.results.get(operation_id).cloned()
    }

    fn insert(&mut self, operation_id: String, result: CommandResult) {
        if self.results.insert(operation_id.clone(), result).is_none() {
            self.order.push_back(operation_id);
        }
        while self.order.len() > REMEMBERED_OPERATIONS {
            if let Some(oldest) = self.order.pop_front() {
                self.results.remove(&oldest);
            }
        }
    }
}

/// Why a command failed, in the protocol's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CommandFailure {
    kind: ErrorKind,
    message: String,
}

impl CommandFailure {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
}

impl From<HypervisorError> for CommandFailure {
    fn from(error: HypervisorError) -> Self {
        let kind = match error.kind {
            FailureKind::Conflict => ErrorKind::Conflict,
            FailureKind::NotFound => ErrorKind::NotFound,
            FailureKind::Invalid => ErrorKind::Invalid,
            FailureKind::Unavailable => ErrorKind::Unavailable,
            FailureKind::Internal => ErrorKind::Internal,
        };
        Self::new(kind, error.message)
    }
}

fn failure_result(operation_id: String, failure: &CommandFailure) -> CommandResult {
    CommandResult {
        operation_id,
        outcome: Some(command_result::Outcome::Error(CommandError {
            kind: failure.kind.into(),
            message: failure.message.clone(),
        })),
        snapshot: None,
    }
}

#[cfg(test)]
mod tests {
    use vmm_proto::{DeleteVm, ForceStopVm, RebootVm, StartVm, StopVm};

    use super::*;
    use crate::hypervisor::libvirt::test_driver_tests::open_test_host;

    pub(super) async fn test_driver_executor() -> CommandExecutor {
        let hypervisor = HypervisorHandle::spawn(|| Ok(open_test_host()))
            .await
            .unwrap();
        CommandExecutor::new(
            hypervisor,
            Arc::new(StateTracker::new()),
            Duration::from_secs(5),
        )
    }

    pub(super) fn command(operation_id: &str, vm_id: VmId, action: Action) -> Command {
        Command {
            operation_id: operation_id.into(),
            vm_id: vm_id.to_string(),
            action: Some(action),
        }
    }

    pub(super) fn create(name: &str) -> Action {
        Action::Create(CreateVm {
            name: name.into(),
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
            start: true,
        })
    }

    pub(super) fn domain_of(result: &CommandResult) -> &DomainReport {
        match &result.outcome {
            Some(command_result::Outcome::Domain(domain)) => domain,
            other => panic!("expected a domain, got {other:?}"),
        }
    }

    pub(super) fn error_kind_of(result: &CommandResult) -> ErrorKind {
        match &result.outcome {
            Some(command_result::Outcome::Error(error)) => error.kind(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn commands_drive_a_vm_through_its_life_on_the_test_driver() {
        let executor = test_driver_executor().await;
        let vm_id = VmId::new_random();

        let created = executor
            .execute(command("op-1", vm_id, create("web-01")))
            .await;
        let report = domain_of(&created);
        assert_eq!(report.state(), PowerState::Running);
        assert_eq!(report.vm_id, vm_id.to_string());
        assert_eq!(report.domain_name, domain_name(vm_id));

        // The same operation again is answered from memory: same generation.
        let repeated = executor
            .execute(command("op-1", vm_id, create("web-01")))
            .await;
        assert_eq!(repeated, created);
        // A new create of the same VM finds it already made.
        let again = executor
            .execute(command("op-2", vm_id, create("web-01")))
            .await;
        assert_eq!(domain_of(&again).state(), PowerState::Running);
        assert!(domain_of(&again).generation > report.generation);

        let start = executor
            .execute(command("op-3", vm_id, Action::Start(StartVm {})))
            .await;
        assert_eq!(error_kind_of(&start), ErrorKind::Conflict);
        let stop = executor
            .execute(command("op-4", vm_id, Action::Stop(StopVm {})))
            .await;
        assert_eq!(domain_of(&stop).state(), PowerState::Stopped);
        let force = executor
            .execute(command("op-5", vm_id, Action::ForceStop(ForceStopVm {})))
            .await;
        assert_eq!(error_kind_of(&force), ErrorKind::Conflict);
        let reboot = executor
            .execute(command("op-6", vm_id, Action::Reboot(RebootVm {})))
            .await;
        assert_eq!(error_kind_of(&reboot), ErrorKind::Conflict);
        let start = executor
            .execute(command("op-7", vm_id, Action::Start(StartVm {})))
            .await;
        assert_eq!(domain_of(&start).state(), PowerState::Running);
        let reboot = executor
            .execute(command("op-8", vm_id, Action::Reboot(RebootVm {})))
            .await;
        assert_eq!(domain_of(&reboot).state(), PowerState::Running);
        let force = executor
            .execute(command("op-9", vm_id, Action::ForceStop(ForceStopVm {})))
            .await;
        assert_eq!(domain_of(&force).state(), PowerState::Stopped);

        let delete = executor
            .execute(command("op-10", vm_id, Action::Delete(DeleteVm {})))
            .await;
        assert_eq!(domain_of(&delete).state(), PowerState::Absent);
        assert_eq!(domain_of(&delete).vm_id, vm_id.to_string());
        let delete_again = executor
            .execute(command("op-11", vm_id, Action::Delete(DeleteVm {})))
            .await;
        assert_eq!(domain_of(&delete_again).state(), PowerState::Absent);
        let start = executor
            .execute(command("op-12", vm_id, Action::Start(StartVm {})))
            .await;
        assert_eq!(error_kind_of(&start), ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn bad_commands_are_refused_as_invalid() {
        let executor = test_driver_executor().await;
        let vm_id = VmId::new_random();
        let bad_name = executor
            .execute(command("op-1", vm_id, create("a'><x/>&")))
            .await;
        assert_eq!(error_kind_of(&bad_name), ErrorKind::Invalid);
        let too_big = Action::Create(CreateVm {
            name: "big".into(),
            cpu: 1000,
            memory_mib: 128,
            disk_gb: 1,
            start: false,
        });
        assert_eq!(
            error_kind_of(&executor.execute(command("op-2", vm_id, too_big)).await),
            ErrorKind::Invalid
        );
        let mut no_uuid = command("op-3", vm_id, Action::Start(StartVm {}));
        no_uuid.vm_id = "not-a-uuid".into();
        assert_eq!(
            error_kind_of(&executor.execute(no_uuid).await),
            ErrorKind::Invalid
        );
        let no_action = Command {
            action: None,
            ..command("op-4", vm_id, Action::Start(StartVm {}))
        };
        assert_eq!(
            error_kind_of(&executor.execute(no_action).await),
            ErrorKind::Invalid
        );
    }

    #[tokio::test]
    async fn a_domain_the_product_did_not_create_is_left_alone() {
        let executor = test_driver_executor().await;
        // The test driver's sample domain "test" has no instance metadata.
        let foreign_uuid = executor
            .hypervisor
            .call(|hv| hv.list_domains())
            .await
            .unwrap()
            .into_iter()
            .find(|domain| domain.name == "test")
            .map(|domain| domain.uuid.parse::<VmId>().unwrap())
            .unwrap();
        for (op, action) in [
            ("op-1", Action::Delete(DeleteVm {})),
            ("op-2", Action::ForceStop(ForceStopVm {})),
            ("op-3", create("mine")),
        ] {
            let result = executor.execute(command(op, foreign_uuid, action)).await;
            assert_eq!(error_kind_of(&result), ErrorKind::Conflict);
        }
    }

    #[test]
    fn finished_operations_forget_the_oldest_beyond_the_bound() {
        let mut finished = FinishedOperations::default();
        for n in 0..=REMEMBERED_OPERATIONS {
            finished.insert(
                format!("op-{n}"),
                CommandResult {
                    operation_id: format!("op-{n}"),
                    outcome: None,
                    snapshot: None,
                },
            );
        }
        assert!(finished.get("op-0").is_none());
        assert!(finished.get("op-1").is_some());
        assert!(
            finished
                .get(&format!("op-{REMEMBERED_OPERATIONS}"))
                .is_some()
        );
        assert_eq!(finished.results.len(), REMEMBERED_OPERATIONS);
    }
}
