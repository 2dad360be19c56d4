//! The end-to-end test harness: starts the real `coordinator` and `agent` binaries as
//! processes on ephemeral loopback ports and in temporary directories, and talks to them the
//! way a user would, over the REST API.
//!
//! A test reads like a user session:
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use vmm_e2e::{ClusterOptions, TestCluster};
//! let cluster = TestCluster::start(ClusterOptions::default()).await?;
//! let alice = cluster.user("alice").await?;
//! let vm = alice.create_vm("web-1", 1, 128, Some(1)).await?;
//! assert_eq!(vm.status, "running");
//! # Ok(()) }
//! ```
//!
//! What the harness must never do: reach into the binaries' databases or libvirt state to
//! make a test pass. It may only *observe* the host (through `virsh`) to check what the API
//! claims, the way an operator would.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod cluster;
pub mod console;
pub mod file_server;
pub mod guest;
pub mod jwt;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod test_image;
pub mod virsh;
pub mod wait;

pub use api::{Api, Host, Image, Response, SshKey, Vm};
pub use cluster::{AgentAuthMode, AgentOptions, ClusterOptions, PeerCoordinator, TestCluster};
pub use wait::wait_until;
