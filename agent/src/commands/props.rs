//! Property tests of the command executor against hostile input from the stream: any bytes
//! decoded as a `Command` (or an `AgentMessage`'s neighbour, a `CoordinatorMessage`), and
//! structured commands with absurd values, handed to the executor on an in-memory host with
//! a domain the product did not create. It must never panic, always answer with the command's operation ID, refuse
//! what is malformed, and never touch a domain the product did not create.

use std::sync::Arc;

use proptest::prelude::*;
use prost::Message as _;
use vmm_proto::command::Action;
use vmm_proto::{
    Command, CoordinatorMessage, CreateSnapshot, CreateVm, DeleteSnapshot, DeleteVm, ErrorKind,
    ForceStopVm, RebootVm, RestoreSnapshot, StartVm, StopVm, command_result, coordinator_message,
};
use vmm_shared::{VmId, VmSize, validate_resource_name};

use super::CommandExecutor;
use super::tests::memory_executor;
use crate::hypervisor::PowerState;
use crate::hypervisor::memory::MemoryHost;

/// One executor and one runtime for every case: a fresh host per case would make the cases
/// slower without making them stronger.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    executor: Arc<CommandExecutor>,
    host: MemoryHost,
    foreign_uuid: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (executor, host) = runtime.block_on(memory_executor());
        let foreign_uuid = host
            .add_foreign_domain("test", PowerState::Running)
            .to_string();
        Fixture {
            runtime,
            executor: Arc::new(executor),
            host,
            foreign_uuid,
        }
    })
}

impl Fixture {
    fn execute(&self, command: Command) -> vmm_proto::CommandResult {
        self.runtime.block_on(self.executor.execute(command))
    }

    fn foreign_state(&self) -> PowerState {
        let uuid: VmId = self.foreign_uuid.parse().unwrap();
        self.host.domain(uuid).unwrap().state
    }
}

fn error_kind(result: &vmm_proto::CommandResult) -> Option<ErrorKind> {
    match &result.outcome {
        Some(command_result::Outcome::Error(error)) => Some(error.kind()),
        _ => None,
    }
}

fn any_action() -> impl Strategy<Value = Action> {
    let snapshot_id = prop_oneof![
        Just(String::new()),
        any::<String>(),
        Just(uuid::Uuid::new_v4().to_string()),
    ];
    prop_oneof![
        (
            any::<String>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(
                |(name, cpu, memory_mib, disk_gb, start)| Action::Create(CreateVm {
                    name,
                    cpu,
                    memory_mib,
                    disk_gb,
                    start,
                    ..Default::default()
                })
            ),
        // Mostly plausible creates, with one field pushed out of range now and then.
        (0u32..=70, 0u64..=2048, 0u64..=8, any::<bool>()).prop_map(
            |(cpu, memory_mib, disk_gb, start)| Action::Create(CreateVm {
                name: "prop-vm".into(),
                cpu,
                memory_mib,
                disk_gb,
                start,
                ..Default::default()
            })
        ),
        Just(Action::Start(StartVm {})),
        Just(Action::Stop(StopVm {})),
        Just(Action::ForceStop(ForceStopVm {})),
        Just(Action::Reboot(RebootVm {})),
        Just(Action::Delete(DeleteVm {})),
        snapshot_id
            .clone()
            .prop_map(|snapshot_id| Action::CreateSnapshot(CreateSnapshot { snapshot_id })),
        snapshot_id
            .clone()
            .prop_map(|snapshot_id| Action::RestoreSnapshot(RestoreSnapshot { snapshot_id })),
        snapshot_id.prop_map(|snapshot_id| Action::DeleteSnapshot(DeleteSnapshot { snapshot_id })),
    ]
}

/// Which VM a command names: the foreign domain, an unknown VM, or garbage.
#[derive(Debug, Clone)]
enum Target {
    Foreign,
    Unknown,
    Garbage(String),
}

fn any_target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::Foreign),
        Just(Target::Unknown),
        any::<String>().prop_map(Target::Garbage),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Whatever bytes arrive as a coordinator message, decoding never panics, and a command
    /// in them is answered with its own operation ID and never harms the foreign domain.
    #[test]
    fn arbitrary_bytes_never_panic_the_executor(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let fixture = fixture();
        let decoded = [
            Command::decode(bytes.as_slice()).ok(),
            CoordinatorMessage::decode(bytes.as_slice()).ok().and_then(|message| match message.body {
                Some(coordinator_message::Body::Command(command)) => Some(command),
                _ => None,
            }),
        ];
        for command in decoded.into_iter().flatten() {
            let operation_id = command.operation_id.clone();
            let result = fixture.execute(command);
            prop_assert_eq!(result.operation_id, operation_id);
        }
        prop_assert_eq!(fixture.foreign_state(), PowerState::Running);
    }

    /// Structured hostile commands: garbage IDs and sizes are refused as invalid, commands
    /// about VMs this host does not have are refused as not found (or, for a create, carried
    /// out only when valid), and the domain the product did not create is never changed.
    #[test]
    fn hostile_commands_are_refused(
        operation_id in any::<String>(),
        target in any_target(),
        action in any_action(),
    ) {
        let fixture = fixture();
        let vm_id = match &target {
            Target::Foreign => fixture.foreign_uuid.clone(),
            Target::Unknown => VmId::new_random().to_string(),
            Target::Garbage(text) => text.clone(),
        };
        // A unique operation ID per case, unless the case is about the empty one.
        let operation_id = if operation_id.is_empty() {
            operation_id
        } else {
            format!("{operation_id}-{}", uuid::Uuid::new_v4())
        };
        let command = Command {
            operation_id: operation_id.clone(),
            vm_id: vm_id.clone(),
            action: Some(action.clone()),
        };
        let result = fixture.execute(command);
        prop_assert_eq!(&result.operation_id, &operation_id);
        let kind = error_kind(&result);

        if vm_id.parse::<VmId>().is_err() {
            prop_assert_eq!(kind, Some(ErrorKind::Invalid), "garbage VM ID {:?}", vm_id);
        } else if let Action::Create(create) = &action {
            let size = VmSize { cpu: create.cpu, memory_mib: create.memory_mib, disk_gb: create.disk_gb };
            if validate_resource_name(&create.name).is_err() || size.validate().is_err() {
                prop_assert_eq!(kind, Some(ErrorKind::Invalid), "{:?}", create);
            } else if matches!(target, Target::Foreign) {
                prop_assert_eq!(kind, Some(ErrorKind::Conflict));
            } else {
                prop_assert_eq!(kind, None, "a valid create on a new VM works: {:?}", result);
                // Clean up, so the shared test host stays small.
                let vm: VmId = vm_id.parse().unwrap();
                fixture.execute(Command {
                    operation_id: format!("cleanup-{}", uuid::Uuid::new_v4()),
                    vm_id: vm.to_string(),
                    action: Some(Action::Delete(DeleteVm {})),
                });
            }
        } else if matches!(target, Target::Foreign) {
            prop_assert!(kind.is_some(), "the foreign domain is refused: {:?}", result);
        } else {
            match action {
                // Deleting what does not exist succeeds (idempotent).
                Action::Delete(_) => prop_assert_eq!(kind, None),
                _ => prop_assert!(
                    matches!(kind, Some(ErrorKind::NotFound | ErrorKind::Invalid)),
                    "unknown VM: {:?}", result
                ),
            }
        }
        prop_assert_eq!(fixture.foreign_state(), PowerState::Running);
    }
}
