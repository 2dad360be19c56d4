//! Types the agent and the coordinator both use that are not wire types: typed IDs, the VM
//! status the coordinator shows, and the rules for what a VM may be called and how big it
//! may be. Nothing here does I/O.
#![forbid(unsafe_code)]

pub mod ids;
pub mod limits;
pub mod status;

pub use ids::{HostId, OperationId, SnapshotId, UserId, VmId};
pub use limits::{VmSize, VmSizeError, validate_resource_name};
pub use status::VmStatus;
