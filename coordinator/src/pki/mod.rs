//! Host identity: the coordinator's certificate authority, the certificates it issues to
//! hosts (and records, and revokes), join tokens, and the TLS settings of the listeners.
//!
//! How an agent is known (see `vmm_shared::identity` for the names in certificates):
//! 1. An admin makes a join token for a host ID (`POST /api/hosts/join-tokens`): single use,
//!    short-lived, stored hashed, carrying the CA's SHA-256.
//! 2. The agent makes its key pair, and sends a CSR with the token (`HostIdentity.Enrol`)
//!    over TLS, trusting the coordinator only if it presents a certificate of that CA.
//! 3. It gets a client certificate naming its host, and from then on connects with it; the
//!    coordinator accepts a certificate only if its CA signed it, it is valid, and its record
//!    (by serial number) is for the host it names and not revoked. An agent speaks only for
//!    that host (`agents::identity`).
//! 4. Before it runs out, the agent asks for a new one over its authenticated connection
//!    (`HostIdentity.RenewCertificate`); deleting the host revokes all of its certificates.
//!
//! Lifetimes: the CA 10 years; a host's certificate `AGENT_CERT_LIFETIME` (90 days by
//! default), renewed by the agent once two thirds of it have passed; the coordinator's own
//! certificate on the agents' port 1 year, made at every start and again with a third left.
//!
//! The CA's key never leaves `<DATA_DIR>/pki/ca.key` (0600); nothing here logs or returns a
//! key or a join token's secret after its creation.

pub mod authority;
pub mod enrolment;
pub mod join_tokens;
pub mod peer;
pub mod routes;
pub mod store;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

pub use authority::CertificateAuthority;

/// The default lifetime of a host's certificate.
pub const DEFAULT_HOST_CERT_LIFETIME: Duration = Duration::from_secs(90 * 86400);

/// The CA and how long the certificates it gives hosts last.
#[derive(Debug)]
pub struct Pki {
    pub ca: CertificateAuthority,
    pub host_certificate_lifetime: Duration,
}

/// How agents prove who they are to this coordinator.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// Client certificates of the coordinator's CA, obtained with join tokens (the default).
    Certificates(Arc<Pki>),
    /// One token shared by every agent, over plain HTTP/2: for development and tests only. A
    /// host is then whoever it says it is.
    SharedToken(String),
}

impl AgentAuth {
    pub fn pki(&self) -> Option<&Arc<Pki>> {
        match self {
            AgentAuth::Certificates(pki) => Some(pki),
            AgentAuth::SharedToken(_) => None,
        }
    }
}
