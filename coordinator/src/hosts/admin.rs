//! A host's life as an admin sees it, in the database: drained (no new VM is placed on it;
//! its VMs keep running and can be managed), back in service, or deleted. Deleting is
//! allowed only once no VM is recorded on the host, and takes its certificates and unused
//! join tokens with it in the same write transaction, so the host can no longer connect.
//! Its record, its cached-image records and with them its metric series go; its operations
//! stay as history.

use vmm_shared::HostId;

use crate::db::{self, Db};
use crate::pki;

/// Drains (`true`) or undrains `host`; returns whether the host exists.
pub async fn set_drained(db: &Db, host: &HostId, drained: bool) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE hosts SET drained_at = CASE WHEN $1 = 1 THEN COALESCE(drained_at, $2) END
         WHERE id = $3",
    )
    .bind(i64::from(drained))
    .bind(db::now())
    .bind(host)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Why a host was not deleted.
#[derive(Debug, thiserror::Error)]
pub enum DeleteRefused {
    #[error("no host with ID {0}")]
    NotFound(HostId),
    #[error(
        "host {host} still has {vms} VM(s): delete them first (drain the host to keep new ones \
         off it meanwhile)"
    )]
    HasVms { host: HostId, vms: i64 },
}

/// What deleting a host took with it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Deleted {
    pub certificates_revoked: u64,
    pub join_tokens_withdrawn: u64,
}

/// Deletes `host`, revoking its certificates and withdrawing its join tokens. A host that was
/// enrolled but never registered (no record yet) is deleted too.
pub async fn delete(db: &Db, host: &HostId) -> Result<Result<Deleted, DeleteRefused>, sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    let vms: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE host_id = $1")
        .bind(host)
        .fetch_one(&mut *tx)
        .await?;
    if vms > 0 {
        return Ok(Err(DeleteRefused::HasVms {
            host: host.clone(),
            vms,
        }));
    }
    let record = sqlx::query("DELETE FROM hosts WHERE id = $1")
        .bind(host)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let deleted = Deleted {
        certificates_revoked: pki::store::revoke_host(&mut tx, host).await?,
        join_tokens_withdrawn: pki::join_tokens::withdraw_for_host(&mut tx, host).await?,
    };
    if record == 0 && deleted.certificates_revoked == 0 && deleted.join_tokens_withdrawn == 0 {
        return Ok(Err(DeleteRefused::NotFound(host.clone())));
    }
    tx.commit().await?;
    Ok(Ok(deleted))
}

/// Removes the record of `host` that a session of a revoked certificate may have made again
/// between its host's deletion and the end of that session, if no VM is on it.
pub async fn forget_revoked(db: &Db, host: &HostId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM hosts WHERE id = $1
           AND NOT EXISTS (SELECT 1 FROM vms WHERE host_id = hosts.id)
           AND NOT EXISTS (SELECT 1 FROM host_certificates
                           WHERE host_id = hosts.id AND revoked_at IS NULL)",
    )
    .bind(host)
    .execute(db)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;
    use vmm_shared::VmStatus;

    #[tokio::test]
    async fn a_host_with_vms_is_not_deleted_and_one_without_is_gone_for_good() {
        let t = TestDb::new().await;
        let vm = t.vm_with_status(VmStatus::Running, 1).await;
        match delete(&t.db, &t.host).await.unwrap() {
            Err(DeleteRefused::HasVms { vms: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        let mut conn = t.db.acquire().await.unwrap();
        crate::vms::store::delete(&mut conn, vm).await.unwrap();
        drop(conn);
        delete(&t.db, &t.host).await.unwrap().unwrap();
        assert!(matches!(
            delete(&t.db, &t.host).await.unwrap(),
            Err(DeleteRefused::NotFound(_))
        ));
        assert!(!set_drained(&t.db, &t.host, true).await.unwrap());
    }
}
