//! Hosts in the database: what each agent registered, whether it is connected, and how
//! much of it the VMs recorded on it take.

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use vmm_shared::HostId;

use super::scheduler::HostLoad;
use crate::db::{self, Db};

/// What an agent tells about its host when it registers.
#[derive(Clone, Debug)]
pub struct HostRegistration {
    pub id: HostId,
    pub cpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub libvirt_version: String,
    pub hypervisor: String,
    pub kvm_usable: bool,
    pub agent_version: String,
}

pub async fn upsert_connected(db: &Db, host: &HostRegistration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version, hypervisor,
                            kvm_usable, agent_version, libvirt_connected, last_seen_at)
         VALUES (?, 'connected', ?, ?, ?, ?, ?, ?, ?, 1, ?)
         ON CONFLICT (id) DO UPDATE SET
            status = 'connected', cpus = excluded.cpus, memory_mib = excluded.memory_mib,
            disk_gb = excluded.disk_gb, libvirt_version = excluded.libvirt_version,
            hypervisor = excluded.hypervisor, kvm_usable = excluded.kvm_usable,
            agent_version = excluded.agent_version, libvirt_connected = 1,
            last_seen_at = excluded.last_seen_at",
    )
    .bind(host.id.as_str())
    .bind(host.cpus as i64)
    .bind(host.memory_mib as i64)
    .bind(host.disk_gb as i64)
    .bind(&host.libvirt_version)
    .bind(&host.hypervisor)
    .bind(host.kvm_usable)
    .bind(&host.agent_version)
    .bind(db::now())
    .execute(db)
    .await?;
    Ok(())
}

pub async fn record_heartbeat(
    db: &Db,
    host: &HostId,
    libvirt_connected: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET last_seen_at = ?, libvirt_connected = ? WHERE id = ?")
        .bind(db::now())
        .bind(libvirt_connected)
        .bind(host.as_str())
        .execute(db)
        .await?;
    Ok(())
}

/// Marks the host unreachable and every settled VM on it `unknown`: the coordinator no
/// longer knows their state, so it does not claim one.
pub async fn mark_unreachable(db: &Db, host: &HostId) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    sqlx::query("UPDATE hosts SET status = 'unreachable' WHERE id = ?")
        .bind(host.as_str())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE vms SET status = 'unknown', status_reason = ?
         WHERE host_id = ? AND status IN ('running', 'paused', 'stopped')",
    )
    .bind(format!("host {host} is unreachable"))
    .bind(host.as_str())
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// At start no agent is connected yet, whatever the database last said.
pub async fn mark_all_unreachable(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET status = 'unreachable'")
        .execute(db)
        .await?;
    Ok(())
}

const LOAD_QUERY: &str = "
    SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
           COALESCE(SUM(v.cpu), 0) AS allocated_cpu,
           COALESCE(SUM(v.memory_mib), 0) AS allocated_memory_mib,
           COALESCE(SUM(v.disk_gb), 0) AS allocated_disk_gb,
           COUNT(v.id) AS vm_count
    FROM hosts h LEFT JOIN vms v ON v.host_id = h.id";

fn load_from_row(row: &SqliteRow) -> Result<HostLoad, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let get =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    Ok(HostLoad {
        id: id.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        cpus: get("cpus")?,
        memory_mib: get("memory_mib")?,
        disk_gb: get("disk_gb")?,
        allocated_cpu: get("allocated_cpu")?,
        allocated_memory_mib: get("allocated_memory_mib")?,
        allocated_disk_gb: get("allocated_disk_gb")?,
        vm_count: get("vm_count")?,
    })
}

/// Capacity and allocation of every connected host, read inside the caller's transaction.
pub async fn connected_loads(tx: &mut db::DbTransaction) -> Result<Vec<HostLoad>, sqlx::Error> {
    let query = format!("{LOAD_QUERY} WHERE h.status = 'connected' GROUP BY h.id ORDER BY h.id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(query))
        .fetch_all(&mut **tx)
        .await?;
    rows.iter().map(load_from_row).collect()
}

#[derive(Debug, Serialize)]
pub struct HostView {
    pub id: String,
    pub status: String,
    pub cpus: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
    pub kvm_usable: bool,
    pub hypervisor: String,
    pub libvirt_version: String,
    pub agent_version: String,
    pub libvirt_connected: bool,
    pub last_seen_at: String,
    pub allocated: Allocation,
    pub vms: u64,
}

#[derive(Debug, Serialize)]
pub struct Allocation {
    pub cpu: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

pub async fn list(db: &Db) -> Result<Vec<HostView>, sqlx::Error> {
    let query =
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb, h.status, h.kvm_usable, h.hypervisor,
                h.libvirt_version, h.agent_version, h.libvirt_connected, h.last_seen_at,
                COALESCE(SUM(v.cpu), 0) AS allocated_cpu,
                COALESCE(SUM(v.memory_mib), 0) AS allocated_memory_mib,
                COALESCE(SUM(v.disk_gb), 0) AS allocated_disk_gb,
                COUNT(v.id) AS vm_count
         FROM hosts h LEFT JOIN vms v ON v.host_id = h.id GROUP BY h.id ORDER BY h.id";
    let rows = sqlx::query(query).fetch_all(db).await?;
    rows.iter()
        .map(|row| {
            let load = load_from_row(row)?;
            Ok(HostView {
                id: load.id.to_string(),
                status: row.try_get("status")?,
                cpus: load.cpus,
                memory_mib: load.memory_mib,
                disk_gb: load.disk_gb,
                kvm_usable: row.try_get("kvm_usable")?,
                hypervisor: row.try_get("hypervisor")?,
                libvirt_version: row.try_get("libvirt_version")?,
                agent_version: row.try_get("agent_version")?,
                libvirt_connected: row.try_get("libvirt_connected")?,
                last_seen_at: row.try_get("last_seen_at")?,
                allocated: Allocation {
                    cpu: load.allocated_cpu,
                    memory_mib: load.allocated_memory_mib,
                    disk_gb: load.allocated_disk_gb,
                },
                vms: load.vm_count,
            })
        })
        .collect()
}
