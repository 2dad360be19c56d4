//! What every request handler and the agent stream share: the database, the registry of
//! connected agents, the image files, the token issuer, the password hasher, the rate limiter, the metrics
//! handle, the settings fixed at start, the consoles' tickets and sessions, and the accounts
//! recently seen.
//!
//! This module sits below every route and store: it imports none of them (only the types it
//! holds), so no route or store ever needs `crate::app`, which assembles them all.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::{PasswordHasher, TokenIssuer};
use crate::config::{Placement, Registration};
use crate::console::Consoles;
use crate::db::{Db, Reads};
use crate::hosts::AgentRegistry;
use crate::images::Images;
use crate::pki::AgentAuth;
use crate::quotas::QuotaLimits;
use crate::ratelimit::RateLimits;
use crate::users::cache::UserCache;

/// Settings the request handlers and the agent stream need, fixed at start.
#[derive(Debug)]
pub struct Settings {
    /// How agents prove who they are: certificates of the coordinator's CA, or (development
    /// only) the shared token.
    pub agent_auth: AgentAuth,
    pub operation_timeout: Duration,
    pub host_dead_after: Duration,
    pub placement: Placement,
    pub cpu_allocation_ratio: f64,
    pub default_quota: QuotaLimits,
    pub registration: Registration,
    pub request_timeout: Duration,
    pub api_metrics: bool,
}

/// Cloned for every request (by each extractor and middleware that takes it): one reference
/// count to bump, not one per shared part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What an [`AppState`] holds.
pub struct Shared {
    pub db: Db,
    /// The most frequent reads of `db` (see [`Reads`]).
    pub reads: Reads,
    pub registry: Arc<AgentRegistry>,
    /// Image files, transfers in progress, and the client that downloads images.
    pub images: Arc<Images>,
    pub tokens: Arc<TokenIssuer>,
    pub passwords: PasswordHasher,
    pub rate_limits: Arc<RateLimits>,
    pub metrics: PrometheusHandle,
    pub settings: Arc<Settings>,
    /// Console tickets and the console sessions open.
    pub consoles: Arc<Consoles>,
    /// The accounts requests were recently made as (see [`UserCache`]).
    pub users: Arc<UserCache>,
}
