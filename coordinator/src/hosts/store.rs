//! Hosts in the database: what each agent registered, whether it is connected, and how
//! much of it the VMs recorded on it take.

use serde::Serialize;
use sqlx::SqliteExecutor;
use vmm_shared::{HostId, ImageId};

use super::scheduler::HostLoad;
use crate::db::{self, Db};

/// Whether a host's agent has its stream open. `Draining` is how a connected host that an
/// admin drained is shown; the column stores only the other two (the drain is `drained_at`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    Connected,
    Draining,
    Unreachable,
}

crate::db::stored_enum!(HostStatus {
    Connected => "connected",
    Draining => "draining",
    Unreachable => "unreachable",
});

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
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)
         ON CONFLICT (id) DO UPDATE SET
            status = excluded.status, cpus = excluded.cpus, memory_mib = excluded.memory_mib,
            disk_gb = excluded.disk_gb, libvirt_version = excluded.libvirt_version,
            hypervisor = excluded.hypervisor, kvm_usable = excluded.kvm_usable,
            agent_version = excluded.agent_version, libvirt_connected = 1,
            last_seen_at = excluded.last_seen_at",
    )
    .bind(&host.id)
    .bind(HostStatus::Connected)
    .bind(db::to_i64(host.cpus))
    .bind(db::to_i64(host.memory_mib))
    .bind(db::to_i64(host.disk_gb))
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
        .bind(host)
        .execute(db)
        .await?;
    Ok(())
}

/// Marks the host unreachable and its VMs `unknown` (see `vms::store::mark_host_lost`):
/// the coordinator no longer knows their state, so it does not claim one.
pub async fn mark_unreachable(db: &Db, host: &HostId) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    sqlx::query("UPDATE hosts SET status = ? WHERE id = ?")
        .bind(HostStatus::Unreachable)
        .bind(host)
        .execute(&mut *tx)
        .await?;
    crate::vms::store::mark_host_lost(&mut tx, host).await?;
    tx.commit().await
}

/// At start no agent is connected yet, whatever the database last said.
pub async fn mark_all_unreachable(db: &Db) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET status = ?")
        .bind(HostStatus::Unreachable)
        .execute(db)
        .await?;
    Ok(())
}

/// Capacity and allocation of every connected host that is not drained, and whether it
/// caches `image`, read inside the caller's transaction.
pub async fn connected_loads<'e>(
    executor: impl SqliteExecutor<'e>,
    image: Option<ImageId>,
) -> Result<Vec<HostLoad>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
                COALESCE(SUM(v.cpu), 0) AS allocated_cpu,
                COALESCE(SUM(v.memory_mib), 0) AS allocated_memory_mib,
                COALESCE(SUM(v.disk_gb), 0) AS allocated_disk_gb,
                COUNT(v.id) AS vm_count,
                EXISTS (SELECT 1 FROM host_images hi
                        WHERE hi.host_id = h.id AND hi.image_id = ?) AS caches_image
         FROM hosts h LEFT JOIN vms v ON v.host_id = h.id
         WHERE h.status = 'connected' AND h.drained_at IS NULL
         GROUP BY h.id, h.cpus, h.memory_mib, h.disk_gb ORDER BY h.id",
    )
    .bind(image)
    .fetch_all(executor)
    .await
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct HostView {
    pub id: HostId,
    pub status: HostStatus,
    /// Whether an admin drained the host (also while it is unreachable).
    pub drained: bool,
    #[sqlx(try_from = "i64")]
    pub cpus: u64,
    #[sqlx(try_from = "i64")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
    pub kvm_usable: bool,
    pub hypervisor: String,
    pub libvirt_version: String,
    pub agent_version: String,
    pub libvirt_connected: bool,
    pub last_seen_at: String,
    #[sqlx(flatten)]
    pub allocated: Allocation,
    #[sqlx(try_from = "i64", rename = "vm_count")]
    pub vms: u64,
    /// The images the host keeps as verified base volumes.
    #[sqlx(skip)]
    pub cached_images: Vec<crate::images::store::CachedImageView>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Allocation {
    #[sqlx(try_from = "i64", rename = "allocated_cpu")]
    pub cpu: u64,
    #[sqlx(try_from = "i64", rename = "allocated_memory_mib")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64", rename = "allocated_disk_gb")]
    pub disk_gb: u64,
}

pub async fn list(db: &Db) -> Result<Vec<HostView>, sqlx::Error> {
    let mut hosts: Vec<HostView> = sqlx::query_as(
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
                CASE WHEN h.status = 'connected' AND h.drained_at IS NOT NULL THEN 'draining'
                     ELSE h.status END AS status,
                h.drained_at IS NOT NULL AS drained, h.kvm_usable, h.hypervisor,
                h.libvirt_version, h.agent_version, h.libvirt_connected, h.last_seen_at,
                COALESCE(SUM(v.cpu), 0) AS allocated_cpu,
                COALESCE(SUM(v.memory_mib), 0) AS allocated_memory_mib,
                COALESCE(SUM(v.disk_gb), 0) AS allocated_disk_gb,
                COUNT(v.id) AS vm_count
         FROM hosts h LEFT JOIN vms v ON v.host_id = h.id
         GROUP BY h.id, h.cpus, h.memory_mib, h.disk_gb, h.status, h.drained_at, h.kvm_usable, h.hypervisor,
                  h.libvirt_version, h.agent_version, h.libvirt_connected, h.last_seen_at
         ORDER BY h.id",
    )
    .fetch_all(db)
    .await?;
    let mut copies = crate::images::store::copies_by_host(db).await?;
    for host in &mut hosts {
        host.cached_images = copies.remove(&host.id).unwrap_or_default();
    }
    Ok(hosts)
}
