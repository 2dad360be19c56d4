//! How what a host reports about its domains changes the VMs' recorded status, by the
//! rules of `lifecycle` (which reports may apply to which status) and its SQL form.
//!
//! Every report carries a generation that grows for each change the agent observes. A
//! report is applied only when its generation is newer than the stored one
//! (`UPDATE … WHERE generation < ?`); a stale or duplicate report matches no row and changes
//! nothing, which is not an error. The exceptions (an inventory settles `unknown` and
//! `error`; `creating` and `deleting` belong to the operation in flight) are the
//! lifecycle's.
//!
//! Generations cannot be poisoned: an agent's generation is its clock in microseconds, so a
//! report whose generation lies further ahead of the coordinator's clock than
//! [`GENERATION_ALLOWANCE`] did not come from a working clock. It is refused and logged,
//! never stored: one such report (2^63-1, say) would otherwise make every later report and
//! command result of that VM look stale for good. An agent whose clock runs ahead by more
//! than the allowance has its reports refused until its clock is fixed (keep hosts on NTP).
//!
//! Where the guest can be reached (its addresses and the host's SSH forward) travels in the
//! same reports and is replaced by exactly the reports whose status applies: a stale report
//! changes neither. Only valid IP addresses and ports are kept from what a host says.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::AnyConnection;
use vmm_proto::{DomainReport, PowerState};
use vmm_shared::{HostId, SnapshotId, VmId, VmStatus};

use crate::db::{self, Db};
use crate::lifecycle::{self, MissingFromInventory, ReportSource, sql};
use crate::operations::store as operation_store;
use crate::snapshots::store as snapshot_store;
use crate::vms::{Addresses, Vm, store};

/// What a report means for the VM's status, or `None` for a report without a state.
pub fn status_from_report(report: &DomainReport) -> Option<(VmStatus, Option<String>)> {
    let state = PowerState::try_from(report.state).ok()?;
    Some(match state {
        PowerState::Running => (VmStatus::Running, None),
        PowerState::Paused => (VmStatus::Paused, None),
        PowerState::Stopped => (VmStatus::Stopped, None),
        PowerState::Crashed => (
            VmStatus::Error,
            Some(format!(
                "the guest crashed{}",
                detail_suffix(&report.detail)
            )),
        ),
        PowerState::Absent => (
            VmStatus::Error,
            Some("the VM's domain no longer exists on its host".into()),
        ),
        PowerState::Unspecified => return None,
    })
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Most addresses kept for one VM.
const MAX_ADDRESSES: usize = 32;

/// Where the guest can be reached, as a report says: its addresses (only valid IP
/// addresses, normalised) and the host's SSH forward (only with a valid host and port).
pub fn reachability(report: &DomainReport) -> (Addresses, Option<(String, u16)>) {
    let addresses = report
        .addresses
        .iter()
        .filter_map(|text| text.parse::<IpAddr>().ok())
        .map(|ip| ip.to_string())
        .take(MAX_ADDRESSES)
        .collect();
    let ssh = report.ssh.as_ref().and_then(|ssh| {
        let port = u16::try_from(ssh.port).ok().filter(|port| *port > 0)?;
        let host = ssh.host.parse::<IpAddr>().ok()?.to_string();
        Some((host, port))
    });
    (Addresses(addresses), ssh)
}

/// How far ahead of the coordinator's clock a report's generation may be: clocks of hosts
/// on NTP differ by milliseconds; this leaves room for a host whose clock is a little off.
pub const GENERATION_ALLOWANCE: Duration = Duration::from_secs(300);

/// The highest generation a report may carry now: the coordinator's clock in microseconds
/// plus [`GENERATION_ALLOWANCE`].
pub fn generation_limit() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from((now + GENERATION_ALLOWANCE).as_micros()).unwrap_or(u64::MAX)
}

/// Applies one report about `vm` on `host`, inside the caller's transaction or on a pooled
/// connection: its status, and where the guest can be reached (replaced by every report
/// that applies). Returns whether the record changed.
pub async fn apply(
    conn: &mut AnyConnection,
    host: &HostId,
    vm: VmId,
    report: &DomainReport,
    source: ReportSource,
) -> Result<bool, sqlx::Error> {
    let Some((status, reason)) = status_from_report(report) else {
        tracing::warn!(host = %host, vm_id = %vm, state = report.state, "report without a valid state ignored");
        return Ok(false);
    };
    let limit = generation_limit();
    if report.generation > limit {
        tracing::warn!(host = %host, vm_id = %vm, generation = report.generation, limit, ?source,
            "report refused: its generation is further ahead of this coordinator's clock than \
             allowed (is the host's clock wrong?)");
        return Ok(false);
    }
    let generation = i64::try_from(report.generation).unwrap_or(i64::MAX);
    let (addresses, ssh) = reachability(report);
    let query = format!(
        "UPDATE vms SET status = $1, status_reason = $2, addresses = $3, ssh_host = $4, ssh_port = $5,
                generation = CASE WHEN generation < $6 THEN $7 ELSE generation END
         WHERE id = $8 AND host_id = $9 AND {}",
        sql::report_applies(source, "$10")
    );
    let (ssh_host, ssh_port) = ssh.map_or((None, None), |(host, port)| {
        (Some(host), Some(i64::from(port)))
    });
    let done = sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(status)
        .bind(reason)
        .bind(&addresses)
        .bind(ssh_host)
        .bind(ssh_port)
        .bind(generation)
        .bind(generation)
        .bind(vm)
        .bind(host)
        .bind(generation)
        .execute(conn)
        .await?;
    let changed = done.rows_affected() > 0;
    if changed {
        tracing::info!(host = %host, vm_id = %vm, status = %status, generation, ?source, "VM status updated from host report");
    }
    Ok(changed)
}

/// Settles every VM recorded on `host` against the inventory its agent just sent.
/// Domains that carry no VM ID (made by hand) are never adopted; domains whose VM ID the
/// coordinator does not know on this host are logged and left alone. Returns how many VM
/// records it wrote.
pub async fn reconcile_inventory(
    db: &Db,
    host: &HostId,
    inventory: &[DomainReport],
) -> Result<u64, sqlx::Error> {
    // One write transaction per host: the records read are the records changed.
    let mut tx = db::begin_write(db).await?;
    let written = reconcile_inventory_in(&mut tx, host, inventory).await?;
    tx.commit().await?;
    Ok(written)
}

/// [`reconcile_inventory`] inside the caller's write transaction. A report that would
/// change nothing costs no statement (also after the host was lost: its VMs read as
/// `unknown` meanwhile, but their stored records stand); the reports that apply are
/// written together, [`INVENTORY_BATCH`] VMs per statement.
pub async fn reconcile_inventory_in(
    conn: &mut AnyConnection,
    host: &HostId,
    inventory: &[DomainReport],
) -> Result<u64, sqlx::Error> {
    let mut reported: HashMap<VmId, &DomainReport> = HashMap::new();
    for report in inventory {
        if report.vm_id.is_empty() {
            tracing::debug!(host = %host, domain = %report.domain_name, "unmanaged domain on host ignored");
            continue;
        }
        match report.vm_id.parse::<VmId>() {
            Ok(id) => {
                reported.insert(id, report);
            }
            Err(_) => {
                tracing::warn!(host = %host, domain = %report.domain_name, "domain with a malformed VM ID ignored")
            }
        }
    }
    let mut snapshots = snapshot_store::list_on_host(&mut *conn, host).await?;
    // While the host was lost its VMs read as `unknown` (their stored statuses kept): the
    // inventory settles them by the status they read as, writes only those whose record it
    // changes, and clears the loss below.
    let host_lost = store::host_vms_lost(&mut *conn, host).await?;
    let mut settled = Vec::new();
    let mut written = 0;
    for stored in store::list_on_host_as_stored(&mut *conn, host).await? {
        let read_status = lifecycle::status_as_read(stored.status, host_lost);
        if let Some(report) = reported.remove(&stored.id) {
            let newer = report.generation > stored.generation;
            if lifecycle::report_applies(ReportSource::Inventory, read_status, newer)
                && (newer || read_status == stored.status || report_changes(&stored, report))
            {
                settled.push((stored.id, report));
            }
            let present: Vec<SnapshotId> = report
                .snapshots
                .iter()
                .filter_map(|s| s.snapshot_id.parse().ok())
                .collect();
            let recorded = snapshots.remove(&stored.id).unwrap_or_default();
            snapshot_store::reconcile(&mut *conn, stored.id, recorded, &present).await?;
            continue;
        }
        let acknowledged = operation_store::create_acknowledged(&mut *conn, stored.id).await?;
        match lifecycle::vm_missing_from_inventory(read_status, acknowledged) {
            MissingFromInventory::Remove => {
                tracing::warn!(host = %host, vm_id = %stored.id, "unacknowledged create left nothing on the host; record removed");
                store::delete(&mut *conn, stored.id).await?;
                written += 1;
            }
            MissingFromInventory::MarkError => {
                let reason = format!("the VM's domain was not found on host {host}");
                if read_status != VmStatus::Error
                    || stored.status_reason.as_deref() != Some(reason.as_str())
                {
                    tracing::warn!(host = %host, vm_id = %stored.id, "recorded VM missing from its host's inventory");
                    store::set_status(&mut *conn, stored.id, VmStatus::Error, Some(&reason))
                        .await?;
                    written += 1;
                }
            }
            MissingFromInventory::Leave => {}
        }
    }
    let mut changed = 0;
    for batch in settled.chunks(INVENTORY_BATCH) {
        changed += apply_inventory_batch(conn, host, batch, host_lost).await?;
    }
    if host_lost {
        store::clear_host_lost(&mut *conn, host).await?;
    }
    if changed > 0 {
        tracing::info!(host = %host, vms = changed, "VM statuses updated from the host's inventory");
    }
    for (vm_id, report) in reported {
        tracing::warn!(host = %host, %vm_id, domain = %report.domain_name,
            "host reports a product domain the coordinator has no record of on this host; left untouched");
    }
    Ok(written + changed)
}

/// Most VMs of an inventory written by one statement (7 values each: well inside the
/// parameter limits of SQLite, 32,766, and PostgreSQL, 65,535).
pub const INVENTORY_BATCH: usize = 200;

/// Whether applying `report` would change the VM's stored record (its status, reason or
/// where it is reached), its generation aside.
fn report_changes(stored: &Vm, report: &DomainReport) -> bool {
    let Some((status, reason)) = status_from_report(report) else {
        return true;
    };
    let (addresses, ssh) = reachability(report);
    let stored_ssh = stored
        .ssh_host
        .clone()
        .zip(stored.ssh_port.and_then(|port| u16::try_from(port).ok()));
    status != stored.status
        || reason != stored.status_reason
        || addresses != stored.addresses
        || ssh != stored_ssh
}

/// Applies inventory reports to their VMs on `host` in one statement, by the same rules
/// and with the same effect as [`apply`] with [`ReportSource::Inventory`] for each (over
/// the status each VM reads as: `host_lost` says its host is lost). Returns how many VMs
/// changed.
async fn apply_inventory_batch(
    conn: &mut AnyConnection,
    host: &HostId,
    reports: &[(VmId, &DomainReport)],
    host_lost: bool,
) -> Result<u64, sqlx::Error> {
    let limit = generation_limit();
    let mut query = db::SqlBuilder::new(
        "WITH r (vm_id, new_status, new_reason, new_addresses, new_ssh_host, new_ssh_port, \
         new_generation) AS (VALUES ",
    );
    let mut rows = 0;
    for (vm, report) in reports {
        let Some((status, reason)) = status_from_report(report) else {
            tracing::warn!(host = %host, vm_id = %vm, state = report.state, "report without a valid state ignored");
            continue;
        };
        if report.generation > limit {
            tracing::warn!(host = %host, vm_id = %vm, generation = report.generation, limit,
                source = ?ReportSource::Inventory,
                "report refused: its generation is further ahead of this coordinator's clock \
                 than allowed (is the host's clock wrong?)");
            continue;
        }
        let generation = i64::try_from(report.generation).unwrap_or(i64::MAX);
        let (addresses, ssh) = reachability(report);
        let (ssh_host, ssh_port) = ssh.map_or((None, None), |(host, port)| {
            (Some(host), Some(i64::from(port)))
        });
        if rows > 0 {
            query.push(", ");
        }
        query
            .push("(")
            .push_bind(*vm)
            .push(", ")
            .push_bind(status)
            .push(", ")
            .push_bind(reason)
            .push(", ")
            .push_bind(addresses)
            .push(", ")
            .push_bind(ssh_host)
            .push(", ")
            .push_bind(ssh_port)
            .push(", ")
            .push_bind(generation)
            .push(")");
        tracing::debug!(host = %host, vm_id = %vm, status = %status, generation, "VM status from the host's inventory");
        rows += 1;
    }
    if rows == 0 {
        return Ok(0);
    }
    query
        .push(
            ") UPDATE vms SET status = r.new_status, status_reason = r.new_reason, \
             addresses = r.new_addresses, ssh_host = r.new_ssh_host, ssh_port = r.new_ssh_port, \
             generation = CASE WHEN generation < r.new_generation THEN r.new_generation \
             ELSE generation END \
             FROM r WHERE vms.id = r.vm_id AND vms.host_id = ",
        )
        .push_bind(host)
        .push(" AND ")
        .push(if host_lost {
            sql::inventory_applies_after_loss("r.new_generation")
        } else {
            sql::report_applies(ReportSource::Inventory, "r.new_generation")
        });
    let done = query.build_query()?.execute(conn).await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{TestDb, sample_report};

    async fn apply_report(
        t: &TestDb,
        host: &HostId,
        vm: VmId,
        report: &DomainReport,
        source: ReportSource,
    ) -> bool {
        apply(&mut *t.conn().await, host, vm, report, source)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_newer_generations_apply() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Running, 10).await;
        let host = t.host.clone();

        let stale = sample_report(vm, PowerState::Stopped, 9);
        assert!(!apply_report(&t, &host, vm, &stale, ReportSource::Change).await);
        let duplicate = sample_report(vm, PowerState::Stopped, 10);
        assert!(!apply_report(&t, &host, vm, &duplicate, ReportSource::Change).await);
        assert_eq!(t.status(vm).await, VmStatus::Running);

        let newer = sample_report(vm, PowerState::Stopped, 11);
        assert!(apply_report(&t, &host, vm, &newer, ReportSource::Change).await);
        assert_eq!(t.status(vm).await, VmStatus::Stopped);
        // Applying the same report again changes nothing and is not an error.
        assert!(!apply_report(&t, &host, vm, &newer, ReportSource::Change).await);
    }

    /// The wedge: a report of generation 2^63-1 (or u64::MAX) is refused and stores
    /// nothing, so the host's next honest report (its clock in microseconds) still applies.
    #[tokio::test]
    async fn a_generation_from_the_far_future_is_refused_and_cannot_wedge_a_vm() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Running, 10).await;
        for wedge in [i64::MAX as u64, u64::MAX, generation_limit() + 1_000_000] {
            let poisoned = sample_report(vm, PowerState::Paused, wedge);
            for source in [
                ReportSource::Change,
                ReportSource::Inventory,
                ReportSource::OperationResult,
            ] {
                assert!(!apply_report(&t, &t.host, vm, &poisoned, source).await);
            }
        }
        let recorded = store::find(&t.db, vm).await.unwrap().unwrap();
        assert_eq!(
            (recorded.status, recorded.generation),
            (VmStatus::Running, 10)
        );

        let now_micros = generation_limit() - GENERATION_ALLOWANCE.as_micros() as u64;
        let honest = sample_report(vm, PowerState::Stopped, now_micros);
        assert!(apply_report(&t, &t.host, vm, &honest, ReportSource::Change).await);
        assert_eq!(t.status(vm).await, VmStatus::Stopped);
        // A clock a little ahead (within the allowance) is fine.
        let ahead = sample_report(vm, PowerState::Running, now_micros + 60_000_000);
        assert!(apply_report(&t, &t.host, vm, &ahead, ReportSource::Change).await);
    }

    #[tokio::test]
    async fn reports_from_another_host_change_nothing() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Running, 1).await;
        let intruder: HostId = "other-host".parse().unwrap();
        let report = sample_report(vm, PowerState::Stopped, 99);
        assert!(!apply_report(&t, &intruder, vm, &report, ReportSource::Change).await);
        assert_eq!(t.status(vm).await, VmStatus::Running);
    }

    #[tokio::test]
    async fn operations_in_flight_own_their_status() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Creating, 0).await;
        let report = sample_report(vm, PowerState::Stopped, 5);
        assert!(!apply_report(&t, &t.host, vm, &report, ReportSource::Change).await);
        assert_eq!(t.status(vm).await, VmStatus::Creating);
        let result = sample_report(vm, PowerState::Running, 6);
        assert!(apply_report(&t, &t.host, vm, &result, ReportSource::OperationResult).await);
        assert_eq!(t.status(vm).await, VmStatus::Running);
    }

    #[tokio::test]
    async fn inventory_settles_unknown_and_flags_missing_domains() {
        let t = TestDb::new().await;
        let present = t.vm_with_status(VmStatus::Unknown, 7).await;
        let missing = t.vm_with_status(VmStatus::Running, 3).await;
        let hand_made = DomainReport {
            vm_id: String::new(),
            domain_name: "by-hand".into(),
            ..Default::default()
        };
        let inventory = vec![sample_report(present, PowerState::Stopped, 7), hand_made];
        reconcile_inventory(&t.db, &t.host, &inventory)
            .await
            .unwrap();
        assert_eq!(t.status(present).await, VmStatus::Stopped);
        assert_eq!(t.status(missing).await, VmStatus::Error);
        assert_eq!(
            t.count_vms().await,
            2,
            "hand-made domains are never adopted"
        );
    }

    /// An inventory is written several VMs per statement, by the rules of one report at a
    /// time: `unknown` and `error` settle whatever the generation, an older generation of
    /// another status changes nothing, a status an operation owns is left to it, addresses
    /// and the SSH forward follow what applies, and a generation from the far future is
    /// refused; more VMs than one statement takes are all written.
    #[tokio::test]
    async fn an_inventory_settles_many_vms_at_once_by_the_rules_of_single_reports() {
        let t = TestDb::new().await;
        let unknown = t.vm_with_status(VmStatus::Unknown, 7).await;
        let errored = t.vm_with_status(VmStatus::Error, 7).await;
        let stale = t.vm_with_status(VmStatus::Running, 9).await;
        let newer = t.vm_with_status(VmStatus::Running, 3).await;
        let creating = t.vm_with_status(VmStatus::Creating, 0).await;
        let wedge = t.vm_with_status(VmStatus::Unknown, 2).await;
        let mut reachable = sample_report(unknown, PowerState::Running, 7);
        reachable.addresses = vec!["192.0.2.7".into(), "nonsense".into()];
        reachable.ssh = Some(vmm_proto::SshEndpoint {
            host: "127.0.0.1".into(),
            port: 2207,
        });
        let inventory = vec![
            reachable,
            sample_report(errored, PowerState::Stopped, 6),
            sample_report(stale, PowerState::Stopped, 8),
            sample_report(newer, PowerState::Paused, 4),
            sample_report(creating, PowerState::Running, 5),
            sample_report(wedge, PowerState::Running, u64::MAX),
        ];
        reconcile_inventory(&t.db, &t.host, &inventory)
            .await
            .unwrap();
        let recorded = |vm| {
            let db = t.db.clone();
            async move { store::find(&db, vm).await.unwrap().unwrap() }
        };
        let settled = recorded(unknown).await;
        assert_eq!((settled.status, settled.generation), (VmStatus::Running, 7));
        assert_eq!(settled.addresses.0, ["192.0.2.7"]);
        assert_eq!(
            (settled.ssh_host.as_deref(), settled.ssh_port),
            (Some("127.0.0.1"), Some(2207))
        );
        let settled = recorded(errored).await;
        assert_eq!((settled.status, settled.generation), (VmStatus::Stopped, 7));
        assert_eq!(settled.status_reason, None);
        let unchanged = recorded(stale).await;
        assert_eq!(
            (unchanged.status, unchanged.generation),
            (VmStatus::Running, 9)
        );
        let changed = recorded(newer).await;
        assert_eq!((changed.status, changed.generation), (VmStatus::Paused, 4));
        assert_eq!(t.status(creating).await, VmStatus::Creating);
        let refused = recorded(wedge).await;
        assert_eq!((refused.status, refused.generation), (VmStatus::Unknown, 2));

        let many: Vec<VmId> = {
            let mut many = Vec::new();
            for _ in 0..2 * INVENTORY_BATCH + 1 {
                many.push(t.vm_with_status(VmStatus::Unknown, 1).await);
            }
            many
        };
        let inventory: Vec<DomainReport> = many
            .iter()
            .map(|vm| sample_report(*vm, PowerState::Stopped, 2))
            .collect();
        reconcile_inventory(&t.db, &t.host, &inventory)
            .await
            .unwrap();
        for vm in &many {
            let settled = recorded(*vm).await;
            assert_eq!((settled.status, settled.generation), (VmStatus::Stopped, 2));
        }
    }

    /// A lost host's VMs read as `unknown` without a write to any of them (their stored
    /// records stand); its inventory writes only the VMs whose record it changes, and the
    /// others read as stored again once it is applied.
    #[tokio::test]
    async fn a_lost_hosts_return_writes_only_the_vms_that_changed() {
        let t = TestDb::new().await;
        let same = t.vm_with_status(VmStatus::Running, 5).await;
        let stopped_meanwhile = t.vm_with_status(VmStatus::Running, 5).await;
        let creating = t.vm_with_status(VmStatus::Creating, 0).await;
        let gone = t.vm_with_status(VmStatus::Stopped, 5).await;
        store::mark_host_lost(&mut *t.conn().await, &t.host)
            .await
            .unwrap();
        for vm in [same, stopped_meanwhile, gone] {
            let read = store::find(&t.db, vm).await.unwrap().unwrap();
            assert_eq!(read.status, VmStatus::Unknown);
            let reason = read.status_reason.unwrap_or_default();
            assert!(reason.contains("unreachable"), "{reason}");
        }
        assert_eq!(t.status(creating).await, VmStatus::Creating);
        let page = crate::http::page::Page::new(None, None, None).unwrap();
        let with_status = |status| {
            let (db, page) = (t.db.clone(), page.clone());
            async move {
                let filter = store::VmFilter {
                    status: Some(status),
                    ..Default::default()
                };
                let reads = crate::db::Reads::of(&db).unwrap();
                let mut ids: Vec<VmId> = store::list(&reads, &filter, &page)
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|vm| vm.id)
                    .collect();
                ids.sort();
                ids
            }
        };
        let mut lost = vec![same, stopped_meanwhile, gone];
        lost.sort();
        assert_eq!(with_status(VmStatus::Unknown).await, lost);
        assert!(with_status(VmStatus::Running).await.is_empty());

        let inventory = vec![
            sample_report(same, PowerState::Running, 5),
            sample_report(stopped_meanwhile, PowerState::Stopped, 6),
            sample_report(creating, PowerState::Running, 1),
        ];
        let written = reconcile_inventory(&t.db, &t.host, &inventory)
            .await
            .unwrap();
        assert_eq!(
            written, 2,
            "the VM stopped meanwhile and the one gone from the host, nothing else"
        );
        let read = store::find(&t.db, same).await.unwrap().unwrap();
        assert_eq!((read.status, read.status_reason), (VmStatus::Running, None));
        assert_eq!(t.status(stopped_meanwhile).await, VmStatus::Stopped);
        assert_eq!(t.status(gone).await, VmStatus::Error);
        assert_eq!(t.status(creating).await, VmStatus::Creating);
        assert_eq!(with_status(VmStatus::Running).await, vec![same]);
        assert!(with_status(VmStatus::Unknown).await.is_empty());
        assert!(
            !store::host_vms_lost(&t.db, &t.host).await.unwrap(),
            "the inventory clears the host's loss"
        );
    }

    #[tokio::test]
    async fn an_unacknowledged_create_missing_on_the_host_is_dropped() {
        let t = TestDb::new().await;
        // Left `error` by a create whose outcome was never known (no succeeded create).
        t.vm_with_status(VmStatus::Error, 0).await;
        // An acknowledged VM that went missing stays, flagged, for its owner to see.
        let acknowledged = t.vm_with_status(VmStatus::Running, 3).await;
        sqlx::query(
            "INSERT INTO operations (id, kind, vm_id, host_id, user_id, status, created_at)
             VALUES ($1, 'create', $2, $3, $4, 'succeeded', '2026-01-01T00:00:00Z')",
        )
        .bind(vmm_shared::OperationId::new_random())
        .bind(acknowledged)
        .bind(&t.host)
        .bind(t.user)
        .execute(&t.db)
        .await
        .unwrap();
        reconcile_inventory(&t.db, &t.host, &[]).await.unwrap();
        assert_eq!(
            t.count_vms().await,
            1,
            "only the VM that never came to be is removed"
        );
        assert_eq!(t.status(acknowledged).await, VmStatus::Error);
    }

    #[tokio::test]
    async fn addresses_and_ssh_follow_the_reports_that_apply() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Running, 1).await;
        let mut report = sample_report(vm, PowerState::Running, 2);
        report.addresses = vec![
            "192.0.2.10".into(),
            "2001:DB8::10".into(),
            "not an address".into(),
            "<script>".into(),
        ];
        report.ssh = Some(vmm_proto::SshEndpoint {
            host: "127.0.0.1".into(),
            port: 22001,
        });
        assert!(apply_report(&t, &t.host, vm, &report, ReportSource::Change).await);
        let recorded = store::find(&t.db, vm).await.unwrap().unwrap();
        assert_eq!(recorded.addresses.0, ["192.0.2.10", "2001:db8::10"]);
        assert_eq!(
            (recorded.ssh_host.as_deref(), recorded.ssh_port),
            (Some("127.0.0.1"), Some(22001))
        );

        // A stale report changes nothing; a newer one replaces everything, also with nothing.
        let mut stale = sample_report(vm, PowerState::Running, 1);
        stale.addresses = vec!["198.51.100.1".into()];
        assert!(!apply_report(&t, &t.host, vm, &stale, ReportSource::Change).await);
        let unchanged = store::find(&t.db, vm).await.unwrap().unwrap();
        assert_eq!(unchanged.addresses, recorded.addresses);
        let newer = sample_report(vm, PowerState::Stopped, 3);
        assert!(apply_report(&t, &t.host, vm, &newer, ReportSource::Change).await);
        let cleared = store::find(&t.db, vm).await.unwrap().unwrap();
        assert!(cleared.addresses.0.is_empty());
        assert_eq!((cleared.ssh_host, cleared.ssh_port), (None, None));

        // A port out of range or a host that is not an address is not kept.
        let mut odd = sample_report(vm, PowerState::Running, 4);
        odd.ssh = Some(vmm_proto::SshEndpoint {
            host: "127.0.0.1".into(),
            port: 70000,
        });
        assert_eq!(reachability(&odd).1, None);
        odd.ssh = Some(vmm_proto::SshEndpoint {
            host: "evil host".into(),
            port: 22,
        });
        assert_eq!(reachability(&odd).1, None);
    }
}
