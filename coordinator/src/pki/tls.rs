//! TLS settings of the coordinator's listeners, on rustls with ring:
//!
//! - The agents' port ([`agents_server_config`]): the coordinator's own certificate, issued
//!   by its CA for [`vmm_shared::identity::COORDINATOR_SERVER_NAME`] and made anew before it
//!   runs out, sent with the CA certificate (a new agent checks the CA's fingerprint against
//!   its join token); client certificates are checked against the CA (signature, validity,
//!   client use) and are optional at the TLS layer only so that a new host can enrol: every
//!   RPC but enrolment refuses a caller without one (`agents::identity`). HTTP/2 only.
//! - The REST API ([`rest_server_config`]): the operator's certificate chain and key
//!   (`TLS_CERT`, `TLS_KEY`), HTTP/1.1.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::Pki;
use super::authority::SERVER_CERT_LIFETIME;

/// The one crypto provider of every TLS configuration here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a TLS configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {path}")]
    Read {
        setting: &'static str,
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{setting}: {path} holds no {what}")]
    Empty {
        setting: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("TLS_CERT and TLS_KEY do not make a usable pair")]
    Pair(#[source] rustls::Error),
    #[error("cannot set up TLS")]
    Rustls(#[from] rustls::Error),
    #[error("cannot set up the check of agents' certificates")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("cannot issue the coordinator's certificate")]
    Issue(#[from] super::authority::CaError),
}

/// The TLS configuration of the agents' gRPC listener.
pub fn agents_server_config(pki: Arc<Pki>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.certificate_der().clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let resolver = CoordinatorCertificate::new(pki, provider.clone())?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration of the REST API, from the PEM files `TLS_CERT` (the chain, leaf
/// first) and `TLS_KEY`.
pub fn rest_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let read_error = |setting, path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Read {
            setting,
            path,
            source,
        }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(read_error("TLS_CERT", cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_error("TLS_CERT", cert))?;
    if chain.is_empty() {
        return Err(TlsError::Empty {
            setting: "TLS_CERT",
            path: cert.display().to_string(),
            what: "certificate",
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(read_error("TLS_KEY", key))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The coordinator's certificate on the agents' port: issued at start, issued again in the
/// handshake that finds less than a third of its lifetime left.
#[derive(Debug)]
struct CoordinatorCertificate {
    pki: Arc<Pki>,
    provider: Arc<CryptoProvider>,
    current: Mutex<(Arc<CertifiedKey>, SystemTime)>,
}

impl CoordinatorCertificate {
    fn new(pki: Arc<Pki>, provider: Arc<CryptoProvider>) -> Result<Self, TlsError> {
        let current = issue(&pki, &provider)?;
        Ok(Self {
            pki,
            provider,
            current: Mutex::new(current),
        })
    }
}

fn issue(
    pki: &Pki,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, SystemTime), TlsError> {
    let (chain, key, not_after) = pki.ca.issue_server_certificate()?;
    let signing_key = provider.key_provider.load_private_key(key)?;
    Ok((Arc::new(CertifiedKey::new(chain, signing_key)), not_after))
}

impl ResolvesServerCert for CoordinatorCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let left = current
            .1
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left < SERVER_CERT_LIFETIME / 3 {
            match issue(&self.pki, &self.provider) {
                Ok(fresh) => {
                    tracing::info!("issued the coordinator's certificate on the agents' port anew");
                    *current = fresh;
                }
                Err(err) => {
                    tracing::error!(error = %vmm_shared::error_chain(&err),
                        "cannot renew the coordinator's certificate on the agents' port");
                }
            }
        }
        Some(Arc::clone(&current.0))
    }
}
