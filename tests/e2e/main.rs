//! End-to-end tests: every test starts the real `coordinator` and `agent` binaries (built by
//! `cargo build --bins`) as processes, on ephemeral loopback ports and in a temporary
//! directory, and drives them through the REST API as a user would.
//!
//! One binary with a module per topic, so that the harness is compiled once.
//!
//! Each test keeps its cluster alive while it checks the outcome of its body (`run(..).await
//! .unwrap()` inside the test function): a failure then panics while the processes still
//! exist, and the cluster prints the end of their logs.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

mod admin;
mod auth;
mod bad_input;
mod cli;
mod config;
mod console;
mod faults;
mod fleet;
mod hardening;
mod host_identity;
mod images;
mod late_results;
mod lifecycle;
mod metrics;
mod multi_coordinator;
mod qemu;
mod quotas;
mod rate_limit;
mod reliability;
mod scheduling;
mod snapshots;
mod systemd;
mod test_image;
mod tokens;
mod vms_from_images;
