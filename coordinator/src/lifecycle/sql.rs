//! The lifecycle's rules as SQL predicates over the `vms` table's `status` and `generation`
//! columns, built from the same functions the Rust side asks, so the database and the code
//! cannot disagree about which statuses are which. Plain SQL (`IN (…)`, `AND`, `OR`, `<`,
//! `CASE`) that SQLite and PostgreSQL read alike.
//!
//! The status a VM *reads as* ([`super::status_as_read`]) needs its host's row: a query
//! using [`read_status_sql`], [`read_reason_sql`] or [`reads_as_sql`] names the VM's row
//! `v` and joins its host as `h` (`FROM vms v LEFT JOIN hosts h ON h.id = v.host_id`).

use vmm_shared::VmStatus;

use super::{ReportSource, owned_by_operation, settled_by_inventory, unknown_when_host_lost};

/// `status IN ('a', 'b')` over the statuses for which `rule` holds (`FALSE` for none).
fn status_in(rule: impl Fn(VmStatus) -> bool) -> String {
    column_in("status", rule)
}

/// `column IN ('a', 'b')` over the statuses for which `rule` holds (`FALSE` for none).
fn column_in(column: &str, rule: impl Fn(VmStatus) -> bool) -> String {
    let statuses: Vec<String> = VmStatus::ALL
        .into_iter()
        .filter(|status| rule(*status))
        .map(|status| format!("'{status}'"))
        .collect();
    if statuses.is_empty() {
        "FALSE".to_owned()
    } else {
        format!("{column} IN ({})", statuses.join(", "))
    }
}

/// VMs whose status an operation in flight owns (`creating`, `deleting`).
pub fn owned_by_operation_sql() -> String {
    status_in(owned_by_operation)
}

/// VMs that read as `unknown` while their host is lost.
pub fn unknown_when_host_lost_sql() -> String {
    status_in(unknown_when_host_lost)
}

/// Whether the VM `v` reads as `unknown` because its host `h` is lost (the VM's own stored
/// status aside).
fn lost_with_host() -> String {
    format!(
        "h.vms_lost_reason IS NOT NULL AND {}",
        column_in("v.status", unknown_when_host_lost)
    )
}

/// The status the VM `v` reads as: [`super::status_as_read`] in SQL.
pub fn read_status_sql() -> String {
    format!(
        "CASE WHEN {} THEN '{}' ELSE v.status END",
        lost_with_host(),
        VmStatus::Unknown
    )
}

/// The status reason the VM `v` reads with: its host's loss while it reads as `unknown`
/// for it, its own otherwise.
pub fn read_reason_sql() -> String {
    format!(
        "CASE WHEN {} THEN h.vms_lost_reason ELSE v.status_reason END",
        lost_with_host()
    )
}

/// Whether the VM `v` reads as `status`, written so that an index on `vms.status` serves
/// it (`read_status_sql() = status` would not).
pub fn reads_as_sql(status: VmStatus) -> String {
    if status == VmStatus::Unknown {
        format!("(v.status = '{status}' OR ({}))", lost_with_host())
    } else if unknown_when_host_lost(status) {
        format!("v.status = '{status}' AND h.vms_lost_reason IS NULL")
    } else {
        format!("v.status = '{status}'")
    }
}

/// [`super::report_applies`] for a report from `source`, over the stored `status`;
/// `generation` is the placeholder (e.g. `$10`) bound to the report's generation.
pub fn report_applies(source: ReportSource, generation: &str) -> String {
    let newer = format!("generation < {generation}");
    let not_owned = format!("NOT ({})", owned_by_operation_sql());
    match source {
        ReportSource::OperationResult => newer,
        ReportSource::Change => format!("{newer} AND {not_owned}"),
        ReportSource::Inventory => format!(
            "({newer} OR {}) AND {not_owned}",
            status_in(settled_by_inventory)
        ),
    }
}

/// [`report_applies`] for an inventory of a host that is lost: over the status each VM
/// reads as, which is `unknown` (settled by the inventory) for every status
/// [`unknown_when_host_lost`] names.
pub fn inventory_applies_after_loss(generation: &str) -> String {
    format!(
        "(generation < {generation} OR {} OR {}) AND NOT ({})",
        status_in(settled_by_inventory),
        unknown_when_host_lost_sql(),
        owned_by_operation_sql()
    )
}
