//! Hypervisor hosts: the live registry of connected agents (and the commands in flight to
//! them), the stored record of every host, the scheduler that places new VMs, the admin
//! view `GET /api/hosts`, and draining and deleting hosts.

pub mod admin;
pub mod registry;
pub mod routes;
pub mod scheduler;
pub mod store;

pub use registry::{AgentRegistry, DispatchError};
