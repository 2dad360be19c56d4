//! What an agent's client certificate says: the host it names (the one URI of
//! `vmm_shared::identity`'s form among its subject alternative names), its serial number and
//! its validity. The TLS handshake has already checked that the coordinator's CA signed it
//! and that it is valid now; this only reads it, and refuses anything ambiguous.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use vmm_shared::HostId;
use vmm_shared::identity::{HOST_URI_PREFIX, host_from_uri, to_hex};
use x509_parser::extensions::GeneralName;

/// A host's certificate, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    pub host: HostId,
    /// Lower-case hex of the serial number's bytes, as recorded at issue.
    pub serial: String,
    pub not_after: SystemTime,
}

/// Why a certificate names no host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("the certificate cannot be read")]
    Unreadable,
    #[error("the certificate names no host")]
    NoHost,
    #[error("the certificate names more than one host")]
    SeveralHosts,
}

/// Reads a host certificate (DER).
pub fn read(der: &CertificateDer<'_>) -> Result<PeerCertificate, PeerError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|_| PeerError::Unreadable)?;
    let names = cert
        .subject_alternative_name()
        .map_err(|_| PeerError::Unreadable)?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let mut hosts = names.iter().filter_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with(HOST_URI_PREFIX) => Some(*uri),
        _ => None,
    });
    let uri = hosts.next().ok_or(PeerError::NoHost)?;
    if hosts.next().is_some() {
        return Err(PeerError::SeveralHosts);
    }
    let host = host_from_uri(uri).ok_or(PeerError::NoHost)?;
    let not_after = cert.validity().not_after.timestamp();
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after).unwrap_or(0));
    Ok(PeerCertificate {
        host,
        serial: to_hex(cert.raw_serial()),
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn self_signed(names: Vec<SanType>) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = names;
        params.self_signed(&key).unwrap().der().clone()
    }

    fn uri(text: &str) -> SanType {
        SanType::URI(text.try_into().unwrap())
    }

    #[test]
    fn exactly_one_host_uri_names_the_host() {
        let one = read(&self_signed(vec![
            SanType::DnsName("kvm-1.example".try_into().unwrap()),
            uri("urn:vmm:host:kvm-1"),
        ]))
        .unwrap();
        assert_eq!(one.host.as_str(), "kvm-1");
        assert!(!one.serial.is_empty());

        assert_eq!(
            read(&self_signed(vec![SanType::DnsName(
                "kvm-1".try_into().unwrap()
            )])),
            Err(PeerError::NoHost),
            "a DNS name or common name is not a host identity"
        );
        assert_eq!(
            read(&self_signed(vec![
                uri("urn:vmm:host:kvm-1"),
                uri("urn:vmm:host:kvm-2")
            ])),
            Err(PeerError::SeveralHosts)
        );
        assert_eq!(
            read(&self_signed(vec![uri("urn:vmm:host:KVM-1")])),
            Err(PeerError::NoHost),
            "only the lower-case form the CA writes"
        );
        assert_eq!(
            read(&CertificateDer::from(vec![1, 2, 3])),
            Err(PeerError::Unreadable)
        );
    }
}
