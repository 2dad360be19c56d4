//! Hosts in the database: what each agent registered, whether it is connected, and how
//! much of it the VMs recorded on it take.

use sqlx::{AnyConnection, AnyExecutor};
use vmm_shared::{HostId, ImageId, VmSize};

use super::scheduler::{HostLoad, HostSize};
use crate::config::Placement;
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
/// which is higher than that of every earlier session of the host. The host's totals row
/// (`ledger`) is made at its first registration, and its free memory follows the memory the
/// host reports now. Run it inside a write transaction: it writes two rows.
pub async fn register_session(
    conn: &mut AnyConnection,
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
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO host_allocations (host_id, free_memory_mib) VALUES ($1, $2)
         ON CONFLICT (host_id) DO UPDATE SET free_memory_mib = $2 - host_allocations.memory_mib",
    )
    .bind(&host.id)
    .bind(db::to_i64(host.memory_mib))
    .execute(&mut *conn)
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
    let host = host.clone();
    db::group_write(db, move |conn| {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE hosts SET last_seen_at = $1, libvirt_connected = $2 \
                 WHERE id = $3 AND session_epoch = $4",
            )
            .bind(db::now())
            .bind(i64::from(libvirt_connected))
            .bind(&host)
            .bind(db::to_i64(epoch))
            .execute(conn)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    })
    .await
}

/// Marks the host unreachable and its VMs as reading `unknown` (see `vms::store::mark_host_lost`):
/// the coordinator no longer knows their state, so it does not claim one. Only while
/// `epoch` is still the host's session: the clean-up of a session that a newer registration
/// replaced (however late it runs) changes nothing. Returns whether it applied.
pub async fn mark_unreachable(
    db: &Db,
    host: &HostId,
    epoch: SessionEpoch,
) -> Result<bool, sqlx::Error> {
    let host = host.clone();
    db::group_write(db, move |conn| {
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE hosts SET status = $1 WHERE id = $2 AND session_epoch = $3 AND status = $4",
            )
            .bind(HostStatus::Unreachable)
            .bind(&host)
            .bind(db::to_i64(epoch))
            .bind(HostStatus::Connected)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            crate::vms::store::mark_host_lost(conn, &host).await?;
            Ok(true)
        })
    })
    .await
}

/// No agent is connected: every host is unreachable and every VM whose state came from its
/// host reads as `unknown`. Run at start (whatever the last run left) and as the last write of a
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
    // All at once: they are committed in a few groups.
    futures::future::try_join_all(
        held.iter()
            .map(|(host, epoch)| mark_unreachable(db, host, u64::try_from(*epoch).unwrap_or(0))),
    )
    .await?;
    Ok(())
}

/// How many hosts a claim reads at most (see [`placement_candidates`]).
pub const PLACEMENT_CANDIDATES: i64 = 8;

/// What a claim asks of the hosts: room for `size`, under `placement`'s order.
#[derive(Clone, Copy, Debug)]
pub struct PlacementQuery<'a> {
    pub size: &'a VmSize,
    pub placement: Placement,
    pub cpu_allocation_ratio: f64,
    /// The image the VM is made from (a host caching it wins ties).
    pub image: Option<ImageId>,
}

/// A host's load (`HostLoad` columns: `h` its `hosts` row, `a` its totals row), and whether it
/// caches the image bound as `$1`.
macro_rules! host_load_columns {
    () => {
        "SELECT h.id, h.cpus, h.memory_mib, h.disk_gb,
                a.cpu AS allocated_cpu, a.memory_mib AS allocated_memory_mib,
                a.disk_gb AS allocated_disk_gb, a.vms AS vm_count,
                CASE WHEN EXISTS (SELECT 1 FROM host_images hi
                                  WHERE hi.host_id = h.id AND hi.image_id = $1)
                     THEN 1 ELSE 0 END AS caches_image"
    };
}

/// The host is connected and not drained, and has room (as [`HostLoad::fits`] says) for a VM
/// of `$2` vCPUs (allocation ratio `$3`), `$4` MiB and `$5` GB. `a.placeable` says the first
/// half again (migration 0015's triggers keep it so); it leads the placement indexes, so that
/// their walk never meets a host that cannot take the VM.
macro_rules! placeable_and_fitting {
    () => {
        "a.placeable = 1 AND h.status = 'connected' AND h.drained_at IS NULL
           AND a.free_memory_mib >= $4
           AND a.cpu + $2 <= h.cpus * $3
           AND a.memory_mib + $4 <= h.memory_mib
           AND a.disk_gb + $5 <= h.disk_gb"
    };
}

/// A placement statement with the parameters of [`host_load_columns!`] and
/// [`placeable_and_fitting!`] bound (`$1` to `$5`): the image, and the room the VM asks for.
fn with_room<'q>(
    sql: String,
    query: &PlacementQuery<'_>,
) -> sqlx::query::QueryAs<'q, sqlx::Any, HostLoad, sqlx::any::AnyArguments> {
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(query.image)
        .bind(i64::from(query.size.cpu))
        .bind(query.cpu_allocation_ratio)
        .bind(db::to_i64(query.size.memory_mib))
        .bind(db::to_i64(query.size.disk_gb))
}

/// How many hosts the placement read on PostgreSQL takes in index order before it reads
/// every host (see [`placement_candidates`]). Smaller under test, so that the random fleets
/// take both ways.
const PLACEMENT_WALK: i64 = if cfg!(test) { 2 } else { 64 };

/// How many hosts tied with the best one the cached-image read walks in index order before
/// it looks the other way, from the hosts that cache the image (see [`caching_tie`]).
/// Smaller under test, so that the random fleets take both ways.
const TIE_WALK: i64 = if cfg!(test) { 2 } else { 32 };

/// The connected hosts that are not drained and have room for the VM (as
/// [`HostLoad::fits`] says), best first in the order [`super::scheduler::choose_host`] prefers
/// them, at most `limit`, read inside the caller's transaction; `choose_host` takes the
/// first. The filter and the order are `fits` and `choose_host`'s preference written in SQL
/// (text ordered by its bytes, as Rust orders it), which a test checks against them on
/// random fleets.
///
/// A claim reads a few index entries however many hosts there are (migrations 0014, 0015):
/// SQLite walks the placement's index of (placeable, free memory, VM count, host ID) from
/// the best end of its placeable hosts and stops at the `limit`th that fits; hosts it passes
/// over are those short of vCPUs or disk while having more room (under `spread`) than the
/// best one. Unreachable and drained hosts are not in that part of the index at all.
/// PostgreSQL's planner expects the room conditions to keep few hosts and would rather join
/// and sort every host of a fleet of a thousand, so on PostgreSQL the first read takes only
/// the first [`PLACEMENT_WALK`] index entries and keeps those that are placeable and fit (a
/// prefix of the full order); only when none of them is does it read the whole order. A
/// cached image only breaks ties of free memory: when the best host does not cache it,
/// [`caching_tie`] looks for the best host of the same free memory that does.
pub async fn placement_candidates(
    conn: &mut AnyConnection,
    backend: db::Backend,
    query: &PlacementQuery<'_>,
    limit: i64,
) -> Result<Vec<HostLoad>, sqlx::Error> {
    let free_memory = match query.placement {
        Placement::Spread => "DESC",
        Placement::Pack => "ASC",
    };
    let collation = backend.bytewise_collation();
    // The first `$7` hosts in index order; every host when none of them is placeable with room.
    let walk_best = format!(
        concat!(
            host_load_columns!(),
            "
         FROM (SELECT * FROM host_allocations WHERE placeable = 1 AND free_memory_mib >= $4
               ORDER BY free_memory_mib {free_memory}, vms ASC, host_id COLLATE {collation} ASC
               LIMIT $7) a
         JOIN hosts h ON h.id = a.host_id
         WHERE ",
            placeable_and_fitting!(),
            "
         ORDER BY a.free_memory_mib {free_memory}, a.vms ASC, a.host_id COLLATE {collation} ASC
         LIMIT $6"
        ),
        free_memory = free_memory,
        collation = collation,
    );
    let every_host = format!(
        concat!(
            host_load_columns!(),
            "
         FROM host_allocations a JOIN hosts h ON h.id = a.host_id
         WHERE ",
            placeable_and_fitting!(),
            "
         ORDER BY a.free_memory_mib {free_memory}, a.vms ASC, a.host_id COLLATE {collation} ASC
         LIMIT $6"
        ),
        free_memory = free_memory,
        collation = collation,
    );
    // SQLite's planner walks the index for the whole order by itself, and would pay for the
    // window by materialising it.
    let reads = match backend {
        db::Backend::Postgres => vec![(walk_best, Some(PLACEMENT_WALK)), (every_host, None)],
        db::Backend::Sqlite => vec![(every_host, None)],
    };
    let mut candidates = Vec::new();
    for (sql, walk) in reads {
        let mut statement = with_room(sql, query).bind(limit);
        if let Some(walk) = walk {
            statement = statement.bind(walk);
        }
        candidates = statement.fetch_all(&mut *conn).await?;
        if !candidates.is_empty() {
            break;
        }
    }
    let Some(best) = candidates.first() else {
        return Ok(candidates);
    };
    if query.image.is_none() || best.caches_image {
        return Ok(candidates);
    }
    let best = best.id.clone();
    if let Some(tie) = caching_tie(conn, backend, query, &best).await? {
        candidates.retain(|host| host.id != tie.id);
        candidates.insert(0, tie);
        candidates.truncate(usize::try_from(limit).unwrap_or(0));
    }
    Ok(candidates)
}

/// Among the placeable hosts with room that have the same free memory as `best` (which does
/// not cache the image), the one that caches the image with the fewest VMs, then the smaller
/// ID. Two ways to it, each bounded by a different count: the first [`TIE_WALK`] hosts of
/// that free memory in index order (found there when many hosts cache the image), else the
/// hosts that cache the image, through their own index (few, when the first way found none
/// among so many).
async fn caching_tie(
    conn: &mut AnyConnection,
    backend: db::Backend,
    query: &PlacementQuery<'_>,
    best: &HostId,
) -> Result<Option<HostLoad>, sqlx::Error> {
    let collation = backend.bytewise_collation();
    let walk_ties = format!(
        concat!(
            host_load_columns!(),
            "
         FROM (SELECT * FROM host_allocations
               WHERE placeable = 1
                 AND free_memory_mib = (SELECT b.free_memory_mib FROM host_allocations b
                                        WHERE b.host_id = $6)
               ORDER BY vms ASC, host_id COLLATE {collation} ASC
               LIMIT $7) a
         JOIN hosts h ON h.id = a.host_id
         WHERE ",
            placeable_and_fitting!(),
            "
           AND EXISTS (SELECT 1 FROM host_images hi WHERE hi.host_id = h.id AND hi.image_id = $1)
         ORDER BY a.vms ASC, a.host_id COLLATE {collation} ASC
         LIMIT 1"
        ),
        collation = collation,
    );
    // The hosts caching the image come first in the join (SQLite keeps a CROSS JOIN's order).
    let from_cached = format!(
        concat!(
            host_load_columns!(),
            "
         FROM host_images c CROSS JOIN host_allocations a CROSS JOIN hosts h
         WHERE c.image_id = $1 AND a.host_id = c.host_id AND h.id = c.host_id
           AND a.free_memory_mib = (SELECT b.free_memory_mib FROM host_allocations b
                                    WHERE b.host_id = $6)
           AND ",
            placeable_and_fitting!(),
            "
         ORDER BY a.vms ASC, a.host_id COLLATE {collation} ASC
         LIMIT 1"
        ),
        collation = collation,
    );
    for (sql, walk) in [(walk_ties, Some(TIE_WALK)), (from_cached, None)] {
        let mut statement = with_room(sql, query).bind(best);
        if let Some(walk) = walk {
            statement = statement.bind(walk);
        }
        let found: Option<HostLoad> = statement.fetch_optional(&mut *conn).await?;
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// The size of every recorded host, connected or not (an unreachable or drained host may
/// come back): what a create no host has room for is measured against.
pub async fn sizes<'e>(executor: impl AnyExecutor<'e>) -> Result<Vec<HostSize>, sqlx::Error> {
    sqlx::query_as("SELECT cpus, memory_mib, disk_gb FROM hosts")
        .fetch_all(executor)
        .await
}

/// Whether any host is connected and not drained (placement found no room, or no host).
pub async fn any_placeable<'e>(executor: impl AnyExecutor<'e>) -> Result<bool, sqlx::Error> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM hosts WHERE status = 'connected' AND drained_at IS NULL LIMIT 1",
    )
    .fetch_optional(executor)
    .await?;
    Ok(found.is_some())
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
    use crate::hosts::scheduler::choose_host;
    use crate::test_support::TestDb;

    /// Every placeable host's load, as the scheduler would see them all (read without the
    /// free memory column and its indexes, which are what is under test).
    async fn connected_loads<'e>(
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

    /// Whether the host's placement row says it may take VMs.
    async fn placeable(db: &Db, host: &HostId) -> i64 {
        sqlx::query_scalar("SELECT placeable FROM host_allocations WHERE host_id = $1")
            .bind(host)
            .fetch_one(db)
            .await
            .unwrap()
    }

    /// The placement rows follow every change of a host's status and drain, whichever
    /// statement makes it: a registration (new host or returning one), a loss, a drain.
    #[tokio::test]
    async fn a_host_is_placeable_exactly_while_connected_and_not_drained() {
        let t = TestDb::new().await;
        assert_eq!(placeable(&t.db, &t.host).await, 1);
        let set = |sql: &'static str| {
            let (db, host) = (t.db.clone(), t.host.clone());
            async move {
                sqlx::query(sql).bind(&host).execute(&db).await.unwrap();
            }
        };
        set("UPDATE hosts SET status = 'unreachable' WHERE id = $1").await;
        assert_eq!(placeable(&t.db, &t.host).await, 0);
        let registration = HostRegistration {
            id: t.host.clone(),
            cpus: 64,
            memory_mib: 65_536,
            disk_gb: 1_000,
            libvirt_version: "11".into(),
            hypervisor: "Test".into(),
            kvm_usable: false,
            agent_version: "test".into(),
        };
        register_session(&mut *t.conn().await, &registration)
            .await
            .unwrap();
        assert_eq!(placeable(&t.db, &t.host).await, 1);
        set("UPDATE hosts SET drained_at = '2026-01-01T00:00:00.000Z' WHERE id = $1").await;
        assert_eq!(placeable(&t.db, &t.host).await, 0);
        // A drained host that registers again stays drained.
        register_session(&mut *t.conn().await, &registration)
            .await
            .unwrap();
        assert_eq!(placeable(&t.db, &t.host).await, 0);
        set("UPDATE hosts SET drained_at = NULL WHERE id = $1").await;
        assert_eq!(placeable(&t.db, &t.host).await, 1);
        // A host registered for the first time while the others are as they are.
        let new_host = HostRegistration {
            id: "host-new".parse().unwrap(),
            ..registration
        };
        register_session(&mut *t.conn().await, &new_host)
            .await
            .unwrap();
        assert_eq!(placeable(&t.db, &new_host.id).await, 1);
    }

    /// A small deterministic generator, so that a failing fleet can be replayed.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len() as u64) as usize]
        }
    }

    /// On random fleets (ties in free memory, cached images and VM counts, hosts without
    /// room, drained and unreachable hosts, IDs that a locale would sort otherwise than
    /// their bytes), the host chosen among the few candidates a claim reads is the one
    /// chosen among every host, and it comes first.
    #[tokio::test]
    async fn the_few_candidates_hold_the_host_chosen_among_all() {
        let t = TestDb::new().await;
        let backend = db::Backend::of(&t.db);
        let image = ImageId::new_random();
        sqlx::query(
            "INSERT INTO images (id, name, status, default_user, created_at)
             VALUES ($1, 'img', 'ready', 'debian', $2)",
        )
        .bind(image)
        .bind(db::now())
        .execute(&t.db)
        .await
        .unwrap();
        let names = [
            "a", "a-b", "ab", "a.c", "a_b", "ac", "b", "b-1", "b1", "b.1", "b_1", "c", "x-y", "xy",
            "x_y", "x.y", "y", "z-z", "zz", "z9",
        ];
        // The test database's own host is out of the way.
        sqlx::query("UPDATE hosts SET status = 'unreachable' WHERE id = $1")
            .bind(&t.host)
            .execute(&t.db)
            .await
            .unwrap();
        let hosts: Vec<HostId> = names.iter().map(|name| name.parse().unwrap()).collect();
        for host in &hosts {
            register_session(
                &mut *t.conn().await,
                &HostRegistration {
                    id: host.clone(),
                    cpus: 4,
                    memory_mib: 4096,
                    disk_gb: 100,
                    libvirt_version: "11".into(),
                    hypervisor: "Test".into(),
                    kvm_usable: false,
                    agent_version: "test".into(),
                },
            )
            .await
            .unwrap();
        }
        let mut random = Lcg(16);
        for round in 0..40 {
            for host in &hosts {
                sqlx::query(
                    "UPDATE hosts SET cpus = $1, memory_mib = $2, disk_gb = $3, status = $4,
                                      drained_at = $5 WHERE id = $6",
                )
                .bind(random.pick(&[2_i64, 4]))
                .bind(random.pick(&[4096_i64, 8192]))
                .bind(random.pick(&[20_i64, 100]))
                .bind(random.pick(&[
                    HostStatus::Connected,
                    HostStatus::Connected,
                    HostStatus::Connected,
                    HostStatus::Unreachable,
                ]))
                .bind(random.pick(&[None, None, None, Some("2026-01-01T00:00:00.000Z")]))
                .bind(host)
                .execute(&t.db)
                .await
                .unwrap();
                // Empty one time in five; free memory as the ledger keeps it.
                let scale = i64::from(random.below(5) > 0);
                sqlx::query(
                    "UPDATE host_allocations SET vms = $1, cpu = $2, memory_mib = $3, disk_gb = $4,
                         free_memory_mib = (SELECT h.memory_mib FROM hosts h WHERE h.id = $5) - $3
                     WHERE host_id = $5",
                )
                .bind(scale * random.pick(&[0_i64, 1, 2]))
                .bind(scale * random.pick(&[0_i64, 2, 4, 7, 8]))
                .bind(scale * random.pick(&[0_i64, 1024, 2048, 4096, 7680]))
                .bind(scale * random.pick(&[0_i64, 10, 19, 90]))
                .bind(host)
                .execute(&t.db)
                .await
                .unwrap();
                sqlx::query("DELETE FROM host_images WHERE host_id = $1")
                    .bind(host)
                    .execute(&t.db)
                    .await
                    .unwrap();
                if random.below(3) == 0 {
                    sqlx::query(
                        "INSERT INTO host_images (host_id, image_id, sha256, size_bytes, updated_at)
                         VALUES ($1, $2, 'ff', 1, $3)",
                    )
                    .bind(host)
                    .bind(image)
                    .bind(db::now())
                    .execute(&t.db)
                    .await
                    .unwrap();
                }
            }
            for _ in 0..6 {
                let size = VmSize {
                    cpu: random.pick(&[1, 2]),
                    memory_mib: random.pick(&[512, 1024, 2048]),
                    disk_gb: random.pick(&[1, 10]),
                };
                let wanted = PlacementQuery {
                    size: &size,
                    placement: random.pick(&[Placement::Spread, Placement::Pack]),
                    cpu_allocation_ratio: random.pick(&[1.0, 1.5, 4.0]),
                    image: random.pick(&[None, Some(image)]),
                };
                let mut conn = t.conn().await;
                let all = connected_loads(&mut *conn, wanted.image).await.unwrap();
                let expected = choose_host(
                    &all,
                    wanted.size,
                    wanted.placement,
                    wanted.cpu_allocation_ratio,
                )
                .map(|host| host.id.clone());
                let candidates =
                    placement_candidates(&mut conn, backend, &wanted, PLACEMENT_CANDIDATES)
                        .await
                        .unwrap();
                assert!(candidates.len() <= PLACEMENT_CANDIDATES as usize);
                let chosen = choose_host(
                    &candidates,
                    wanted.size,
                    wanted.placement,
                    wanted.cpu_allocation_ratio,
                )
                .map(|host| host.id.clone());
                assert_eq!(chosen, expected, "round {round}: {wanted:?}");
                assert_eq!(
                    candidates.first().map(|host| host.id.clone()),
                    expected,
                    "round {round}: the best candidate comes first"
                );
                assert_eq!(
                    any_placeable(&mut *conn).await.unwrap(),
                    !all.is_empty(),
                    "round {round}"
                );
            }
        }
    }
}
