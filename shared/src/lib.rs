//! Types the agent and the coordinator both use that are not wire types: typed IDs, the VM
//! status the coordinator shows, how hosts are named in certificates and join tokens
//! ([`identity`]), and the rules for what a VM may be called and how big it
//! may be; and the process plumbing both binaries need at start: reading settings from
//! flags, environment and a TOML file ([`settings`], with [`duration`]s), setting up logs
//! ([`logging`]) and telling systemd how the service is doing ([`systemd`]). Only those do
//! I/O.
#![forbid(unsafe_code)]

pub mod api;
pub mod duration;
pub mod identity;
pub mod ids;
pub mod limits;
pub mod logging;
pub mod operation;
pub mod settings;
#[cfg(feature = "sqlx")]
pub mod sql;
pub mod status;
pub mod systemd;

pub use ids::{ApiTokenId, HostId, ImageId, OperationId, SnapshotId, SshKeyId, UserId, VmId};
pub use limits::{VmSize, VmSizeError, validate_resource_name};
pub use operation::OperationKind;
pub use settings::error_chain;
pub use status::VmStatus;
