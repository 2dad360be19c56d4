//! How the agent reaches the coordinator and proves who it is ([`Credentials`]), gets its
//! first certificate with a join token ([`Credentials::ensure_enrolled`]), and a fresh one
//! before the current one runs out ([`Credentials::keep_renewed`]).
//!
//! - **Enrolment** (first start): a new key pair and a signing request for the host, sent
//!   with the join token over TLS to `HostIdentity.Enrol`. Before the coordinator has been
//!   seen once, the only thing to trust it by is the join token's SHA-256 of its CA: the
//!   handshake accepts the coordinator's certificate only if it chains to a CA certificate
//!   with exactly that hash ([`PinnedCa`]), as kubeadm's discovery hash does. The
//!   certificate and CA that come back are checked (the key is ours, the host is ours, the CA
//!   is the pinned one) and kept (`identity`).
//! - **Sessions** use TLS with the kept CA as the only root and the certificate as the
//!   client's identity; every new connection takes the newest certificate.
//! - **Renewal**: once two thirds of the certificate's lifetime have passed, a new key pair
//!   and request go over the session's own (authenticated) connection to
//!   `HostIdentity.RenewCertificate`; the session and its commands go on, and the next
//!   connection uses the new certificate. A failed attempt is retried, more often as the end
//!   draws near.
//!
//! - **Side channels** (image fetches, consoles) dial connections of their own with a
//!   [`CoordinatorDialer`]: each dial takes the newest certificate too.
//!
//! With the shared development token there is none of this: plain HTTP/2 and the token in
//! each call's metadata ([`Credentials::authorize`]).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use vmm_proto::host_identity_client::HostIdentityClient;
use vmm_proto::{EnrolRequest, RenewCertificateRequest};
use vmm_shared::HostId;
use vmm_shared::identity::{COORDINATOR_SERVER_NAME, JoinToken, to_hex};

use crate::config::{AgentToken, JoinTokenSource};
use crate::identity::{Identity, IdentityError, IdentityFiles, new_key_and_request};

/// How long dialling and the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest and shortest wait before retrying a failed renewal.
const RENEWAL_RETRY_MAX: Duration = Duration::from_secs(300);
const RENEWAL_RETRY_MIN: Duration = Duration::from_secs(1);

/// How the agent proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// Its certificate, kept in its data directory (or the join token that gets it one).
    Certificate(Arc<HostCredentials>),
    /// The shared development token.
    SharedToken(AgentToken),
}

/// A host's certificate, as it is now, where it is kept, and the join token for a host that
/// has none yet.
#[derive(Debug)]
pub struct HostCredentials {
    files: IdentityFiles,
    join_token: JoinTokenSource,
    current: RwLock<Option<Identity>>,
}

/// Why the agent could not get or use its certificate.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(
        "this host is not enrolled: give the agent the join token an admin made for host \
         {host} (POST /api/hosts/join-tokens) in JOIN_TOKEN_FILE or --join-token (or, for \
         development only, the coordinator's AGENT_TOKEN)"
    )]
    NoJoinToken { host: HostId },
    #[error("JOIN_TOKEN_FILE {path}: {reason}")]
    JoinTokenFile { path: String, reason: String },
    #[error(
        "the coordinator at {url} does not present a certificate of the CA the join token names \
         (SHA-256 {expected}): check COORDINATOR_URL, or ask for a token of this coordinator"
    )]
    WrongCoordinator { url: String, expected: String },
    #[error("the coordinator refused the enrolment: {}", .0.message())]
    Refused(Status),
    #[error("cannot reach the coordinator")]
    Unreachable(#[source] tonic::transport::Error),
    #[error("the enrolment failed: {}: {}", .0.code(), .0.message())]
    Failed(Status),
    #[error("the coordinator's answer is unusable: {0}")]
    BadAnswer(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

impl EnrolError {
    /// Whether trying again later cannot help (a bad or spent token, the wrong coordinator,
    /// nothing to enrol with): the agent stops and says so.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, EnrolError::Unreachable(_) | EnrolError::Failed(_))
    }
}

impl Credentials {
    /// Certificate credentials kept under `data_dir`, loading what is there.
    pub fn certificate(
        data_dir: &std::path::Path,
        join_token: JoinTokenSource,
    ) -> Result<Self, IdentityError> {
        let files = IdentityFiles::new(data_dir);
        let current = files.load()?;
        Ok(Self::Certificate(Arc::new(HostCredentials {
            files,
            join_token,
            current: RwLock::new(current),
        })))
    }

    /// The certificate in use, if any.
    pub fn identity(&self) -> Option<Identity> {
        match self {
            Credentials::Certificate(host) => host.current(),
            Credentials::SharedToken(_) => None,
        }
    }

    /// Enrols the host with its join token unless it has a certificate already.
    pub async fn ensure_enrolled(&self, url: &str, host: &HostId) -> Result<(), EnrolError> {
        let Credentials::Certificate(credentials) = self else {
            return Ok(());
        };
        if credentials.current().is_some() {
            return Ok(());
        }
        let token = credentials.join_token(host)?;
        let identity = enrol(url, host, &token, &credentials.files).await?;
        tracing::info!(host = %host, serial = identity.serial(), not_after = ?identity.not_after(),
            dir = %credentials.files.dir().display(), "enrolled with the coordinator; certificate kept");
        credentials.replace(identity);
        Ok(())
    }

    /// A connection to the coordinator at `endpoint` (dialled with `endpoint`'s settings):
    /// TLS with the current certificate, or plain for the shared token.
    pub async fn connect(&self, endpoint: Endpoint) -> Result<Channel, tonic::transport::Error> {
        let endpoint = match self {
            Credentials::SharedToken(_) => endpoint,
            Credentials::Certificate(credentials) => match credentials.current() {
                Some(identity) => endpoint.tls_config(identity.tls_config())?,
                // Not enrolled: the handshake has no client certificate and every call is
                // refused as unauthenticated, which says so.
                None => endpoint
                    .tls_config(ClientTlsConfig::new().domain_name(COORDINATOR_SERVER_NAME))?,
            },
        };
        endpoint.connect().await
    }

    /// Adds what the credential puts into each call: the shared token's `authorization`
    /// metadata; nothing with a certificate (the connection carries it).
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        if let Credentials::SharedToken(token) = self {
            request
                .metadata_mut()
                .insert("authorization", token.bearer_header());
        }
    }

    /// Renews the certificate over `channel` whenever it is due, for as long as the returned
    /// guard lives (the session's). `None` with the shared token.
    pub fn keep_renewed(&self, channel: Channel) -> Option<RenewalTask> {
        let Credentials::Certificate(credentials) = self else {
            return None;
        };
        let credentials = Arc::clone(credentials);
        Some(RenewalTask(tokio::spawn(async move {
            credentials.renew_when_due(channel).await;
        })))
    }
}

/// The URL of the coordinator the agent's session is with (one of COORDINATOR_URL's list),
/// shared by the session loop, which sets it before each session, and the
/// [`CoordinatorDialer`]s that follow it.
#[derive(Debug, Clone)]
pub struct CurrentCoordinator(Arc<std::sync::RwLock<String>>);

impl CurrentCoordinator {
    /// Starting with `url` (the first of the list).
    pub fn new(url: &str) -> Self {
        Self(Arc::new(std::sync::RwLock::new(url.to_owned())))
    }

    /// The session's coordinator is now the one at `url`.
    pub fn set(&self, url: &str) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = url.to_owned();
    }

    /// The URL of the session's coordinator.
    pub fn get(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Dials connections of their own to the coordinator, beside the session's (image fetches,
/// consoles), with the session's credential. Each dial uses the certificate current at that
/// moment, so a renewal needs nothing restarted; once [`CoordinatorDialer::following`] a
/// [`CurrentCoordinator`], each dial goes to the coordinator of the current session.
#[derive(Debug, Clone)]
pub struct CoordinatorDialer {
    endpoint: Endpoint,
    /// Applies the dialer's settings (timeouts, windows) to the endpoint of another URL.
    settings: fn(Endpoint) -> Endpoint,
    current: Option<CurrentCoordinator>,
    credentials: Credentials,
}

impl CoordinatorDialer {
    /// Dials `url` with the `settings` applied to its endpoint, as `credentials` say.
    pub fn new(
        url: &str,
        settings: fn(Endpoint) -> Endpoint,
        credentials: Credentials,
    ) -> Result<Self, tonic::transport::Error> {
        Ok(Self {
            endpoint: settings(Endpoint::from_shared(url.to_owned())?),
            settings,
            current: None,
            credentials,
        })
    }

    /// Dials the coordinator `current` names at each dial instead of the fixed URL.
    pub fn following(mut self, current: CurrentCoordinator) -> Self {
        self.current = Some(current);
        self
    }

    fn endpoint(&self) -> Endpoint {
        let Some(current) = &self.current else {
            return self.endpoint.clone();
        };
        let url = current.get();
        if self.endpoint.uri().to_string().trim_end_matches('/') == url.trim_end_matches('/') {
            return self.endpoint.clone();
        }
        // Every URL of the list was checked when the configuration was read.
        match Endpoint::from_shared(url) {
            Ok(endpoint) => (self.settings)(endpoint),
            Err(_) => self.endpoint.clone(),
        }
    }

    /// A client on a new connection.
    pub async fn client(
        &self,
    ) -> Result<vmm_proto::agent_control_client::AgentControlClient<Channel>, tonic::transport::Error>
    {
        let channel = self.credentials.connect(self.endpoint()).await?;
        Ok(vmm_proto::agent_control_client::AgentControlClient::new(
            channel,
        ))
    }

    /// Adds what the credential puts into each call (see [`Credentials::authorize`]).
    pub fn authorize<T>(&self, request: &mut Request<T>) {
        self.credentials.authorize(request);
    }
}

/// The renewal task of a session; dropping it stops it.
#[derive(Debug)]
pub struct RenewalTask(tokio::task::JoinHandle<()>);

impl Drop for RenewalTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HostCredentials {
    fn current(&self) -> Option<Identity> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, identity: Identity) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(identity);
    }

    fn join_token(&self, host: &HostId) -> Result<JoinToken, EnrolError> {
        match &self.join_token {
            JoinTokenSource::None => Err(EnrolError::NoJoinToken { host: host.clone() }),
            JoinTokenSource::Given(token) => Ok(token.clone()),
            JoinTokenSource::File(path) => {
                let unusable = |reason: String| EnrolError::JoinTokenFile {
                    path: path.display().to_string(),
                    reason,
                };
                let text = std::fs::read_to_string(path)
                    .map_err(|err| unusable(format!("cannot be read: {err}")))?;
                if text.trim().is_empty() {
                    return Err(unusable(
                        "is empty: put the join token from POST /api/hosts/join-tokens in it"
                            .into(),
                    ));
                }
                text.parse().map_err(|err| unusable(format!("{err}")))
            }
        }
    }

    /// Renews the certificate each time it is due, retrying failures; never returns.
    async fn renew_when_due(&self, channel: Channel) {
        loop {
            let Some(identity) = self.current() else {
                return;
            };
            let wait = identity
                .renewal_due()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            match renew(channel.clone(), &identity, &self.files).await {
                Ok(renewed) => {
                    tracing::info!(host = %renewed.host(), serial = renewed.serial(),
                        not_after = ?renewed.not_after(), replaces = identity.serial(),
                        "certificate renewed");
                    self.replace(renewed);
                }
                Err(error) => {
                    let left = identity
                        .not_after()
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let retry = (left / 10).clamp(RENEWAL_RETRY_MIN, RENEWAL_RETRY_MAX);
                    tracing::warn!(error = %vmm_shared::error_chain(&error), ?left, ?retry,
                        "cannot renew the certificate; trying again");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }
}

/// Enrols `host` with `token` at the coordinator at `url` and keeps the identity in `files`.
pub async fn enrol(
    url: &str,
    host: &HostId,
    token: &JoinToken,
    files: &IdentityFiles,
) -> Result<Identity, EnrolError> {
    let request = new_key_and_request(host)?;
    let verifier = Arc::new(PinnedCa::new(token.ca_sha256()));
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(EnrolError::Unreachable)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tls_config_with_verifier(
            ClientTlsConfig::new().domain_name(COORDINATOR_SERVER_NAME),
            verifier.clone(),
        )
        .map_err(EnrolError::Unreachable)?;
    let channel = endpoint.connect().await.map_err(|error| {
        if verifier.refused() {
            EnrolError::WrongCoordinator {
                url: url.to_owned(),
                expected: token.ca_sha256().to_owned(),
            }
        } else {
            EnrolError::Unreachable(error)
        }
    })?;
    let answer = HostIdentityClient::new(channel)
        .enrol(EnrolRequest {
            host_id: host.to_string(),
            join_token: token.expose(),
            csr_der: request.csr_der,
        })
        .await
        .map_err(|status| match status.code() {
            Code::Unauthenticated
            | Code::PermissionDenied
            | Code::InvalidArgument
            | Code::FailedPrecondition => EnrolError::Refused(status),
            _ => EnrolError::Failed(status),
        })?
        .into_inner();
    let identity = Identity::new(
        &answer.certificate_pem,
        &request.key_pem,
        &answer.ca_certificate_pem,
    )
    .map_err(|err| EnrolError::BadAnswer(err.to_string()))?;
    if identity.ca_sha256() != token.ca_sha256() {
        return Err(EnrolError::BadAnswer(
            "the CA certificate sent is not the one the join token names".into(),
        ));
    }
    if identity.host() != host {
        return Err(EnrolError::BadAnswer(format!(
            "the certificate names host {}, not {host}",
            identity.host()
        )));
    }
    files.save(&identity)?;
    Ok(identity)
}

/// A new certificate for a new key pair, over `channel` (authenticated by `current`); kept
/// in `files` once checked.
pub async fn renew(
    channel: Channel,
    current: &Identity,
    files: &IdentityFiles,
) -> Result<Identity, EnrolError> {
    let request = new_key_and_request(current.host())?;
    let answer = HostIdentityClient::new(channel)
        .renew_certificate(RenewCertificateRequest {
            csr_der: request.csr_der,
        })
        .await
        .map_err(EnrolError::Failed)?
        .into_inner();
    let renewed = Identity::new(
        &answer.certificate_pem,
        &request.key_pem,
        &answer.ca_certificate_pem,
    )
    .map_err(|err| EnrolError::BadAnswer(err.to_string()))?;
    if renewed.host() != current.host() || renewed.ca_sha256() != current.ca_sha256() {
        return Err(EnrolError::BadAnswer(
            "the renewed certificate is for another host or from another CA".into(),
        ));
    }
    files.save(&renewed)?;
    Ok(renewed)
}

/// Trusts a server certificate only if it chains to a CA certificate, sent along by the
/// server, whose SHA-256 is the pinned one; then checks it like any other (validity, name,
/// server use) with that CA as the only root.
#[derive(Debug)]
pub struct PinnedCa {
    ca_sha256: String,
    provider: Arc<CryptoProvider>,
    refused: std::sync::atomic::AtomicBool,
}

impl PinnedCa {
    pub fn new(ca_sha256: &str) -> Self {
        Self {
            ca_sha256: ca_sha256.to_ascii_lowercase(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            refused: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether a handshake was refused because no CA of the pinned hash was presented.
    pub fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|cert| to_hex(&Sha256::digest(cert.as_ref())) == self.ca_sha256)
        else {
            self.refused
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(rustls::Error::General(
                "the coordinator's certificate is not from the CA the join token names".into(),
            ));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|err| rustls::Error::General(err.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
