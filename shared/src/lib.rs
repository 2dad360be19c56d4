//! Types the agent and the coordinator both use that are not wire types: typed IDs, the VM
//! status the coordinator shows, and the rules for what a VM may be called and how big it
//! may be; and two pieces of process plumbing both binaries need at start: reading settings
//! from flags, environment and a TOML file ([`settings`]) and telling systemd how the
//! service is doing ([`systemd`]). Only those two do I/O.
#![forbid(unsafe_code)]

pub mod ids;
pub mod limits;
pub mod operation;
pub mod settings;
#[cfg(feature = "sqlx")]
pub mod sql;
pub mod status;
pub mod systemd;

pub use ids::{HostId, ImageId, OperationId, SnapshotId, SshKeyId, UserId, VmId};
pub use limits::{VmSize, VmSizeError, validate_resource_name};
pub use operation::OperationKind;
pub use settings::error_chain;
pub use status::VmStatus;
