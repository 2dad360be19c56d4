//! The agent's own identity: its key pair, the certificate the coordinator's CA issued for
//! it (naming its host, see `vmm_shared::identity`), and that CA's certificate, kept in
//! `<AGENT_DATA_DIR>/identity/`:
//!
//! - `host.pem`: the certificate, then the private key (PKCS#8), mode 0600; replaced as a
//!   whole (written beside, then renamed), so a crash never leaves a key without its
//!   certificate;
//! - `ca.crt`: the CA certificate the agent trusts the coordinator by.
//!
//! The key pair is made here, on the host, and the private key never leaves this file: the
//! coordinator gets a certificate signing request ([`new_key_and_request`]). A certificate is
//! renewed once two thirds of its lifetime have passed ([`Identity::renewal_due`]), counted
//! from when the agent received it: the CA backdates `notBefore` (an hour, for hosts whose
//! clock is behind), which must not count as lifetime spent.
//!
//! No network here (see `enrol`), and the private key is never logged: `Identity`'s `Debug`
//! leaves it out.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData, SanType};
use sha2::{Digest, Sha256};
use tonic::transport::{Certificate, ClientTlsConfig};
use vmm_shared::HostId;
use vmm_shared::identity::{COORDINATOR_SERVER_NAME, HOST_URI_PREFIX, host_from_uri, host_uri};
use x509_parser::extensions::GeneralName;

/// Why the identity cannot be read, made or kept.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read or write the agent's identity in {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the certificate is unusable: {0}")]
    Certificate(String),
    #[error("cannot make a key pair or a signing request")]
    Key(#[from] rcgen::Error),
}

/// A certificate and its key, and the CA that issued it.
#[derive(Clone)]
pub struct Identity {
    host: HostId,
    serial: String,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When the agent received the certificate (for a kept one: when its file was written).
    received_at: SystemTime,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("host", &self.host)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// An identity from the PEM texts of the certificate, its private key and the CA. Checked:
    /// the certificate names exactly one host, the key is the certificate's, and the CA
    /// signed the certificate.
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Self, IdentityError> {
        let bad = |why: &str| IdentityError::Certificate(why.to_owned());
        let cert_der = pem_der(cert_pem).ok_or_else(|| bad("the certificate is not PEM"))?;
        let ca_der = pem_der(ca_pem).ok_or_else(|| bad("the CA certificate is not PEM"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|err| bad(&format!("the certificate cannot be read: {err}")))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|err| bad(&format!("the CA certificate cannot be read: {err}")))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| bad("the certificate was not issued by the CA"))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|err| bad(&format!("the private key cannot be read: {err}")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad("the private key is not the certificate's"));
        }
        let names = cert
            .subject_alternative_name()
            .map_err(|_| bad("the certificate's names cannot be read"))?
            .map(|extension| extension.value.general_names.clone())
            .unwrap_or_default();
        let hosts: Vec<HostId> = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(HOST_URI_PREFIX) => host_from_uri(uri),
                _ => None,
            })
            .collect();
        let [host] = hosts.as_slice() else {
            return Err(bad("the certificate does not name exactly one host"));
        };
        let time = |at: x509_parser::time::ASN1Time| {
            UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).unwrap_or(0))
        };
        Ok(Self {
            host: host.clone(),
            serial: vmm_shared::identity::to_hex(cert.raw_serial()),
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            ca_pem: ca_pem.to_owned(),
            not_before: time(cert.validity().not_before),
            not_after: time(cert.validity().not_after),
            received_at: SystemTime::now(),
        })
    }

    /// The host the certificate names.
    pub fn host(&self) -> &HostId {
        &self.host
    }

    /// The certificate's serial number, hex.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// SHA-256 of the CA certificate (DER), hex.
    pub fn ca_sha256(&self) -> String {
        pem_der(&self.ca_pem)
            .map(|der| vmm_shared::identity::to_hex(&Sha256::digest(&der)))
            .unwrap_or_default()
    }

    /// When to ask for a new certificate: once two thirds of this one's lifetime have passed,
    /// the lifetime counted from when it was received (or from `notBefore` if that is later).
    pub fn renewal_due(&self) -> SystemTime {
        let start = self.not_before.max(self.received_at);
        let lifetime = self
            .not_after
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        start + lifetime.mul_f64(2.0 / 3.0)
    }

    /// TLS towards the coordinator with this identity: the coordinator must present a
    /// certificate of this CA for [`COORDINATOR_SERVER_NAME`]; the agent presents its own.
    pub fn tls_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .domain_name(COORDINATOR_SERVER_NAME)
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
    }
}

/// A new key pair and a certificate signing request for it, naming `host` (the coordinator
/// decides what the certificate says; the request proves the key is held).
pub struct KeyAndRequest {
    pub key_pem: String,
    pub csr_der: Vec<u8>,
}

pub fn new_key_and_request(host: &HostId) -> Result<KeyAndRequest, IdentityError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, host.as_str());
    params.subject_alt_names = vec![SanType::URI(host_uri(host).try_into()?)];
    let request = params.serialize_request(&key)?;
    Ok(KeyAndRequest {
        key_pem: key.serialize_pem(),
        csr_der: request.der().to_vec(),
    })
}

/// Where the identity is kept: `<data_dir>/identity`.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    dir: PathBuf,
}

impl IdentityFiles {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("identity"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self) -> impl Fn(std::io::Error) -> IdentityError + '_ {
        |source| IdentityError::Io {
            dir: self.dir.clone(),
            source,
        }
    }

    /// The stored identity, or `None` before enrolment.
    pub fn load(&self) -> Result<Option<Identity>, IdentityError> {
        let host_pem = match fs::read_to_string(self.dir.join("host.pem")) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(self.io()(error)),
        };
        let ca_pem = fs::read_to_string(self.dir.join("ca.crt")).map_err(self.io())?;
        let (cert_pem, key_pem) = split_host_pem(&host_pem).ok_or_else(|| {
            IdentityError::Certificate(format!(
                "{} must hold a certificate and then a private key",
                self.dir.join("host.pem").display()
            ))
        })?;
        let mut identity = Identity::new(&cert_pem, &key_pem, &ca_pem)?;
        // Written when the certificate arrived (`save` replaces the file as a whole).
        if let Ok(written) =
            fs::metadata(self.dir.join("host.pem")).and_then(|metadata| metadata.modified())
        {
            identity.received_at = written.min(identity.received_at);
        }
        Ok(Some(identity))
    }

    /// Keeps `identity`, replacing what was there.
    pub fn save(&self, identity: &Identity) -> Result<(), IdentityError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(self.io())?;
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)).map_err(self.io())?;
        replace(&self.dir.join("ca.crt"), identity.ca_pem.as_bytes(), 0o644).map_err(self.io())?;
        let host_pem = format!(
            "{}\n{}",
            identity.cert_pem.trim_end(),
            identity.key_pem.trim_end()
        ) + "\n";
        replace(&self.dir.join("host.pem"), host_pem.as_bytes(), 0o600).map_err(self.io())
    }
}

/// The certificate block(s) and the private key block of `host.pem`.
fn split_host_pem(text: &str) -> Option<(String, String)> {
    let key_start = text.find("-----BEGIN PRIVATE KEY-----")?;
    let (cert, key) = text.split_at(key_start);
    cert.contains("-----BEGIN CERTIFICATE-----")
        .then(|| (cert.trim().to_owned() + "\n", key.trim().to_owned() + "\n"))
}

/// The DER of the first PEM block of `pem`.
fn pem_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|der| der.to_vec())
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, syncs it and renames it
/// over `path`.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let temporary = path.with_extension("new");
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use rcgen::{BasicConstraints, IsCa, Issuer};

    use super::*;

    /// A CA and what it issues, as the coordinator would.
    pub(crate) struct TestCa {
        pub pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        pub(crate) fn new() -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            let cert = params.self_signed(&key).unwrap();
            let issuer = Issuer::from_ca_cert_der(cert.der(), key).unwrap();
            Self {
                pem: cert.pem(),
                issuer,
            }
        }

        /// A certificate naming `names` for the key of `request`, valid for `lifetime` from
        /// now.
        pub(crate) fn issue(
            &self,
            names: &[&str],
            request: &KeyAndRequest,
            lifetime: Duration,
        ) -> String {
            let key = KeyPair::from_pem(&request.key_pem).unwrap();
            let mut params = CertificateParams::default();
            params.subject_alt_names = names
                .iter()
                .map(|name| SanType::URI((*name).try_into().unwrap()))
                .collect();
            params.not_before = time::OffsetDateTime::now_utc() - time::Duration::minutes(1);
            params.not_after =
                time::OffsetDateTime::now_utc() + time::Duration::try_from(lifetime).unwrap();
            params.signed_by(&key, &self.issuer).unwrap().pem()
        }
    }

    #[test]
    fn an_identity_is_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let files = IdentityFiles::new(dir.path());
        assert!(files.load().unwrap().is_none(), "not enrolled yet");
        let host: HostId = "kvm-1".parse().unwrap();
        let request = new_key_and_request(&host).unwrap();
        let ca = TestCa::new();
        let cert = ca.issue(&["urn:vmm:host:kvm-1"], &request, Duration::from_secs(3000));
        let identity = Identity::new(&cert, &request.key_pem, &ca.pem).unwrap();
        assert_eq!(identity.host(), &host);
        assert!(!format!("{identity:?}").contains("PRIVATE KEY"));
        files.save(&identity).unwrap();
        let mode = |path: PathBuf| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(files.dir().join("host.pem")), 0o600);
        assert_eq!(mode(files.dir().to_owned()), 0o700);
        let loaded = files.load().unwrap().unwrap();
        assert_eq!(loaded.serial(), identity.serial());
        assert_eq!(loaded.ca_sha256(), identity.ca_sha256());

        // Renewal is due at two thirds of the lifetime, counted from when the certificate
        // arrived (now), not from its backdated start a minute ago.
        let due = loaded.renewal_due();
        let expected = SystemTime::now() + Duration::from_secs(3000).mul_f64(2.0 / 3.0);
        let gap = due
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(gap < Duration::from_secs(3), "{gap:?}");
        // A certificate kept 40 s ago: the time of its file counts.
        let written = SystemTime::now() - Duration::from_secs(40);
        fs::File::options()
            .write(true)
            .open(files.dir().join("host.pem"))
            .unwrap()
            .set_modified(written)
            .unwrap();
        let kept = files.load().unwrap().unwrap();
        let expected = written + Duration::from_secs(3040).mul_f64(2.0 / 3.0);
        let gap = kept
            .renewal_due()
            .duration_since(expected)
            .unwrap_or_else(|e| e.duration());
        assert!(gap < Duration::from_secs(3), "{gap:?}");
    }

    #[test]
    fn an_identity_that_does_not_hold_together_is_refused() {
        let host: HostId = "kvm-1".parse().unwrap();
        let request = new_key_and_request(&host).unwrap();
        let other = new_key_and_request(&host).unwrap();
        let ca = TestCa::new();
        let cert = ca.issue(&["urn:vmm:host:kvm-1"], &request, Duration::from_secs(60));
        let error = Identity::new(&cert, &other.key_pem, &ca.pem).unwrap_err();
        assert!(
            error.to_string().contains("not the certificate's"),
            "{error}"
        );
        let error = Identity::new(&cert, &request.key_pem, &TestCa::new().pem).unwrap_err();
        assert!(
            error.to_string().contains("not issued by the CA"),
            "{error}"
        );
        let two = ca.issue(
            &["urn:vmm:host:kvm-1", "urn:vmm:host:kvm-2"],
            &request,
            Duration::from_secs(60),
        );
        let error = Identity::new(&two, &request.key_pem, &ca.pem).unwrap_err();
        assert!(error.to_string().contains("exactly one host"), "{error}");
    }
}
