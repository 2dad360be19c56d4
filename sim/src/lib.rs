//! The fleet simulator: N agents of the agent library in one process, each on an in-memory
//! host of its own with its own gRPC stream, host ID and capacity, against a real
//! coordinator process; the scenarios of a fleet (steady state, restart resync, reconnect
//! storms, silent partitions, out-of-band changes) and an audit that the API's view equals
//! every simulated host's truth; and the benchmark that prints every figure of the fleet's
//! targets (`BENCHMARKS.md`).
//!
//! - [`link`]: the network between an agent and the coordinator, which can be cut or frozen;
//! - [`fleet`]: the simulated hosts and their agents, and what they really run;
//! - [`coordinator`]: the coordinator process, started, stopped and measured;
//! - [`api`]: the REST API as the simulator uses it;
//! - [`scenarios`]: the scenarios and the audit;
//! - [`run`]: one whole run (smoke or benchmark) and its table.
//!
//! It only ever talks to loopback addresses and stops what it started.
#![forbid(unsafe_code)]

pub mod api;
pub mod coordinator;
pub mod fleet;
pub mod link;
pub mod run;
pub mod scenarios;
