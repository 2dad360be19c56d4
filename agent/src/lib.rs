//! The agent's parts: everything the `agent` binary runs, as a library, so that tests and a
//! fleet simulator can run many agents in one process, each on a host of its own (the
//! in-memory [`hypervisor::memory::MemoryHost`]).
//!
//! Modules, each layer using only those below it (stream → enrol → identity; stream →
//! commands, console and poller → images, state and metrics → hypervisor → journal):
//! - [`config`]: flags and environment variables, checked into typed settings.
//! - [`stream`]: the session with the coordinator ([`stream::CoordinatorLink`]).
//! - [`enrol`]: how the agent proves who it is: enrolment with a join token, TLS with its
//!   certificate, renewal ([`enrol::Credentials`]).
//! - [`identity`]: its key pair and certificates, as kept in its data directory.
//! - [`commands`]: executing the coordinator's commands ([`commands::CommandExecutor`]).
//! - [`console`]: relaying a VM's serial console or screen to the coordinator
//!   ([`console::ConsoleRelays`]).
//! - [`images`]: the host's image cache ([`images::ImageCache`]): fetching images from an
//!   [`images::ImageSource`] (the coordinator, over gRPC), verifying and caching them.
//! - [`poller`]: watching every domain: the host's hints (libvirt's lifecycle events) and a
//!   periodic poll as the safety net ([`poller::StatePoller`]).
//! - [`recovery`]: what start-up does about an earlier run that died mid-operation.
//! - [`state`]: generations and the last state reported per domain
//!   ([`state::StateTracker`]); where observations become wire reports.
//! - [`metrics`]: the Prometheus endpoint (per-domain statistics, host, agent health).
//! - [`hypervisor`]: the `Hypervisor` trait, its libvirt and in-memory implementations, and
//!   the one thread all hypervisor calls run on.
//! - [`journal`]: the operation journal that makes commands exactly-once across restarts.
//! - [`backoff`]: the one retry schedule, for the coordinator and for libvirt.
//!
//! The agent never stops a VM on its own: not when the coordinator is away, not on exit.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod commands;
pub mod config;
pub mod console;
pub mod enrol;
pub mod hypervisor;
pub mod identity;
pub mod images;
pub mod journal;
pub mod metrics;
pub mod poller;
pub mod recovery;
pub mod state;
pub mod stream;
