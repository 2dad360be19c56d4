//! Who is calling on the agents' port: the one function, [`authenticate`], through which
//! every agent RPC learns the host it may speak for (all of them but
//! `HostIdentity.Enrol`, whose credential is the join token itself).
//!
//! With certificates (the default): the TLS handshake has checked that the coordinator's CA
//! issued the caller's client certificate and that it is valid now; here it must also name
//! exactly one host and be recorded for that host and not revoked (a deleted host's
//! certificates are). The caller then speaks for that host only: a `Register.host_id` or a
//! `FetchImageRequest.host_id` naming another host is refused ([`Caller::speaks_for`]).
//!
//! With the shared development token: the token must match, compared in constant time, and
//! the caller is whichever host it says it is.

use subtle::ConstantTimeEq;
use tonic::{Request, Status};
use vmm_shared::HostId;

use crate::pki::AgentAuth;
use crate::pki::peer::{self, PeerCertificate};
use crate::pki::store::{self as certificates, CertificateState};
use crate::state::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A host, by its certificate.
    Host(PeerCertificate),
    /// Anyone holding the shared development token.
    SharedToken,
}

impl Caller {
    /// The host the caller may speak for when it says it is `claimed`: the certificate's
    /// host, if that is the one it names (case-insensitively); with the shared token, the
    /// claimed host.
    pub fn speaks_for(&self, claimed: &str) -> Result<HostId, Status> {
        let claimed: HostId = claimed
            .parse()
            .map_err(|err| Status::invalid_argument(format!("host_id {claimed:?}: {err}")))?;
        match self {
            Caller::SharedToken => Ok(claimed),
            Caller::Host(certificate) if certificate.host == claimed => Ok(claimed),
            Caller::Host(certificate) => {
                tracing::warn!(certified = %certificate.host, claimed = %claimed,
                    "agent refused: it speaks for another host than its certificate names");
                Err(Status::permission_denied(format!(
                    "this certificate is for host {}, not {claimed}",
                    certificate.host
                )))
            }
        }
    }

    /// The certified host, if the caller has a certificate.
    pub fn certificate(&self) -> Option<&PeerCertificate> {
        match self {
            Caller::Host(certificate) => Some(certificate),
            Caller::SharedToken => None,
        }
    }
}

/// Authenticates the caller of an agent RPC.
pub async fn authenticate<T>(app: &AppState, request: &Request<T>) -> Result<Caller, Status> {
    match &app.settings.agent_auth {
        AgentAuth::SharedToken(token) => check_shared_token(request, token),
        AgentAuth::Certificates(_) => {
            let certificate = certificate_of(request)?;
            check_recorded(app, &certificate).await?;
            Ok(Caller::Host(certificate))
        }
    }
}

/// Whether the caller's certificate is still recorded as valid (not revoked since the call
/// began): always, for the shared token.
pub async fn still_valid(app: &AppState, caller: &Caller) -> Result<bool, sqlx::Error> {
    match caller {
        Caller::SharedToken => Ok(true),
        Caller::Host(certificate) => {
            Ok(
                certificates::state(&app.db, &certificate.serial, &certificate.host).await?
                    == CertificateState::Valid,
            )
        }
    }
}

fn certificate_of<T>(request: &Request<T>) -> Result<PeerCertificate, Status> {
    let peer = request.remote_addr();
    let chain = request.peer_certs().unwrap_or_default();
    let Some(leaf) = chain.first() else {
        tracing::warn!(?peer, "agent refused: no client certificate");
        return Err(Status::unauthenticated(
            "no client certificate: enrol this host with a join token (JOIN_TOKEN_FILE)",
        ));
    };
    peer::read(leaf).map_err(|err| {
        tracing::warn!(?peer, error = %err, "agent refused: unusable client certificate");
        Status::unauthenticated(format!("client certificate refused: {err}"))
    })
}

async fn check_recorded(app: &AppState, certificate: &PeerCertificate) -> Result<(), Status> {
    let state = certificates::state(&app.db, &certificate.serial, &certificate.host)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "database error while checking a certificate");
            Status::internal("internal error")
        })?;
    match state {
        CertificateState::Valid => Ok(()),
        CertificateState::Revoked => {
            tracing::warn!(host = %certificate.host, serial = %certificate.serial,
                "agent refused: its certificate was revoked");
            Err(Status::unauthenticated(format!(
                "the certificate of host {} was revoked (the host was deleted or enrolled \
                 again): enrol it with a new join token",
                certificate.host
            )))
        }
        CertificateState::Unknown => {
            tracing::warn!(host = %certificate.host, serial = %certificate.serial,
                "agent refused: a certificate this coordinator has no record of");
            Err(Status::unauthenticated(
                "this certificate is not on record here: enrol the host with a join token",
            ))
        }
    }
}

fn check_shared_token<T>(request: &Request<T>, expected: &str) -> Result<Caller, Status> {
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("missing agent token"))?;
    // Compared in constant time, so the time taken does not reveal how much matched.
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(Caller::SharedToken)
    } else {
        tracing::warn!(peer = ?request.remote_addr(), "agent presented a wrong token");
        Err(Status::unauthenticated("wrong agent token"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_agent_token_is_accepted() {
        let request = |token: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            request
        };
        assert!(check_shared_token(&request("abc"), "abc").is_ok());
        assert!(check_shared_token(&request("abd"), "abc").is_err());
        assert!(check_shared_token(&request("abcd"), "abc").is_err());
        assert!(check_shared_token(&Request::new(()), "abc").is_err());
    }

    #[test]
    fn a_certified_host_speaks_only_for_itself_in_any_case() {
        let caller = Caller::Host(PeerCertificate {
            host: "host-a".parse().unwrap(),
            serial: "01".into(),
            not_after: std::time::SystemTime::now(),
        });
        assert_eq!(caller.speaks_for("host-a").unwrap().as_str(), "host-a");
        assert_eq!(caller.speaks_for("HOST-A").unwrap().as_str(), "host-a");
        for other in ["host-b", "host-a.case-variant-1", "host-evil"] {
            assert_eq!(
                caller.speaks_for(other).unwrap_err().code(),
                tonic::Code::PermissionDenied,
                "{other}"
            );
        }
        assert_eq!(
            caller.speaks_for("<script>").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Caller::SharedToken.speaks_for("anyone").unwrap().as_str(),
            "anyone"
        );
    }
}
