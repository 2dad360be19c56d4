//! The certificates issued to hosts (`host_certificates`): recorded at issue, looked up on
//! every authenticated agent call, revoked with their host. A certificate the database does
//! not know, or knows as another host's, is not accepted whatever its signature says.

use sqlx::AnyExecutor;
use vmm_shared::HostId;

use super::authority::IssuedCertificate;
use crate::db::{self, Db, DbConnection};

/// What the record says of a presented certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertificateState {
    /// Issued to the host it names and not revoked.
    Valid,
    /// Its host was deleted (or it was revoked otherwise).
    Revoked,
    /// Not issued by this coordinator's record, or recorded for another host.
    Unknown,
}

pub async fn record(
    conn: &mut DbConnection,
    host: &HostId,
    issued: &IssuedCertificate,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO host_certificates (serial, host_id, issued_at, not_after)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(&issued.serial)
    .bind(host)
    .bind(db::now())
    .bind(db::timestamp(issued.not_after))
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn state(
    executor: impl AnyExecutor<'_>,
    serial: &str,
    host: &HostId,
) -> Result<CertificateState, sqlx::Error> {
    let row: Option<(HostId, Option<String>)> =
        sqlx::query_as("SELECT host_id, revoked_at FROM host_certificates WHERE serial = $1")
            .bind(serial)
            .fetch_optional(executor)
            .await?;
    Ok(match row {
        Some((recorded, None)) if &recorded == host => CertificateState::Valid,
        Some((recorded, Some(_))) if &recorded == host => CertificateState::Revoked,
        _ => CertificateState::Unknown,
    })
}

/// Revokes every certificate of `host`; returns how many were still valid.
pub async fn revoke_host(conn: &mut DbConnection, host: &HostId) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE host_certificates SET revoked_at = $1 WHERE host_id = $2 AND revoked_at IS NULL",
    )
    .bind(db::now())
    .bind(host)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Forgets certificates that expired over a day ago: the TLS handshake refuses them anyway.
pub async fn forget_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff =
        db::timestamp(std::time::SystemTime::now() - std::time::Duration::from_secs(86400));
    let done = sqlx::query("DELETE FROM host_certificates WHERE not_after < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}
