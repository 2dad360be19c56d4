//! Assembly: the shared application state, the REST router, the gRPC server for agents,
//! and the start-up sequence (database, restart recovery, secrets, admin account,
//! listeners) up to a graceful shutdown on SIGTERM or Ctrl-C. Under systemd it reports
//! `READY=1` once both listeners serve, feeds the watchdog while the database answers, and
//! reports `STOPPING=1` on the way out.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use vmm_proto::agent_control_server::AgentControlServer;
use vmm_proto::host_identity_server::HostIdentityServer;

use crate::agents::AgentControlService;
use crate::agents::host_identity::HostIdentityService;
use crate::auth::{PasswordHasher, TokenIssuer, load_or_create_jwt_secret};
use crate::cluster;
use crate::config::Config;
use crate::connections::Admission;
use crate::console::Consoles;
use crate::db::{self, Db};
use crate::hosts::{self, AgentRegistry};
use crate::images::{self, ImageFiles, Images};
use crate::pki::{self, AgentAuth, CertificateAuthority, Pki};
use crate::ratelimit::{self, RateLimits};
use crate::state::{AppState, Settings, Shared};
use crate::{
    admin, api_tokens, console, health, http, keys, openapi, operations, quotas, snapshots,
    telemetry, users, vms,
};

/// Largest request body the REST API reads (but for the routes below and image uploads).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// HTTP/2 receive windows of the agents' listener, per stream and per connection.
pub const GRPC_STREAM_WINDOW: u32 = 256 * 1024;
pub const GRPC_CONNECTION_WINDOW: u32 =
    GRPC_STREAM_WINDOW * (console::MAX_CONSOLES_PER_HOST as u32 + 8);

/// How long a half-transferred image file in a directory shared with other coordinators
/// must lie untouched before a starting coordinator removes it (no transfer stalls that long).
const SHARED_LEFTOVER_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Largest body of `POST /api/vms`.
pub const CREATE_VM_MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/health", get(health::health))
        .route("/api/metrics", get(telemetry::scrape_on_api))
        .route("/api/openapi.json", get(openapi::openapi_json))
        .route("/api/auth/register", post(users::routes::register))
        .route("/api/auth/login", post(users::routes::login))
        .route(
            "/api/vms",
            get(vms::routes::list_vms)
                .post(vms::routes::create_vm)
                .layer(
                    // A create may carry 64 KiB of user data and some keys.
                    DefaultBodyLimit::max(CREATE_VM_MAX_BODY_BYTES),
                ),
        )
        .route(
            "/api/vms/{id}",
            get(vms::routes::get_vm).delete(vms::routes::delete_vm),
        )
        .route("/api/vms/{id}/action", post(vms::routes::vm_action))
        .route(
            "/api/vms/{id}/console",
            post(console::routes::create_ticket),
        )
        .route("/api/console/{ticket}", get(console::routes::open_console))
        .route(
            "/api/vms/{id}/snapshots",
            get(snapshots::routes::list_snapshots).post(snapshots::routes::create_snapshot),
        )
        .route(
            "/api/snapshots/{id}/restore",
            post(snapshots::routes::restore_snapshot),
        )
        .route(
            "/api/snapshots/{id}",
            delete(snapshots::routes::delete_snapshot),
        )
        .route("/api/operations", get(operations::routes::list_operations))
        .route(
            "/api/operations/{id}",
            get(operations::routes::get_operation),
        )
        .route(
            "/api/images",
            get(images::routes::list_images).post(images::routes::create_image),
        )
        .route(
            "/api/images/{id}",
            get(images::routes::get_image).delete(images::routes::delete_image),
        )
        .route(
            "/api/images/{id}/file",
            // The file is streamed to disk and counted against IMAGE_MAX_BYTES by the route.
            put(images::routes::upload_file)
                .layer(DefaultBodyLimit::disable())
                .layer(axum::middleware::from_fn(
                    images::routes::close_connection_when_refused,
                )),
        )
        .route(
            "/api/keys",
            get(keys::routes::list_keys).post(keys::routes::add_key),
        )
        .route("/api/keys/{id}", delete(keys::routes::delete_key))
        .route(
            "/api/tokens",
            get(api_tokens::routes::list_tokens).post(api_tokens::routes::create_token),
        )
        .route("/api/tokens/{id}", delete(api_tokens::routes::delete_token))
        .route("/api/hosts", get(hosts::routes::list_hosts))
        .route(
            "/api/hosts/join-tokens",
            post(pki::routes::create_join_token),
        )
        .route("/api/hosts/{id}", delete(hosts::routes::delete_host))
        .route("/api/hosts/{id}/drain", post(hosts::routes::drain_host))
        .route("/api/hosts/{id}/undrain", post(hosts::routes::undrain_host))
        .route("/api/quota", get(quotas::routes::my_quota))
        .route(
            "/api/quota/{user_id}",
            get(quotas::routes::user_quota).put(quotas::routes::set_user_quota),
        )
        .route(
            "/api/admin/users",
            get(admin::list_users).post(admin::create_user),
        )
        .route("/api/admin/users/{id}", delete(admin::delete_user))
        .route("/api/admin/users/{id}/role", put(admin::set_role))
        .fallback(http::route_not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            http::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::timeout::limit_request_time,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            ratelimit::limit_requests,
        ))
        .layer(axum::middleware::from_fn(telemetry::track_http))
        // One line per request (see `http::access_log`), inside the request ID's layers.
        .layer(axum::middleware::from_fn(http::access_log::log_request))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Runs the coordinator until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;

    let database_url = config.database_url();
    let db = db::connect(&database_url).await?;
    let advertised = cluster::Advertised {
        grpc_addr: config.grpc_addr.to_string(),
        public_url: config.public_url.clone(),
    };
    if cluster::is_shared(&db) {
        // Other coordinators may be running on this database: only what dead ones left
        // (this one's previous run included) is settled, by lease (`cluster`).
        cluster::renew(&db, &advertised).await?;
        cluster::sweep(&db, config.host_dead_after()).await?;
    } else {
        // Whatever the last run left (a crash included): no agent is connected yet, so no
        // VM's state is known.
        hosts::store::mark_all_unreachable(
            &db,
            "the coordinator restarted; its host has not reconnected yet",
        )
        .await?;
        operations::runner::settle_after_restart(&db).await?;
    }
    let image_files = ImageFiles::open(&config.images_dir())?;
    // Alone with its files, everything half-transferred is this coordinator's own leftover;
    // beside others (a shared directory), only what no transfer touched for a day.
    let leftovers_older_than = if cluster::is_shared(&db) {
        SHARED_LEFTOVER_AGE
    } else {
        Duration::ZERO
    };
    let leftovers = image_files
        .remove_leftover_parts(leftovers_older_than)
        .with_context(|| format!("cannot clean {}", image_files.dir().display()))?;
    if leftovers > 0 {
        tracing::info!(
            files = leftovers,
            "removed image files left half-transferred by the last stop"
        );
    }
    images::check::warn_if_unavailable().await;

    let agent_auth = agent_auth(&config)?;
    let rest_tls = config.rest_tls()?;

    let secret = load_or_create_jwt_secret(config.jwt_secret.as_deref(), &config.data_dir)?;
    let passwords = PasswordHasher::new(config.bcrypt_cost).await?;
    if let Some(admin) = config.admin_bootstrap() {
        let hash = passwords.hash(&admin.password).await?;
        users::store::upsert_admin(&db, &admin.username, &hash).await?;
        tracing::info!(username = %admin.username, "admin account ensured");
    }
    for username in users::store::shadowed_by_case(&db).await? {
        tracing::warn!(
            username = %username,
            "this account cannot log in: an older account has the same name in another case \
             (see migration 0006); delete it or hand its VMs over"
        );
    }

    let state = AppState::new(Shared {
        reads: db::Reads::of(&db)?,
        db,
        registry: Arc::new(AgentRegistry::default()),
        images: Arc::new(Images::new(image_files, config.image_max_bytes)?),
        tokens: Arc::new(TokenIssuer::new(&secret, config.jwt_ttl_secs.as_secs())),
        passwords,
        rate_limits: Arc::new(RateLimits::new(config.rate_limits())),
        metrics: telemetry::install()?,
        settings: Arc::new(Settings {
            agent_auth: agent_auth.clone(),
            operation_timeout: config.operation_timeout(),
            host_dead_after: config.host_dead_after(),
            placement: config.placement,
            cpu_allocation_ratio: config.cpu_allocation_ratio,
            default_quota: config.default_quota(),
            registration: config.registration,
            request_timeout: config.http_request_timeout(),
            api_metrics: config.api_metrics,
        }),
        consoles: Arc::new(Consoles::new(config.console_settings())),
        users: Arc::default(),
    });

    let http_listener = TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("cannot listen on HTTP_ADDR {}", config.http_addr))?;
    let grpc_listener = TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on GRPC_ADDR {}", config.grpc_addr))?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on METRICS_ADDR {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(
        http = %http_listener.local_addr()?,
        https = rest_tls.is_some(),
        grpc = %grpc_listener.local_addr()?,
        agents = match &agent_auth {
            AgentAuth::Certificates(_) => "mutual TLS",
            AgentAuth::SharedToken(_) => "shared token, plain HTTP/2",
        },
        metrics = ?metrics_listener.as_ref().and_then(|l| l.local_addr().ok()),
        "coordinator listening"
    );

    images::download::resume_after_restart(&state.db, &state.images).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(upkeep(state.clone(), stop_rx.clone()));
    tokio::spawn(db::checkpoints(state.db.clone(), stop_rx.clone()));
    let cluster_task = tokio::spawn(cluster::run(
        state.clone(),
        database_url,
        advertised,
        stop_rx.clone(),
    ));
    let http_server = {
        let stop = stopped(stop_rx.clone());
        let service = router(state.clone());
        let admission = Admission::new(config.http_connection_limits());
        tokio::spawn(http::server::serve(
            http_listener,
            service,
            admission,
            rest_tls,
            stop,
        ))
    };
    let metrics_server = metrics_listener.map(|listener| {
        let stop = stopped(stop_rx.clone());
        let service = telemetry::metrics_router(state.clone());
        let admission = Admission::new(config.metrics_connection_limits());
        tokio::spawn(http::server::serve(
            listener, service, admission, None, stop,
        ))
    });
    let grpc_server = {
        let stop = stopped(stop_rx);
        let admission = Admission::new(config.grpc_connection_limits());
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            // What an agent may send on one stream before the coordinator reads it (a
            // console whose client reads nothing holds that much), and on all of its
            // streams together: room for every console a host may have, so that stalled
            // consoles never hold up another stream of the same connection.
            .initial_stream_window_size(Some(GRPC_STREAM_WINDOW))
            .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW))
            .add_service(AgentControlServer::new(AgentControlService::new(
                state.clone(),
            )))
            .add_service(HostIdentityServer::new(HostIdentityService::new(
                state.clone(),
            )));
        match &agent_auth {
            AgentAuth::Certificates(pki) => {
                let tls = pki::tls::agents_server_config(Arc::clone(pki))
                    .context("cannot set up TLS on the agents' port")?;
                let incoming = crate::agents::incoming_tls(grpc_listener, admission, tls);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
            }
            AgentAuth::SharedToken(_) => {
                let incoming = crate::agents::incoming(grpc_listener, admission);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, stop))
            }
        }
    };

    // The database is migrated and both listeners are bound and being served.
    vmm_shared::systemd::notify_ready();
    let watchdog = tokio::spawn(vmm_shared::systemd::run_watchdog({
        let db = state.db.clone();
        move || database_answers(db.clone())
    }));

    shutdown_signal().await;
    vmm_shared::systemd::notify_stopping();
    tracing::info!("shutting down");
    // Sessions end without recording anything per host, commands in flight fail (their
    // operations record that their outcome is unknown).
    state.registry.begin_shutdown();
    let _ = stop_tx.send(true);
    // Agent streams never end by themselves; give in-flight requests a bounded grace.
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = http_server.await;
        if let Some(metrics_server) = metrics_server {
            let _ = metrics_server.await;
        }
        let _ = grpc_server.await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within 10 s; exiting anyway");
    }
    let _ = cluster_task.await;
    record_shutdown(&state).await;
    // Pings go on while in-flight requests drain, and end before the database closes.
    watchdog.abort();
    state.db.close().await;
    Ok(())
}

/// What a stop leaves in the database, once the tasks that write to it have finished: every
/// host whose session it held unreachable and their VMs' state `unknown`, since no agent is
/// connected to a stopped coordinator (alone on its database: every host). The next start
/// finds (and writes) the same. On a shared database the hosts stay so only until their
/// agents reconnect to another coordinator, and this coordinator's lease goes with it.
pub async fn record_shutdown(state: &AppState) {
    if !state.registry.tasks_finished(Duration::from_secs(10)).await {
        tracing::warn!(
            "sessions or operations still running after 10 s; recording the stop anyway"
        );
    }
    let why = "the coordinator stopped; its host has not reconnected yet";
    let recorded = if cluster::is_shared(&state.db) {
        match hosts::store::mark_held_unreachable(&state.db, cluster::this_coordinator()).await {
            Ok(()) => cluster::leave(&state.db).await,
            Err(err) => Err(err),
        }
    } else {
        hosts::store::mark_all_unreachable(&state.db, why).await
    };
    if let Err(err) = recorded {
        tracing::error!(error = %err, "cannot record the hosts as unreachable on the way out");
    }
}

/// Periodic housekeeping. Rate-limit keys whose budget has refilled are indistinguishable
/// from new ones: dropping them keeps the limiter's memory proportional to the clients active
/// in the last minute or so. Idempotency keys past their retention are forgotten.
async fn upkeep(state: AppState, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = every.tick() => {
                state.rate_limits.forget_idle();
                if let Err(err) = crate::idempotency::forget_expired(&state.db).await {
                    tracing::warn!(error = %err, "cannot forget expired idempotency keys");
                }
                if let Err(err) = pki::store::forget_expired(&state.db).await {
                    tracing::warn!(error = %err, "cannot forget expired host certificates");
                }
                if let Err(err) = pki::join_tokens::forget_old(&state.db).await {
                    tracing::warn!(error = %err, "cannot forget expired join tokens");
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// How agents will prove who they are: the shared development token if one is set (with a
/// warning), else certificates of the CA in `<DATA_DIR>/pki`, made now if there is none.
fn agent_auth(config: &Config) -> anyhow::Result<AgentAuth> {
    if let Some(token) = &config.agent_token {
        tracing::warn!(
            "AGENT_TOKEN is set: agents share one token over plain HTTP/2 and a host is whoever \
             it says it is. For development and tests only; unset it and enrol hosts with join \
             tokens (deploy/README.md)"
        );
        return Ok(AgentAuth::SharedToken(token.clone()));
    }
    let dir = pki::authority::pki_dir(&config.data_dir);
    let (ca, created) = CertificateAuthority::load_or_create(&dir)
        .with_context(|| format!("cannot set up the agents' CA in {}", dir.display()))?;
    if created {
        tracing::info!(dir = %dir.display(), fingerprint = %ca.fingerprint(),
            "created the agents' certificate authority; back up ca.key");
    } else {
        tracing::info!(fingerprint = %ca.fingerprint(), "agents' certificate authority loaded");
    }
    Ok(AgentAuth::Certificates(Arc::new(Pki {
        ca,
        host_certificate_lifetime: config.agent_cert_lifetime,
    })))
}

/// `coordinator ca init`: creates the CA unless there is one, and prints its fingerprint.
pub fn init_ca(config: &Config) -> anyhow::Result<String> {
    create_private_dir(&config.data_dir)?;
    let dir = pki::authority::pki_dir(&config.data_dir);
    let (ca, created) = CertificateAuthority::load_or_create(&dir)
        .with_context(|| format!("cannot set up the agents' CA in {}", dir.display()))?;
    Ok(format!(
        "{} the agents' certificate authority in {}\nSHA-256 fingerprint: {}",
        if created { "created" } else { "found" },
        dir.display(),
        ca.fingerprint()
    ))
}

/// The watchdog's health check: a process whose database does not answer is not serving.
async fn database_answers(db: Db) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(&db).await.map(drop)
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::error!(error = %err, "cannot listen for SIGTERM");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

fn create_private_dir(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create DATA_DIR {}", path.display()))
}
