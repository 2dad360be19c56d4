//! The module doc's tables are the specification: these tests read them from the source
//! and check that the code says the same, cell by cell; and that the SQL predicates agree
//! with the Rust rules for every status, evaluated by SQLite itself.

use sqlx::AnyConnection;
use vmm_shared::{OperationKind, VmStatus};

use super::*;
use crate::snapshots::SnapshotStatus;

/// The tables of the module doc, each as (header, rows), a row as trimmed cells.
fn doc_tables() -> Vec<(Vec<String>, Vec<Vec<String>>)> {
    let source = include_str!("mod.rs");
    let mut tables = Vec::new();
    let mut current: Vec<Vec<String>> = Vec::new();
    for line in source.lines().chain(std::iter::once("")) {
        match line.strip_prefix("//! |") {
            Some(row) => current.push(
                row.trim_end_matches('|')
                    .split('|')
                    .map(|cell| cell.trim().to_owned())
                    .collect(),
            ),
            None if !current.is_empty() => {
                let mut rows = std::mem::take(&mut current).into_iter();
                let header = rows.next().unwrap();
                let rows = rows
                    .filter(|row| !row.iter().all(|cell| cell.chars().all(|c| c == '-')))
                    .collect();
                tables.push((header, rows));
            }
            None => {}
        }
    }
    tables
}

fn table(name: &str) -> (Vec<String>, Vec<Vec<String>>) {
    doc_tables()
        .into_iter()
        .find(|(header, _)| header[0] == name)
        .unwrap_or_else(|| panic!("the module doc has no table {name:?}"))
}

fn kind(cell: &str) -> OperationKind {
    cell.parse()
        .unwrap_or_else(|_| panic!("{cell:?} is not an operation kind"))
}

fn yes(cell: &str) -> bool {
    match cell {
        "yes" => true,
        "-" => false,
        other => panic!("a precondition cell is `yes` or `-`, not {other:?}"),
    }
}

fn phase(column: &str) -> Phase {
    match column {
        "start" => Phase::Start,
        "succeeded" => Phase::Succeeded,
        "failed" => Phase::Failed,
        "not sent" => Phase::NotSent,
        "outcome unknown" => Phase::OutcomeUnknown,
        other => panic!("unknown phase column {other:?}"),
    }
}

fn describe_vm(effect: VmEffect) -> String {
    match effect {
        VmEffect::Unchanged => "-".into(),
        VmEffect::HostReport => "host's report".into(),
        VmEffect::Set(status) => format!("`{status}`"),
        VmEffect::AsBefore => "as before".into(),
        VmEffect::Removed => "removed".into(),
    }
}

fn describe_snapshot(effect: SnapshotEffect) -> String {
    match effect {
        SnapshotEffect::Unchanged => "-".into(),
        SnapshotEffect::Set(status) => format!("`{status}`"),
        SnapshotEffect::AsBefore => "as before".into(),
        SnapshotEffect::Removed => "removed".into(),
    }
}

#[test]
fn vm_preconditions_match_the_module_doc() {
    let (header, rows) = table("needs VM");
    let statuses: Vec<VmStatus> = header[1..].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(statuses, VmStatus::ALL, "one column per status, in order");
    let mut seen = Vec::new();
    for row in rows {
        let kind = kind(&row[0]);
        seen.push(kind);
        for (status, cell) in statuses.iter().zip(&row[1..]) {
            assert_eq!(
                vm_allows(kind, *status),
                yes(cell),
                "{kind} on a {status} VM"
            );
            assert_eq!(
                check(kind, *status, None).is_ok(),
                yes(cell),
                "{kind} on a {status} VM"
            );
        }
    }
    let mut expected: Vec<OperationKind> = OperationKind::ALL.to_vec();
    expected.retain(|kind| *kind != OperationKind::Create);
    assert_eq!(
        seen, expected,
        "a row for every operation on an existing VM"
    );
    for status in VmStatus::ALL {
        assert!(!vm_allows(OperationKind::Create, status));
    }
}

#[test]
fn snapshot_preconditions_match_the_module_doc() {
    let (header, rows) = table("needs snapshot");
    let statuses: Vec<SnapshotStatus> = header[1..].iter().map(|s| s.parse().unwrap()).collect();
    assert_eq!(statuses, SnapshotStatus::ALL);
    let mut seen = Vec::new();
    for row in rows {
        let kind = kind(&row[0]);
        seen.push(kind);
        for (status, cell) in statuses.iter().zip(&row[1..]) {
            assert_eq!(
                snapshot_allows(kind, *status),
                Some(yes(cell)),
                "{kind} {status}"
            );
            // The VM allows both operations when it is stopped; the snapshot decides.
            assert_eq!(
                check(kind, VmStatus::Stopped, Some(*status)).is_ok(),
                yes(cell),
                "{kind} of a {status} snapshot"
            );
        }
    }
    assert_eq!(
        seen,
        [
            OperationKind::SnapshotRestore,
            OperationKind::SnapshotDelete
        ]
    );
    for kind in OperationKind::ALL.into_iter().filter(|k| !seen.contains(k)) {
        for status in SnapshotStatus::ALL {
            assert_eq!(snapshot_allows(kind, status), None, "{kind}");
        }
    }
}

#[test]
fn vm_effects_match_the_module_doc() {
    let (header, rows) = table("VM after");
    let phases: Vec<Phase> = header[1..].iter().map(|c| phase(c)).collect();
    assert_eq!(phases, Phase::ALL);
    let kinds: Vec<OperationKind> = rows.iter().map(|row| kind(&row[0])).collect();
    assert_eq!(kinds, OperationKind::ALL, "a row for every operation");
    for row in &rows {
        let kind = kind(&row[0]);
        for (phase, cell) in phases.iter().zip(&row[1..]) {
            assert_eq!(
                &describe_vm(vm_effect(kind, *phase)),
                cell,
                "{kind} {phase:?}"
            );
        }
    }
}

#[test]
fn snapshot_effects_match_the_module_doc() {
    let (header, rows) = table("snapshot after");
    let phases: Vec<Phase> = header[1..].iter().map(|c| phase(c)).collect();
    assert_eq!(phases, Phase::ALL);
    let listed: Vec<OperationKind> = rows.iter().map(|row| kind(&row[0])).collect();
    for row in &rows {
        let kind = kind(&row[0]);
        for (phase, cell) in phases.iter().zip(&row[1..]) {
            assert_eq!(
                &describe_snapshot(snapshot_effect(kind, *phase)),
                cell,
                "{kind} {phase:?}"
            );
        }
    }
    // Every operation not in the table leaves snapshots alone.
    for kind in OperationKind::ALL
        .into_iter()
        .filter(|k| !listed.contains(k))
    {
        for phase in Phase::ALL {
            assert_eq!(
                snapshot_effect(kind, phase),
                SnapshotEffect::Unchanged,
                "{kind}"
            );
        }
    }
}

#[test]
fn refusals_say_why() {
    let err = check(OperationKind::Start, VmStatus::Running, None).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    let err = check(OperationKind::Delete, VmStatus::Deleting, None).unwrap_err();
    assert_eq!(err.to_string(), "the VM is already being deleted");
    let err = check(OperationKind::SnapshotCreate, VmStatus::Paused, None).unwrap_err();
    assert!(err.to_string().contains("running or stopped"), "{err}");
    let err = check(
        OperationKind::SnapshotRestore,
        VmStatus::Running,
        Some(SnapshotStatus::Creating),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot restore the snapshot: it is creating"
    );
}

#[test]
fn the_statuses_owned_by_operations_are_those_operations_start_with() {
    let owned: Vec<VmStatus> = VmStatus::ALL
        .into_iter()
        .filter(|s| owned_by_operation(*s))
        .collect();
    assert_eq!(owned, [VmStatus::Creating, VmStatus::Deleting]);
    // What shared calls transitional is the same set.
    for status in VmStatus::ALL {
        assert_eq!(
            owned_by_operation(status),
            status.is_transitional(),
            "{status}"
        );
    }
}

/// Evaluates `predicate` (with `$2` bound to `generation`) in the test database for a row of `status`
/// at stored generation 5.
async fn database_says(
    conn: &mut AnyConnection,
    predicate: &str,
    status: VmStatus,
    generation: i64,
) -> bool {
    let query = format!(
        "SELECT COUNT(*) FROM (SELECT $1 AS status, 5 AS generation) AS r WHERE {predicate}"
    );
    let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(status)
        .bind(generation)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    count == 1
}

#[tokio::test]
async fn sql_predicates_agree_with_the_rules_for_every_status() {
    let t = crate::test_support::TestDb::new().await;
    let mut conn = t.conn().await;
    for status in VmStatus::ALL {
        for source in ReportSource::ALL {
            for (generation, newer) in [(6, true), (5, false), (4, false)] {
                assert_eq!(
                    database_says(
                        &mut conn,
                        &sql::report_applies(source, "$2"),
                        status,
                        generation
                    )
                    .await,
                    report_applies(source, status, newer),
                    "{source:?} report at generation {generation} on a {status} VM"
                );
            }
        }
        let owned = format!("{} AND $2 IS NOT NULL", sql::owned_by_operation_sql());
        assert_eq!(
            database_says(&mut conn, &owned, status, 0).await,
            owned_by_operation(status),
            "{status}"
        );
        let lost = format!("{} AND $2 IS NOT NULL", sql::unknown_when_host_lost_sql());
        assert_eq!(
            database_says(&mut conn, &lost, status, 0).await,
            unknown_when_host_lost(status),
            "{status}"
        );
    }
}

/// Evaluates `expression` over a VM row `v` of `status` (stored generation 5, reason
/// `own`) and its host row `h` (lost with reason `lost` when `host_lost`); `$3` is bound to
/// `generation`.
async fn database_reads(
    conn: &mut AnyConnection,
    expression: &str,
    status: VmStatus,
    host_lost: bool,
    generation: i64,
) -> Option<String> {
    let query = format!(
        "SELECT {expression} FROM (SELECT $1 AS status, 'own' AS status_reason, 5 AS generation) \
         AS v, (SELECT $2 AS vms_lost_reason) AS h WHERE $3 IS NOT NULL"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(query))
        .bind(status)
        .bind(host_lost.then_some("lost"))
        .bind(generation)
        .fetch_one(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_status_as_read_agrees_in_sql_for_every_status_and_host() {
    let t = crate::test_support::TestDb::new().await;
    let mut conn = t.conn().await;
    for stored in VmStatus::ALL {
        for host_lost in [false, true] {
            let read = status_as_read(stored, host_lost);
            let case = format!("{stored} VM, host lost: {host_lost}");
            let sql_status =
                database_reads(&mut conn, &sql::read_status_sql(), stored, host_lost, 0).await;
            assert_eq!(sql_status.as_deref(), Some(read.as_str()), "{case}");
            let reason =
                database_reads(&mut conn, &sql::read_reason_sql(), stored, host_lost, 0).await;
            let expected = if read == stored { "own" } else { "lost" };
            assert_eq!(reason.as_deref(), Some(expected), "{case}");
            for filter in VmStatus::ALL {
                let predicate = format!(
                    "CASE WHEN {} THEN 'y' ELSE 'n' END",
                    sql::reads_as_sql(filter)
                );
                let matched = database_reads(&mut conn, &predicate, stored, host_lost, 0).await;
                assert_eq!(
                    matched.as_deref() == Some("y"),
                    read == filter,
                    "{case}, filter status={filter}"
                );
            }
            // An inventory applies by the status read (a lost host's only; a connected
            // host's inventory uses `report_applies`).
            if host_lost {
                for (generation, newer) in [(6, true), (5, false), (4, false)] {
                    let predicate = format!(
                        "CASE WHEN {} THEN 'y' ELSE 'n' END",
                        sql::inventory_applies_after_loss("$3")
                    );
                    let applies =
                        database_reads(&mut conn, &predicate, stored, host_lost, generation).await;
                    assert_eq!(
                        applies.as_deref() == Some("y"),
                        report_applies(ReportSource::Inventory, read, newer),
                        "{case}, inventory at generation {generation}"
                    );
                }
            }
        }
    }
}

#[test]
fn inventory_rules() {
    use MissingFromInventory::*;
    assert_eq!(vm_missing_from_inventory(VmStatus::Error, false), Remove);
    assert_eq!(vm_missing_from_inventory(VmStatus::Error, true), MarkError);
    assert_eq!(
        vm_missing_from_inventory(VmStatus::Running, true),
        MarkError
    );
    assert_eq!(vm_missing_from_inventory(VmStatus::Creating, false), Leave);
    assert_eq!(vm_missing_from_inventory(VmStatus::Deleting, true), Leave);
    assert_eq!(
        snapshot_after_inventory(SnapshotStatus::Ready, false),
        Some(SnapshotStatus::Error)
    );
    assert_eq!(
        snapshot_after_inventory(SnapshotStatus::Error, true),
        Some(SnapshotStatus::Ready)
    );
    assert_eq!(
        snapshot_after_inventory(SnapshotStatus::Creating, false),
        None
    );
    assert_eq!(snapshot_after_inventory(SnapshotStatus::Ready, true), None);
}
