//! The agent's Prometheus endpoint: `GET /metrics` on `--metrics-addr` (loopback by
//! default), in the text format, 404 for every other path. It replaces the
//! `prometheus-libvirt-exporter` people run beside libvirt.
//!
//! A scrape is:
//! - the libvirt part (`domains`): per-domain statistics from ONE bulk-stats call
//!   (`virConnectGetAllDomainStats`, see [`crate::hypervisor::libvirt`]) run on the
//!   hypervisor thread, and the host's capacity;
//! - when that collection was made and how long it took;
//! - the agent's process metrics (`process`);
//! - the agent's own event metrics ([`agent`]: coordinator session, commands, libvirt
//!   lifecycle events), rendered by `metrics-exporter-prometheus`.
//!
//! When libvirt statistics are collected. On QEMU the bulk call costs several QEMU monitor
//! round trips per running domain (block, balloon, vCPU and CPU groups each ask QEMU), so
//! it is slower than one scrape should be. With a sample interval (the default), the
//! statistics are collected in the background every interval, but only while someone
//! scrapes (nothing is collected on a host nobody monitors), and a scrape serves the
//! latest collection: scrapes are fast, and libvirt's load does not grow with the number
//! of scrapers. A scrape that finds no collection younger than two intervals (the first
//! one, or after an idle spell) collects itself. With an interval of 0 every scrape
//! collects. Either way concurrent scrapes share one collection, and at most one bulk call
//! is ever queued: if libvirt hangs, scrapes answer `libvirt_up 0` after a timeout instead
//! of piling calls up behind it.
//!
//! Never a 500: when libvirt does not answer, the scrape says `libvirt_up 0` and carries
//! no domain series.

pub mod agent;
mod domains;
pub mod exposition;
mod process;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::hypervisor::HypervisorHandle;
use crate::hypervisor::StatsSample;
use exposition::{Exposition, MetricType::Gauge};
use process::ProcessStats;

/// How long a scrape waits for libvirt before answering `libvirt_up 0`.
pub const COLLECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Background collection stops when nobody scraped for this long.
const IDLE_AFTER: Duration = Duration::from_secs(300);

/// Where the endpoint listens and how libvirt statistics are collected.
#[derive(Debug, Clone, Copy)]
pub struct MetricsSettings {
    pub addr: SocketAddr,
    /// How often libvirt statistics are collected while someone scrapes; zero collects
    /// during every scrape.
    pub sample_interval: Duration,
}

/// Everything a scrape reads; shared by the HTTP server and the background collector.
pub struct MetricsService {
    collector: StatsCollector,
    recorder: Option<PrometheusHandle>,
}

impl MetricsService {
    /// `recorder` renders the agent's event metrics; `None` leaves them out (tests).
    pub fn new(
        hypervisor: HypervisorHandle,
        sample_interval: Duration,
        recorder: Option<PrometheusHandle>,
    ) -> Arc<Self> {
        Arc::new(Self {
            collector: StatsCollector::new(hypervisor, sample_interval, COLLECT_TIMEOUT),
            recorder,
        })
    }

    /// The body of one scrape.
    pub async fn scrape(&self) -> String {
        let collection = self.collector.current().await;
        let mut out = Exposition::new();
        out.single(
            "agent_libvirt_stats_duration_seconds",
            "How long the agent's latest collection of libvirt statistics took.",
            Gauge,
            collection.duration.as_secs_f64(),
        );
        out.single(
            "agent_libvirt_stats_age_seconds",
            "Seconds since the libvirt statistics in this scrape were collected.",
            Gauge,
            collection.started.elapsed().as_secs_f64(),
        );
        ProcessStats::read().write(&mut out);
        let own = out.into_text();
        let recorded = self
            .recorder
            .as_ref()
            .map(|recorder| {
                agent::update_event_loop_failures();
                recorder.render()
            })
            .unwrap_or_default();
        let mut body = String::with_capacity(collection.text.len() + own.len() + recorded.len());
        body.push_str(&collection.text);
        body.push_str(&own);
        body.push_str(&recorded);
        body
    }

    /// Keeps the libvirt statistics fresh while someone scrapes. Never returns; does
    /// nothing if the sample interval is zero (scrapes collect themselves then).
    pub async fn run_collector(&self) {
        self.collector.run().await;
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .with_state(self)
    }
}

/// Serves the endpoint on `listener` until the process ends.
pub async fn serve(listener: TcpListener, service: Arc<MetricsService>) -> std::io::Result<()> {
    axum::serve(listener, service.router()).await
}

async fn metrics_handler(State(service): State<Arc<MetricsService>>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, exposition::CONTENT_TYPE)],
        service.scrape().await,
    )
}

/// One collection of libvirt statistics, already written out.
#[derive(Debug)]
struct Collection {
    started: Instant,
    duration: Duration,
    /// `libvirt_up` and, if libvirt answered, the domain and host families.
    text: String,
}

/// Collects libvirt statistics on the hypervisor thread: at most one bulk call queued at a
/// time, shared by concurrent scrapes, cached for the sample interval.
struct StatsCollector {
    hypervisor: HypervisorHandle,
    interval: Duration,
    timeout: Duration,
    latest: Mutex<Option<Arc<Collection>>>,
    /// Held while collecting, so concurrent scrapes wait for one collection.
    collecting: tokio::sync::Mutex<()>,
    /// Set while a bulk call is queued or running on the hypervisor thread, even after its
    /// caller gave up waiting.
    call_pending: Arc<AtomicBool>,
    last_scrape: Mutex<Option<Instant>>,
    failing: AtomicBool,
}

impl StatsCollector {
    fn new(hypervisor: HypervisorHandle, interval: Duration, timeout: Duration) -> Self {
        Self {
            hypervisor,
            interval,
            timeout,
            latest: Mutex::new(None),
            collecting: tokio::sync::Mutex::new(()),
            call_pending: Arc::new(AtomicBool::new(false)),
            last_scrape: Mutex::new(None),
            failing: AtomicBool::new(false),
        }
    }

    /// How old a collection a scrape may serve.
    fn max_age(&self) -> Duration {
        self.interval * 2
    }

    /// The collection a scrape serves: the latest if young enough, else a new one.
    async fn current(&self) -> Arc<Collection> {
        let requested = Instant::now();
        *lock(&self.last_scrape) = Some(requested);
        match self.latest_within(requested, self.max_age()) {
            Some(collection) => collection,
            None => self.collect(requested, self.max_age()).await,
        }
    }

    async fn run(&self) {
        if self.interval.is_zero() {
            return std::future::pending().await;
        }
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let scraped_lately = lock(&self.last_scrape)
                .is_some_and(|scraped| scraped.elapsed() < IDLE_AFTER.max(self.max_age()));
            if scraped_lately {
                self.collect(Instant::now(), Duration::ZERO).await;
            }
        }
    }

    /// The latest collection if it started no more than `max_age` before `requested`.
    fn latest_within(&self, requested: Instant, max_age: Duration) -> Option<Arc<Collection>> {
        lock(&self.latest)
            .as_ref()
            .filter(|latest| requested.saturating_duration_since(latest.started) <= max_age)
            .cloned()
    }

    /// Collects, unless a collection made while this one waited its turn will do.
    async fn collect(&self, requested: Instant, max_age: Duration) -> Arc<Collection> {
        let _turn = self.collecting.lock().await;
        if let Some(collection) = self.latest_within(requested, max_age) {
            return collection;
        }
        let started = Instant::now();
        let mut out = Exposition::new();
        match self.bulk_stats().await {
            Ok(sample) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("libvirt statistics can be read again");
                }
                domains::write_sample(&mut out, &sample);
            }
            Err(reason) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%reason, "cannot read libvirt statistics; metrics say libvirt_up 0");
                }
                domains::write_unavailable(&mut out);
            }
        }
        let collection = Arc::new(Collection {
            started,
            duration: started.elapsed(),
            text: out.into_text(),
        });
        *lock(&self.latest) = Some(Arc::clone(&collection));
        collection
    }

    async fn bulk_stats(&self) -> Result<StatsSample, String> {
        if self.call_pending.swap(true, Ordering::AcqRel) {
            return Err("the previous call is still waiting for libvirt".into());
        }
        let pending = PendingCall(Arc::clone(&self.call_pending));
        let call = self.hypervisor.call(move |hypervisor| {
            let _clears_on_return = pending;
            hypervisor.stats_sample()
        });
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("libvirt did not answer within {:?}", self.timeout)),
        }
    }
}

/// Clears the pending flag when the bulk call has run, or was dropped without running.
struct PendingCall(Arc<AtomicBool>);

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// A poisoned lock only means a panic elsewhere while holding plain data; use it anyway.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The endpoint served in-process against libvirt's test driver.
#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::hypervisor::VmSpec;
    use crate::hypervisor::libvirt::test_driver_tests::open_test_host;

    async fn test_hypervisor() -> HypervisorHandle {
        HypervisorHandle::spawn(|| Ok(open_test_host()))
            .await
            .unwrap()
    }

    /// Serves `service` on an ephemeral loopback port and returns its address.
    async fn serve_on_loopback(service: Arc<MetricsService>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, service));
        addr
    }

    /// A plain HTTP/1.1 GET; returns the status line, the headers and the body.
    async fn get(addr: SocketAddr, path: &str) -> (String, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (
            status.to_owned(),
            headers.to_ascii_lowercase(),
            body.to_owned(),
        )
    }

    fn value_of(body: &str, series: &str) -> Option<f64> {
        body.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|value| value.parse().ok())
    }

    #[tokio::test]
    async fn a_scrape_describes_libvirt_the_host_and_the_agent() {
        let hypervisor = test_hypervisor().await;
        let vm_id = vmm_shared::VmId::new_random();
        let spec = VmSpec {
            display_name: "web".into(),
            cpu: 3,
            memory_mib: 128,
            disk_gb: 1,
            start: true,
            image: None,
            seed: None,
        };
        hypervisor
            .call(move |hv| hv.create_vm(vm_id, &spec))
            .await
            .unwrap();
        let addr = serve_on_loopback(MetricsService::new(
            hypervisor.clone(),
            Duration::ZERO,
            None,
        ))
        .await;

        let (status, headers, body) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        for family in [
            "libvirt_up",
            "libvirt_domains_number",
            "libvirt_domain_state_code",
            "libvirt_domain_info_cpu_time_seconds_total",
            "libvirt_domain_info_virtual_cpus",
            "libvirt_domain_info_maximum_memory_bytes",
            "libvirt_domain_info_memory_usage_bytes",
            "agent_host_cpus",
            "agent_host_memory_bytes",
            "agent_storage_pool_capacity_bytes",
            "agent_storage_pool_available_bytes",
            "agent_libvirt_stats_duration_seconds",
            "process_resident_memory_bytes",
            "process_cpu_seconds_total",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert_eq!(
                body.matches(&format!("# TYPE {family} ")).count(),
                1,
                "family {family} in:\n{body}"
            );
        }
        assert_eq!(value_of(&body, "libvirt_up"), Some(1.0));
        // At least the driver's sample domain and the new VM: tests running in parallel
        // share the test driver's in-memory host and may have domains of their own on it.
        assert!(
            value_of(&body, "libvirt_domains_number").is_some_and(|count| count >= 2.0),
            "{body}"
        );
        // The driver's own sample domain (2 vCPUs, not the product's) and the new VM.
        let test_uuid = "6695eb01-f6a4-8304-79aa-97f2502e193f";
        assert_eq!(
            value_of(
                &body,
                &format!(
                    "libvirt_domain_info_virtual_cpus{{domain=\"test\",uuid=\"{test_uuid}\",vm_id=\"\"}}"
                )
            ),
            Some(2.0),
            "{body}"
        );
        let vm_labels = format!(
            "{{domain=\"{}\",uuid=\"{vm_id}\",vm_id=\"{vm_id}\"}}",
            crate::hypervisor::domain_name(vm_id)
        );
        assert_eq!(
            value_of(
                &body,
                &format!("libvirt_domain_info_virtual_cpus{vm_labels}")
            ),
            Some(3.0)
        );
        assert_eq!(
            value_of(
                &body,
                &format!("libvirt_domain_info_maximum_memory_bytes{vm_labels}")
            ),
            Some(128.0 * 1024.0 * 1024.0)
        );
        assert_eq!(
            value_of(&body, &format!("libvirt_domain_state_code{vm_labels}")),
            Some(1.0)
        );
        check_with_promtool(&body);

        // A deleted VM vanishes from the next scrape.
        hypervisor
            .call(move |hv| hv.delete_vm(vm_id))
            .await
            .unwrap();
        let (_, _, body) = get(addr, "/metrics").await;
        assert!(!body.contains(&vm_id.to_string()), "{body}");
        assert!(value_of(&body, "libvirt_domains_number").is_some_and(|count| count >= 1.0));

        let (status, _, _) = get(addr, "/").await;
        assert!(status.contains("404"), "{status}");
        let (status, _, _) = get(addr, "/metrics/extra").await;
        assert!(status.contains("404"), "{status}");
    }

    #[tokio::test]
    async fn a_busy_libvirt_gives_libvirt_up_0_not_an_error() {
        let hypervisor = test_hypervisor().await;
        let service = Arc::new(MetricsService {
            collector: StatsCollector::new(
                hypervisor.clone(),
                Duration::ZERO,
                Duration::from_millis(200),
            ),
            recorder: None,
        });
        let addr = serve_on_loopback(Arc::clone(&service)).await;
        // Occupies the hypervisor thread, as a hung libvirtd would.
        let blocker = hypervisor.clone();
        let blocked = tokio::spawn(async move {
            blocker
                .call(|_| {
                    std::thread::sleep(Duration::from_millis(1_000));
                    Ok(())
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(50)).await;

        let (status, _, body) = get(addr, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(value_of(&body, "libvirt_up"), Some(0.0));
        assert!(!body.contains("libvirt_domain"), "{body}");
        assert!(body.contains("process_resident_memory_bytes"));
        // The first call is still queued: the next scrape does not queue another.
        let started = std::time::Instant::now();
        let (_, _, body) = get(addr, "/metrics").await;
        assert_eq!(value_of(&body, "libvirt_up"), Some(0.0));
        assert!(started.elapsed() < Duration::from_millis(150));

        blocked.await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, _, body) = get(addr, "/metrics").await;
        assert_eq!(value_of(&body, "libvirt_up"), Some(1.0));
    }

    #[tokio::test]
    async fn with_an_interval_scrapes_share_background_collections() {
        let hypervisor = test_hypervisor().await;
        let service = MetricsService::new(hypervisor, Duration::from_millis(100), None);
        let collector = Arc::clone(&service);
        tokio::spawn(async move { collector.run_collector().await });

        // Nobody scraped yet: nothing is collected.
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(lock(&service.collector.latest).is_none());

        service.scrape().await;
        let first = lock(&service.collector.latest).clone().unwrap();
        // Served from the latest collection, not collected again.
        service.scrape().await;
        let second = lock(&service.collector.latest).clone().unwrap();
        assert!(Arc::ptr_eq(&first, &second));
        // Kept fresh in the background.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let later = lock(&service.collector.latest).clone().unwrap();
        assert!(later.started > first.started);
        assert!(later.started.elapsed() < Duration::from_millis(250));
    }

    /// `promtool check metrics` must accept the exposition. Skipped (with a note) where
    /// promtool is not installed; Debian's `prometheus` package has it.
    fn check_with_promtool(body: &str) {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed; skipping `promtool check metrics`");
            return;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool check metrics: {}{}\n{body}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
