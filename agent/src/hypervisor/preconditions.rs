//! The preconditions of VM operations, decided once for every [`super::Hypervisor`]
//! implementation from what the implementation observed: which domains the product may
//! change, which power states allow which operation, and which states can be snapshotted.
//! Implementations look at the domain, ask here, and act only on [`Proceed::Act`], all in
//! the same call.
//!
//! | operation        | acts when  | already there (with [`AlreadyThere::Accept`]) | otherwise |
//! |------------------|------------|-----------------------------------------------|-----------|
//! | start            | not active | running                                       | conflict  |
//! | shutdown, force  | running    | stopped                                       | conflict  |
//! | reboot           | running    | (never)                                       | conflict  |
//! | snapshot         | running (disks and memory) or stopped (disks only) | (an existing snapshot is returned) | conflict |
//!
//! Pure functions: nothing here talks to a hypervisor.

use vmm_shared::{SnapshotId, VmId};

use super::{AlreadyThere, FailureKind, HypervisorError, ObservedDomain, PowerState};

/// A power operation, for [`power`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Start,
    Shutdown,
    ForceStop,
    Reboot,
}

/// What an implementation does after the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proceed {
    Act,
    /// Report the domain as it is: an interrupted operation had already got it there.
    AlreadyThere,
}

/// The error for a VM without a domain.
pub fn not_found(vm_id: VmId) -> HypervisorError {
    HypervisorError::new(
        FailureKind::NotFound,
        format!("VM {vm_id} does not exist on this host"),
    )
}

/// The error for a snapshot the VM does not have.
pub fn no_such_snapshot(vm_id: VmId, snapshot_id: SnapshotId) -> HypervisorError {
    HypervisorError::new(
        FailureKind::NotFound,
        format!("VM {vm_id} has no snapshot {snapshot_id}"),
    )
}

/// Only domains the product created (their metadata names this VM ID) are ever changed; a
/// create that finds such a domain reports it, one that finds another domain of that UUID
/// is refused here too.
pub fn ensure_managed(vm_id: VmId, domain: &ObservedDomain) -> Result<(), HypervisorError> {
    if domain.vm_id == Some(vm_id) {
        Ok(())
    } else {
        Err(HypervisorError::new(
            FailureKind::Conflict,
            format!(
                "domain {} has UUID {vm_id} but was not created by this product; the agent \
                 leaves it alone",
                domain.name
            ),
        ))
    }
}

/// Whether `action` may act on `domain` (a product domain), see the module docs.
pub fn power(
    action: PowerAction,
    vm_id: VmId,
    domain: &ObservedDomain,
    already: AlreadyThere,
) -> Result<Proceed, HypervisorError> {
    let state = domain.state;
    let target = match action {
        PowerAction::Start => PowerState::Running,
        PowerAction::Shutdown | PowerAction::ForceStop => PowerState::Stopped,
        PowerAction::Reboot => PowerState::Running,
    };
    let allowed = match action {
        PowerAction::Start => !state.is_active(),
        PowerAction::Shutdown | PowerAction::ForceStop | PowerAction::Reboot => {
            state == PowerState::Running
        }
    };
    if allowed {
        return Ok(Proceed::Act);
    }
    if state == target && already == AlreadyThere::Accept && action != PowerAction::Reboot {
        tracing::info!(%vm_id, state = state.word(), "the interrupted operation had already got the VM there");
        return Ok(Proceed::AlreadyThere);
    }
    let refusal = match action {
        PowerAction::Start if state == PowerState::Running => "is already running".to_owned(),
        PowerAction::Start => format!("is {}", state.word()),
        _ => format!("is not running (it is {})", state.word()),
    };
    Err(HypervisorError::new(
        FailureKind::Conflict,
        format!("VM {vm_id} {refusal}"),
    ))
}

/// The state a snapshot of `domain` is taken in: running (disks and memory) or stopped
/// (disks only). The product knows no other snapshots, so other states are a conflict.
pub fn snapshot_state(vm_id: VmId, domain: &ObservedDomain) -> Result<PowerState, HypervisorError> {
    match domain.state {
        state @ (PowerState::Running | PowerState::Stopped) => Ok(state),
        other => Err(HypervisorError::new(
            FailureKind::Conflict,
            format!(
                "VM {vm_id} is {}: only a running or stopped VM can be snapshotted",
                other.word()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domain(vm_id: VmId, state: PowerState) -> ObservedDomain {
        ObservedDomain {
            uuid: vm_id.to_string(),
            name: super::super::domain_name(vm_id),
            vm_id: Some(vm_id),
            state,
            cpu: 1,
            memory_mib: 128,
            detail: String::new(),
            addresses: Vec::new(),
            ssh: None,
        }
    }

    #[test]
    fn power_operations_follow_the_table() {
        use AlreadyThere::{Accept, Refuse};
        use PowerAction::{ForceStop, Reboot, Shutdown, Start};
        use PowerState::{Crashed, Paused, Running, Stopped, Unknown};
        let vm_id = VmId::new_random();
        let cases = [
            (Start, Stopped, Refuse, Some(Proceed::Act)),
            (Start, Crashed, Refuse, Some(Proceed::Act)),
            (Start, Unknown, Refuse, Some(Proceed::Act)),
            (Start, Running, Refuse, None),
            (Start, Running, Accept, Some(Proceed::AlreadyThere)),
            (Start, Paused, Accept, None),
            (Shutdown, Running, Refuse, Some(Proceed::Act)),
            (Shutdown, Stopped, Refuse, None),
            (Shutdown, Stopped, Accept, Some(Proceed::AlreadyThere)),
            (Shutdown, Paused, Accept, None),
            (ForceStop, Running, Refuse, Some(Proceed::Act)),
            (ForceStop, Stopped, Accept, Some(Proceed::AlreadyThere)),
            (ForceStop, Crashed, Accept, None),
            (Reboot, Running, Refuse, Some(Proceed::Act)),
            (Reboot, Stopped, Accept, None),
            (Reboot, Paused, Refuse, None),
        ];
        for (action, state, already, expected) in cases {
            let outcome = power(action, vm_id, &domain(vm_id, state), already);
            match expected {
                Some(proceed) => assert_eq!(outcome, Ok(proceed), "{action:?} {state:?}"),
                None => {
                    let error = outcome.unwrap_err();
                    assert_eq!(error.kind, FailureKind::Conflict, "{action:?} {state:?}");
                    assert!(error.message.contains(&vm_id.to_string()), "{error}");
                }
            }
        }
    }

    #[test]
    fn only_running_and_stopped_vms_are_snapshotted_and_only_the_products() {
        let vm_id = VmId::new_random();
        for state in [PowerState::Running, PowerState::Stopped] {
            assert_eq!(snapshot_state(vm_id, &domain(vm_id, state)), Ok(state));
        }
        let paused = snapshot_state(vm_id, &domain(vm_id, PowerState::Paused)).unwrap_err();
        assert_eq!(paused.kind, FailureKind::Conflict);
        assert!(paused.message.contains("paused"), "{paused}");

        let mut foreign = domain(vm_id, PowerState::Running);
        assert_eq!(ensure_managed(vm_id, &foreign), Ok(()));
        foreign.vm_id = None;
        assert_eq!(
            ensure_managed(vm_id, &foreign).unwrap_err().kind,
            FailureKind::Conflict
        );
        assert_eq!(not_found(vm_id).kind, FailureKind::NotFound);
    }
}
