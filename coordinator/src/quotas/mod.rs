//! Per-user quotas: limits on VMs, vCPUs, memory (MiB), disk (GB) and snapshots.
//!
//! Usage is what the resources that exist take (every VM, running or not, holds its
//! resources), read from the running totals of `ledger` inside the same write transaction
//! that records a new resource, so the check and the claim cannot be separated by a
//! concurrent request. Releasing is deleting the resource's row, which releases its totals
//! in the same transaction: doing it twice changes nothing, and usage cannot drift.
//!
//! Only administrators change limits. Lowering a limit below current usage is allowed and
//! blocks only new claims.

pub mod routes;
pub mod store;

pub use vmm_shared::api::quotas::{QuotaLimits, QuotaUsage};

/// A user's usage as read from their running totals.
#[derive(Clone, Copy, Debug, Default, sqlx::FromRow)]
pub(crate) struct UsageRow {
    #[sqlx(try_from = "i64")]
    pub vms: u64,
    #[sqlx(try_from = "i64")]
    pub cpu: u64,
    #[sqlx(try_from = "i64")]
    pub memory: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
    #[sqlx(try_from = "i64")]
    pub snapshots: u64,
}

impl From<UsageRow> for QuotaUsage {
    fn from(row: UsageRow) -> Self {
        QuotaUsage {
            vms: row.vms,
            cpu: row.cpu,
            memory: row.memory,
            disk_gb: row.disk_gb,
            snapshots: row.snapshots,
        }
    }
}

/// A claim that would take a user past one of their limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota exceeded for {resource}: {current} {unit} in use of a limit of {limit}, {requested} more requested"
)]
pub struct QuotaExceeded {
    pub resource: &'static str,
    pub unit: &'static str,
    pub current: u64,
    pub limit: u64,
    pub requested: u64,
}

/// What a new resource would add to a user's usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub vms: u64,
    pub cpu: u64,
    pub memory: u64,
    pub disk_gb: u64,
    pub snapshots: u64,
}

/// Checks a claim against the limits, naming the first resource it would exceed.
pub fn check_claim(
    limits: &QuotaLimits,
    usage: &QuotaUsage,
    claim: &Claim,
) -> Result<(), QuotaExceeded> {
    let checks = [
        ("vms", "VMs", usage.vms, limits.max_vms, claim.vms),
        ("cpu", "vCPUs", usage.cpu, limits.max_cpu, claim.cpu),
        (
            "memory",
            "MiB",
            usage.memory,
            limits.max_memory,
            claim.memory,
        ),
        (
            "disk_gb",
            "GB",
            usage.disk_gb,
            limits.max_disk_gb,
            claim.disk_gb,
        ),
        (
            "snapshots",
            "snapshots",
            usage.snapshots,
            limits.max_snapshots,
            claim.snapshots,
        ),
    ];
    for (resource, unit, current, limit, requested) in checks {
        if requested > 0 && current.saturating_add(requested) > limit {
            return Err(QuotaExceeded {
                resource,
                unit,
                current,
                limit,
                requested,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: QuotaLimits = QuotaLimits {
        max_vms: 10,
        max_cpu: 8,
        max_memory: 16384,
        max_disk_gb: 100,
        max_snapshots: 5,
    };

    #[test]
    fn names_the_first_exceeded_resource() {
        let usage = QuotaUsage {
            vms: 2,
            cpu: 6,
            memory: 2048,
            disk_gb: 20,
            snapshots: 0,
        };
        let claim = Claim {
            vms: 1,
            cpu: 4,
            memory: 1024,
            disk_gb: 10,
            snapshots: 0,
        };
        let err = check_claim(&LIMITS, &usage, &claim).unwrap_err();
        assert_eq!(
            (err.resource, err.current, err.limit, err.requested),
            ("cpu", 6, 8, 4)
        );
        let fits = Claim { cpu: 2, ..claim };
        assert!(check_claim(&LIMITS, &usage, &fits).is_ok());
    }

    #[test]
    fn usage_above_a_lowered_limit_blocks_only_new_claims() {
        let usage = QuotaUsage {
            vms: 12,
            ..Default::default()
        };
        assert!(check_claim(&LIMITS, &usage, &Claim::default()).is_ok());
        assert!(
            check_claim(
                &LIMITS,
                &usage,
                &Claim {
                    vms: 1,
                    ..Default::default()
                }
            )
            .is_err()
        );
    }
}
