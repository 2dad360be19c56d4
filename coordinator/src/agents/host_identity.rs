//! `HostIdentity`: how an agent gets its certificate (`Enrol`, with a join token and no
//! certificate yet) and a fresh one before it runs out (`RenewCertificate`, authenticated by
//! the current one through [`super::identity::authenticate`]). The issuing itself is
//! `pki::enrolment`'s; this is the gRPC surface, and what an enrolment means for a session
//! the host may still have: a host enrolled again had its certificates revoked, so a session
//! of its old certificate ends.

use std::time::UNIX_EPOCH;

use tonic::{Request, Response, Status};
use vmm_proto::host_identity_server::HostIdentity;
use vmm_proto::{EnrolRequest, IssuedCertificate, RenewCertificateRequest};

use super::identity::{Caller, authenticate};
use crate::error::ApiError;
use crate::pki::{Pki, authority, enrolment};
use crate::state::AppState;

pub struct HostIdentityService {
    app: AppState,
}

impl HostIdentityService {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }

    fn pki(&self) -> Result<&Pki, Status> {
        self.app.settings.agent_auth.pki().map(|pki| &**pki).ok_or_else(|| {
            Status::failed_precondition(
                "this coordinator takes the shared AGENT_TOKEN (development mode) and issues no \
                 certificates",
            )
        })
    }
}

fn answer(pki: &Pki, issued: authority::IssuedCertificate) -> IssuedCertificate {
    IssuedCertificate {
        certificate_pem: issued.pem,
        ca_certificate_pem: pki.ca.certificate_pem().to_owned(),
        not_after_unix: issued
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
            }),
    }
}

#[tonic::async_trait]
impl HostIdentity for HostIdentityService {
    async fn enrol(
        &self,
        request: Request<EnrolRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let pki = self.pki()?;
        let peer = request.remote_addr();
        let request = request.into_inner();
        let (host, issued) = enrolment::enrol(
            pki,
            &self.app.db,
            &request.host_id,
            &request.join_token,
            &request.csr_der,
        )
        .await
        .map_err(|err| {
            tracing::warn!(host_id = %request.host_id, ?peer, error = %vmm_shared::error_chain(&err),
                "enrolment refused");
            Status::from(ApiError::from(err))
        })?;
        tracing::info!(host = %host, ?peer, serial = %issued.serial, "host enrolled");
        super::end_session(&self.app, &host, "the host was enrolled again").await;
        Ok(Response::new(answer(pki, issued)))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<IssuedCertificate>, Status> {
        let pki = self.pki()?;
        let caller = authenticate(&self.app, &request).await?;
        let Caller::Host(current) = caller else {
            return Err(Status::failed_precondition("no certificate to renew"));
        };
        let issued = enrolment::renew(
            pki,
            &self.app.db,
            &current.host,
            &current.serial,
            &request.get_ref().csr_der,
        )
        .await
        .map_err(|err| {
            tracing::warn!(host = %current.host, error = %vmm_shared::error_chain(&err),
                "certificate renewal refused");
            Status::from(ApiError::from(err))
        })?;
        tracing::info!(host = %current.host, serial = %issued.serial, replaces = %current.serial,
            "host certificate renewed");
        Ok(Response::new(answer(pki, issued)))
    }
}
