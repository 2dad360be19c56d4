//! Quota limits and usage in the database.

use sqlx::{Row, SqliteConnection};
use vmm_shared::UserId;

use super::{QuotaLimits, QuotaUsage};

/// Limits a user has changed from the defaults; `None` fields follow the configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitOverrides {
    pub max_vms: Option<u64>,
    pub max_cpu: Option<u64>,
    pub max_memory: Option<u64>,
    pub max_disk_gb: Option<u64>,
    pub max_snapshots: Option<u64>,
}

fn opt(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<Option<u64>, sqlx::Error> {
    Ok(row
        .try_get::<Option<i64>, _>(column)?
        .map(|v| v.max(0) as u64))
}

pub async fn limits(
    conn: &mut SqliteConnection,
    user: UserId,
    defaults: &QuotaLimits,
) -> Result<QuotaLimits, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM quotas WHERE user_id = ?")
        .bind(user.to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else { return Ok(*defaults) };
    Ok(QuotaLimits {
        max_vms: opt(&row, "max_vms")?.unwrap_or(defaults.max_vms),
        max_cpu: opt(&row, "max_cpu")?.unwrap_or(defaults.max_cpu),
        max_memory: opt(&row, "max_memory")?.unwrap_or(defaults.max_memory),
        max_disk_gb: opt(&row, "max_disk_gb")?.unwrap_or(defaults.max_disk_gb),
        max_snapshots: opt(&row, "max_snapshots")?.unwrap_or(defaults.max_snapshots),
    })
}

/// Sums what the user's existing resources take.
pub async fn usage(conn: &mut SqliteConnection, user: UserId) -> Result<QuotaUsage, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS vms, COALESCE(SUM(cpu), 0) AS cpu, COALESCE(SUM(memory_mib), 0) AS memory,
                COALESCE(SUM(disk_gb), 0) AS disk_gb
         FROM vms WHERE owner_id = ?",
    )
    .bind(user.to_string())
    .fetch_one(&mut *conn)
    .await?;
    let get =
        |name: &str| -> Result<u64, sqlx::Error> { Ok(row.try_get::<i64, _>(name)?.max(0) as u64) };
    let snapshots: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM snapshots WHERE owner_id = ?")
        .bind(user.to_string())
        .fetch_one(&mut *conn)
        .await?;
    Ok(QuotaUsage {
        vms: get("vms")?,
        cpu: get("cpu")?,
        memory: get("memory")?,
        disk_gb: get("disk_gb")?,
        snapshots: snapshots.max(0) as u64,
    })
}

/// Merges `changes` into the user's stored overrides.
pub async fn update(
    conn: &mut SqliteConnection,
    user: UserId,
    changes: &LimitOverrides,
) -> Result<(), sqlx::Error> {
    let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    sqlx::query(
        "INSERT INTO quotas (user_id, max_vms, max_cpu, max_memory, max_disk_gb, max_snapshots)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id) DO UPDATE SET
            max_vms = COALESCE(?2, max_vms), max_cpu = COALESCE(?3, max_cpu),
            max_memory = COALESCE(?4, max_memory), max_disk_gb = COALESCE(?5, max_disk_gb),
            max_snapshots = COALESCE(?6, max_snapshots)",
    )
    .bind(user.to_string())
    .bind(as_i64(changes.max_vms))
    .bind(as_i64(changes.max_cpu))
    .bind(as_i64(changes.max_memory))
    .bind(as_i64(changes.max_disk_gb))
    .bind(as_i64(changes.max_snapshots))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
