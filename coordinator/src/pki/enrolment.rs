//! Issuing certificates to hosts: the first one for a join token (enrolment), and fresh ones
//! for a host that proves itself with its current certificate (renewal). Each issue is
//! recorded before the certificate leaves the coordinator, in the same write transaction
//! that spends the join token, so a token is either spent with a recorded certificate or not
//! spent at all.
//!
//! Enrolling a host again (a new join token for the same ID, e.g. for a reinstalled or
//! replaced machine) revokes the certificates it had: the old machine can no longer connect.

use rcgen::CertificateSigningRequestParams;
use rustls::pki_types::CertificateSigningRequestDer;
use vmm_shared::HostId;
use vmm_shared::identity::JoinToken;

use super::authority::{CaError, IssuedCertificate};
use super::{Pki, join_tokens, store};
use crate::db::{self, Db};

/// Largest certificate signing request read.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why no certificate was issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Token(#[from] join_tokens::Refused),
    #[error("this host's certificate was revoked (the host was deleted or enrolled again)")]
    Revoked,
    #[error("cannot issue the certificate")]
    Signing(#[from] CaError),
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

/// A CSR's public key, once its signature (the proof that the requester holds the private
/// key) checks out. Nothing else of the request is used.
fn public_key(csr_der: &[u8]) -> Result<rcgen::PublicKey, IssueError> {
    if csr_der.is_empty() || csr_der.len() > MAX_CSR_BYTES {
        return Err(IssueError::BadRequest(format!(
            "csr_der must be a DER certificate signing request of 1 to {MAX_CSR_BYTES} bytes"
        )));
    }
    let request =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
            .map_err(|err| {
                IssueError::BadRequest(format!("csr_der is not a usable signing request: {err}"))
            })?;
    Ok(request.public_key)
}

/// Enrols `host_id` with `join_token` and the key of `csr_der`.
pub async fn enrol(
    pki: &Pki,
    db: &Db,
    host_id: &str,
    join_token: &str,
    csr_der: &[u8],
) -> Result<(HostId, IssuedCertificate), IssueError> {
    let host: HostId = host_id
        .parse()
        .map_err(|err| IssueError::BadRequest(format!("host_id {host_id:?}: {err}")))?;
    let token: JoinToken =
        join_token
            .parse()
            .map_err(|err: vmm_shared::identity::InvalidJoinToken| {
                IssueError::BadRequest(err.to_string())
            })?;
    if token.ca_sha256() != pki.ca.fingerprint() {
        // The agent checked that fingerprint against this coordinator's CA to get here; a
        // mismatch is a token of another coordinator.
        return Err(join_tokens::Refused::Unknown.into());
    }
    let key = public_key(csr_der)?;
    let mut tx = db::begin_write(db).await?;
    join_tokens::redeem(&mut tx, &token, &host).await??;
    let revoked = store::revoke_host(&mut tx, &host).await?;
    let issued = pki
        .ca
        .issue_host_certificate(&host, &key, pki.host_certificate_lifetime)?;
    store::record(&mut tx, &host, &issued).await?;
    tx.commit().await?;
    if revoked > 0 {
        tracing::warn!(host = %host, revoked, "host enrolled again: its earlier certificates are revoked");
    }
    Ok((host, issued))
}

/// A fresh certificate for `host`, which presented the certificate with serial
/// `current_serial`, and the key of `csr_der`. The current certificate stays valid until it
/// expires. Checked again inside the write transaction: a host deleted meanwhile gets
/// nothing.
pub async fn renew(
    pki: &Pki,
    db: &Db,
    host: &HostId,
    current_serial: &str,
    csr_der: &[u8],
) -> Result<IssuedCertificate, IssueError> {
    let key = public_key(csr_der)?;
    let mut tx = db::begin_write(db).await?;
    if store::state(&mut *tx, current_serial, host).await? != store::CertificateState::Valid {
        return Err(IssueError::Revoked);
    }
    let issued = pki
        .ca
        .issue_host_certificate(host, &key, pki.host_certificate_lifetime)?;
    store::record(&mut tx, host, &issued).await?;
    tx.commit().await?;
    Ok(issued)
}
