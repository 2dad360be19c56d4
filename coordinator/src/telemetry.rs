//! Prometheus metrics of the coordinator, through the `metrics` facade, served at
//! `GET /api/metrics` (no token; `API_METRICS=false` turns it off) and, with `METRICS_ADDR`,
//! at `GET /metrics` on a listener of their own.
//!
//! Counters and histograms are recorded where things happen; every counter without labels,
//! and every labelled one whose label values are a fixed set, exists at 0 from the first
//! scrape, so that `increase()` sees its first event. Gauges that describe what exists (VMs
//! by status, users, hosts, allocation) are computed from the database at each scrape, so
//! they are right from the first scrape after a restart. The per-host gauges are written
//! straight from the host records at each scrape ([`render_host_gauges`]), not kept in the
//! recorder: a deleted host's series (and the alerts on them) stop with its record.
//!
//! No value a client chooses becomes a label as it is: the HTTP method is one of the
//! standard ones or `other`, the endpoint is the route template or `unmatched`, the status a
//! number. So no request, however odd, adds a series.
//!
//! Names kept from the system this project replaces: `http_requests_total`,
//! `http_request_duration_seconds`, `vm_total`, `vm_cpu_cores`, `vm_memory_mb`,
//! `vm_create_total`, `vm_delete_total`, `vm_snapshot_total`, `vm_snapshot_restore_total`,
//! `user_total`, `user_login_total`, `libvirt_connection_status`.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics::{
    Counter, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use vmm_shared::VmStatus;

use crate::connections::Refusal;
use crate::db::Db;
use crate::error::{ApiError, CapacityRefusal};
use crate::hosts::store::{HostStatus, HostView};
use crate::images::ImageStatus;
use crate::state::AppState;

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Installs the process-wide recorder and describes every metric. Call once, at start.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .context("invalid histogram buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    describe();
    zero_counters();
    Ok(handle)
}

/// Registers every counter whose labels are known in advance at 0.
fn zero_counters() {
    for name in [
        "vm_create_total",
        "vm_delete_total",
        "vm_snapshot_total",
        "vm_snapshot_restore_total",
        "user_login_total",
        "user_login_failures_total",
        "http_capacity_refusals_total",
    ] {
        counter!(name).absolute(0);
    }
    for kind in vmm_shared::OperationKind::ALL {
        for outcome in ["success", "failure"] {
            counter!("operations_total", "kind" => kind.as_str(), "outcome" => outcome).absolute(0);
        }
    }
    for resource in ["vms", "cpu", "memory", "disk_gb", "snapshots"] {
        counter!("quota_rejections_total", "resource" => resource).absolute(0);
    }
    for listener in ["http", "metrics", "grpc"] {
        for reason in [Refusal::PerClient, Refusal::Full] {
            counter!("connections_refused_total", "listener" => listener, "reason" => reason.as_str())
                .absolute(0);
        }
        counter!("connections_evicted_total", "listener" => listener).absolute(0);
        for phase in ["header", "idle", "write"] {
            counter!("connections_timed_out_total", "listener" => listener, "phase" => phase)
                .absolute(0);
        }
    }
}

/// The HELP text of every metric the coordinator exposes.
fn describe() {
    describe_counter!(
        "http_requests_total",
        "HTTP requests, by method, route template and status."
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency."
    );
    describe_counter!(
        "rate_limited_requests_total",
        "Requests refused with 429, by route template."
    );
    describe_counter!(
        "http_capacity_refusals_total",
        "Requests answered 503 because no connected host had room for the VM (or no host was \
         connected); also counted in http_requests_total."
    );
    describe_gauge!(
        "connections_open",
        "Open connections, by listener (http, metrics, grpc)."
    );
    describe_counter!(
        "connections_refused_total",
        "Connections refused at accept, by listener and reason (per_client: the address has \
         too many open; full: every connection is busy)."
    );
    describe_counter!(
        "connections_evicted_total",
        "Idle connections closed to make room for a new one, by listener."
    );
    describe_counter!(
        "connections_timed_out_total",
        "Connections closed for a deadline, by listener and phase (header, idle, write)."
    );
    describe_gauge!("vm_total", "VMs that exist, by status.");
    describe_gauge!("vm_cpu_cores", "vCPUs of the VMs that exist, by status.");
    describe_gauge!(
        "vm_memory_mb",
        "Memory (MiB) of the VMs that exist, by status."
    );
    describe_counter!("vm_create_total", "VMs created successfully.");
    describe_counter!("vm_delete_total", "VMs deleted successfully.");
    describe_counter!("vm_snapshot_total", "Snapshots taken successfully.");
    describe_counter!(
        "vm_snapshot_restore_total",
        "Snapshots restored successfully."
    );
    describe_gauge!("user_total", "User accounts.");
    crate::console::describe_metrics();
    describe_counter!("user_login_total", "Successful logins.");
    describe_counter!(
        "user_login_failures_total",
        "Refused logins (wrong user name or password)."
    );
    describe_gauge!(
        "agents_connected",
        "Agents with an open stream to this coordinator."
    );
    describe_gauge!(
        "rate_limit_tracked_keys",
        "Clients, users and user names the rate limiter tracks now."
    );
    describe_counter!(
        "operations_total",
        "Finished operations, by kind and outcome."
    );
    describe_counter!(
        "db_group_commits_total",
        "Write transactions committed for grouped writes (see db_group_commit_writes_total)."
    );
    describe_counter!(
        "db_group_commit_writes_total",
        "Writes committed in groups; divided by db_group_commits_total, the mean group size."
    );
    describe_histogram!(
        "operation_duration_seconds",
        Unit::Seconds,
        "Operation latency, from request to the host's answer, by kind."
    );
    describe_gauge!("images", "Images in the catalogue, by status.");
    describe_counter!(
        "image_imports_total",
        "Image files taken in, by how (upload, download) and outcome (success, failure)."
    );
    describe_counter!(
        "image_bytes_served_total",
        "Bytes of image files sent to hosts (FetchImage), by host."
    );
    describe_counter!(
        "quota_rejections_total",
        "Creates refused for quota, by the resource that was exceeded."
    );
}

/// `GET /api/metrics`: the metrics, unless `API_METRICS=false` (then 404 like any unknown
/// endpoint).
#[utoipa::path(
    get, path = "/api/metrics", tag = "system",
    security(()),
    responses(
        (status = 200, description = "Prometheus metrics in the text exposition format", content_type = "text/plain", body = String),
        (status = 404, description = "`API_METRICS=false`: not served here", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn scrape_on_api(state: State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    if !state.settings.api_metrics {
        return Err(crate::http::route_not_found(uri).await);
    }
    scrape(state).await
}

/// The router of the metrics listener (`METRICS_ADDR`): `GET /metrics` and nothing else.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .fallback(crate::http::route_not_found)
        .method_not_allowed_fallback(crate::http::method_not_allowed)
        .with_state(state)
}

/// `GET /metrics` on `METRICS_ADDR`, and `GET /api/metrics`.
pub async fn scrape(State(app): State<AppState>) -> Result<Response, ApiError> {
    refresh_gauges(&app).await?;
    let mut body = app.metrics.render();
    render_host_gauges(&mut body, &crate::hosts::store::list(&app.db).await?);
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        body,
    )
        .into_response())
}

async fn refresh_gauges(app: &AppState) -> Result<(), sqlx::Error> {
    refresh_vm_gauges(&app.db).await?;
    refresh_image_gauges(&app.db).await?;
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db)
        .await?;
    gauge!("user_total").set(users as f64);
    gauge!("agents_connected").set(app.registry.connected_count() as f64);
    gauge!("rate_limit_tracked_keys").set(app.rate_limits.tracked_keys() as f64);

    Ok(())
}

/// The per-host gauges: name, help, and the value for one host.
type HostGauge = (&'static str, &'static str, fn(&HostView) -> f64);

const HOST_GAUGES: &[HostGauge] = &[
    (
        "host_connected",
        "1 while the host's agent is connected, else 0.",
        |host| f64::from(u8::from(is_connected(host))),
    ),
    (
        "libvirt_connection_status",
        "1 while the host's agent reports a working libvirt connection, else 0.",
        |host| f64::from(u8::from(is_connected(host) && host.libvirt_connected)),
    ),
    (
        "host_drained",
        "1 while an admin has drained the host (no new VMs are placed on it), else 0.",
        |host| f64::from(u8::from(host.drained)),
    ),
    ("host_cpus", "Physical CPUs of the host.", |host| {
        host.cpus as f64
    }),
    ("host_memory_mib", "Memory of the host, MiB.", |host| {
        host.memory_mib as f64
    }),
    (
        "host_disk_gb",
        "Capacity of the host's VM storage pool, GB.",
        |host| host.disk_gb as f64,
    ),
    (
        "host_allocated_cpu",
        "vCPUs allocated to VMs on the host.",
        |host| host.allocated.cpu as f64,
    ),
    (
        "host_allocated_memory_mib",
        "Memory allocated to VMs on the host, MiB.",
        |host| host.allocated.memory_mib as f64,
    ),
    (
        "host_allocated_disk_gb",
        "Disk allocated to VMs on the host, GB.",
        |host| host.allocated.disk_gb as f64,
    ),
    ("host_vms", "VMs recorded on the host.", |host| {
        host.vms as f64
    }),
];

fn is_connected(host: &HostView) -> bool {
    host.status != HostStatus::Unreachable
}

/// Appends the per-host gauges of `hosts` to an exposition, one family after another. Host
/// IDs are letters, digits, `-`, `_` and `.`: nothing in them needs escaping in a label.
pub fn render_host_gauges(out: &mut String, hosts: &[HostView]) {
    use std::fmt::Write as _;
    if hosts.is_empty() {
        return;
    }
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    for (name, help, value) in HOST_GAUGES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for host in hosts {
            let _ = writeln!(out, "{name}{{host=\"{}\"}} {}", host.id, value(host));
        }
        out.push('\n');
    }
}

async fn refresh_image_gauges(db: &Db) -> Result<(), sqlx::Error> {
    let rows = crate::images::store::count_by_status(db).await?;
    for status in ImageStatus::ALL {
        let count = rows
            .iter()
            .find(|row| row.0 == status)
            .map_or(0, |row| row.1);
        gauge!("images", "status" => status.as_str()).set(count as f64);
    }
    Ok(())
}

async fn refresh_vm_gauges(db: &Db) -> Result<(), sqlx::Error> {
    // By the status each VM reads as (`unknown` while its host is lost).
    let query = format!(
        "SELECT {} AS read_status, COUNT(*), COALESCE(SUM(v.cpu), 0),
                COALESCE(SUM(v.memory_mib), 0)
         FROM {} GROUP BY read_status",
        crate::lifecycle::sql::read_status_sql(),
        crate::vms::store::VMS_WITH_HOSTS
    );
    let rows: Vec<(VmStatus, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_all(db)
        .await?;
    // Every status is set, so a status that no VM has any more reads 0, not its last value.
    for status in VmStatus::ALL {
        let (vms, cpu, memory) = rows
            .iter()
            .find(|row| row.0 == status)
            .map_or((0, 0, 0), |row| (row.1, row.2, row.3));
        gauge!("vm_total", "status" => status.as_str()).set(vms as f64);
        gauge!("vm_cpu_cores", "status" => status.as_str()).set(cpu as f64);
        gauge!("vm_memory_mb", "status" => status.as_str()).set(memory as f64);
    }
    Ok(())
}

/// The `method` label: a standard method, or `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: counts and times every request by method, route template (never the raw
/// path, which would carry IDs and anything a client makes up) and status.
pub async fn track_http(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let endpoint = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let endpoint = endpoint.as_ref().map_or("unmatched", MatchedPath::as_str);
    let status = response.status();
    if response.extensions().get::<CapacityRefusal>().is_some() {
        counter!("http_capacity_refusals_total").increment(1);
    }
    let handles = http_handles(method, endpoint, status.as_u16());
    handles.requests.increment(1);
    handles.duration.record(started.elapsed().as_secs_f64());
    if status == StatusCode::TOO_MANY_REQUESTS {
        counter!("rate_limited_requests_total", "endpoint" => endpoint.to_owned()).increment(1);
    }
    response
}

/// The HTTP metrics of one method, route template and status.
#[derive(Clone)]
struct HttpHandles {
    requests: Counter,
    duration: Histogram,
}

/// [`HttpHandles`] by method and status, then route template. Building a metric's key (its
/// label strings, their hash) and finding it in the recorder's registry cost about 2 % of a
/// user's `GET /api/vms` (BENCHMARKS.md); a request now clones two handles. The labels'
/// values are bounded (see the module's documentation), and so is this map. Handles belong
/// to the recorder installed when they were made: [`install`] runs before the server starts.
static HTTP_HANDLES: LazyLock<Mutex<HttpHandlesByRequest>> = LazyLock::new(Mutex::default);

/// Method and status, then route template.
type HttpHandlesByRequest = HashMap<(&'static str, u16), HashMap<String, HttpHandles>>;

fn http_handles(method: &'static str, endpoint: &str, status: u16) -> HttpHandles {
    let mut handles = HTTP_HANDLES.lock().unwrap_or_else(PoisonError::into_inner);
    let by_endpoint = handles.entry((method, status)).or_default();
    if let Some(found) = by_endpoint.get(endpoint) {
        return found.clone();
    }
    let labels = [
        ("method", method.to_owned()),
        ("endpoint", endpoint.to_owned()),
        ("status", status.to_string()),
    ];
    let made = HttpHandles {
        requests: counter!("http_requests_total", &labels),
        duration: histogram!("http_request_duration_seconds", &labels[..2]),
    };
    by_endpoint.insert(endpoint.to_owned(), made.clone());
    made
}

/// Records one finished operation: its kind, whether it succeeded, and how long it took.
pub fn record_operation(kind: &'static str, succeeded: bool, elapsed: Duration) {
    let outcome = if succeeded { "success" } else { "failure" };
    counter!("operations_total", "kind" => kind, "outcome" => outcome).increment(1);
    histogram!("operation_duration_seconds", "kind" => kind).record(elapsed.as_secs_f64());
    if succeeded {
        match kind {
            "create" => counter!("vm_create_total").increment(1),
            "delete" => counter!("vm_delete_total").increment(1),
            "snapshot_create" => counter!("vm_snapshot_total").increment(1),
            "snapshot_restore" => counter!("vm_snapshot_restore_total").increment(1),
            _ => {}
        }
    }
}

/// Records one image file taken in (or refused), by `how` (`upload` or `download`).
pub fn record_image_import(how: &'static str, succeeded: bool) {
    let outcome = if succeeded { "success" } else { "failure" };
    counter!("image_imports_total", "how" => how, "outcome" => outcome).increment(1);
}

/// Records bytes of an image file sent to `host`.
pub fn record_image_bytes_served(host: &str, bytes: u64) {
    counter!("image_bytes_served_total", "host" => host.to_owned()).increment(bytes);
}

/// Records one committed group of `writes` grouped writes.
pub fn record_group_commit(writes: usize) {
    counter!("db_group_commits_total").increment(1);
    counter!("db_group_commit_writes_total").increment(writes as u64);
}

pub fn record_quota_rejection(resource: &'static str) {
    counter!("quota_rejections_total", "resource" => resource).increment(1);
}

pub fn record_login(succeeded: bool) {
    if succeeded {
        counter!("user_login_total").increment(1);
    } else {
        counter!("user_login_failures_total").increment(1);
    }
}
