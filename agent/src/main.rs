//! `agent`: the per-host half of the VM manager. It owns the host's libvirt connection,
//! carries out the coordinator's commands, and reports the state of every domain.
//!
//! This binary only reads its settings, sets up logging and wires the parts of the
//! `vmm_agent` library together on the real libvirt host; the parts live in the library
//! (see its docs), so that tests and simulations can put them together on other hosts.
//!
//! The agent never stops a VM on its own: not when the coordinator is away, not on exit.
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use vmm_agent::commands::CommandExecutor;
use vmm_agent::config::{self, AgentAuth, AgentConfig, Args, LogFormat};
use vmm_agent::console::ConsoleRelays;
use vmm_agent::enrol::{Credentials, CurrentCoordinator};
use vmm_agent::hypervisor::HypervisorHandle;
use vmm_agent::hypervisor::hints;
use vmm_agent::hypervisor::libvirt::{LibvirtHost, LibvirtSettings};
use vmm_agent::images::{GrpcImageSource, ImageCache};
use vmm_agent::metrics::{self, MetricsService};
use vmm_agent::poller::StatePoller;
use vmm_agent::recovery;
use vmm_agent::state::StateTracker;
use vmm_agent::stream::{CoordinatorLink, SessionSettings};

/// How often running VMs without an address are read again, so a guest's DHCP lease shows
/// in the API within seconds rather than at the next poll.
const ADDRESS_LOOK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Args = vmm_shared::settings::parse_or_exit("agent", config::COMMAND_LINE_ONLY);
    let check_only = args.check_config;
    let config = match AgentConfig::from_args(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("agent: {}", vmm_shared::error_chain(&error));
            return ExitCode::from(2);
        }
    };
    if check_only {
        println!("agent: the configuration is valid");
        return ExitCode::SUCCESS;
    }
    init_tracing(config.log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("agent stopped: {error:#}");
            eprintln!("agent: {error:#}");
            if error.is::<Unrecoverable>() {
                // Like a bad setting: restarting cannot fix it (systemd's
                // RestartPreventExitStatus=2).
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A reason to stop that only the operator can remove (no usable certificate and no way to
/// get one; a certificate for another host than HOST_ID).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unrecoverable(String);

/// The agent's credentials, and the host it is: the one its certificate names, once enrolled.
fn credentials_and_host(config: &AgentConfig) -> anyhow::Result<(Credentials, vmm_shared::HostId)> {
    let credentials = match &config.auth {
        AgentAuth::SharedToken(token) => Credentials::SharedToken(token.clone()),
        AgentAuth::Certificate { join_token } => {
            Credentials::certificate(&config.data_dir, join_token.clone())
                .map_err(|error| Unrecoverable(vmm_shared::error_chain(&error)))?
        }
    };
    let Some(identity) = credentials.identity() else {
        return Ok((credentials, config.host_id.clone()));
    };
    let certified = identity.host().clone();
    if certified != config.host_id {
        if config.host_id_set {
            return Err(Unrecoverable(format!(
                "this agent is enrolled as host {certified} (its certificate in {}), but HOST_ID \
                 is {}: set HOST_ID={certified}, or remove that directory and enrol again with a \
                 join token for {}",
                config.data_dir.join("identity").display(),
                config.host_id,
                config.host_id
            ))
            .into());
        }
        tracing::info!(host_id = %certified, hostname = %config.host_id,
            "using the host ID the certificate names, not the hostname");
    }
    if let AgentAuth::Certificate { join_token } = &config.auth
        && !matches!(join_token, config::JoinTokenSource::None)
    {
        tracing::info!(host_id = %certified, "already enrolled: the join token is not used");
    }
    Ok((credentials, certified))
}

/// Text logs escape control characters and are coloured only on a terminal without
/// `NO_COLOR` (`vmm_shared::logging`).
fn init_tracing(format: LogFormat) {
    vmm_shared::logging::init(format == LogFormat::Json);
}

async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let images_dir = config.prepare_data_dir()?;
    let (credentials, host_id) = credentials_and_host(&config)?;
    let recorder = metrics::agent::install().context("cannot set up the agent's metrics")?;
    let metrics_addr = config.metrics.addr;
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| format!("METRICS_ADDR (--metrics-addr) {metrics_addr} cannot be bound"))?;
    // libvirt's default error handler prints every error to stderr; the agent reports
    // errors itself.
    virt::error::clear_error_callback();

    let libvirt_settings = LibvirtSettings {
        uri: config.libvirt_uri.clone(),
        storage_pool: config.storage_pool.clone(),
        images_dir,
        consoles_dir: config.consoles_dir(),
        network: config.network.clone(),
        accel: config.guest_accel,
    };
    let hypervisor = HypervisorHandle::spawn(move || LibvirtHost::open(libvirt_settings)).await?;
    let served = serve(
        &config,
        credentials,
        host_id,
        recorder,
        metrics_listener,
        hypervisor.clone(),
    )
    .await;
    // Closed on its thread before the process exits (see `HypervisorHandle::close`).
    hypervisor.close(HYPERVISOR_CLOSE_PATIENCE).await;
    served
}

/// How long the agent waits for the libvirt connection to close as it exits.
const HYPERVISOR_CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the agent on the open hypervisor until it stops: recovery, the first poll, then the
/// coordinator link, the poller, the metrics endpoint and the systemd watchdog together.
async fn serve(
    config: &AgentConfig,
    credentials: Credentials,
    host_id: vmm_shared::HostId,
    recorder: metrics_exporter_prometheus::PrometheusHandle,
    metrics_listener: tokio::net::TcpListener,
    hypervisor: HypervisorHandle,
) -> anyhow::Result<()> {
    let metrics_addr = config.metrics.addr;
    // The coordinator of the current session: image fetches and consoles follow it.
    let current_coordinator = CurrentCoordinator::new(&config.coordinator_url);
    // Images come from the coordinator, over the session's URL with its credential.
    let image_source = GrpcImageSource::new(
        &config.coordinator_url,
        host_id.clone(),
        credentials.clone(),
    )
    .context("COORDINATOR_URL (--coordinator) cannot be used to fetch images")?
    .following(current_coordinator.clone());
    let images = Arc::new(ImageCache::new(
        hypervisor.clone(),
        Arc::new(image_source),
        config.data_dir.join("image-cache"),
    ));
    // Before any command can arrive: the journal, and the sweep of what a killed run left.
    let journal = recovery::recover_at_start(&config.data_dir, &hypervisor, &images).await?;

    let metrics_service = MetricsService::new(
        hypervisor.clone(),
        config.metrics.sample_interval,
        Some(recorder),
    );
    tracing::info!(addr = %metrics_addr, "serving metrics at /metrics");

    let tracker = Arc::new(StateTracker::new());
    let poller = Arc::new(
        StatePoller::new(hypervisor.clone(), Arc::clone(&tracker))
            .watching_addresses(ADDRESS_LOOK_INTERVAL),
    );
    // Lifecycle events first, then the first poll: nothing can fall between the two.
    let (hint_outlet, hint_streams) = hints::outlet();
    if let Err(error) = hypervisor.call(|hv| hv.send_hints_to(hint_outlet)).await {
        tracing::warn!(%error, poll_interval = ?config.poll_interval,
            "no lifecycle events for now; changes are seen at the next poll");
    }
    poller.poll_once().await?;
    tracing::info!(
        host_id = %host_id,
        domains = tracker.reports().len(),
        enrolled = credentials.identity().is_some(),
        "agent started"
    );

    let executor = Arc::new(CommandExecutor::new(
        hypervisor.clone(),
        tracker,
        config.shutdown_timeout,
        journal,
        Arc::clone(&images),
    ));
    let service_hypervisor = hypervisor.clone();
    // Consoles travel on a channel of their own to the session's URL, with its credential.
    let consoles = Arc::new(
        ConsoleRelays::new(
            &config.coordinator_url,
            host_id.clone(),
            credentials.clone(),
            hypervisor.clone(),
        )
        .context("COORDINATOR_URL (--coordinator) cannot be used for consoles")?
        .following(current_coordinator.clone()),
    );
    let link = CoordinatorLink::new(
        SessionSettings {
            coordinator_url: config.coordinator_url.clone(),
            other_coordinator_urls: config.coordinator_urls[1..].to_vec(),
            host_id,
            credentials,
            heartbeat_interval: config.heartbeat_interval,
        },
        hypervisor,
        Arc::clone(&poller),
        executor,
        images,
    )
    .with_consoles(consoles)
    .with_current_coordinator(current_coordinator);

    let poll_interval = config.poll_interval;
    tokio::select! {
        () = async move { poller.run(poll_interval, hint_streams).await } => {}
        refused = link.run() => {
            return Err(Unrecoverable(vmm_shared::error_chain(&refused)).into());
        }
        served = metrics::serve(metrics_listener, Arc::clone(&metrics_service)) => {
            served.context("the metrics endpoint stopped")?;
        }
        () = metrics_service.run_collector() => {}
        () = tell_systemd(service_hypervisor) => {}
        signal = shutdown_signal() => {
            signal?;
            vmm_shared::systemd::notify_stopping();
            tracing::info!("shutting down; VMs keep running");
        }
    }
    Ok(())
}

/// Tells systemd the agent is ready, then feeds its watchdog while the libvirt thread
/// answers. Polled alongside the agent's tasks: it yields once first, so that READY=1 goes
/// out only after every other branch (the metrics endpoint, the coordinator link: connected
/// or retrying with backoff) has started. Never resolves.
async fn tell_systemd(hypervisor: HypervisorHandle) {
    tokio::task::yield_now().await;
    vmm_shared::systemd::notify_ready();
    vmm_shared::systemd::run_watchdog(move || {
        let hypervisor = hypervisor.clone();
        // A no-op through the one thread every libvirt call runs on: a hung libvirt call
        // (or a hung libvirtd) leaves it queued, and the watchdog unfed.
        async move { hypervisor.call(|_| Ok(())).await }
    })
    .await
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
