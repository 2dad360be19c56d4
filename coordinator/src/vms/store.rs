//! VMs in the database. Every status written here comes from `lifecycle`: the status a
//! create starts with, an operation's effects (through `operations::runner`), a report
//! (`vms::reports`). A lost host makes its VMs read as `unknown` through its own row
//! ([`mark_host_lost`]); every read here shows the status as read, except the one the
//! inventory settles ([`list_on_host_as_stored`]).

use std::sync::LazyLock;

use sqlx::{AnyConnection, AnyExecutor};
use vmm_shared::{HostId, ImageId, OperationId, OperationKind, UserId, VmId, VmSize, VmStatus};

use super::{Addresses, Vm};
use crate::config::Placement;
use crate::db::{self, Db, Reads};
use crate::hosts::{scheduler, store as host_store};
use crate::http::page::{Cursor, Page, Paged, push_keyset};
use crate::idempotency::{self, IdempotentRequest};
use crate::images::{ImageStatus, store as image_store};
use crate::ledger;
use crate::lifecycle::{self, sql};
use crate::operations::store::{self as operation_store, NewOperation};
use crate::quotas::{self, Claim, QuotaExceeded, QuotaLimits, store as quota_store};

/// How a query reads a VM's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusRead {
    /// As everyone sees it: `unknown` while its host is lost ([`lifecycle::status_as_read`]).
    AsRead,
    /// As stored, for the inventory that settles it.
    AsStored,
}

/// Every VM `v` with its host `h`: what a VM's status as read needs ([`sql::read_status_sql`]).
pub const VMS_WITH_HOSTS: &str = "vms v LEFT JOIN hosts h ON h.id = v.host_id";

/// `SELECT` of [`Vm`]'s columns from [`VMS_WITH_HOSTS`], before `WHERE`.
fn select_vms(read: StatusRead) -> &'static str {
    static AS_READ: LazyLock<String> =
        LazyLock::new(|| vm_select(&sql::read_status_sql(), &sql::read_reason_sql()));
    static AS_STORED: LazyLock<String> = LazyLock::new(|| vm_select("v.status", "v.status_reason"));
    match read {
        StatusRead::AsRead => &AS_READ,
        StatusRead::AsStored => &AS_STORED,
    }
}

fn vm_select(status: &str, status_reason: &str) -> String {
    format!(
        "SELECT v.id, v.owner_id, v.name, v.host_id, v.cpu, v.memory_mib, v.disk_gb, \
         {status} AS status, {status_reason} AS status_reason, v.generation, v.created_at, \
         v.image_id, v.login_user, v.addresses, v.ssh_host, v.ssh_port \
         FROM {VMS_WITH_HOSTS}"
    )
}

/// Why a VM could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("you already have a VM named {0:?}")]
    NameTaken(String),
    #[error(transparent)]
    QuotaExceeded(#[from] QuotaExceeded),
    #[error("no hypervisor host is connected; the VM cannot be placed anywhere")]
    NoHostConnected,
    #[error(
        "no connected host has room for {} vCPUs, {} MiB of memory and {} GB of disk",
        .0.cpu, .0.memory_mib, .0.disk_gb
    )]
    NoRoom(VmSize),
    /// No recorded host could hold the VM even with nothing else on it: waiting for room
    /// cannot help, a smaller size can.
    #[error(
        "no host can hold {} vCPUs, {} MiB of memory and {} GB of disk even when it runs \
         nothing else: the largest hosts have {} vCPUs to allocate, {} MiB of memory and {} GB \
         of disk; choose a smaller size",
        .size.cpu, .size.memory_mib, .size.disk_gb,
        .largest_cpu, .largest.memory_mib, .largest.disk_gb
    )]
    LargerThanEveryHost {
        size: VmSize,
        largest: scheduler::HostSize,
        /// The vCPUs the largest host may allocate (its CPUs × the allocation ratio).
        largest_cpu: u64,
    },
    /// The image was deleted, or is not ready, by the time the VM was to be recorded.
    #[error("{0}")]
    ImageUnavailable(String),
    #[error(transparent)]
    Operation(#[from] operation_store::Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The VM, its status as read ([`lifecycle::status_as_read`]).
pub async fn find<'e>(executor: impl AnyExecutor<'e>, id: VmId) -> Result<Option<Vm>, sqlx::Error> {
    let query = format!("{} WHERE v.id = $1", select_vms(StatusRead::AsRead));
    sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Which VMs a list shows (every given filter applies).
#[derive(Clone, Debug, Default)]
pub struct VmFilter {
    pub owner: Option<UserId>,
    pub host: Option<HostId>,
    pub status: Option<VmStatus>,
}

/// One page of the VMs `filter` selects, oldest first (keyset order: `created_at`, `id`).
/// It answers `GET /api/vms`: on SQLite it reads on the calling thread ([`Reads`]).
pub async fn list(reads: &Reads, filter: &VmFilter, page: &Page) -> Result<Paged<Vm>, sqlx::Error> {
    let mut query =
        crate::db::SqlBuilder::new(format!("{} WHERE 1 = 1", select_vms(StatusRead::AsRead)));
    if let Some(owner) = filter.owner {
        query
            .push(" AND v.owner_id = ")
            .push_value(owner.to_string());
    }
    if let Some(host) = &filter.host {
        query.push(" AND v.host_id = ").push_value(host.to_string());
    }
    if let Some(status) = filter.status {
        query.push(format!(" AND {}", sql::reads_as_sql(status)));
    }
    push_keyset(&mut query, page, "v.", true);
    let rows: Vec<Vm> = reads.fetch_all(query).await?;
    Ok(Paged::from_rows(rows, page, |vm| Cursor {
        created_at: vm.created_at.clone(),
        id: vm.id.to_string(),
    }))
}

/// Every VM recorded on `host`, with its status as stored: what a lost host's return
/// settles (see [`lifecycle::status_as_read`] for how they read meanwhile).
pub async fn list_on_host_as_stored<'e>(
    executor: impl AnyExecutor<'e>,
    host: &HostId,
) -> Result<Vec<Vm>, sqlx::Error> {
    let query = format!(
        "{} WHERE v.host_id = $1 ORDER BY v.created_at, v.id",
        select_vms(StatusRead::AsStored)
    );
    sqlx::query_as(sqlx::AssertSqlSafe(query))
        .bind(host)
        .fetch_all(executor)
        .await
}

/// What recording a create came to.
#[derive(Debug)]
pub enum Recorded<T> {
    /// Recorded now; the caller carries the create out.
    New(T),
    /// An earlier request with the same idempotency key recorded it; the caller answers
    /// with that request's answer.
    Repeat,
}

/// What a user asked to create.
#[derive(Clone, Debug)]
pub struct NewVm {
    pub id: VmId,
    pub owner_id: UserId,
    pub name: String,
    pub size: VmSize,
    /// The image its disk is made from, checked ready again when the VM is recorded.
    pub image: Option<ImageId>,
    /// The image's login user, kept with the VM.
    pub login_user: Option<String>,
}

/// Checks the owner's quota, chooses a host and records the VM (as its create starts it)
/// and its create operation, all in one write transaction: the quota and capacity reads and
/// the insert cannot interleave with another create. A VM made from an image is recorded
/// only if the image is still there and ready, in the same transaction, so an image being
/// deleted (which checks that no VM uses it in a write transaction of its own) either sees
/// this VM or is gone before it is recorded.
pub async fn place_and_record(
    db: &Db,
    new: &NewVm,
    operation: OperationId,
    placement: Placement,
    cpu_allocation_ratio: f64,
    default_quota: &QuotaLimits,
    idempotency: Option<&IdempotentRequest>,
) -> Result<Recorded<Vm>, Error> {
    let backend = db::Backend::of(db);
    let (new, default_quota, idempotency) = (new.clone(), *default_quota, idempotency.cloned());
    // A claim among the other writes of its turn (see `db::group_write`): each claim still
    // reads what the claims before it wrote, under the same lock.
    db::group_write(db, move |conn| {
        Box::pin(async move {
            let terms = ClaimTerms {
                operation,
                placement,
                cpu_allocation_ratio,
                default_quota: &default_quota,
                idempotency: idempotency.as_ref(),
            };
            place_and_record_in(conn, backend, &new, &terms).await
        })
    })
    .await
}

/// How [`place_and_record`] claims: everything but the VM asked for.
struct ClaimTerms<'a> {
    operation: OperationId,
    placement: Placement,
    cpu_allocation_ratio: f64,
    default_quota: &'a QuotaLimits,
    idempotency: Option<&'a IdempotentRequest>,
}

async fn place_and_record_in(
    tx: &mut AnyConnection,
    backend: db::Backend,
    new: &NewVm,
    terms: &ClaimTerms<'_>,
) -> Result<Recorded<Vm>, Error> {
    let ClaimTerms {
        operation,
        placement,
        cpu_allocation_ratio,
        default_quota,
        idempotency,
    } = *terms;
    if idempotency::is_repeat(&mut *tx, idempotency).await? {
        return Ok(Recorded::Repeat);
    }
    let limits = quota_store::limits(&mut *tx, new.owner_id, default_quota).await?;
    let usage = quota_store::usage(&mut *tx, new.owner_id).await?;
    let claim = Claim {
        vms: 1,
        cpu: u64::from(new.size.cpu),
        memory: new.size.memory_mib,
        disk_gb: new.size.disk_gb,
        snapshots: 0,
    };
    quotas::check_claim(&limits, &usage, &claim)
        .inspect_err(|exceeded| crate::telemetry::record_quota_rejection(exceeded.resource))?;
    if let Some(image) = new.image {
        match image_store::find(&mut *tx, image).await? {
            Some(found) if found.status == ImageStatus::Ready => {}
            Some(found) => {
                return Err(Error::ImageUnavailable(format!(
                    "image {:?} is {}, not ready",
                    found.name, found.status
                )));
            }
            None => {
                return Err(Error::ImageUnavailable(format!(
                    "image {image} was deleted meanwhile"
                )));
            }
        }
    }
    let wanted = host_store::PlacementQuery {
        size: &new.size,
        placement,
        cpu_allocation_ratio,
        image: new.image,
    };
    let candidates = host_store::placement_candidates(
        &mut *tx,
        backend,
        &wanted,
        host_store::PLACEMENT_CANDIDATES,
    )
    .await?;
    let Some(host) =
        scheduler::choose_host(&candidates, &new.size, placement, cpu_allocation_ratio)
    else {
        let sizes = host_store::sizes(&mut *tx).await?;
        if let Some(largest) =
            scheduler::larger_than_every_host(&sizes, &new.size, cpu_allocation_ratio)
        {
            return Err(Error::LargerThanEveryHost {
                size: new.size,
                largest,
                largest_cpu: scheduler::cpu_capacity(largest.cpus, cpu_allocation_ratio),
            });
        }
        return Err(if host_store::any_placeable(&mut *tx).await? {
            Error::NoRoom(new.size)
        } else {
            Error::NoHostConnected
        });
    };
    let vm = Vm {
        id: new.id,
        owner_id: new.owner_id,
        name: new.name.clone(),
        host_id: host.id.clone(),
        cpu: new.size.cpu,
        memory_mib: new.size.memory_mib,
        disk_gb: new.size.disk_gb,
        status: lifecycle::VM_CREATED_AS,
        status_reason: None,
        generation: 0,
        created_at: db::now(),
        image_id: new.image,
        login_user: new.login_user.clone(),
        addresses: Addresses::default(),
        ssh_host: None,
        ssh_port: None,
    };
    let inserted = sqlx::query(
        "INSERT INTO vms (id, owner_id, name, host_id, cpu, memory_mib, disk_gb, status, generation,
                          created_at, image_id, login_user)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11)",
    )
    .bind(vm.id)
    .bind(vm.owner_id)
    .bind(&vm.name)
    .bind(&vm.host_id)
    .bind(i64::from(vm.cpu))
    .bind(db::to_i64(vm.memory_mib))
    .bind(db::to_i64(vm.disk_gb))
    .bind(vm.status)
    .bind(&vm.created_at)
    .bind(vm.image_id)
    .bind(&vm.login_user)
    .execute(&mut *tx)
    .await;
    if let Err(err) = inserted {
        return Err(if db::is_unique_violation(&err) {
            Error::NameTaken(vm.name)
        } else {
            err.into()
        });
    }
    ledger::charge_vm(
        &mut *tx,
        &ledger::VmCharge {
            owner: vm.owner_id,
            host: &vm.host_id,
            cpu: u64::from(vm.cpu),
            memory_mib: vm.memory_mib,
            disk_gb: vm.disk_gb,
        },
    )
    .await?;
    operation_store::insert_pending(
        &mut *tx,
        &NewOperation {
            id: operation,
            kind: OperationKind::Create,
            vm: vm.id,
            snapshot: None,
            host: &vm.host_id,
            user: new.owner_id,
        },
    )
    .await?;
    Ok(Recorded::New(vm))
}

pub async fn set_status<'e>(
    executor: impl AnyExecutor<'e>,
    id: VmId,
    status: VmStatus,
    reason: Option<&str>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE vms SET status = $1, status_reason = $2 WHERE id = $3")
        .bind(status)
        .bind(reason)
        .bind(id)
        .execute(executor)
        .await?;
    Ok(())
}

/// Removes the VM's record (and, by cascade, its snapshots'), which releases its quota and
/// its room on its host (see `ledger`). Inside the caller's transaction.
pub async fn delete(conn: &mut AnyConnection, id: VmId) -> Result<(), sqlx::Error> {
    ledger::delete_vm(conn, id).await?;
    Ok(())
}

/// The host is lost: its VMs whose status came from its reports read as `unknown`, saying
/// why, until its next inventory ([`lifecycle::status_as_read`]). One write to the host's
/// row, whatever the number of its VMs. With [`mark_all_hosts_lost`], the only places that
/// make a VM `unknown`.
pub async fn mark_host_lost(conn: &mut AnyConnection, host: &HostId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET vms_lost_reason = $1 WHERE id = $2")
        .bind(format!("host {host} is unreachable"))
        .bind(host)
        .execute(conn)
        .await?;
    Ok(())
}

/// No host is connected (at start, and when the coordinator stops): every VM whose status
/// came from its host's reports reads as `unknown`, saying `why`.
pub async fn mark_all_hosts_lost(conn: &mut AnyConnection, why: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET vms_lost_reason = $1")
        .bind(why)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `host` is lost (its VMs read as `unknown`; see [`mark_host_lost`]).
pub async fn host_vms_lost<'e>(
    executor: impl AnyExecutor<'e>,
    host: &HostId,
) -> Result<bool, sqlx::Error> {
    let lost: Option<Option<String>> =
        sqlx::query_scalar("SELECT vms_lost_reason FROM hosts WHERE id = $1")
            .bind(host)
            .fetch_optional(executor)
            .await?;
    Ok(lost.flatten().is_some())
}

/// The host's inventory settled its VMs: they read as stored again. Inside the transaction
/// that applied the inventory, so no one reads a VM between the two.
pub async fn clear_host_lost(conn: &mut AnyConnection, host: &HostId) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE hosts SET vms_lost_reason = NULL WHERE id = $1")
        .bind(host)
        .execute(conn)
        .await?;
    Ok(())
}

/// VMs left in a status owned by an operation that no longer exists (written by an older
/// version) are `error` until their host reports.
pub async fn mark_orphaned_operations(
    conn: &mut AnyConnection,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let query = format!(
        "UPDATE vms SET status = $1, status_reason = $2 WHERE {}
           AND NOT EXISTS (SELECT 1 FROM operations o WHERE o.vm_id = vms.id AND o.status = 'pending')",
        sql::owned_by_operation_sql()
    );
    sqlx::query(sqlx::AssertSqlSafe(query))
        .bind(VmStatus::Error)
        .bind(reason)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{SMALL_VM, TestDb};

    const UNLIMITED: QuotaLimits = QuotaLimits {
        max_vms: u64::MAX,
        max_cpu: u64::MAX,
        max_memory: u64::MAX,
        max_disk_gb: u64::MAX,
        max_snapshots: u64::MAX,
    };

    /// `count` creates of small VMs by the test user, all at once, with `quota`.
    async fn concurrent_creates(
        t: &TestDb,
        count: usize,
        quota: QuotaLimits,
    ) -> Vec<Result<Recorded<Vm>, Error>> {
        let mut tasks = Vec::new();
        for i in 0..count {
            let db = t.db.clone();
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: t.user,
                name: format!("vm-{i}"),
                size: SMALL_VM,
                image: None,
                login_user: None,
            };
            tasks.push(tokio::spawn(async move {
                place_and_record(
                    &db,
                    &new,
                    OperationId::new_random(),
                    Placement::Spread,
                    4.0,
                    &quota,
                    None,
                )
                .await
            }));
        }
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    }

    /// Twenty concurrent creates against a host with room for exactly five: placement and
    /// record happen in one write transaction, so exactly five are admitted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_overfill_a_host() {
        let t = TestDb::with_host_memory(5 * SMALL_VM.memory_mib).await;
        let results = concurrent_creates(&t, 20, UNLIMITED).await;
        let mut admitted = 0;
        for result in results {
            match result {
                Ok(_) => admitted += 1,
                Err(err @ Error::NoRoom(_)) => {
                    assert!(err.to_string().contains("room"), "{err}")
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(admitted, 5);
        assert_eq!(t.count_vms().await, 5);
    }

    /// A VM larger than the only host, even empty, is refused as such (not "no room", which
    /// invites a retry), naming what the host has, and nothing is recorded or charged.
    #[tokio::test]
    async fn a_vm_larger_than_every_host_is_refused_saying_what_fits() {
        let t = TestDb::new().await;
        let huge = NewVm {
            id: VmId::new_random(),
            owner_id: t.user,
            name: "huge".into(),
            size: VmSize {
                cpu: 1,
                memory_mib: 65_537,
                disk_gb: 1,
            },
            image: None,
            login_user: None,
        };
        let refused = place_and_record(
            &t.db,
            &huge,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await;
        let Err(err @ Error::LargerThanEveryHost { .. }) = refused else {
            panic!("unexpected answer: {refused:?}");
        };
        let message = err.to_string();
        assert!(
            message.contains("256 vCPUs to allocate, 65536 MiB of memory and 10000 GB"),
            "{message}"
        );
        assert_eq!(t.count_vms().await, 0);
        let usage = quota_store::usage(&t.db, t.user).await.unwrap();
        assert_eq!(usage.vms, 0, "{usage:?}");
    }

    /// Fifty concurrent creates by one user with a limit of ten VMs: exactly ten are
    /// admitted and every refusal names the resource, usage and limit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_creates_never_exceed_a_quota() {
        let t = TestDb::new().await;
        let quota = QuotaLimits {
            max_vms: 10,
            ..UNLIMITED
        };
        let results = concurrent_creates(&t, 50, quota).await;
        let mut admitted = 0;
        for result in results {
            match result {
                Ok(_) => admitted += 1,
                Err(Error::QuotaExceeded(exceeded)) => {
                    assert_eq!(
                        (
                            exceeded.resource,
                            exceeded.current,
                            exceeded.limit,
                            exceeded.requested
                        ),
                        ("vms", 10, 10, 1)
                    );
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
        assert_eq!(admitted, 10);
        assert_eq!(t.count_vms().await, 10);
    }

    /// Twenty concurrent creates with one idempotency key: one records, nineteen repeat.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_idempotency_key_records_once() {
        let t = TestDb::new().await;
        let request = IdempotentRequest {
            user: t.user,
            key: "retry-1".into(),
            fingerprint: "POST /api/vms {}".into(),
        };
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (db, request) = (t.db.clone(), request.clone());
            let new = NewVm {
                id: VmId::new_random(),
                owner_id: t.user,
                name: "once".into(),
                size: SMALL_VM,
                image: None,
                login_user: None,
            };
            tasks.push(tokio::spawn(async move {
                let op = OperationId::new_random();
                place_and_record(
                    &db,
                    &new,
                    op,
                    Placement::Spread,
                    4.0,
                    &UNLIMITED,
                    Some(&request),
                )
                .await
            }));
        }
        let mut new = 0;
        for task in tasks {
            if let Recorded::New(_) = task.await.unwrap().unwrap() {
                new += 1;
            }
        }
        assert_eq!(new, 1);
        assert_eq!(t.count_vms().await, 1);
    }

    #[tokio::test]
    async fn a_users_vm_names_are_unique() {
        let t = TestDb::new().await;
        let new = NewVm {
            id: VmId::new_random(),
            owner_id: t.user,
            name: "web".into(),
            size: SMALL_VM,
            image: None,
            login_user: None,
        };
        place_and_record(
            &t.db,
            &new,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await
        .unwrap();
        let again = NewVm {
            id: VmId::new_random(),
            ..new
        };
        let err = place_and_record(
            &t.db,
            &again,
            OperationId::new_random(),
            Placement::Spread,
            4.0,
            &UNLIMITED,
            None,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NameTaken(_)), "{err:?}");
    }

    /// Creates from an image racing its deletion: whatever the interleaving, the image is
    /// either still there (and the VMs recorded name it) or gone with no VM naming it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn an_image_is_never_deleted_from_under_a_new_vm() {
        use crate::images::store::{self as images, NewImage};
        use crate::images::{Checked, DiskFormat};
        for round in 0..10 {
            let t = TestDb::new().await;
            let new_image = NewImage {
                name: format!("image-{round}"),
                os: None,
                source_url: None,
                expected_sha256: None,
                min_disk_gb: None,
                default_user: "root".into(),
            };
            let image = images::insert(&t.db, &new_image).await.unwrap();
            let checked = Checked {
                size_bytes: 1,
                sha256: "aa".into(),
                format: DiskFormat::Qcow2,
                virtual_size_bytes: 1,
            };
            images::mark_ready(&t.db, image.id, ImageStatus::Pending, &checked)
                .await
                .unwrap();
            let mut creates = Vec::new();
            for i in 0..8 {
                let db = t.db.clone();
                let new = NewVm {
                    id: VmId::new_random(),
                    owner_id: t.user,
                    name: format!("vm-{i}"),
                    size: SMALL_VM,
                    image: Some(image.id),
                    login_user: Some("root".into()),
                };
                creates.push(tokio::spawn(async move {
                    let op = OperationId::new_random();
                    place_and_record(&db, &new, op, Placement::Spread, 4.0, &UNLIMITED, None).await
                }));
            }
            let deleted = images::delete_unused(&t.db, image.id).await;
            let mut recorded = 0;
            for create in creates {
                match create.await.unwrap() {
                    Ok(_) => recorded += 1,
                    Err(Error::ImageUnavailable(_)) => {}
                    Err(other) => panic!("unexpected error: {other:?}"),
                }
            }
            let naming: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE image_id = $1")
                .bind(image.id)
                .fetch_one(&t.db)
                .await
                .unwrap();
            assert_eq!(naming, recorded);
            match deleted {
                Ok(_) => assert_eq!(recorded, 0, "round {round}: a VM names a deleted image"),
                Err(images::Error::InUse { vms, .. }) => {
                    assert!(vms >= 1);
                    assert!(images::find(&t.db, image.id).await.unwrap().is_some());
                }
                Err(other) => panic!("unexpected error: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn reading_on_the_calling_thread_gives_the_pools_pages_for_every_filter() {
        let t = TestDb::sqlite().await;
        let direct = Reads::of(&t.db).unwrap();
        assert!(
            direct.is_direct(),
            "a SQLite file is read on the calling thread"
        );
        let pooled = Reads::pooled(&t.db);
        for status in [VmStatus::Running, VmStatus::Stopped, VmStatus::Creating] {
            for _ in 0..3 {
                t.vm_with_status(status, 1).await;
            }
        }
        // One VM with every optional column set, the rest with none.
        let full = t.vm_with_status(VmStatus::Running, 7).await;
        sqlx::query(
            "UPDATE vms SET status_reason = 'checked', login_user = 'debian', \
             addresses = '[\"10.0.0.5\"]', ssh_host = '127.0.0.1', ssh_port = 2201 \
             WHERE id = $1",
        )
        .bind(full)
        .execute(&t.db)
        .await
        .unwrap();
        let filters = [
            VmFilter::default(),
            VmFilter {
                owner: Some(t.user),
                ..Default::default()
            },
            VmFilter {
                host: Some(t.host.clone()),
                ..Default::default()
            },
            VmFilter {
                status: Some(VmStatus::Running),
                ..Default::default()
            },
            VmFilter {
                status: Some(VmStatus::Unknown),
                owner: Some(t.user),
                ..Default::default()
            },
        ];
        // Every page of every filter, page sizes 2 and all, before and after the host is lost.
        for lost in [false, true] {
            if lost {
                mark_host_lost(&mut *t.conn().await, &t.host).await.unwrap();
            }
            for filter in &filters {
                for limit in [Some(2), None] {
                    let (mut seen, mut cursor) = (0, None);
                    loop {
                        let page = Page::new(limit, cursor.as_deref(), None).unwrap();
                        let from_direct = list(&direct, filter, &page).await.unwrap();
                        let from_pool = list(&pooled, filter, &page).await.unwrap();
                        assert_eq!(
                            format!("{:?}", from_direct.items),
                            format!("{:?}", from_pool.items),
                            "{filter:?}, limit {limit:?}, host lost: {lost}"
                        );
                        assert_eq!(from_direct.next, from_pool.next);
                        seen += from_direct.items.len();
                        match from_direct.next {
                            Some(next) => cursor = Some(next.encode()),
                            None => break,
                        }
                    }
                    let expected = match (filter.status, lost) {
                        (None, _) => 10,
                        (Some(VmStatus::Running), false) => 4,
                        (Some(VmStatus::Unknown), true) => 7,
                        (Some(_), _) => 0,
                    };
                    assert_eq!(seen, expected, "{filter:?}, host lost: {lost}");
                }
            }
        }
        let read = list(
            &direct,
            &VmFilter::default(),
            &Page::new(None, None, None).unwrap(),
        )
        .await
        .unwrap();
        let full = read.items.iter().find(|vm| vm.id == full).unwrap();
        assert_eq!(full.addresses.0, ["10.0.0.5"]);
        assert_eq!(full.ssh_port, Some(2201));
        assert_eq!(full.status, VmStatus::Unknown);
    }
}
