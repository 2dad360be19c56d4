//! One run of the simulator: a coordinator, a fleet, every scenario in turn, an audit after
//! each, and the table of figures against the targets of issue 16. `smoke` is the same run,
//! small and quick, for CI: it fails on any wrong host or VM, never on a time.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::api::Api;
use crate::coordinator::{Coordinator, CoordinatorOptions};
use crate::fleet::Fleet;
use crate::scenarios::{self, Audit, WindowRates, percentile_ms};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub coordinator: PathBuf,
    pub hosts: usize,
    pub vms_per_host: usize,
    pub users: usize,
    pub storms: usize,
    pub partitioned: usize,
    pub out_of_band: usize,
    pub host_dead_after: Duration,
    pub steady: Duration,
    /// Creates per rate window.
    pub window: usize,
    /// How many windows at each end of the population are compared (their median each).
    pub windows_compared: usize,
    /// Run `wrk` against `GET /api/vms` for this long (`None`: skip).
    pub wrk: Option<Duration>,
    /// The output of `bench-qemu`, whose figures the table folds in.
    pub qemu_report: Option<PathBuf>,
}

impl Options {
    /// The benchmark of issue 16: 1,000 hosts × 100 VMs, 20 storms.
    pub fn bench(coordinator: PathBuf) -> Options {
        Options {
            coordinator,
            hosts: 1000,
            vms_per_host: 100,
            users: 100,
            storms: 20,
            partitioned: 10,
            out_of_band: 50,
            host_dead_after: Duration::from_secs(10),
            steady: Duration::from_secs(30),
            window: 1000,
            windows_compared: 5,
            wrk: Some(Duration::from_secs(10)),
            qemu_report: None,
        }
    }

    /// Seconds long, every scenario once or twice, no timing judged.
    pub fn smoke(coordinator: PathBuf) -> Options {
        Options {
            coordinator,
            hosts: 12,
            vms_per_host: 5,
            users: 3,
            storms: 2,
            partitioned: 2,
            out_of_band: 5,
            host_dead_after: Duration::from_secs(2),
            steady: Duration::from_secs(1),
            window: 20,
            windows_compared: 1,
            wrk: None,
            qemu_report: None,
        }
    }
}

/// Every figure a run measured.
#[derive(Debug, Default)]
pub struct Report {
    pub hosts: usize,
    pub vms: usize,
    pub first_registration: Duration,
    /// Creates while the fleet was smallest and while it was largest.
    pub creates_earliest: WindowRates,
    pub creates_latest: WindowRates,
    pub creates_failed: usize,
    pub steady_cores: f64,
    pub steady_rss: u64,
    pub out_of_band: Vec<Duration>,
    pub partition_detected: Duration,
    pub partition_healed: Duration,
    pub storms: Vec<Duration>,
    pub storms_failed: usize,
    pub shutdown: Duration,
    pub resync: Duration,
    pub wrong: usize,
    pub audits: usize,
    pub user_list: Option<Wrk>,
    pub admin_page: Option<Wrk>,
    pub qemu: Option<QemuFigures>,
    pub coordinator_errors: Vec<String>,
}

/// What `wrk` measured.
#[derive(Clone, Debug)]
pub struct Wrk {
    pub connections: usize,
    pub requests_per_second: f64,
    pub p99_ms: f64,
    /// Requests answered in the run.
    pub requests: u64,
    /// The coordinator's CPU time (user + system) per request answered, in µs: what the
    /// request costs, less swayed than the rate by what else the machine runs meanwhile.
    pub coordinator_cpu_us: f64,
}

/// The figures of `bench-qemu`'s report.
#[derive(Clone, Debug)]
pub struct QemuFigures {
    /// How many out-of-band changes the p99 is of (every kind together).
    pub out_of_band_changes: u64,
    pub out_of_band_p99_ms: f64,
    pub create_ratio: f64,
}

fn check(audit: &Audit, what: &str, report: &mut Report) {
    report.audits += 1;
    report.wrong += audit.wrong.len();
    if audit.is_clean() {
        eprintln!(
            "audit after {what}: {} hosts, {} VMs, all as the hosts have them",
            audit.hosts_checked, audit.vms_checked
        );
    } else {
        eprintln!("audit after {what}: {} WRONG", audit.wrong.len());
        for line in audit.wrong.iter().take(10) {
            eprintln!("  {line}");
        }
    }
}

/// Runs everything; the coordinator's data lives in a temporary directory.
pub async fn run(options: &Options) -> Result<Report> {
    let dir = tempfile::tempdir()?;
    let mut report = Report {
        hosts: options.hosts,
        ..Report::default()
    };
    let mut coordinator = Coordinator::start(
        CoordinatorOptions {
            binary: options.coordinator.clone(),
            hosts: options.hosts,
            host_dead_after: options.host_dead_after,
        },
        dir.path(),
    )
    .await?;
    let base = coordinator.base_url();
    let admin = Api::login(&base, "admin", &coordinator.admin_password).await?;
    let deadline = Duration::from_secs(120);

    eprintln!("starting {} agents…", options.hosts);
    let started = Instant::now();
    let fleet = Fleet::start(options.hosts, coordinator.grpc, &coordinator.agent_token).await?;
    let unseen = fleet
        .hosts
        .iter()
        .map(|sim| (sim.id.clone(), (String::new(), 0)))
        .collect();
    scenarios::converged(&admin, &unseen, started, deadline).await?;
    report.first_registration = started.elapsed();
    eprintln!(
        "{} hosts registered in {:.2?}",
        options.hosts, report.first_registration
    );

    // Populate: many users create VMs at once.
    let mut users = Vec::new();
    for n in 0..options.users {
        users.push(Api::register(&base, &format!("user-{n}"), "a-long-password").await?);
    }
    let total = options.hosts * options.vms_per_host;
    eprintln!("creating {total} VMs through the API…");
    let rates = scenarios::populate(&users, total, 0, 32, options.window).await?;
    report.creates_earliest = rates.earliest(options.windows_compared);
    report.creates_latest = rates.latest(options.windows_compared);
    report.creates_failed = rates.failed;
    let each: Vec<String> = rates
        .windows
        .iter()
        .map(|window| format!("{:.0}", window.rate))
        .collect();
    eprintln!(
        "creates per second, each window of {}: {}; {} failed",
        options.window,
        each.join(" "),
        rates.failed
    );
    let reader = Api::register(&base, "reader", "a-long-password").await?;
    for n in 0..10 {
        reader.create_vm(&format!("mine-{n}")).await?;
    }
    report.vms = total + 10;
    check(
        &scenarios::audit(&admin, &fleet, &[]).await?,
        "creates",
        &mut report,
    );

    // Steady state.
    tokio::time::sleep(options.steady.min(Duration::from_secs(10))).await;
    let (cores, rss) = scenarios::steady(&coordinator, options.steady).await?;
    report.steady_cores = cores;
    report.steady_rss = rss;
    eprintln!("steady: {cores:.3} cores, {} MiB resident", rss >> 20);

    // The API under load.
    if let Some(duration) = options.wrk {
        report.user_list = Some(wrk(
            &coordinator,
            &format!("{base}/api/vms"),
            &reader.token,
            32,
            duration,
        )?);
        report.admin_page = Some(wrk(
            &coordinator,
            &format!("{base}/api/vms?limit=100"),
            &admin.token,
            8,
            duration,
        )?);
    }

    // Out-of-band changes.
    report.out_of_band = scenarios::out_of_band(&admin, &fleet, options.out_of_band).await?;
    check(
        &scenarios::audit(&admin, &fleet, &[]).await?,
        "out-of-band changes",
        &mut report,
    );

    // A silent partition, then healed.
    let cut_off: Vec<String> = fleet
        .hosts
        .iter()
        .step_by((options.hosts / options.partitioned.max(1)).max(1))
        .take(options.partitioned)
        .map(|sim| sim.id.clone())
        .collect();
    report.partition_detected = scenarios::partition(&admin, &fleet, &cut_off).await?;
    check(
        &scenarios::audit(&admin, &fleet, &cut_off).await?,
        "a silent partition",
        &mut report,
    );
    let before = scenarios::sessions(&admin).await?;
    let healing: std::collections::HashMap<_, _> = before
        .into_iter()
        .filter(|(id, _)| cut_off.contains(id))
        .collect();
    let started = Instant::now();
    for id in &cut_off {
        fleet.host(id).context("no such host")?.link.heal();
    }
    report.partition_healed = scenarios::converged(&admin, &healing, started, deadline).await?;
    check(
        &scenarios::audit(&admin, &fleet, &[]).await?,
        "healing",
        &mut report,
    );

    // Reconnect storms.
    for storm in 0..options.storms {
        let before = scenarios::sessions(&admin).await?;
        let started = Instant::now();
        for sim in &fleet.hosts {
            sim.link.cut();
        }
        match scenarios::converged(&admin, &before, started, deadline).await {
            Ok(took) => {
                eprintln!("storm {}: converged in {took:.2?}", storm + 1);
                report.storms.push(took);
            }
            Err(error) => {
                eprintln!("storm {}: {error:#}", storm + 1);
                report.storms_failed += 1;
            }
        }
        check(
            &scenarios::audit(&admin, &fleet, &[]).await?,
            &format!("storm {}", storm + 1),
            &mut report,
        );
    }

    // Restart resync.
    let before = scenarios::sessions(&admin).await?;
    let stopping = Instant::now();
    coordinator.stop().await?;
    report.shutdown = stopping.elapsed();
    let started = Instant::now();
    coordinator.spawn().await?;
    let admin = Api::login(&base, "admin", &coordinator.admin_password).await?;
    report.resync = scenarios::converged(&admin, &before, started, deadline).await?;
    eprintln!(
        "restart: stopped in {:.2?}, resynced in {:.2?}",
        report.shutdown, report.resync
    );
    check(
        &scenarios::audit(&admin, &fleet, &[]).await?,
        "the restart",
        &mut report,
    );

    report.coordinator_errors = coordinator
        .log()
        .lines()
        .filter(|line| line.contains("ERROR") || line.contains("closed pool"))
        .map(str::to_owned)
        .collect();
    coordinator.stop().await?;
    if let Some(path) = &options.qemu_report {
        report.qemu = Some(qemu_figures(&std::fs::read_to_string(path)?)?);
    }
    Ok(report)
}

/// Runs `wrk` with `connections` connections (2 threads) against `url` as the token's user
/// and reads its rate and 99th percentile; the coordinator's CPU time over the run gives
/// the CPU per request.
pub fn wrk(
    coordinator: &Coordinator,
    url: &str,
    token: &str,
    connections: usize,
    duration: Duration,
) -> Result<Wrk> {
    let (cpu_before, _) = coordinator.usage()?;
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{}s", duration.as_secs().max(1)),
            "--latency",
            "-H",
            &format!("Authorization: Bearer {token}"),
            url,
        ])
        .output()
        .context("cannot run wrk (Debian package `wrk`)")?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "wrk failed: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if text.contains("Non-2xx") {
        bail!("wrk got error answers: {text}");
    }
    let (cpu_after, _) = coordinator.usage()?;
    let mut measured = parse_wrk(&text, connections)?;
    measured.coordinator_cpu_us = (cpu_after - cpu_before) * 1e6 / measured.requests.max(1) as f64;
    Ok(measured)
}

/// wrk's figures; the CPU per request is left at 0 for the caller.
fn parse_wrk(text: &str, connections: usize) -> Result<Wrk> {
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.parse().ok())
        .context("no request count in wrk's output")?;
    let requests_per_second = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("Requests/sec:"))
        .and_then(|value| value.trim().parse().ok())
        .context("no Requests/sec in wrk's output")?;
    let p99 = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("99%"))
        .map(str::trim)
        .context("no 99% latency in wrk's output")?;
    let p99_ms = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>()? / 1e3
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse::<f64>()?
    } else if let Some(s) = p99.strip_suffix('s') {
        s.parse::<f64>()? * 1e3
    } else {
        bail!("cannot read wrk's 99% latency {p99:?}")
    };
    Ok(Wrk {
        connections,
        requests_per_second,
        p99_ms,
        requests,
        coordinator_cpu_us: 0.0,
    })
}

/// Reads the two figures of `bench-qemu`'s table.
pub fn qemu_figures(text: &str) -> Result<QemuFigures> {
    let all = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("all changes"))
        .context("no `all changes` row in the bench-qemu report")?;
    let numbers: Vec<f64> = all
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    let out_of_band_changes = *numbers
        .first()
        .context("the `all changes` row has no count")?;
    let out_of_band_p99_ms = *numbers.get(2).context("the `all changes` row has no p99")?;
    let ratio = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("REST / virsh, median of pairs"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .context("no median ratio in the bench-qemu report")?;
    Ok(QemuFigures {
        out_of_band_changes: out_of_band_changes as u64,
        out_of_band_p99_ms,
        create_ratio: ratio,
    })
}

fn verdict(pass: bool) -> &'static str {
    if pass { "met" } else { "MISSED" }
}

/// A span of VM counts, in thousands where it is that large: `95.7k-100k`, `40-60`.
fn thousands(from: usize, to: usize) -> String {
    if to >= 1000 {
        let k = |n: usize| match n {
            0 => "0".to_string(),
            n if n % 1000 == 0 => format!("{}k", n / 1000),
            n => format!("{:.1}k", n as f64 / 1000.0),
        };
        format!("{}-{}", k(from), k(to))
    } else {
        format!("{from}-{to}")
    }
}

/// How a creates figure was taken, when it is a median of several windows.
fn medians_of(rates: &WindowRates) -> String {
    if rates.windows > 1 {
        format!(", median of {} windows", rates.windows)
    } else {
        String::new()
    }
}

/// The table of every figure against its target.
pub fn table(report: &Report) -> String {
    let mut rows: Vec<(String, String, String, &'static str)> = Vec::new();
    let scale = format!(
        "{} hosts × {} VMs",
        report.hosts,
        report.vms / report.hosts.max(1)
    );
    match &report.qemu {
        Some(qemu) => {
            rows.push((
                format!(
                    "out-of-band change → API, real QEMU, p99 of {}",
                    qemu.out_of_band_changes
                ),
                "≤ 300 ms".into(),
                format!("{:.0} ms", qemu.out_of_band_p99_ms),
                verdict(qemu.out_of_band_p99_ms <= 300.0),
            ));
            rows.push((
                "REST create+start / virsh define+start, real QEMU, median".into(),
                "≤ 1.10".into(),
                format!("{:.3}", qemu.create_ratio),
                verdict(qemu.create_ratio <= 1.10),
            ));
        }
        None => rows.push((
            "real-QEMU figures (bench-qemu)".into(),
            "-".into(),
            "not run".into(),
            "-",
        )),
    }
    rows.push((
        format!("{scale}: steady coordinator CPU"),
        "≤ 0.1 core".into(),
        format!("{:.3} core", report.steady_cores),
        verdict(report.steady_cores <= 0.1),
    ));
    rows.push((
        format!("{scale}: steady coordinator RSS"),
        "≤ 256 MiB".into(),
        format!("{} MiB", report.steady_rss >> 20),
        verdict(report.steady_rss <= 256 << 20),
    ));
    rows.push((
        format!(
            "resync of {} hosts after a coordinator restart",
            report.hosts
        ),
        "≤ 5 s".into(),
        format!("{:.2} s", report.resync.as_secs_f64()),
        verdict(report.resync <= Duration::from_secs(5)),
    ));
    let worst = report.storms.iter().max().copied().unwrap_or_default();
    let total_storms = report.storms.len() + report.storms_failed;
    rows.push((
        format!(
            "reconnect storm of {} hosts: converged (worst)",
            report.hosts
        ),
        "≤ 10 s".into(),
        format!(
            "{:.2} s (median {:.2} s)",
            worst.as_secs_f64(),
            percentile_ms(&report.storms, 50) / 1e3
        ),
        verdict(worst <= Duration::from_secs(10) && report.storms_failed == 0),
    ));
    rows.push((
        "storms converged".into(),
        format!("{total_storms} of {total_storms}"),
        format!("{} of {total_storms}", report.storms.len()),
        verdict(report.storms_failed == 0),
    ));
    rows.push((
        format!("hosts or VMs wrong in {} audits", report.audits),
        "0".into(),
        report.wrong.to_string(),
        verdict(report.wrong == 0),
    ));
    let (earliest, latest) = (report.creates_earliest, report.creates_latest);
    let ratio = latest.median / earliest.median.max(1e-9);
    rows.push((
        format!(
            "creates through REST at {} VMs vs at {}{}",
            thousands(latest.vms_before, latest.vms_after),
            thousands(earliest.vms_before, earliest.vms_after),
            medians_of(&latest)
        ),
        "≥ 0.8×".into(),
        format!(
            "{ratio:.2}× ({:.0}/s vs {:.0}/s)",
            latest.median, earliest.median
        ),
        verdict(ratio >= 0.8),
    ));
    rows.push((
        format!(
            "creates through REST at {} VMs{}",
            thousands(latest.vms_before, latest.vms_after),
            medians_of(&latest)
        ),
        "≥ 300/s".into(),
        format!("{:.0}/s", latest.median),
        verdict(latest.median >= 300.0),
    ));
    match &report.user_list {
        Some(wrk) => {
            rows.push((
                format!(
                    "GET /api/vms, user with 10 VMs, wrk {} connections",
                    wrk.connections
                ),
                "≥ 15,000 req/s".into(),
                format!("{:.0} req/s", wrk.requests_per_second),
                verdict(wrk.requests_per_second >= 15_000.0),
            ));
            rows.push((
                "  … p99".into(),
                "≤ 10 ms".into(),
                format!("{:.2} ms", wrk.p99_ms),
                verdict(wrk.p99_ms <= 10.0),
            ));
            rows.push((
                "  … coordinator CPU per request".into(),
                "-".into(),
                format!("{:.1} µs", wrk.coordinator_cpu_us),
                "-",
            ));
        }
        None => rows.push((
            "GET /api/vms under wrk".into(),
            "-".into(),
            "not run".into(),
            "-",
        )),
    }
    if let Some(wrk) = &report.admin_page {
        rows.push((
            format!(
                "admin GET /api/vms?limit=100 at {} VMs, p99 (wrk {} conn., {:.0} req/s, \
                 {:.0} µs CPU each)",
                report.vms, wrk.connections, wrk.requests_per_second, wrk.coordinator_cpu_us
            ),
            "≤ 20 ms".into(),
            format!("{:.2} ms", wrk.p99_ms),
            verdict(wrk.p99_ms <= 20.0),
        ));
    }
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|row| row.0.chars().count())
        .max()
        .unwrap_or(10);
    out.push_str(&format!(
        "| {:<width$} | {:<14} | {:<28} | {:<6} |\n",
        "figure", "target", "measured", ""
    ));
    out.push_str(&format!(
        "|{}|{}|{}|{}|\n",
        "-".repeat(width + 2),
        "-".repeat(16),
        "-".repeat(30),
        "-".repeat(8)
    ));
    for (figure, target, measured, verdict) in rows {
        out.push_str(&format!(
            "| {figure:<width$} | {target:<14} | {measured:<28} | {verdict:<6} |\n"
        ));
    }
    out.push_str(&format!(
        "\nalso: {} hosts first registered in {:.2} s; out-of-band change → API on the simulator \
         p50 {:.0} ms, p99 {:.0} ms ({} changes); silent partition of some hosts detected in \
         {:.2} s (HOST_DEAD_AFTER), healed in {:.2} s; coordinator stopped in {:.2} s; \
         creates per second, slowest and fastest window: {:.0} to {:.0} early, {:.0} to {:.0} \
         late; {} creates failed; {} error lines in the coordinator's log\n",
        report.hosts,
        report.first_registration.as_secs_f64(),
        percentile_ms(&report.out_of_band, 50),
        percentile_ms(&report.out_of_band, 99),
        report.out_of_band.len(),
        report.partition_detected.as_secs_f64(),
        report.partition_healed.as_secs_f64(),
        report.shutdown.as_secs_f64(),
        report.creates_earliest.slowest,
        report.creates_earliest.fastest,
        report.creates_latest.slowest,
        report.creates_latest.fastest,
        report.creates_failed,
        report.coordinator_errors.len(),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_and_bench_qemu_outputs_are_read() {
        let wrk = "Running 10s test @ http://127.0.0.1:1/api/vms\n  Latency Distribution\n     \
                   50%    1.20ms\n     99%  850.00us\n  123457 requests in 10.00s, 1.00MB \
                   read\nRequests/sec:  12345.67\n";
        let parsed = parse_wrk(wrk, 32).unwrap();
        assert_eq!(parsed.requests_per_second, 12345.67);
        assert_eq!(parsed.requests, 123_457);
        assert!((parsed.p99_ms - 0.85).abs() < 1e-9);
        assert!(parse_wrk("nothing", 1).is_err());
        let qemu = "all changes                         200       120       240       300   met\n\
                    REST / virsh, median of pairs          1.042   target ≤ 1.10: met\n";
        let figures = qemu_figures(qemu).unwrap();
        assert_eq!(figures.out_of_band_changes, 200);
        assert_eq!(figures.out_of_band_p99_ms, 240.0);
        assert_eq!(figures.create_ratio, 1.042);
    }

    #[test]
    fn spans_of_vms_read_in_thousands() {
        assert_eq!(thousands(95_000, 100_000), "95k-100k");
        assert_eq!(thousands(0, 5_000), "0-5k");
        assert_eq!(thousands(2_500, 3_500), "2.5k-3.5k");
        assert_eq!(thousands(95_673, 100_000), "95.7k-100k");
        assert_eq!(thousands(40, 60), "40-60");
    }
}
