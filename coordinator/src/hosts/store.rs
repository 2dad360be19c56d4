//! Hosts in the database: what each agent registered, whether it is connected, and how
//! much of it the VMs recorded on it take.

use sqlx::AnyExecutor;
use vmm_shared::{HostId, ImageId};

use super::scheduler::HostLoad;
use crate::db::{self, Db};
use crate::http::page::{Cursor, Page, Paged, push_keyset};

/// Whether a host's agent has its stream open.
pub use vmm_shared::api::hosts::{Allocation, CachedImage, HostStatus, HostView};

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

/// A host's session number: every registration of its agent takes the next one (see
/// migration 0009). Only the current session's heartbeats and clean-up change the host.
pub type SessionEpoch = u64;

/// Records the host as connected under a new session and returns the session's epoch,
/// which is higher than that of every earlier session of the host.
pub async fn register_session<'e>(
    executor: impl AnyExecutor<'e>,
    host: &HostRegistration,
) -> Result<SessionEpoch, sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar(
        "INSERT INTO hosts (id, status, cpus, memory_mib, disk_gb, libvirt_version, hypervisor,
                            kvm_usable, agent_version, libvirt_connected, last_seen_at,
                            session_epoch, coordinator_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, 1, $11)
         ON CONFLICT (id) DO UPDATE SET
            status = excluded.status, cpus = excluded.cpus, memory_mib = excluded.memory_mib,
            disk_gb = excluded.disk_gb, libvirt_version = excluded.libvirt_version,
            hypervisor = excluded.hypervisor, kvm_usable = excluded.kvm_usable,
            agent_version = excluded.agent_version, libvirt_connected = 1,
            last_seen_at = excluded.last_seen_at, session_epoch = hosts.session_epoch + 1,
            coordinator_id = excluded.coordinator_id
         RETURNING session_epoch",
    )
    .bind(&host.id)
    .bind(HostStatus::Connected)
    .bind(db::to_i64(host.cpus))
    .bind(db::to_i64(host.memory_mib))
    .bind(db::to_i64(host.disk_gb))
    .bind(&host.libvirt_version)
    .bind(&host.hypervisor)
    .bind(i64::from(host.kvm_usable))
    .bind(&host.agent_version)
    .bind(db::now())
    .bind(crate::cluster::this_coordinator())
    .fetch_one(executor)
    .await?;
    Ok(u64::try_from(epoch).unwrap_or(0))
}

/// Records a heartbeat of the host's session `epoch`; a stale session's changes nothing.
pub async fn record_heartbeat(
    db: &Db,
    host: &HostId,
    epoch: SessionEpoch,
    libvirt_connected: bool,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE hosts SET last_seen_at = $1, libvirt_connected = $2 WHERE id = $3 AND session_epoch = $4",
    )
    .bind(db::now())
    .bind(i64::from(libvirt_connected))
    .bind(host)
    .bind(db::to_i64(epoch))
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Marks the host unreachable and its VMs `unknown` (see `vms::store::mark_host_lost`):
/// the coordinator no longer knows their state, so it does not claim one. Only while
/// `epoch` is still the host's session: the clean-up of a session that a newer registration
/// replaced (however late it runs) changes nothing. Returns whether it applied.
pub async fn mark_unreachable(
    db: &Db,
    host: &HostId,
    epoch: SessionEpoch,
) -> Result<bool, sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    let done = sqlx::query(
        "UPDATE hosts SET status = $1 WHERE id = $2 AND session_epoch = $3 AND status = $4",
    )
    .bind(HostStatus::Unreachable)
    .bind(host)
    .bind(db::to_i64(epoch))
    .bind(HostStatus::Connected)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(false);
    }
    crate::vms::store::mark_host_lost(&mut tx, host).await?;
    tx.commit().await?;
    Ok(true)
}

/// No agent is connected: every host is unreachable and every VM whose state came from its
/// host is `unknown`. Run at start (whatever the last run left) and as the last write of a
/// shutdown, in one transaction.
pub async fn mark_all_unreachable(db: &Db, why: &str) -> Result<(), sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    sqlx::query("UPDATE hosts SET status = $1")
        .bind(HostStatus::Unreachable)
        .execute(&mut *tx)
        .await?;
    crate::vms::store::mark_all_hosts_lost(&mut tx, why).await?;
    tx.commit().await
}

/// Marks unreachable (as [`mark_unreachable`]) every connected host whose session
/// `coordinator` holds: what a coordinator's clean stop leaves.
pub async fn mark_held_unreachable(db: &Db, coordinator: &str) -> Result<(), sqlx::Error> {
    let held: Vec<(HostId, i64)> = sqlx::query_as(
        "SELECT id, session_epoch FROM hosts WHERE coordinator_id = $1 AND status = $2",
    )
    .bind(coordinator)
    .bind(HostStatus::Connected)
    .fetch_all(db)
    .await?;
    for (host, epoch) in held {
        mark_unreachable(db, &host, u64::try_from(epoch).unwrap_or(0)).await?;
    }
    Ok(())
}

/// Capacity and allocation of every connected host that is not drained, and whether it
/// caches `image`, read inside the caller's transaction.
pub async fn connected_loads<'e>(
    executor: impl AnyExecutor<'e>,
    image: Option<ImageId>,
) -> Result<Vec<HostLoad>, sqlx::Error> {
    sqlx::query_as(
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
                COALESCE(a.cpu, 0) AS allocated_cpu,
                COALESCE(a.memory_mib, 0) AS allocated_memory_mib,
                COALESCE(a.disk_gb, 0) AS allocated_disk_gb,
                COALESCE(a.vms, 0) AS vm_count,
                CASE WHEN EXISTS (SELECT 1 FROM host_images hi
                                  WHERE hi.host_id = h.id AND hi.image_id = $1)
                     THEN 1 ELSE 0 END AS caches_image
         FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id
         WHERE h.status = 'connected' AND h.drained_at IS NULL
         ORDER BY h.id",
    )
    .bind(image)
    .fetch_all(executor)
    .await
}

/// A host as `GET /api/hosts` reads it, before its cached images are added.
#[derive(Debug, sqlx::FromRow)]
struct HostRow {
    pub id: HostId,
    pub status: HostStatus,
    /// Whether an admin drained the host (also while it is unreachable).
    #[sqlx(try_from = "crate::db::Flag")]
    pub drained: bool,
    #[sqlx(try_from = "i64")]
    pub cpus: u64,
    #[sqlx(try_from = "i64")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
    #[sqlx(try_from = "crate::db::Flag")]
    pub kvm_usable: bool,
    pub hypervisor: String,
    pub libvirt_version: String,
    pub agent_version: String,
    #[sqlx(try_from = "crate::db::Flag")]
    pub libvirt_connected: bool,
    pub last_seen_at: String,
    /// The epoch of its agent's latest registration: grows with every (re)connect.
    #[sqlx(try_from = "i64", rename = "session_epoch")]
    pub session: u64,
    #[sqlx(flatten)]
    pub allocated: AllocationRow,
    #[sqlx(try_from = "i64", rename = "vm_count")]
    pub vms: u64,
}

#[derive(Debug, sqlx::FromRow)]
struct AllocationRow {
    #[sqlx(try_from = "i64", rename = "allocated_cpu")]
    pub cpu: u64,
    #[sqlx(try_from = "i64", rename = "allocated_memory_mib")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64", rename = "allocated_disk_gb")]
    pub disk_gb: u64,
}

/// One page of the hosts (of `status`, if given), by ID, with their allocation and the
/// images they cache.
pub async fn list_page(
    db: &Db,
    status: Option<HostStatus>,
    page: &Page,
) -> Result<Paged<HostView>, sqlx::Error> {
    select(db, status, None, page).await
}

/// The host with this ID, as listed.
pub async fn get(db: &Db, id: &HostId) -> Result<Option<HostView>, sqlx::Error> {
    let everything = Page {
        limit: None,
        after: None,
    };
    Ok(select(db, None, Some(id), &everything).await?.items.pop())
}

/// Hosts of `status` (all if `None`), or the one host `only`, a page of them.
async fn select(
    db: &Db,
    status: Option<HostStatus>,
    only: Option<&HostId>,
    page: &Page,
) -> Result<Paged<HostView>, sqlx::Error> {
    let mut query = crate::db::SqlBuilder::new(
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
                CASE WHEN h.status = 'connected' AND h.drained_at IS NOT NULL THEN 'draining'
                     ELSE h.status END AS status,
                CASE WHEN h.drained_at IS NOT NULL THEN 1 ELSE 0 END AS drained, h.kvm_usable, h.hypervisor,
                h.libvirt_version, h.agent_version, h.libvirt_connected, h.last_seen_at,
                h.session_epoch,
                COALESCE(a.cpu, 0) AS allocated_cpu,
                COALESCE(a.memory_mib, 0) AS allocated_memory_mib,
                COALESCE(a.disk_gb, 0) AS allocated_disk_gb,
                COALESCE(a.vms, 0) AS vm_count
         FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id WHERE 1 = 1",
    );
    match status {
        None => {}
        Some(HostStatus::Draining) => {
            query.push(" AND h.status = 'connected' AND h.drained_at IS NOT NULL");
        }
        Some(HostStatus::Connected) => {
            query.push(" AND h.status = 'connected' AND h.drained_at IS NULL");
        }
        Some(status) => {
            query.push(" AND h.status = ").push_bind(status);
        }
    }
    if let Some(id) = only {
        query.push(" AND h.id = ").push_bind(id.clone());
    }
    push_keyset(&mut query, page, "h.", false);
    let rows: Vec<HostRow> = query.build_query_as()?.fetch_all(db).await?;
    let mut copies = crate::images::store::copies_by_host(db).await?;
    let hosts = rows
        .into_iter()
        .map(|row| {
            let cached_images = copies.remove(&row.id).unwrap_or_default();
            HostView {
                id: row.id,
                status: row.status,
                drained: row.drained,
                cpus: row.cpus,
                memory_mib: row.memory_mib,
                disk_gb: row.disk_gb,
                kvm_usable: row.kvm_usable,
                hypervisor: row.hypervisor,
                libvirt_version: row.libvirt_version,
                agent_version: row.agent_version,
                libvirt_connected: row.libvirt_connected,
                last_seen_at: row.last_seen_at,
                session: row.session,
                allocated: Allocation {
                    cpu: row.allocated.cpu,
                    memory_mib: row.allocated.memory_mib,
                    disk_gb: row.allocated.disk_gb,
                },
                vms: row.vms,
                cached_images,
            }
        })
        .collect();
    Ok(Paged::from_rows(hosts, page, |host| Cursor {
        created_at: String::new(),
        id: host.id.to_string(),
    }))
}

/// Every host, by ID.
pub async fn list(db: &Db) -> Result<Vec<HostView>, sqlx::Error> {
    let everything = Page {
        limit: None,
        after: None,
    };
    Ok(list_page(db, None, &everything).await?.items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    #[tokio::test]
    async fn get_finds_one_host_as_listed_and_nothing_else() {
        let t = TestDb::new().await;
        let listed = list(&t.db).await.unwrap();
        let found = get(&t.db, &t.host)
            .await
            .unwrap()
            .expect("the host is there");
        assert_eq!(listed.len(), 1);
        assert_eq!(found.id, listed[0].id);
        assert_eq!(found.status, listed[0].status);
        assert_eq!(found.cpus, 64);
        let other: HostId = "host-elsewhere".parse().unwrap();
        assert!(get(&t.db, &other).await.unwrap().is_none());
    }
}
