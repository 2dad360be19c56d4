//! The coordinator: users and login, the public REST API, the record of hosts, VMs and
//! operations, scheduling, and the gRPC endpoint every host's agent connects to. It never
//! talks to libvirt itself; every change on a host goes through that host's agent.
//!
//! Layout by domain:
//! - [`app`]: start-up, router, servers, shutdown
//! - [`state`]: what handlers share (`AppState`) and the settings fixed at start
//! - [`config`]: flags and environment variables
//! - [`connections`]: connection caps and deadlines of every listener
//! - [`console`]: VMs' serial consoles and screens over WebSocket: tickets, sessions, relay
//! - [`cluster`]: several coordinators on one PostgreSQL database: leases, routed commands
//! - [`db`]: the database (SQLite or PostgreSQL) and its migrations
//! - [`copy_database`]: the `copy-database` command (e.g. SQLite to PostgreSQL)
//! - [`error`]: the one error type and its HTTP and gRPC mappings
//! - [`http`]: extractors, fallbacks, the server loop, the request deadline, forwarded
//!   headers
//! - [`auth`]: passwords, tokens, the `CurrentUser` extractor
//! - [`api_tokens`]: personal API tokens for automation (`vmm_pat_…`), stored hashed
//! - [`users`]: register and login
//! - [`lifecycle`]: the state machine of VMs and snapshots: preconditions, the effect of
//!   every outcome, the SQL predicates derived from them
//! - [`vms`]: VM routes, records, host reports
//! - [`snapshots`]: VM snapshots
//! - [`images`]: the image catalogue, its files, uploads and downloads
//! - [`keys`]: users' SSH public keys
//! - [`hosts`]: connected agents, host records, the scheduler, draining and deleting hosts
//! - [`agents`]: the agent stream, and who is calling on it
//! - [`pki`]: the agents' CA, join tokens, host certificates, TLS settings
//! - [`operations`]: operation records and the runner that carries every operation out
//! - [`idempotency`]: `Idempotency-Key` for client retries
//! - [`quotas`]: per-user limits and usage
//! - [`ledger`]: running totals of what VMs and snapshots take, per host and per user
//! - [`admin`]: user administration
//! - [`openapi`]: the OpenAPI document of the REST API, generated from the handlers
//! - [`telemetry`]: Prometheus metrics
//! - [`ratelimit`]: request budgets per client, user and login
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod api_tokens;
pub mod app;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod connections;
pub mod console;
pub mod copy_database;
pub mod db;
pub mod error;
pub mod health;
pub mod hosts;
pub mod http;
pub mod idempotency;
pub mod images;
pub mod keys;
pub mod ledger;
pub mod lifecycle;
pub mod openapi;
pub mod operations;
pub mod pki;
pub mod quotas;
pub mod ratelimit;
pub mod snapshots;
pub mod state;
pub mod telemetry;
pub mod users;
pub mod vms;

#[cfg(test)]
mod test_support;

pub use app::run;
pub use config::Config;
