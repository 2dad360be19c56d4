//! Helpers for unit tests that need a real (temporary) database with a user and a connected
//! host in it: SQLite, or a fresh PostgreSQL database when `VMM_TEST_POSTGRES_URL` is set.

use vmm_proto::{DomainReport, PowerState};
use vmm_shared::{HostId, UserId, VmId, VmSize, VmStatus};

use crate::db::{self, Db};
use crate::hosts::store::{self as host_store, HostRegistration};
use crate::users::{Role, store as user_store};
use crate::vms::store as vm_store;

pub struct TestDb {
    pub db: Db,
    pub host: HostId,
    pub user: UserId,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub async fn new() -> Self {
        Self::with_host_memory(65536).await
    }

    pub async fn with_host_memory(memory_mib: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = db::test_database_url(dir.path()).await;
        Self::at(dir, &url, memory_mib).await
    }

    /// A test database on SQLite in its own directory, whatever the test server is.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = db::default_url(dir.path());
        Self::at(dir, &url, 65536).await
    }

    async fn at(dir: tempfile::TempDir, url: &str, memory_mib: u64) -> Self {
        let db = db::connect(url).await.unwrap();
        let host: HostId = "host-1".parse().unwrap();
        host_store::register_session(
            &mut db.acquire().await.unwrap(),
            &HostRegistration {
                id: host.clone(),
                cpus: 64,
                memory_mib,
                disk_gb: 10_000,
                libvirt_version: "11.3.0".into(),
                hypervisor: "Test".into(),
                kvm_usable: false,
                agent_version: "test".into(),
            },
        )
        .await
        .unwrap();
        let user = user_store::insert(&db, "tester", "not-a-real-hash", Role::User)
            .await
            .unwrap()
            .id;
        Self {
            db,
            host,
            user,
            _dir: dir,
        }
    }

    pub async fn vm_with_status(&self, status: VmStatus, generation: i64) -> VmId {
        let id = VmId::new_random();
        sqlx::query(
            "INSERT INTO vms (id, owner_id, name, host_id, cpu, memory_mib, disk_gb, status, generation, created_at)
             VALUES ($1, $2, $3, $4, 1, 128, 1, $5, $6, $7)",
        )
        .bind(id)
        .bind(self.user)
        .bind(format!("vm-{id}"))
        .bind(&self.host)
        .bind(status)
        .bind(generation)
        .bind(db::now())
        .execute(&self.db)
        .await
        .unwrap();
        let charge = crate::ledger::VmCharge {
            owner: self.user,
            host: &self.host,
            cpu: 1,
            memory_mib: 128,
            disk_gb: 1,
        };
        crate::ledger::charge_vm(&mut *self.conn().await, &charge)
            .await
            .unwrap();
        id
    }

    pub async fn status(&self, vm: VmId) -> VmStatus {
        vm_store::find(&self.db, vm).await.unwrap().unwrap().status
    }

    /// A connection of the pool, for the store functions that run inside a transaction.
    pub async fn conn(&self) -> sqlx::pool::PoolConnection<sqlx::Any> {
        self.db.acquire().await.unwrap()
    }

    pub async fn count_vms(&self) -> i64 {
        sqlx::query_scalar("SELECT COUNT(*) FROM vms")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }
}

pub fn sample_report(vm: VmId, state: PowerState, generation: u64) -> DomainReport {
    DomainReport {
        vm_id: vm.to_string(),
        domain_name: format!("vmm-{vm}"),
        state: state as i32,
        generation,
        cpu: 1,
        memory_mib: 128,
        detail: String::new(),
        snapshots: Vec::new(),
        ..Default::default()
    }
}

pub const SMALL_VM: VmSize = VmSize {
    cpu: 1,
    memory_mib: 1024,
    disk_gb: 1,
};
