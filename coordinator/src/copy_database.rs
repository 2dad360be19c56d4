//! `coordinator copy-database --from <url> --to <url>`: copies everything the coordinator
//! stores from one database to another, e.g. from the embedded SQLite file to the
//! PostgreSQL database several coordinators will share. Both are brought to the current
//! schema first; the target must be empty (no user, host, VM, image or operation), and the
//! whole copy is one transaction on the target, so a failed copy leaves it empty.
//!
//! Run it while no coordinator uses the source (stop the coordinator first): rows written
//! to the source during the copy would not be in the target. It never changes the source
//! beyond bringing its schema up to date.

use anyhow::{Context, bail};
use sqlx::Row;

use crate::db::{self, Backend, Db};

/// Every table, parents before children (foreign keys). A table the schema has that is
/// not listed here makes the copy refuse to run rather than leave it behind.
pub const TABLES: [&str; 15] = [
    "users",
    "quotas",
    "hosts",
    "images",
    "ssh_keys",
    "api_tokens",
    "host_images",
    "vms",
    "snapshots",
    "operations",
    "idempotency_keys",
    "host_allocations",
    "user_usage",
    "join_tokens",
    "host_certificates",
];

/// Tables whose rows only mean something while the coordinators that wrote them run
/// (their leases, commands in flight between them, console tickets): never copied.
pub const TRANSIENT: [&str; 3] = ["coordinators", "routed_commands", "console_tickets"];

/// How many rows of each table were copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Copied(pub Vec<(&'static str, u64)>);

impl std::fmt::Display for Copied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Copies every row of `from` into `to` (both URLs); see the module docs.
pub async fn copy_database(from: &str, to: &str) -> anyhow::Result<Copied> {
    let source = db::connect(from)
        .await
        .context("cannot open the source database (--from)")?;
    let target = db::connect(to)
        .await
        .context("cannot open the target database (--to)")?;
    let copied = copy_between(&source, &target).await;
    source.close().await;
    target.close().await;
    copied
}

/// Copies every row of `source` into the empty `target`, in one transaction.
pub async fn copy_between(source: &Db, target: &Db) -> anyhow::Result<Copied> {
    let unknown: Vec<String> = table_names(source)
        .await?
        .into_iter()
        .filter(|name| !TABLES.contains(&name.as_str()) && !TRANSIENT.contains(&name.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "the source database has tables this version does not know how to copy: {}; \
             use the coordinator version that created them",
            unknown.join(", ")
        );
    }
    let mut tx = db::begin_write(target).await?;
    for table in TABLES {
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                .fetch_one(&mut *tx)
                .await?;
        if count > 0 {
            bail!(
                "the target database is not empty (table {table} has {count} rows); copy into \
                 a new, empty database"
            );
        }
    }
    let mut copied = Copied::default();
    for table in TABLES {
        let columns = column_kinds(target, table).await?;
        let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            placeholders.join(", ")
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(select))
            .fetch_all(source)
            .await
            .with_context(|| format!("cannot read table {table} of the source"))?;
        for row in &rows {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(insert.clone()));
            for (index, (name, integer)) in columns.iter().enumerate() {
                query = if *integer {
                    query.bind(
                        row.try_get::<Option<i64>, _>(index)
                            .with_context(|| format!("{table}.{name} is not an integer"))?,
                    )
                } else {
                    query.bind(
                        row.try_get::<Option<String>, _>(index)
                            .with_context(|| format!("{table}.{name} is not text"))?,
                    )
                };
            }
            query
                .execute(&mut *tx)
                .await
                .with_context(|| format!("cannot write a row of table {table}"))?;
        }
        copied.0.push((table, rows.len() as u64));
    }
    tx.commit().await?;
    Ok(copied)
}

/// The tables of the coordinator's schema in `db` (not the migrations' own).
async fn table_names(db: &Db) -> anyhow::Result<Vec<String>> {
    let query = match Backend::of(db) {
        Backend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             AND name <> '_sqlx_migrations' ORDER BY name"
        }
        Backend::Postgres => {
            "SELECT table_name::text FROM information_schema.tables
             WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'
               AND table_name <> '_sqlx_migrations' ORDER BY table_name"
        }
    };
    Ok(sqlx::query_scalar(query).fetch_all(db).await?)
}

/// The columns of `table` in `db`, each with whether it holds integers (else text).
async fn column_kinds(db: &Db, table: &str) -> anyhow::Result<Vec<(String, bool)>> {
    let query = match Backend::of(db) {
        Backend::Sqlite => "SELECT name, type FROM pragma_table_info($1) ORDER BY cid",
        Backend::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position"
        }
    };
    let columns: Vec<(String, String)> = sqlx::query_as(query).bind(table).fetch_all(db).await?;
    if columns.is_empty() {
        bail!("the target database has no table {table}");
    }
    Ok(columns
        .into_iter()
        .map(|(name, kind)| {
            let integer = kind.to_ascii_uppercase().contains("INT");
            (name, integer)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;
    use vmm_shared::{OperationId, SnapshotId, VmStatus};

    /// Every row of every table, each value as text or integer, in a stable order.
    async fn dump(db: &Db) -> Vec<(&'static str, Vec<Vec<String>>)> {
        let mut tables = Vec::new();
        for table in TABLES {
            let columns = column_kinds(db, table).await.unwrap();
            let names: Vec<&str> = columns.iter().map(|(name, _)| name.as_str()).collect();
            let query = format!(
                "SELECT {} FROM {table} ORDER BY {}",
                names.join(", "),
                names.join(", ")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(query))
                .fetch_all(db)
                .await
                .unwrap();
            let rows = rows
                .iter()
                .map(|row| {
                    columns
                        .iter()
                        .enumerate()
                        .map(|(i, (_, integer))| {
                            if *integer {
                                format!("{:?}", row.try_get::<Option<i64>, _>(i).unwrap())
                            } else {
                                format!("{:?}", row.try_get::<Option<String>, _>(i).unwrap())
                            }
                        })
                        .collect()
                })
                .collect();
            tables.push((table, rows));
        }
        tables
    }

    /// SQLite to the test database (PostgreSQL when `VMM_TEST_POSTGRES_URL` is set, as in
    /// CI's second run): users, VMs, snapshots, quotas, operations, keys, images and hosts
    /// arrive value for value, and a second copy into the now non-empty target is refused
    /// and changes nothing.
    #[tokio::test]
    async fn copies_every_row_and_refuses_a_non_empty_target() {
        let source = TestDb::sqlite().await;
        let running = source.vm_with_status(VmStatus::Running, 3).await;
        source.vm_with_status(VmStatus::Stopped, 1).await;
        crate::quotas::store::update(
            &mut *source.conn().await,
            source.user,
            &crate::quotas::store::LimitOverrides {
                max_vms: Some(7),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let now = db::now();
        sqlx::query(
            "INSERT INTO snapshots (id, vm_id, owner_id, name, description, vm_status, status,
                                    created_at)
             VALUES ($1, $2, $3, 'before-upgrade', 'ünïcode ✓', 'running', 'ready', $4)",
        )
        .bind(SnapshotId::new_random())
        .bind(running)
        .bind(source.user)
        .bind(&now)
        .execute(&source.db)
        .await
        .unwrap();
        crate::ledger::charge_snapshot(&mut *source.conn().await, source.user)
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO operations (id, kind, vm_id, host_id, user_id, status, error, created_at,
                                     finished_at)
             VALUES ($1, 'stop', $2, $3, $4, 'failed', 'host said no', $5, $5)",
        )
        .bind(OperationId::new_random())
        .bind(running)
        .bind(&source.host)
        .bind(source.user)
        .bind(&now)
        .execute(&source.db)
        .await
        .unwrap();
        crate::users::store::insert(&source.db, "admin", "hash", crate::users::Role::Admin)
            .await
            .unwrap();

        let dir = tempfile::tempdir().unwrap();
        let target = db::connect(&db::test_database_url(dir.path()).await)
            .await
            .unwrap();
        let copied = copy_between(&source.db, &target).await.unwrap();
        let count = |table: &str| copied.0.iter().find(|(t, _)| *t == table).unwrap().1;
        assert_eq!(count("users"), 2);
        assert_eq!(count("vms"), 2);
        assert_eq!(count("snapshots"), 1);
        assert_eq!(count("quotas"), 1);
        assert_eq!(count("operations"), 1);
        assert_eq!(count("hosts"), 1);
        let before = dump(&source.db).await;
        assert_eq!(dump(&target).await, before, "every value arrives unchanged");

        // The copy is usable: the quota and the running totals read the same.
        let defaults = crate::quotas::QuotaLimits {
            max_vms: 100,
            max_cpu: 100,
            max_memory: 100,
            max_disk_gb: 100,
            max_snapshots: 100,
        };
        let limits = crate::quotas::store::limits(&target, source.user, &defaults)
            .await
            .unwrap();
        assert_eq!(limits.max_vms, 7);
        let usage = crate::quotas::store::usage(&target, source.user)
            .await
            .unwrap();
        assert_eq!(usage.vms, 2);
        assert_eq!(usage.snapshots, 1);

        let again = copy_between(&source.db, &target).await.unwrap_err();
        assert!(again.to_string().contains("not empty"), "{again:#}");
        assert_eq!(dump(&target).await, before);
    }
}
