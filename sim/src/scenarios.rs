//! The scenarios the simulator runs against the real coordinator, each ending in a
//! measurement and (where the fleet changed) an audit:
//! - **populate**: VMs created through `POST /api/vms` by many users at once, the rate
//!   measured per window of creates (the first windows, the last windows);
//! - **steady**: the coordinator's CPU and resident memory while nothing changes;
//! - **out-of-band changes**: guests stopped or paused behind the agents' backs, timed to
//!   the API;
//! - **silent partition**: links frozen without a close; only `HOST_DEAD_AFTER` notices;
//! - **reconnect storm**: every link cut at once; every agent redials;
//! - **restart resync**: the coordinator stopped with SIGTERM and started again;
//! - **audit**: the API's view (every VM's status and host, every host's connection)
//!   equals every simulated host's truth.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::seq::IndexedRandom;
use vmm_agent::hypervisor::PowerState;

use crate::api::Api;
use crate::coordinator::Coordinator;
use crate::fleet::{Fleet, api_status};

/// What an audit found wrong: hosts and VMs whose API view differs from the truth.
#[derive(Debug, Default)]
pub struct Audit {
    pub hosts_checked: usize,
    pub vms_checked: usize,
    pub wrong: Vec<String>,
}

impl Audit {
    pub fn is_clean(&self) -> bool {
        self.wrong.is_empty()
    }
}

/// Compares the API's view with the hosts' truth. Hosts in `partitioned` must be
/// unreachable (and their VMs `unknown`); every other host connected, every VM as its host
/// has it, on that host; no VM in the API that no host has.
pub async fn audit(admin: &Api, fleet: &Fleet, partitioned: &[String]) -> Result<Audit> {
    let hosts = admin.all_hosts().await?;
    let vms = admin.all_vms().await?;
    let truth = fleet.truth();
    let mut audit = Audit {
        hosts_checked: fleet.hosts.len(),
        vms_checked: truth.len(),
        wrong: Vec::new(),
    };
    for sim in &fleet.hosts {
        let expected = if partitioned.contains(&sim.id) {
            "unreachable"
        } else {
            "connected"
        };
        match hosts.get(&sim.id) {
            Some(host) if host.status == expected => {}
            Some(host) => audit.wrong.push(format!(
                "host {} is {}, not {expected}",
                sim.id, host.status
            )),
            None => audit
                .wrong
                .push(format!("host {} is not in the API", sim.id)),
        }
    }
    for (id, truth) in &truth {
        let expected = if partitioned.contains(&truth.host) {
            "unknown"
        } else {
            truth.status
        };
        match vms.get(id) {
            Some(vm) if vm.status == expected && vm.host == truth.host => {}
            Some(vm) => audit.wrong.push(format!(
                "VM {id} is {} on {} in the API, {expected} on {} in truth",
                vm.status, vm.host, truth.host
            )),
            None => audit
                .wrong
                .push(format!("VM {id} on {} is not in the API", truth.host)),
        }
    }
    for (id, vm) in &vms {
        if !truth.contains_key(id) {
            audit.wrong.push(format!(
                "VM {id} ({}, on {}) is on no host",
                vm.status, vm.host
            ));
        }
    }
    Ok(audit)
}

/// Sessions of every host, by ID.
pub async fn sessions(admin: &Api) -> Result<HashMap<String, (String, u64)>> {
    let hosts = admin.all_hosts_raw().await?;
    Ok(hosts
        .into_iter()
        .filter_map(|host| {
            Some((
                host["id"].as_str()?.to_owned(),
                (
                    host["status"].as_str()?.to_owned(),
                    host["session"].as_u64()?,
                ),
            ))
        })
        .collect())
}

/// Waits until every host is connected under a session newer than in `before` (every host
/// registered again) and no VM is `unknown`; returns how long that took from `since`.
pub async fn converged(
    admin: &Api,
    before: &HashMap<String, (String, u64)>,
    since: Instant,
    deadline: Duration,
) -> Result<Duration> {
    loop {
        let now = sessions(admin).await?;
        let all_new = before.iter().all(|(id, (_, old))| {
            now.get(id)
                .is_some_and(|(status, session)| status == "connected" && session > old)
        });
        if all_new && admin.count("/api/vms?status=unknown&limit=1").await? == 0 {
            return Ok(since.elapsed());
        }
        if since.elapsed() > deadline {
            let waiting = before
                .iter()
                .filter(|(id, (_, old))| {
                    !now.get(*id)
                        .is_some_and(|(status, session)| status == "connected" && session > old)
                })
                .count();
            bail!("not converged after {deadline:?}: {waiting} hosts not registered again");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Rates of creates through the API, per window.
#[derive(Debug, Default)]
pub struct CreateRates {
    pub windows: Vec<Window>,
    pub failed: usize,
}

/// One window of creates.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// VMs existing when the window began and when it ended.
    pub vms_before: usize,
    pub vms_after: usize,
    /// Creates per second in it.
    pub rate: f64,
}

/// Several consecutive windows summarised: the median rate, so that one stall of a shared
/// machine cannot decide a figure, with the slowest and fastest beside it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowRates {
    pub windows: usize,
    pub vms_before: usize,
    pub vms_after: usize,
    pub median: f64,
    pub slowest: f64,
    pub fastest: f64,
}

impl WindowRates {
    fn of(windows: &[Window]) -> WindowRates {
        let (Some(first), Some(last)) = (windows.first(), windows.last()) else {
            return WindowRates::default();
        };
        let mut rates: Vec<f64> = windows.iter().map(|window| window.rate).collect();
        rates.sort_by(f64::total_cmp);
        let middle = rates.len() / 2;
        let median = if rates.len() % 2 == 1 {
            rates[middle]
        } else {
            (rates[middle - 1] + rates[middle]) / 2.0
        };
        WindowRates {
            windows: windows.len(),
            vms_before: first.vms_before,
            vms_after: last.vms_after,
            median,
            slowest: rates[0],
            fastest: rates[rates.len() - 1],
        }
    }
}

impl CreateRates {
    /// The first `count` windows: the fleet at its smallest.
    pub fn earliest(&self, count: usize) -> WindowRates {
        WindowRates::of(&self.windows[..count.min(self.windows.len())])
    }

    /// The last `count` windows: the fleet at its largest.
    pub fn latest(&self, count: usize) -> WindowRates {
        WindowRates::of(&self.windows[self.windows.len().saturating_sub(count)..])
    }
}

/// Creates `count` VMs through the API with `concurrency` requests in flight, spread over
/// `users`, measuring the rate per `window` creates. `existing`: VMs already there.
pub async fn populate(
    users: &[Api],
    count: usize,
    existing: usize,
    concurrency: usize,
    window: usize,
) -> Result<CreateRates> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let (next, done, failed) = (Arc::clone(&next), Arc::clone(&done), Arc::clone(&failed));
        let users = users.to_vec();
        workers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return;
                }
                let user = &users[(n + worker) % users.len()];
                let name = format!("vm-{}", existing + n);
                if let Err(error) = user.create_vm(&name).await
                    && failed.fetch_add(1, Ordering::Relaxed) < 5
                {
                    eprintln!("create failed: {error:#}");
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut rates = CreateRates::default();
    let mut window_start = (Instant::now(), 0usize);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let finished = done.load(Ordering::Relaxed);
        if finished - window_start.1 >= window || finished == count {
            let elapsed = window_start.0.elapsed().as_secs_f64();
            if finished > window_start.1 {
                rates.windows.push(Window {
                    vms_before: existing + window_start.1,
                    vms_after: existing + finished,
                    rate: (finished - window_start.1) as f64 / elapsed.max(1e-9),
                });
            }
            window_start = (Instant::now(), finished);
        }
        if finished >= count {
            break;
        }
    }
    for worker in workers {
        worker.await?;
    }
    rates.failed = failed.load(Ordering::Relaxed);
    Ok(rates)
}

/// The coordinator's CPU (cores) and resident memory (bytes, the highest sample) over
/// `span` while the fleet is steady.
pub async fn steady(coordinator: &Coordinator, span: Duration) -> Result<(f64, u64)> {
    let (cpu_before, mut rss) = coordinator.usage()?;
    let started = Instant::now();
    while started.elapsed() < span {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss = rss.max(coordinator.usage()?.1);
    }
    let (cpu_after, last) = coordinator.usage()?;
    Ok((
        (cpu_after - cpu_before) / started.elapsed().as_secs_f64(),
        rss.max(last),
    ))
}

/// Changes `count` random VMs behind their agents' backs (a running guest powers off, a
/// stopped one is started by hand, ...), one at a time, and times each until the API shows
/// it. Returns the latencies.
pub async fn out_of_band(admin: &Api, fleet: &Fleet, count: usize) -> Result<Vec<Duration>> {
    let truth = fleet.truth();
    let ids: Vec<&String> = truth.keys().collect();
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let id: &String = ids.choose(&mut rand::rng()).context("no VMs to change")?;
        let current = &truth[id];
        let sim = fleet.host(&current.host).context("no such host")?;
        let vm_id = id.parse()?;
        let now = sim.host.domain(vm_id).context("domain gone")?.state;
        let next = match now {
            PowerState::Running => PowerState::Stopped,
            PowerState::Stopped => PowerState::Running,
            PowerState::Paused => PowerState::Running,
            _ => PowerState::Running,
        };
        let expected = api_status(next);
        let started = Instant::now();
        sim.host.set_state(vm_id, next, "");
        loop {
            if admin.vm(id).await?.status == expected {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("VM {id} did not show {expected} within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// Freezes the links of `hosts` (nothing closed), times until the API shows every one of
/// them unreachable, and checks no other host is. Returns that time.
pub async fn partition(admin: &Api, fleet: &Fleet, hosts: &[String]) -> Result<Duration> {
    let started = Instant::now();
    for id in hosts {
        fleet.host(id).context("no such host")?.link.freeze();
    }
    loop {
        let now = sessions(admin).await?;
        let unreachable: Vec<&String> = now
            .iter()
            .filter(|(_, (status, _))| status == "unreachable")
            .map(|(id, _)| id)
            .collect();
        if let Some(wrong) = unreachable.iter().find(|id| !hosts.contains(id)) {
            bail!("host {wrong} became unreachable without being partitioned");
        }
        if unreachable.len() == hosts.len() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the partitioned hosts were not all unreachable within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

impl Api {
    /// Every host as raw JSON (to read fields the audit does not keep).
    pub async fn all_hosts_raw(&self) -> Result<Vec<serde_json::Value>> {
        self.every_page("/api/hosts").await
    }
}

/// Percentile `p` (0-100) of durations, in milliseconds.
pub fn percentile_ms(values: &[Duration], p: usize) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut sorted: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    sorted.sort_by(f64::total_cmp);
    let rank = (p * (sorted.len() - 1) + 50) / 100;
    sorted[rank.min(sorted.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rates(per_window: &[f64]) -> CreateRates {
        CreateRates {
            windows: per_window
                .iter()
                .enumerate()
                .map(|(n, rate)| Window {
                    vms_before: n * 1000,
                    vms_after: (n + 1) * 1000,
                    rate: *rate,
                })
                .collect(),
            failed: 0,
        }
    }

    #[test]
    fn one_stalled_window_does_not_decide_the_median() {
        let rates = rates(&[
            600.0, 650.0, 640.0, 620.0, 630.0, 500.0, 610.0, 200.0, 605.0,
        ]);
        let earliest = rates.earliest(5);
        assert_eq!(
            earliest,
            WindowRates {
                windows: 5,
                vms_before: 0,
                vms_after: 5000,
                median: 630.0,
                slowest: 600.0,
                fastest: 650.0,
            }
        );
        let latest = rates.latest(5);
        assert_eq!((latest.vms_before, latest.vms_after), (4000, 9000));
        assert_eq!(latest.median, 605.0);
        assert_eq!((latest.slowest, latest.fastest), (200.0, 630.0));
    }

    #[test]
    fn fewer_windows_than_asked_are_all_used() {
        let rates = rates(&[100.0, 300.0]);
        assert_eq!(rates.latest(5).median, 200.0);
        assert_eq!(rates.earliest(5).windows, 2);
        assert_eq!(CreateRates::default().latest(5), WindowRates::default());
    }
}
