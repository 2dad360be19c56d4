//! The audit every fault test ends with: the record is true. Every VM the API shows exists
//! on its host with the same state (or is reported as gone), and so do its snapshots; no
//! product domain exists on a host that the API does not know; every user's quota usage
//! equals the resources recorded for them. Hosts on the system libvirtd are inspected with
//! `virsh`; a test-driver host lives inside its agent, so there only the API's side is
//! checked.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::api::QuotaUsage;
use crate::cluster::{QEMU_SYSTEM_URI, domain_name};
use crate::{Api, TestCluster, virsh, wait_until};

/// How long the system may take to settle after a fault.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(90);

/// What the audit found, for the test's output.
#[derive(Debug, Default)]
pub struct AuditSummary {
    pub vms: usize,
    pub running: usize,
    pub stopped: usize,
    pub gone_reported: usize,
    pub snapshots: usize,
}

/// Checks that the record is true (see the module docs); `Err` says what is not (yet).
/// `users` are the accounts whose quota is checked.
pub async fn audit(cluster: &TestCluster, users: &[&Api]) -> Result<AuditSummary> {
    let admin = cluster.admin().await?;
    let vms: Vec<Value> = admin.get("/api/vms").await?.expect_status(200)?.json()?;
    let hosts: Vec<&str> = cluster.agents().iter().map(|a| a.host_id()).collect();
    // Hosts on the system libvirtd, whose domains `virsh` can see.
    let inspectable: Vec<&str> = cluster
        .agents()
        .iter()
        .filter(|a| a.options.libvirt_uri == QEMU_SYSTEM_URI)
        .map(|a| a.host_id())
        .collect();
    let mut summary = AuditSummary::default();
    let mut known_domains = Vec::new();

    for vm in &vms {
        let id = vm["id"].as_str().context("VM without id")?;
        let status = vm["status"].as_str().context("VM without status")?;
        let host = vm["host"].as_str().unwrap_or_default();
        ensure!(hosts.contains(&host), "VM {id} is on unknown host {host:?}");
        let domain = domain_name(id);
        known_domains.push(domain.clone());
        summary.vms += 1;
        if !inspectable.contains(&host) {
            // An in-memory test-driver host cannot be looked at from outside its agent:
            // the VM must at least have settled.
            ensure!(
                matches!(status, "running" | "stopped" | "paused" | "error"),
                "VM {id} has not settled: {status}"
            );
            continue;
        }
        let exists = virsh::domain_exists(&domain).await?;
        match status {
            "running" | "stopped" | "paused" => {
                ensure!(exists, "VM {id} is {status} in the API but has no domain");
                let state = virsh::domstate(&domain).await?;
                let expected = match status {
                    "running" => "running",
                    "stopped" => "shut off",
                    _ => "paused",
                };
                ensure!(
                    state == expected,
                    "VM {id} is {status} in the API but {state:?} on its host"
                );
                if status == "running" {
                    summary.running += 1;
                } else {
                    summary.stopped += 1;
                }
            }
            "error" => {
                // The coordinator says the VM is broken; acceptable when it is gone from
                // the host and the API says so.
                let reason = vm["status_reason"].as_str().unwrap_or_default();
                ensure!(
                    !exists,
                    "VM {id} is in error ({reason}) but its domain exists on the host"
                );
                summary.gone_reported += 1;
            }
            other => bail!("VM {id} has not settled: {other}"),
        }

        let snapshots: Vec<Value> = admin
            .get(&format!("/api/vms/{id}/snapshots"))
            .await?
            .expect_status(200)?
            .json()?;
        let on_host = if exists {
            virsh::snapshot_names(&domain).await?
        } else {
            Vec::new()
        };
        for snapshot in &snapshots {
            let snapshot_id = snapshot["id"].as_str().context("snapshot without id")?;
            let snapshot_status = snapshot["status"].as_str().unwrap_or_default();
            let present = on_host.iter().any(|name| name == snapshot_id);
            match snapshot_status {
                "ready" => ensure!(
                    present,
                    "snapshot {snapshot_id} of VM {id} is ready in the API but not on the host"
                ),
                // Reported as broken: acceptable when it is not on the host either.
                "error" => ensure!(
                    !present,
                    "snapshot {snapshot_id} of VM {id} is in error but exists on the host"
                ),
                other => bail!("snapshot {snapshot_id} of VM {id} has not settled: {other}"),
            }
            summary.snapshots += 1;
        }
        for name in &on_host {
            ensure!(
                snapshots
                    .iter()
                    .any(|s| s["id"].as_str() == Some(name.as_str())),
                "VM {id} has snapshot {name} on its host that the API does not know"
            );
        }
    }

    // No product domain on this cluster's hosts that the API does not know.
    for agent in cluster
        .agents()
        .iter()
        .filter(|a| inspectable.contains(&a.host_id()))
    {
        let marker = format!("{}/images/", agent.data_dir.display());
        for name in virsh::domain_names().await? {
            if !name.starts_with("vmm-") || known_domains.contains(&name) {
                continue;
            }
            let Ok(xml) = virsh::dumpxml(&name).await else {
                continue; // gone meanwhile
            };
            ensure!(
                !xml.contains(&marker),
                "domain {name} on host {} is unknown to the API",
                agent.host_id()
            );
        }
    }

    // Quota usage equals what is recorded for each user.
    for user in users {
        let quota = user.quota().await?;
        let mine: Vec<&Value> = vms
            .iter()
            .filter(|vm| vm["owner_id"].as_str() == Some(user.user().id.as_str()))
            .collect();
        let mut expected = QuotaUsage {
            vms: mine.len() as u64,
            ..QuotaUsage::default()
        };
        for vm in &mine {
            expected.cpu += vm["cpu"].as_u64().unwrap_or_default();
            expected.memory += vm["memory"].as_u64().unwrap_or_default();
            expected.disk_gb += vm["disk_gb"].as_u64().unwrap_or_default();
            let id = vm["id"].as_str().unwrap_or_default();
            let snapshots: Vec<Value> = user
                .get(&format!("/api/vms/{id}/snapshots"))
                .await?
                .expect_status(200)?
                .json()?;
            expected.snapshots += snapshots.len() as u64;
        }
        ensure!(
            quota.usage == expected,
            "quota usage of {} is {:?} but the resources recorded are {expected:?}",
            user.user().username,
            quota.usage
        );
    }
    Ok(summary)
}

/// Waits until the audit passes and prints how long that took after `since`.
pub async fn converge(
    what: &str,
    cluster: &TestCluster,
    users: &[&Api],
    since: Instant,
) -> Result<AuditSummary> {
    let summary = wait_until(
        &format!("the record to be true again after {what}"),
        CONVERGE_DEADLINE,
        || async { Ok(Some(audit(cluster, users).await?)) },
    )
    .await;
    // `wait_until` treats Err as "not yet"; its last error explains a timeout.
    let summary = summary?;
    eprintln!(
        "CONVERGED after {what} in {:.2}s: {summary:?}",
        since.elapsed().as_secs_f64()
    );
    Ok(summary)
}
