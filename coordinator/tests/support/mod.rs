//! What the coordinator's in-process tests share: the application state on a temporary
//! SQLite database, with rate limiting off and small quotas.
#![allow(dead_code, clippy::unwrap_used)]

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use vmm_coordinator::auth::{PasswordHasher, TokenIssuer};
use vmm_coordinator::config::{Placement, Registration};
use vmm_coordinator::console::{ConsoleSettings, Consoles};
use vmm_coordinator::hosts::AgentRegistry;
use vmm_coordinator::http::forwarded::ForwardedHeader;
use vmm_coordinator::images::{ImageFiles, Images};
use vmm_coordinator::pki::AgentAuth;
use vmm_coordinator::quotas::QuotaLimits;
use vmm_coordinator::ratelimit::{RateLimitSettings, RateLimits};
use vmm_coordinator::state::{AppState, Settings, Shared};

/// The settings a test may choose.
pub struct TestSettings {
    pub agent_token: &'static str,
    pub operation_timeout: Duration,
    pub host_dead_after: Duration,
    pub image_max_bytes: u64,
    pub console: ConsoleSettings,
}

impl TestSettings {
    /// The settings most tests use: the given agent token, a generous operation timeout.
    pub fn new(agent_token: &'static str) -> Self {
        Self {
            agent_token,
            operation_timeout: Duration::from_secs(30),
            host_dead_after: Duration::from_secs(60),
            image_max_bytes: 1 << 30,
            console: ConsoleSettings::default(),
        }
    }
}

/// The state of a coordinator whose database lives in `dir`, taking the shared agent token.
pub async fn app_state(dir: &std::path::Path, settings: TestSettings) -> AppState {
    let auth = AgentAuth::SharedToken(settings.agent_token.into());
    app_state_with_auth(dir, settings, auth).await
}

/// The state of a coordinator whose database and agents' CA live in `dir`, taking
/// certificates that last `lifetime`.
pub async fn app_state_with_certificates(
    dir: &std::path::Path,
    settings: TestSettings,
    lifetime: Duration,
) -> AppState {
    let ca = vmm_coordinator::pki::CertificateAuthority::create(&dir.join("pki")).unwrap();
    let auth = AgentAuth::Certificates(Arc::new(vmm_coordinator::pki::Pki {
        ca,
        host_certificate_lifetime: lifetime,
    }));
    app_state_with_auth(dir, settings, auth).await
}

/// The state of a coordinator whose database lives in `dir`, with agents known by `auth`.
pub async fn app_state_with_auth(
    dir: &std::path::Path,
    settings: TestSettings,
    auth: AgentAuth,
) -> AppState {
    let db = vmm_coordinator::db::connect(&vmm_coordinator::db::test_database_url(dir).await)
        .await
        .unwrap();
    let one = NonZeroU32::new(1).unwrap();
    let files = ImageFiles::open(&dir.join("images")).unwrap();
    AppState::new(Shared {
        reads: vmm_coordinator::db::Reads::of(&db).unwrap(),
        db,
        registry: Arc::new(AgentRegistry::default()),
        images: Arc::new(Images::new(files, settings.image_max_bytes).unwrap()),
        tokens: Arc::new(TokenIssuer::new(
            b"in-process-test-secret-0123456789abcdef",
            3600,
        )),
        passwords: PasswordHasher::new(4).await.unwrap(),
        rate_limits: Arc::new(RateLimits::new(RateLimitSettings {
            enabled: false,
            requests_per_second: one,
            burst: one,
            login_per_minute: one,
            login_burst: one,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
        })),
        metrics: metrics_exporter_prometheus::PrometheusBuilder::new()
            .build_recorder()
            .handle(),
        settings: Arc::new(Settings {
            agent_auth: auth,
            operation_timeout: settings.operation_timeout,
            host_dead_after: settings.host_dead_after,
            placement: Placement::Spread,
            cpu_allocation_ratio: 4.0,
            default_quota: QuotaLimits {
                max_vms: 10,
                max_cpu: 16,
                max_memory: 16384,
                max_disk_gb: 100,
                max_snapshots: 10,
            },
            registration: Registration::Open,
            request_timeout: settings.operation_timeout + Duration::from_secs(30),
            api_metrics: true,
        }),
        consoles: Arc::new(Consoles::new(settings.console)),
        users: Arc::default(),
    })
}
