//! Quota limits and usage in the database.

use sqlx::{AnyConnection, AnyExecutor};
use vmm_shared::UserId;

pub use vmm_shared::api::quotas::LimitOverrides;

use super::{QuotaLimits, QuotaUsage, UsageRow};

/// A user's stored overrides, as read.
#[derive(sqlx::FromRow)]
struct StoredLimits {
    max_vms: Option<i64>,
    max_cpu: Option<i64>,
    max_memory: Option<i64>,
    max_disk_gb: Option<i64>,
    max_snapshots: Option<i64>,
}

pub async fn limits<'e>(
    executor: impl AnyExecutor<'e>,
    user: UserId,
    defaults: &QuotaLimits,
) -> Result<QuotaLimits, sqlx::Error> {
    let stored: Option<StoredLimits> = sqlx::query_as(
        "SELECT max_vms, max_cpu, max_memory, max_disk_gb, max_snapshots FROM quotas WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(executor)
    .await?;
    let Some(stored) = stored else {
        return Ok(*defaults);
    };
    let or = |value: Option<i64>, default: u64| value.map_or(default, |v| v.max(0) as u64);
    Ok(QuotaLimits {
        max_vms: or(stored.max_vms, defaults.max_vms),
        max_cpu: or(stored.max_cpu, defaults.max_cpu),
        max_memory: or(stored.max_memory, defaults.max_memory),
        max_disk_gb: or(stored.max_disk_gb, defaults.max_disk_gb),
        max_snapshots: or(stored.max_snapshots, defaults.max_snapshots),
    })
}

/// What the user's existing resources take: their running totals (see `ledger`), kept in
/// the transactions that record and remove the resources.
pub async fn usage<'e>(
    executor: impl AnyExecutor<'e>,
    user: UserId,
) -> Result<QuotaUsage, sqlx::Error> {
    let usage: Option<UsageRow> = sqlx::query_as(
        "SELECT vms, cpu, memory_mib AS memory, disk_gb, snapshots FROM user_usage WHERE user_id = $1",
    )
    .bind(user)
    .fetch_optional(executor)
    .await?;
    Ok(usage.map(QuotaUsage::from).unwrap_or_default())
}

/// Merges `changes` into the user's stored overrides.
pub async fn update(
    conn: &mut AnyConnection,
    user: UserId,
    changes: &LimitOverrides,
) -> Result<(), sqlx::Error> {
    let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO quotas (user_id, max_vms, max_cpu, max_memory, max_disk_gb, max_snapshots)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (user_id) DO UPDATE SET
            max_vms = COALESCE($2, max_vms), max_cpu = COALESCE($3, max_cpu),
            max_memory = COALESCE($4, max_memory), max_disk_gb = COALESCE($5, max_disk_gb),
            max_snapshots = COALESCE($6, max_snapshots)",
    )
    .bind(user)
    .bind(as_i64(changes.max_vms))
    .bind(as_i64(changes.max_cpu))
    .bind(as_i64(changes.max_memory))
    .bind(as_i64(changes.max_disk_gb))
    .bind(as_i64(changes.max_snapshots))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
