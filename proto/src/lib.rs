//! The gRPC contract between the agent and the coordinator, generated from
//! `proto/agent.proto`. This crate holds the wire types and the tonic client and server
//! for `AgentControl`; it has no behaviour of its own.

/// Version 1 of the agent protocol.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("vmm.agent.v1");
}

pub use v1::*;
