//! Carries out the coordinator's commands on the hypervisor and turns the outcome into a
//! `CommandResult`.
//!
//! - Operations on one VM run one at a time (a lock per VM); different VMs run concurrently.
//! - Every command with an operation ID is recorded in the [`Journal`] before anything is
//!   done, and its result once it is done. An operation ID that was already carried out is
//!   answered with the stored result, without doing anything again, also after a restart of
//!   the agent (the coordinator may re-send commands after reconnects). An operation ID
//!   reused for a different command is refused.
//! - An operation the journal shows as accepted without a result was interrupted by the
//!   agent's death. A repeat of it *resumes* rather than blindly redoes it:
//!   - create: the domain has the VM's UUID, so libvirt can never hold two; an existing
//!     domain is reported as the result, a missing one is created (a leftover disk of the
//!     interrupted attempt is replaced);
//!   - start / stop / force stop: a VM already in the wanted state is reported as done
//!     instead of being refused as a conflict;
//!   - reboot: rebooted again when running (at least once; a second reboot doubles nothing);
//!   - delete, delete snapshot: idempotent, whatever is left is removed;
//!   - create snapshot: a snapshot of that ID that exists is reported, not taken twice;
//!   - restore snapshot: reverted again, which leaves the VM as the snapshot has it, the
//!     state the command asked for.
//! - A create from an image gets the image from the [`ImageCache`] (fetched and verified if
//!   the host has no copy) and holds the image's lock until the VM's disk exists; a create
//!   with cloud-init data gets its NoCloud seed built here (`vmm-cloud-init`), with the VM
//!   ID as instance ID. The hypervisor makes the overlay, the seed volume and the NIC.
//! - Only domains the product created (carrying our metadata) are ever changed.
//! - Each command is one call to the hypervisor, which checks the precondition, acts and
//!   reads the domain back in one job on its thread (see [`crate::hypervisor`]); only a stop
//!   looks again while the guest powers off. The domain it returns is the command's report.
//! - Failures are mapped to the protocol's `ErrorKind` here, in one place, and each
//!   action to its [`OperationKind`] ([`operation_kind`]), the name the journal, the logs
//!   and the metrics use.
//!
//! Snapshot commands live in `commands/snapshots.rs` and follow the same rules.

mod settling;
mod snapshots;

#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod props;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use vmm_proto::command::Action;
use vmm_proto::{
    CloudInit, Command, CommandError, CommandResult, CreateVm, DomainReport, ErrorKind,
    SnapshotReport, command_result,
};
use vmm_shared::{OperationKind, VmId, VmSize, error_chain, validate_resource_name};

use crate::hypervisor::{
    AlreadyThere, BYTES_PER_GIB, FailureKind, HypervisorError, HypervisorHandle, ObservedDomain,
    VmSpec, domain_name, preconditions,
};
use crate::images::{ImageCache, ImageError, WantedImage};
use crate::journal::{Journal, JournalEntry, JournalError};
use crate::state::StateTracker;

/// How often `stop` looks whether the guest has powered off.
const SHUTDOWN_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// The most user data a seed carries, as the protocol says.
const MAX_USER_DATA_BYTES: usize = 64 * 1024;

/// Executes commands; shared by every coordinator session of the process.
pub struct CommandExecutor {
    hypervisor: HypervisorHandle,
    tracker: Arc<StateTracker>,
    shutdown_timeout: Duration,
    vm_locks: Mutex<HashMap<VmId, Arc<tokio::sync::Mutex<()>>>>,
    journal: Journal,
    existence_changes: settling::ExistenceChanges,
    images: Arc<ImageCache>,
}

/// What the journal says about a command about to run.
enum Consulted {
    /// Done before: answer with this.
    Done(Box<CommandResult>),
    /// Accepted before without a result: resume it.
    Interrupted,
    /// Never seen.
    New,
}

/// What `execute` does once it holds the VM's lock.
enum Next {
    Answer(Box<CommandResult>),
    Run { resume: bool },
}

/// The kind of operation a command's action carries out: the one vocabulary of the agent's
/// journal, logs and metrics, shared with the coordinator.
pub fn operation_kind(action: &Action) -> OperationKind {
    match action {
        Action::Create(_) => OperationKind::Create,
        Action::Start(_) => OperationKind::Start,
        Action::Stop(_) => OperationKind::Stop,
        Action::ForceStop(_) => OperationKind::ForceStop,
        Action::Reboot(_) => OperationKind::Reboot,
        Action::Delete(_) => OperationKind::Delete,
        Action::CreateSnapshot(_) => OperationKind::SnapshotCreate,
        Action::RestoreSnapshot(_) => OperationKind::SnapshotRestore,
        Action::DeleteSnapshot(_) => OperationKind::SnapshotDelete,
    }
}

impl CommandExecutor {
    pub fn new(
        hypervisor: HypervisorHandle,
        tracker: Arc<StateTracker>,
        shutdown_timeout: Duration,
        journal: Journal,
        images: Arc<ImageCache>,
    ) -> Self {
        Self {
            hypervisor,
            tracker,
            shutdown_timeout,
            vm_locks: Mutex::new(HashMap::new()),
            journal,
            existence_changes: settling::ExistenceChanges::default(),
            images,
        }
    }

    /// Carries out one command (or recalls its earlier result) and says how it went.
    pub async fn execute(&self, command: Command) -> CommandResult {
        let operation_id = command.operation_id.clone();
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
        let kind = operation_kind(&action);
        // Counted from here, before the journal or the VM's lock is waited for: a
        // registration's inventory must include what this command makes or removes.
        let _existence_change = changes_existence(kind).then(|| self.existence_changes.begin());
        // A repeat of a finished operation is answered without waiting for the VM's lock.
        match self.consult(&operation_id, vm_id, kind).await {
            Ok(Consulted::Done(result)) => return *result,
            Ok(Consulted::Interrupted | Consulted::New) => {}
            Err(failure) => return failure_result(operation_id, &failure),
        }

        let vm_lock = self.vm_lock(vm_id);
        let guard = vm_lock.lock().await;
        // A repeat may have waited for the lock while the first delivery ran.
        let next = match self.consult(&operation_id, vm_id, kind).await {
            Ok(Consulted::New) => match self.accept(&operation_id, vm_id, kind).await {
                Ok(()) => Next::Run { resume: false },
                Err(failure) => {
                    Next::Answer(Box::new(failure_result(operation_id.clone(), &failure)))
                }
            },
            Ok(Consulted::Interrupted) => {
                tracing::warn!(%operation_id, %vm_id, %kind,
                    "this operation was interrupted by an earlier stop of the agent; resuming it");
                Next::Run { resume: true }
            }
            Ok(Consulted::Done(result)) => Next::Answer(result),
            Err(failure) => Next::Answer(Box::new(failure_result(operation_id.clone(), &failure))),
        };
        let result = match next {
            Next::Answer(result) => *result,
            Next::Run { resume } => {
                tracing::info!(%operation_id, %vm_id, %kind, resume, "executing command");
                let outcome = self.run(vm_id, action, resume).await;
                match &outcome {
                    Ok(done) => tracing::info!(
                        %operation_id, %vm_id, %kind,
                        state = ?done.domain.state(), "command done"
                    ),
                    Err(failure) => tracing::warn!(
                        %operation_id, %vm_id, %kind,
                        error_kind = ?failure.kind, message = %failure.message, "command failed"
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
                self.record_result(&operation_id, &result).await;
                result
            }
        };
        drop(guard);
        drop(vm_lock);
        self.release_idle_vm_locks();
        result
    }

    /// Carries the action out, each in one call to the hypervisor (a stop also looks again
    /// while the guest powers off). `resume` is set for an operation an earlier run of the
    /// agent accepted but never finished (see the module docs): a power operation that had
    /// already got the VM where it wanted is then reported, not refused.
    async fn run(&self, vm_id: VmId, action: Action, resume: bool) -> Result<Done, CommandFailure> {
        let already = if resume {
            AlreadyThere::Accept
        } else {
            AlreadyThere::Refuse
        };
        let domain = match action {
            Action::Create(create) => self.create(vm_id, create).await?,
            Action::Start(_) => {
                self.hypervisor
                    .call(move |hv| hv.start_vm(vm_id, already))
                    .await?
            }
            Action::Stop(_) => self.stop(vm_id, already).await?,
            Action::ForceStop(_) => {
                self.hypervisor
                    .call(move |hv| hv.force_stop(vm_id, already))
                    .await?
            }
            Action::Reboot(_) => self.hypervisor.call(move |hv| hv.reboot_vm(vm_id)).await?,
            Action::Delete(_) => return self.delete(vm_id).await.map(Done::domain),
            Action::CreateSnapshot(create) => {
                return self.create_snapshot(vm_id, &create.snapshot_id).await;
            }
            Action::RestoreSnapshot(restore) => {
                self.restore_snapshot(vm_id, &restore.snapshot_id).await?
            }
            Action::DeleteSnapshot(delete) => {
                self.delete_snapshot(vm_id, &delete.snapshot_id).await?
            }
        };
        Ok(Done::domain(self.tracker.record_result(&domain)))
    }

    /// Creates the VM; a domain an earlier delivery made is reported as it is.
    async fn create(
        &self,
        vm_id: VmId,
        create: CreateVm,
    ) -> Result<ObservedDomain, CommandFailure> {
        validate_resource_name(&create.name).map_err(CommandFailure::invalid)?;
        let size = VmSize {
            cpu: create.cpu,
            memory_mib: create.memory_mib,
            disk_gb: create.disk_gb,
        };
        size.validate()
            .map_err(|error| CommandFailure::invalid(error.to_string()))?;
        let wanted = create
            .image
            .as_ref()
            .map(WantedImage::from_ref)
            .transpose()?;
        if let Some(image) = &create.image {
            let disk_bytes = size.disk_gb.saturating_mul(BYTES_PER_GIB);
            if disk_bytes < image.virtual_size_bytes {
                return Err(CommandFailure::invalid(format!(
                    "a disk of {} GB is smaller than image {}, which declares {} bytes",
                    size.disk_gb, image.image_id, image.virtual_size_bytes
                )));
            }
        }
        let seed = create
            .cloud_init
            .as_ref()
            .map(|cloud_init| seed_volume(vm_id, &create.name, cloud_init))
            .transpose()?;
        // Held until the disk exists: an eviction waits for it, and then the disk keeps the
        // base in use.
        let lease = match &wanted {
            Some(wanted) => Some(self.images.acquire(wanted).await?),
            None => None,
        };
        let spec = VmSpec {
            display_name: create.name,
            cpu: size.cpu,
            memory_mib: size.memory_mib,
            disk_gb: size.disk_gb,
            start: create.start,
            image: lease.as_ref().map(|lease| lease.base),
            seed,
        };
        let created = self
            .hypervisor
            .call(move |hv| hv.create_vm(vm_id, &spec))
            .await;
        drop(lease);
        Ok(created?)
    }

    /// ACPI shutdown, then destroy once the timeout has passed. The wait happens here, in
    /// async code, so the hypervisor thread stays free for other VMs.
    async fn stop(
        &self,
        vm_id: VmId,
        already: AlreadyThere,
    ) -> Result<ObservedDomain, CommandFailure> {
        let mut domain = self
            .hypervisor
            .call(move |hv| hv.request_shutdown(vm_id, already))
            .await?;
        let deadline = Instant::now() + self.shutdown_timeout;
        loop {
            if !domain.state.is_active() {
                return Ok(domain);
            }
            if Instant::now() >= deadline {
                tracing::info!(%vm_id, timeout = ?self.shutdown_timeout, "guest did not power off; destroying it");
                let forced = self
                    .hypervisor
                    .call(move |hv| hv.force_stop(vm_id, AlreadyThere::Accept))
                    .await;
                return match forced {
                    // It left the running state just now some other way.
                    Err(error) if error.kind == FailureKind::Conflict => {
                        self.managed_domain(vm_id).await
                    }
                    other => other.map_err(CommandFailure::from),
                };
            }
            tokio::time::sleep(SHUTDOWN_POLL_INTERVAL).await;
            domain = self.managed_domain(vm_id).await?;
        }
    }

    async fn delete(&self, vm_id: VmId) -> Result<DomainReport, CommandFailure> {
        let existing = self.hypervisor.call(move |hv| hv.delete_vm(vm_id)).await?;
        let name = existing.map_or_else(|| domain_name(vm_id), |domain| domain.name);
        Ok(self
            .tracker
            .record_absent(&vm_id.to_string(), &vm_id.to_string(), &name))
    }

    /// The product VM's domain as it is now.
    async fn managed_domain(&self, vm_id: VmId) -> Result<ObservedDomain, CommandFailure> {
        let domain = self
            .hypervisor
            .call(move |hv| hv.find_vm(vm_id))
            .await?
            .ok_or_else(|| preconditions::not_found(vm_id))?;
        preconditions::ensure_managed(vm_id, &domain)?;
        Ok(domain)
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

    /// What the journal knows of this operation. An operation ID that the journal holds for
    /// another VM or another kind of command is refused: a coordinator never reuses one, so
    /// the command is corrupt or hostile. Without an ID there is nothing to recognise a
    /// repeat by: such a command is always new.
    async fn consult(
        &self,
        operation_id: &str,
        vm_id: VmId,
        kind: OperationKind,
    ) -> Result<Consulted, CommandFailure> {
        if operation_id.is_empty() {
            return Ok(Consulted::New);
        }
        let entry = self
            .journal
            .lookup(operation_id)
            .await
            .map_err(journal_failure)?;
        let Some(entry) = entry else {
            return Ok(Consulted::New);
        };
        let same_vm = entry.vm_id().parse::<VmId>().is_ok_and(|id| id == vm_id);
        if !same_vm || entry.kind() != kind {
            tracing::warn!(%operation_id, %vm_id, %kind, journaled_vm = entry.vm_id(),
                journaled_kind = %entry.kind(), "operation ID reused for another command; refused");
            return Err(CommandFailure::invalid(format!(
                "operation ID {operation_id} was already used for a {} of VM {}",
                entry.kind(),
                entry.vm_id()
            )));
        }
        Ok(match entry {
            JournalEntry::Done { result, .. } => {
                tracing::info!(%operation_id, "repeated operation; answering with its stored result");
                Consulted::Done(result)
            }
            JournalEntry::Accepted { .. } => Consulted::Interrupted,
        })
    }

    /// Journals the operation as accepted; until that is durable nothing is done.
    async fn accept(
        &self,
        operation_id: &str,
        vm_id: VmId,
        kind: OperationKind,
    ) -> Result<(), CommandFailure> {
        if operation_id.is_empty() {
            return Ok(());
        }
        let accepted = self
            .journal
            .accept(operation_id, &vm_id.to_string(), kind)
            .await
            .map_err(journal_failure)?;
        if accepted {
            Ok(())
        } else {
            // Another delivery took this ID first (for another VM, whose lock is not ours):
            // one operation ID runs once.
            Err(CommandFailure::invalid(format!(
                "operation {operation_id} is already being carried out for another command"
            )))
        }
    }

    /// Journals the result. A failure here is logged: the result is still sent, and a repeat
    /// would resume the operation, which every kind allows (see the module docs).
    async fn record_result(&self, operation_id: &str, result: &CommandResult) {
        if operation_id.is_empty() {
            return;
        }
        if let Err(error) = self.journal.finish(operation_id, result).await {
            tracing::error!(%operation_id, error = %error_chain(&error), "cannot journal an operation's result");
        }
    }
}

/// The NoCloud seed of a new VM: the VM ID as instance ID, the hostname the coordinator
/// chose (the VM's name when it sent none), the keys merged into the user data.
fn seed_volume(
    vm_id: VmId,
    vm_name: &str,
    cloud_init: &CloudInit,
) -> Result<Vec<u8>, CommandFailure> {
    if cloud_init.user_data.len() > MAX_USER_DATA_BYTES {
        return Err(CommandFailure::invalid(format!(
            "user data of {} bytes is over the limit of {MAX_USER_DATA_BYTES}",
            cloud_init.user_data.len()
        )));
    }
    let hostname = if cloud_init.hostname.is_empty() {
        vm_name
    } else {
        &cloud_init.hostname
    };
    let seed = vmm_cloud_init::Seed {
        instance_id: vm_id.to_string(),
        hostname: hostname.to_owned(),
        ssh_authorized_keys: cloud_init.ssh_authorized_keys.clone(),
        user_data: Some(cloud_init.user_data.clone()).filter(|data| !data.is_empty()),
        // Every network mode gives the VM one NIC with DHCP, which is cloud-init's fallback
        // configuration: a network-config would only say it again.
        network_config: None,
    };
    vmm_cloud_init::build_volume(&seed)
        .map_err(|error| CommandFailure::invalid(format!("the cloud-init seed: {error}")))
}

fn journal_failure(error: JournalError) -> CommandFailure {
    tracing::error!(error = %error_chain(&error), "the operation journal failed; command refused");
    CommandFailure::new(
        ErrorKind::Unavailable,
        format!(
            "the agent cannot use its operation journal ({}); nothing was done",
            error_chain(&error)
        ),
    )
}

/// Whether the operation makes or removes a VM or a snapshot (see [`settling`]).
fn changes_existence(kind: OperationKind) -> bool {
    matches!(
        kind,
        OperationKind::Create
            | OperationKind::Delete
            | OperationKind::SnapshotCreate
            | OperationKind::SnapshotDelete
    )
}

/// What a successful command produced.
#[derive(Debug)]
struct Done {
    /// The domain as the command left it.
    domain: DomainReport,
    /// The snapshot a `CreateSnapshot` made.
    snapshot: Option<SnapshotReport>,
}

impl Done {
    fn domain(domain: DomainReport) -> Self {
        Self {
            domain,
            snapshot: None,
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
}

impl From<ImageError> for CommandFailure {
    fn from(error: ImageError) -> Self {
        match error {
            ImageError::Invalid(message) => Self::new(ErrorKind::Invalid, message),
            ImageError::Unavailable(message) => Self::new(ErrorKind::Unavailable, message),
            ImageError::Hypervisor(error) => error.into(),
        }
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
    use vmm_proto::{DeleteVm, ForceStopVm, PowerState, RebootVm, StartVm, StopVm};

    use super::*;
    use crate::hypervisor::libvirt::test_driver_tests::open_test_host;
    use crate::hypervisor::memory::{Call, MemoryHost};

    fn executor_on(hypervisor: HypervisorHandle, shutdown_timeout: Duration) -> CommandExecutor {
        let images = Arc::new(ImageCache::new(
            hypervisor.clone(),
            Arc::new(crate::images::NoImageSource),
            std::env::temp_dir().join("vmm-agent-tests-no-images"),
        ));
        CommandExecutor::new(
            hypervisor,
            Arc::new(StateTracker::new()),
            shutdown_timeout,
            Journal::in_memory().unwrap(),
            images,
        )
    }

    /// An executor on an in-memory host, and the host.
    pub(super) async fn memory_executor() -> (CommandExecutor, MemoryHost) {
        let host = MemoryHost::new();
        let executor = executor_on(host.spawn_handle().await.unwrap(), Duration::from_secs(5));
        (executor, host)
    }

    async fn test_driver_executor() -> CommandExecutor {
        let hypervisor = HypervisorHandle::spawn(|| Ok(open_test_host()))
            .await
            .unwrap();
        executor_on(hypervisor, Duration::from_secs(5))
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
            ..Default::default()
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

    /// A VM's whole life through commands; the same on every hypervisor.
    async fn drive_a_vm_through_its_life(executor: &CommandExecutor) {
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
        assert_eq!(domain_of(&delete).domain_name, domain_name(vm_id));
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
    async fn commands_drive_a_vm_through_its_life_in_memory() {
        let (executor, _host) = memory_executor().await;
        drive_a_vm_through_its_life(&executor).await;
    }

    #[tokio::test]
    async fn commands_drive_a_vm_through_its_life_on_the_test_driver() {
        drive_a_vm_through_its_life(&test_driver_executor().await).await;
    }

    #[tokio::test]
    async fn each_command_is_one_call_to_the_hypervisor() {
        use vmm_proto::{CreateSnapshot, DeleteSnapshot, RestoreSnapshot};
        let (executor, host) = memory_executor().await;
        let vm_id = VmId::new_random();
        let snapshot_id = vmm_shared::SnapshotId::new_random().to_string();
        let actions = [
            create("web"),
            Action::Reboot(RebootVm {}),
            Action::Stop(StopVm {}),
            Action::Start(StartVm {}),
            Action::ForceStop(ForceStopVm {}),
            Action::CreateSnapshot(CreateSnapshot {
                snapshot_id: snapshot_id.clone(),
            }),
            Action::RestoreSnapshot(RestoreSnapshot {
                snapshot_id: snapshot_id.clone(),
            }),
            Action::DeleteSnapshot(DeleteSnapshot { snapshot_id }),
            Action::Delete(DeleteVm {}),
            // Refused ones too.
            Action::Start(StartVm {}),
        ];
        for (n, action) in actions.into_iter().enumerate() {
            let kind = operation_kind(&action);
            let before = host.total_calls();
            executor
                .execute(command(&format!("op-{n}"), vm_id, action))
                .await;
            assert_eq!(host.total_calls() - before, 1, "{kind}: {:?}", host.calls());
        }
    }

    #[tokio::test]
    async fn a_guest_that_ignores_the_power_button_is_stopped_at_the_timeout() {
        let host = MemoryHost::new();
        let executor = executor_on(
            host.spawn_handle().await.unwrap(),
            Duration::from_millis(600),
        );
        let vm_id = VmId::new_random();
        executor
            .execute(command("op-1", vm_id, create("web")))
            .await;
        host.set_ignores_shutdown(vm_id, true);
        let stopped = executor
            .execute(command("op-2", vm_id, Action::Stop(StopVm {})))
            .await;
        assert_eq!(domain_of(&stopped).state(), PowerState::Stopped);
        let calls = host.calls();
        assert_eq!(calls.get(&Call::RequestShutdown), Some(&1));
        assert_eq!(
            calls.get(&Call::ForceStop),
            Some(&1),
            "forced at the timeout"
        );
        assert!(
            calls.get(&Call::FindVm).is_some_and(|looks| *looks >= 2),
            "looked while waiting: {calls:?}"
        );
    }

    #[tokio::test]
    async fn hypervisor_failures_become_error_kinds_and_are_remembered() {
        let (executor, host) = memory_executor().await;
        let vm_id = VmId::new_random();
        executor
            .execute(command("op-1", vm_id, create("web")))
            .await;
        for (call, kind, expected) in [
            (
                Call::RebootVm,
                FailureKind::Unavailable,
                ErrorKind::Unavailable,
            ),
            (Call::RebootVm, FailureKind::Internal, ErrorKind::Internal),
            (Call::RebootVm, FailureKind::Invalid, ErrorKind::Invalid),
        ] {
            host.fail_next(call, kind);
            let operation_id = format!("op-{kind:?}");
            let failed = executor
                .execute(command(&operation_id, vm_id, Action::Reboot(RebootVm {})))
                .await;
            assert_eq!(error_kind_of(&failed), expected);
            // The failure is the operation's answer; a repeat does not try again.
            let calls = host.total_calls();
            let repeated = executor
                .execute(command(&operation_id, vm_id, Action::Reboot(RebootVm {})))
                .await;
            assert_eq!(repeated, failed);
            assert_eq!(host.total_calls(), calls);
        }
        host.disconnect();
        let unreachable = executor
            .execute(command("op-down", vm_id, Action::Start(StartVm {})))
            .await;
        assert_eq!(error_kind_of(&unreachable), ErrorKind::Unavailable);
    }

    #[test]
    fn every_action_has_its_operation_kind() {
        use vmm_proto::{CreateSnapshot, DeleteSnapshot, RestoreSnapshot};
        let actions = [
            create("x"),
            Action::Start(StartVm {}),
            Action::Stop(StopVm {}),
            Action::ForceStop(ForceStopVm {}),
            Action::Reboot(RebootVm {}),
            Action::Delete(DeleteVm {}),
            Action::CreateSnapshot(CreateSnapshot::default()),
            Action::RestoreSnapshot(RestoreSnapshot::default()),
            Action::DeleteSnapshot(DeleteSnapshot::default()),
        ];
        let kinds: Vec<OperationKind> = actions.iter().map(operation_kind).collect();
        assert_eq!(kinds, OperationKind::ALL);
    }

    #[tokio::test]
    async fn bad_commands_are_refused_as_invalid() {
        let (executor, host) = memory_executor().await;
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
            ..Default::default()
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
        assert_eq!(host.total_calls(), 0, "refused before the hypervisor");
    }

    #[tokio::test]
    async fn a_domain_the_product_did_not_create_is_left_alone() {
        let (executor, host) = memory_executor().await;
        let foreign_uuid = host.add_foreign_domain("test", crate::hypervisor::PowerState::Running);
        for (op, action) in [
            ("op-1", Action::Delete(DeleteVm {})),
            ("op-2", Action::ForceStop(ForceStopVm {})),
            ("op-3", create("mine")),
        ] {
            let result = executor.execute(command(op, foreign_uuid, action)).await;
            assert_eq!(error_kind_of(&result), ErrorKind::Conflict);
        }
        assert_eq!(
            host.domain(foreign_uuid).map(|domain| domain.state),
            Some(crate::hypervisor::PowerState::Running)
        );
    }
}
