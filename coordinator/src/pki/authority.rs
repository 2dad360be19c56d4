//! The coordinator's certificate authority for the agents' port: its key and self-signed
//! certificate in `<DATA_DIR>/pki/` (`ca.key` mode 0600 in a 0700 directory, `ca.crt`), and
//! the certificates it issues: one per host enrolment or renewal, and the coordinator's own
//! server certificate, made in memory at start and again before it runs out.
//!
//! It signs only what [`CertificateAuthority::issue_host_certificate`] and
//! [`CertificateAuthority::issue_server_certificate`] describe: an agent's request supplies a
//! public key and nothing else, so no agent can get a certificate naming another host, a
//! CA, or the coordinator.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use vmm_shared::HostId;
use vmm_shared::identity::{COORDINATOR_SERVER_NAME, host_uri, to_hex};

/// How long the CA certificate is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long the coordinator's own certificate on the agents' port is valid; it is made anew
/// at every start, and in the running process once a third of this is left.
pub const SERVER_CERT_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start to be valid this long before they are issued, so that a peer whose
/// clock is a little behind still accepts them.
const BACKDATE: Duration = Duration::from_secs(3600);

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read or write the CA files in {dir}")]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA files in {dir} are unusable ({reason}); restore them from a backup")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("cannot make a certificate: {0}")]
    Signing(#[from] rcgen::Error),
}

/// A certificate the CA issued to a host.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    pub der: CertificateDer<'static>,
    pub pem: String,
    /// Lower-case hex of the serial number's bytes.
    pub serial: String,
    pub not_after: SystemTime,
}

pub struct CertificateAuthority {
    dir: PathBuf,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Where the CA lives: `<data_dir>/pki`.
pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or creates it there when `dir` holds none. Returns it and
    /// whether it was created now.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), CaError> {
        match Self::load(dir)? {
            Some(ca) => Ok((ca, false)),
            None => Ok((Self::create(dir)?, true)),
        }
    }

    /// The CA in `dir`, or `None` when there is none (neither file exists). One file without
    /// the other is an error: a CA is never half made or half restored silently.
    pub fn load(dir: &Path) -> Result<Option<Self>, CaError> {
        let io = |source| CaError::Io {
            dir: dir.to_owned(),
            source,
        };
        let corrupt = |reason: String| CaError::Corrupt {
            dir: dir.to_owned(),
            reason,
        };
        let (cert_path, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
        match (cert_path.exists(), key_path.exists()) {
            (false, false) => return Ok(None),
            (true, true) => {}
            (cert, _) => {
                return Err(corrupt(format!(
                    "{} is missing",
                    if cert { "ca.key" } else { "ca.crt" }
                )));
            }
        }
        let cert_pem = fs::read_to_string(&cert_path).map_err(io)?;
        let key_pem = fs::read_to_string(&key_path).map_err(io)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|err| corrupt(format!("ca.key: {err}")))?;
        let cert_der = pem_to_der(&cert_pem).ok_or_else(|| corrupt("ca.crt is not PEM".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|err| corrupt(format!("ca.crt: {err}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(corrupt("ca.key does not belong to ca.crt".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|err| corrupt(format!("ca.crt: {err}")))?;
        Ok(Some(Self {
            dir: dir.to_owned(),
            cert_der,
            cert_pem,
            issuer,
        }))
    }

    /// Makes a new CA in `dir` (created with mode 0700 if missing); refuses to overwrite
    /// files that are there.
    pub fn create(dir: &Path) -> Result<Self, CaError> {
        let io = |source| CaError::Io {
            dir: dir.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "vmm");
        params
            .distinguished_name
            .push(DnType::CommonName, "vmm agents CA");
        // Signs end-entity certificates only, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();

        // The key first: a crash between the two leaves "ca.crt is missing", not a
        // certificate whose key is lost.
        write_new(&dir.join("ca.key"), key_pem.as_bytes(), 0o600).map_err(io)?;
        write_new(&dir.join("ca.crt"), cert_pem.as_bytes(), 0o644).map_err(io)?;
        let cert_der = cert.der().clone();
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self {
            dir: dir.to_owned(),
            cert_der,
            cert_pem,
            issuer,
        })
    }

    /// The CA certificate, DER.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.cert_pem
    }

    /// SHA-256 of the CA certificate (DER), lower-case hex: what join tokens carry and
    /// `openssl x509 -noout -fingerprint -sha256 -in ca.crt` shows (with colons).
    pub fn fingerprint(&self) -> String {
        to_hex(&self.fingerprint_bytes())
    }

    pub fn fingerprint_bytes(&self) -> [u8; 32] {
        Sha256::digest(self.cert_der.as_ref()).into()
    }

    /// A client certificate naming `host` for `public_key`, valid for `lifetime`.
    pub fn issue_host_certificate(
        &self,
        host: &HostId,
        public_key: &impl PublicKeyData,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "vmm hosts");
        params
            .distinguished_name
            .push(DnType::CommonName, host.as_str());
        params.subject_alt_names = vec![SanType::URI(host_uri(host).try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, lifetime);
        let serial = random_serial();
        params.serial_number = Some(serial.clone());
        let cert = params.signed_by(public_key, &self.issuer)?;
        Ok(IssuedCertificate {
            der: cert.der().clone(),
            pem: cert.pem(),
            serial: to_hex(serial.as_ref()),
            not_after,
        })
    }

    /// The coordinator's own certificate for the agents' port, naming
    /// [`COORDINATOR_SERVER_NAME`], with a fresh key: the chain (it, then the CA
    /// certificate), the key, and when it expires.
    pub fn issue_server_certificate(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
            SystemTime,
        ),
        CaError,
    > {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![COORDINATOR_SERVER_NAME.to_owned()])?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "vmm");
        params
            .distinguished_name
            .push(DnType::CommonName, COORDINATOR_SERVER_NAME);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let not_after = set_validity(&mut params, SERVER_CERT_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((
            vec![cert.der().clone(), self.cert_der.clone()],
            key_der,
            not_after,
        ))
    }
}

/// Sets `params` valid from a little before now for `lifetime`; returns the end.
fn set_validity(params: &mut CertificateParams, lifetime: Duration) -> SystemTime {
    let now = SystemTime::now();
    let not_after = now + lifetime;
    params.not_before = time::OffsetDateTime::from(now - BACKDATE);
    params.not_after = time::OffsetDateTime::from(not_after);
    not_after
}

/// 16 random bytes, positive and without a leading zero byte, so that the DER integer's
/// content is exactly these bytes (and reads back as the same hex).
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from(bytes.to_vec())
}

/// The DER of the first PEM block of `pem`.
pub fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok()
}

/// Writes a file that must not exist yet, with `mode`, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_is_made_once_kept_private_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki_dir(dir.path());
        let (ca, created) = CertificateAuthority::load_or_create(&pki).unwrap();
        assert!(created);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki), 0o700);
        assert_eq!(mode(&pki.join("ca.key")), 0o600);
        let (again, created) = CertificateAuthority::load_or_create(&pki).unwrap();
        assert!(!created);
        assert_eq!(again.fingerprint(), ca.fingerprint());
        assert_eq!(ca.fingerprint().len(), 64);
        assert!(
            CertificateAuthority::create(&pki).is_err(),
            "an existing CA is never overwritten"
        );

        // Half a CA is an error, not a new CA.
        fs::remove_file(pki.join("ca.crt")).unwrap();
        let error = CertificateAuthority::load(&pki).unwrap_err();
        assert!(error.to_string().contains("ca.crt is missing"), "{error}");
    }

    #[test]
    fn a_key_from_another_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        CertificateAuthority::create(&first).unwrap();
        CertificateAuthority::create(&second).unwrap();
        fs::remove_file(first.join("ca.key")).unwrap();
        fs::copy(second.join("ca.key"), first.join("ca.key")).unwrap();
        let error = CertificateAuthority::load(&first).unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
    }

    #[test]
    fn host_certificates_name_the_host_for_client_use_only() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::create(&pki_dir(dir.path())).unwrap();
        let key = KeyPair::generate().unwrap();
        let host: HostId = "kvm-7".parse().unwrap();
        let issued = ca
            .issue_host_certificate(&host, &key, Duration::from_secs(3600))
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&issued.der).unwrap();
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(uris, ["URI(urn:vmm:host:kvm-7)"]);
        let usage = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(usage.client_auth && !usage.server_auth);
        assert!(!cert.is_ca());
        assert_eq!(to_hex(cert.raw_serial()), issued.serial);
        assert_eq!(cert.public_key().raw, key.subject_public_key_info());
    }
}
