//! Running totals of what VMs and snapshots take: per host (`host_allocations`, read by
//! placement and `GET /api/hosts`) and per user (`user_usage`, read by quota claims and
//! `GET /api/quota`). A claim reads one row per host and one for the user instead of
//! summing every VM, so it costs the same at 100,000 VMs as at 1,000.
//!
//! The ledger rule: a VM row (a snapshot row) is the ledger entry of its resources. Its
//! resources are charged by the statement that inserts it and released only by the delete
//! that actually removes it, in the same transaction, so charging or releasing the same
//! resource twice changes nothing and the totals cannot drift from the rows.
//!
//! A host's row also keeps its free memory (the host's memory less its VMs'), the key the
//! placement read walks its index by (migration 0014): changed here with the memory
//! total, and by `hosts::store::register_session` when the host's own memory changes.
//!
//! Every insert and delete of a VM or snapshot row goes through this module; nothing else
//! writes these totals. Callers pass a connection inside a write transaction.

use sqlx::AnyConnection;
use vmm_shared::{HostId, SnapshotId, UserId, VmId};

use crate::db;

/// What one VM takes, and from whom.
#[derive(Clone, Copy, Debug)]
pub struct VmCharge<'a> {
    pub owner: UserId,
    pub host: &'a HostId,
    pub cpu: u64,
    pub memory_mib: u64,
    pub disk_gb: u64,
}

/// Adds `sign` × the VM to its host's and its owner's totals.
async fn add_vm(
    conn: &mut AnyConnection,
    charge: &VmCharge<'_>,
    sign: i64,
) -> Result<(), sqlx::Error> {
    let (cpu, memory, disk) = (
        sign * db::to_i64(charge.cpu),
        sign * db::to_i64(charge.memory_mib),
        sign * db::to_i64(charge.disk_gb),
    );
    sqlx::query(
        "INSERT INTO host_allocations (host_id, vms, cpu, memory_mib, disk_gb, free_memory_mib)
         VALUES ($1, $2, $3, $4, $5, (SELECT h.memory_mib FROM hosts h WHERE h.id = $1) - $4)
         ON CONFLICT (host_id) DO UPDATE SET
            vms = host_allocations.vms + $2, cpu = host_allocations.cpu + $3,
            memory_mib = host_allocations.memory_mib + $4, disk_gb = host_allocations.disk_gb + $5,
            free_memory_mib = host_allocations.free_memory_mib - $4",
    )
    .bind(charge.host)
    .bind(sign)
    .bind(cpu)
    .bind(memory)
    .bind(disk)
    .execute(&mut *conn)
    .await?;
    add_user(conn, charge.owner, sign, cpu, memory, disk, 0).await
}

async fn add_user(
    conn: &mut AnyConnection,
    user: UserId,
    vms: i64,
    cpu: i64,
    memory: i64,
    disk: i64,
    snapshots: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO user_usage (user_id, vms, cpu, memory_mib, disk_gb, snapshots)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id) DO UPDATE SET
            vms = user_usage.vms + $2, cpu = user_usage.cpu + $3,
            memory_mib = user_usage.memory_mib + $4, disk_gb = user_usage.disk_gb + $5,
            snapshots = user_usage.snapshots + $6",
    )
    .bind(user)
    .bind(vms)
    .bind(cpu)
    .bind(memory)
    .bind(disk)
    .bind(snapshots)
    .execute(conn)
    .await?;
    Ok(())
}

/// Charges a VM whose row the caller has just inserted, in the same transaction.
pub async fn charge_vm(conn: &mut AnyConnection, charge: &VmCharge<'_>) -> Result<(), sqlx::Error> {
    add_vm(conn, charge, 1).await
}

/// Charges a snapshot whose row the caller has just inserted, in the same transaction.
pub async fn charge_snapshot(conn: &mut AnyConnection, owner: UserId) -> Result<(), sqlx::Error> {
    add_user(conn, owner, 0, 0, 0, 0, 1).await
}

#[derive(sqlx::FromRow)]
struct VmRow {
    owner_id: UserId,
    host_id: HostId,
    cpu: i64,
    memory_mib: i64,
    disk_gb: i64,
    snapshots: i64,
}

/// Deletes the VM's row (its snapshots' rows go with it) and releases what they took.
/// Returns false, releasing nothing, when there was no such row.
pub async fn delete_vm(conn: &mut AnyConnection, id: VmId) -> Result<bool, sqlx::Error> {
    let row: Option<VmRow> = sqlx::query_as(
        "SELECT owner_id, host_id, cpu, memory_mib, disk_gb,
                (SELECT COUNT(*) FROM snapshots s WHERE s.vm_id = vms.id) AS snapshots
         FROM vms WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    let done = sqlx::query("DELETE FROM vms WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    let charge = VmCharge {
        owner: row.owner_id,
        host: &row.host_id,
        cpu: u64::try_from(row.cpu).unwrap_or(0),
        memory_mib: u64::try_from(row.memory_mib).unwrap_or(0),
        disk_gb: u64::try_from(row.disk_gb).unwrap_or(0),
    };
    add_vm(conn, &charge, -1).await?;
    if row.snapshots > 0 {
        add_user(conn, row.owner_id, 0, 0, 0, 0, -row.snapshots).await?;
    }
    Ok(true)
}

/// Deletes the snapshot's row and releases it. Returns false, releasing nothing, when
/// there was no such row.
pub async fn delete_snapshot(
    conn: &mut AnyConnection,
    id: SnapshotId,
) -> Result<bool, sqlx::Error> {
    let owner: Option<UserId> = sqlx::query_scalar("SELECT owner_id FROM snapshots WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    let Some(owner) = owner else {
        return Ok(false);
    };
    let done = sqlx::query("DELETE FROM snapshots WHERE id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    add_user(conn, owner, 0, 0, 0, 0, -1).await?;
    Ok(true)
}

/// Totals that differ from the sums of the rows they keep, and hosts without a totals row
/// or whose free memory is not their memory less their VMs': `(table, key)` of each. Empty
/// when the ledger holds. For tests and for an operator's check; it reads every row.
pub async fn discrepancies(conn: &mut AnyConnection) -> Result<Vec<(String, String)>, sqlx::Error> {
    let hosts: Vec<String> = sqlx::query_scalar(
        "SELECT h.id FROM hosts h LEFT JOIN host_allocations a ON a.host_id = h.id
         WHERE a.host_id IS NULL
            OR a.free_memory_mib <> h.memory_mib - a.memory_mib
            OR COALESCE(a.vms, 0) <> (SELECT COUNT(*) FROM vms v WHERE v.host_id = h.id)
            OR COALESCE(a.cpu, 0) <> (SELECT COALESCE(SUM(v.cpu), 0) FROM vms v WHERE v.host_id = h.id)
            OR COALESCE(a.memory_mib, 0)
               <> (SELECT COALESCE(SUM(v.memory_mib), 0) FROM vms v WHERE v.host_id = h.id)
            OR COALESCE(a.disk_gb, 0)
               <> (SELECT COALESCE(SUM(v.disk_gb), 0) FROM vms v WHERE v.host_id = h.id)",
    )
    .fetch_all(&mut *conn)
    .await?;
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT u.id FROM users u LEFT JOIN user_usage x ON x.user_id = u.id
         WHERE COALESCE(x.vms, 0) <> (SELECT COUNT(*) FROM vms v WHERE v.owner_id = u.id)
            OR COALESCE(x.cpu, 0) <> (SELECT COALESCE(SUM(v.cpu), 0) FROM vms v WHERE v.owner_id = u.id)
            OR COALESCE(x.memory_mib, 0)
               <> (SELECT COALESCE(SUM(v.memory_mib), 0) FROM vms v WHERE v.owner_id = u.id)
            OR COALESCE(x.disk_gb, 0)
               <> (SELECT COALESCE(SUM(v.disk_gb), 0) FROM vms v WHERE v.owner_id = u.id)
            OR COALESCE(x.snapshots, 0) <> (SELECT COUNT(*) FROM snapshots s WHERE s.owner_id = u.id)",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(hosts
        .into_iter()
        .map(|id| ("host_allocations".to_owned(), id))
        .chain(users.into_iter().map(|id| ("user_usage".to_owned(), id)))
        .collect())
}
