//! The status of a VM as the coordinator shows it to users.
//!
//! ```text
//!                 create ok
//!   creating ──────────────────▶ running ◀──── pause/resume ────▶ paused
//!      │                         │    ▲
//!      │ create failed           │stop│start
//!      ▼                         ▼    │
//!   (gone)                      stopped
//!
//!   any settled state ── delete ──▶ deleting ──▶ (gone)
//!   any state ── host unreachable ──▶ unknown ── host back ──▶ its real state
//!   any state ── host reports a failure ──▶ error (with a reason)
//! ```
//!
//! `unknown` means the coordinator cannot know (the host's agent is away); it is never
//! shown as `stopped`. Which user actions each status allows is decided in one place, the
//! coordinator's `vms::lifecycle` module.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum VmStatus {
    Creating,
    Running,
    Paused,
    Stopped,
    Deleting,
    Unknown,
    Error,
}

impl VmStatus {
    pub const ALL: [VmStatus; 7] = [
        VmStatus::Creating,
        VmStatus::Running,
        VmStatus::Paused,
        VmStatus::Stopped,
        VmStatus::Deleting,
        VmStatus::Unknown,
        VmStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmStatus::Creating => "creating",
            VmStatus::Running => "running",
            VmStatus::Paused => "paused",
            VmStatus::Stopped => "stopped",
            VmStatus::Deleting => "deleting",
            VmStatus::Unknown => "unknown",
            VmStatus::Error => "error",
        }
    }

    /// Statuses owned by an operation in flight: state reports from the host do not
    /// overwrite them; the operation's own result does.
    pub fn is_transitional(self) -> bool {
        matches!(self, VmStatus::Creating | VmStatus::Deleting)
    }
}

impl fmt::Display for VmStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status string that is not one of [`VmStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown VM status {0:?}")]
pub struct UnknownVmStatus(pub String);

impl FromStr for VmStatus {
    type Err = UnknownVmStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownVmStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips() {
        for status in VmStatus::ALL {
            assert_eq!(status.as_str().parse::<VmStatus>().unwrap(), status);
            let json = serde_json_like(status);
            assert_eq!(json, status.as_str());
        }
        assert!("stoped".parse::<VmStatus>().is_err());
    }

    fn serde_json_like(status: VmStatus) -> String {
        // Display and serde agree on the spelling.
        status.to_string()
    }
}
