//! Which user action each VM status allows: the one place that decides it.
//!
//! | status   | start | stop | force_stop | reboot | delete |
//! |----------|-------|------|------------|--------|--------|
//! | creating |   -   |  -   |     -      |   -    |   -    |
//! | running  |   -   | yes  |    yes     |  yes   |  yes   |
//! | paused   |   -   | yes  |    yes     |   -    |  yes   |
//! | stopped  |  yes  |  -   |     -      |   -    |  yes   |
//! | deleting |   -   |  -   |     -      |   -    |   -    |
//! | unknown  |   -   |  -   |     -      |   -    |   -    |
//! | error    |   -   |  -   |    yes     |   -    |  yes   |
//!
//! Everything marked `-` is refused with 409 and a message saying why. `unknown` means the
//! host is unreachable, which callers report as 503 before asking here.

use serde::Deserialize;
use vmm_shared::VmStatus;

use crate::error::ApiError;

/// A power action a user can ask for with `POST /api/vms/{id}/action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmAction {
    Start,
    Stop,
    ForceStop,
    Reboot,
}

impl VmAction {
    pub fn as_str(self) -> &'static str {
        match self {
            VmAction::Start => "start",
            VmAction::Stop => "stop",
            VmAction::ForceStop => "force_stop",
            VmAction::Reboot => "reboot",
        }
    }
}

pub fn check_action(status: VmStatus, action: VmAction) -> Result<(), ApiError> {
    use VmAction::*;
    use VmStatus::*;
    let allowed = matches!(
        (status, action),
        (Running, Stop | ForceStop | Reboot)
            | (Paused, Stop | ForceStop)
            | (Stopped, Start)
            | (Error, ForceStop)
    );
    if allowed {
        return Ok(());
    }
    let why = match (status, action) {
        (Running | Paused, Start) => "it is already running".to_owned(),
        (Stopped, Stop | ForceStop) => "it is already stopped".to_owned(),
        (Stopped, Reboot) => "it is stopped; start it instead".to_owned(),
        (Creating, _) => "it is still being created".to_owned(),
        (Deleting, _) => "it is being deleted".to_owned(),
        (Unknown, _) => "its host is unreachable, so its state is unknown".to_owned(),
        (Error, _) => "it is in the error state; force_stop or delete it".to_owned(),
        (status, _) => format!("it is {status}"),
    };
    Err(ApiError::Conflict(format!(
        "cannot {} the VM: {why}",
        action.as_str()
    )))
}

pub fn check_delete(status: VmStatus) -> Result<(), ApiError> {
    match status {
        VmStatus::Running | VmStatus::Paused | VmStatus::Stopped | VmStatus::Error => Ok(()),
        VmStatus::Creating => Err(ApiError::Conflict(
            "cannot delete the VM: it is still being created".into(),
        )),
        VmStatus::Deleting => Err(ApiError::Conflict("the VM is already being deleted".into())),
        VmStatus::Unknown => Err(ApiError::Conflict(
            "cannot delete the VM: its host is unreachable, so its state is unknown".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_module_doc() {
        use VmAction::*;
        let actions = [Start, Stop, ForceStop, Reboot];
        let table: [(VmStatus, [bool; 4], bool); 7] = [
            (VmStatus::Creating, [false, false, false, false], false),
            (VmStatus::Running, [false, true, true, true], true),
            (VmStatus::Paused, [false, true, true, false], true),
            (VmStatus::Stopped, [true, false, false, false], true),
            (VmStatus::Deleting, [false, false, false, false], false),
            (VmStatus::Unknown, [false, false, false, false], false),
            (VmStatus::Error, [false, false, true, false], true),
        ];
        for (status, allowed, deletable) in table {
            for (action, allowed) in actions.iter().zip(allowed) {
                assert_eq!(
                    check_action(status, *action).is_ok(),
                    allowed,
                    "{status} {action:?}"
                );
            }
            assert_eq!(check_delete(status).is_ok(), deletable, "{status} delete");
        }
    }

    #[test]
    fn refusals_say_why() {
        let err = check_action(VmStatus::Running, VmAction::Start).unwrap_err();
        assert!(err.to_string().contains("already running"));
    }
}
