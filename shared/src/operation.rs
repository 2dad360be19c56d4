//! The kinds of operation the product carries out on a host, named once for the agent, the
//! coordinator, their metrics and their logs: `operations_total{kind="snapshot_create"}` on the
//! coordinator and `agent_commands_total{kind="snapshot_create"}` on the agent mean the same.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What an operation does. The string form (`as_str`, serde) is the one vocabulary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    Create,
    Start,
    Stop,
    ForceStop,
    Reboot,
    Delete,
    SnapshotCreate,
    SnapshotRestore,
    SnapshotDelete,
}

impl OperationKind {
    pub const ALL: [OperationKind; 9] = [
        OperationKind::Create,
        OperationKind::Start,
        OperationKind::Stop,
        OperationKind::ForceStop,
        OperationKind::Reboot,
        OperationKind::Delete,
        OperationKind::SnapshotCreate,
        OperationKind::SnapshotRestore,
        OperationKind::SnapshotDelete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Create => "create",
            OperationKind::Start => "start",
            OperationKind::Stop => "stop",
            OperationKind::ForceStop => "force_stop",
            OperationKind::Reboot => "reboot",
            OperationKind::Delete => "delete",
            OperationKind::SnapshotCreate => "snapshot_create",
            OperationKind::SnapshotRestore => "snapshot_restore",
            OperationKind::SnapshotDelete => "snapshot_delete",
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no operation kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an operation kind")]
pub struct UnknownOperationKind(pub String);

impl FromStr for OperationKind {
    type Err = UnknownOperationKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownOperationKind(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name_and_serde() {
        for kind in OperationKind::ALL {
            assert_eq!(kind.as_str().parse::<OperationKind>(), Ok(kind));
            let json = serde_json_like(kind);
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
        }
        assert!("create_snapshot".parse::<OperationKind>().is_err());
    }

    fn serde_json_like(kind: OperationKind) -> String {
        // toml cannot serialise a bare enum; a one-field table shows the serde name.
        let table = toml::to_string(&std::collections::BTreeMap::from([("k", kind)])).unwrap();
        table.trim().trim_start_matches("k = ").to_owned()
    }
}
