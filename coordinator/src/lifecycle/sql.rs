//! The lifecycle's rules as SQL predicates over the `vms` table's `status` and `generation`
//! columns, built from the same functions the Rust side asks, so the database and the code
//! cannot disagree about which statuses are which. Plain SQL (`IN (…)`, `AND`, `OR`, `<`)
//! that SQLite and PostgreSQL read alike.

use vmm_shared::VmStatus;

use super::{ReportSource, owned_by_operation, settled_by_inventory, unknown_when_host_lost};

/// `status IN ('a', 'b')` over the statuses for which `rule` holds (`FALSE` for none).
fn status_in(rule: impl Fn(VmStatus) -> bool) -> String {
    let statuses: Vec<String> = VmStatus::ALL
        .into_iter()
        .filter(|status| rule(*status))
        .map(|status| format!("'{status}'"))
        .collect();
    if statuses.is_empty() {
        "FALSE".to_owned()
    } else {
        format!("status IN ({})", statuses.join(", "))
    }
}

/// VMs whose status an operation in flight owns (`creating`, `deleting`).
pub fn owned_by_operation_sql() -> String {
    status_in(owned_by_operation)
}

/// VMs that become `unknown` when their host is lost.
pub fn unknown_when_host_lost_sql() -> String {
    status_in(unknown_when_host_lost)
}

/// [`super::report_applies`] for a report from `source`; `generation` is the placeholder
/// (e.g. `$10`) bound to the report's generation.
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
