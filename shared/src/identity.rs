//! How hosts and the coordinator are named in certificates, and what a join token looks
//! like: the rules both sides of the agent stream must agree on. Pure text rules, no
//! cryptography and no I/O here.
//!
//! - The coordinator's CA issues each agent a client certificate naming its host ID in
//!   exactly one subject alternative name of type URI: [`HOST_URI_PREFIX`] followed by the
//!   host ID in lower case (`urn:vmm:host:kvm-01`). The subject's common name repeats the ID
//!   for people reading the certificate; only the URI counts.
//! - The coordinator's own certificate on the agents' port names [`COORDINATOR_SERVER_NAME`]
//!   (a DNS name): agents check that name, whatever address `COORDINATOR_URL` dials, and a
//!   certificate of the coordinator's CA. Agents' certificates are for client use only and
//!   can never pass as the coordinator's.
//! - A join token is `vmmj1.<secret>.<ca>`: 32 random bytes and the SHA-256 of the CA
//!   certificate (DER), each as 64 lower-case hex digits. The agent trusts, on first contact,
//!   only a coordinator whose certificate chains to that CA (as kubeadm's discovery hash);
//!   the coordinator keeps only the SHA-256 of the secret.

use std::fmt;
use std::str::FromStr;

use crate::HostId;

/// The prefix of the URI that names a host in its certificate.
pub const HOST_URI_PREFIX: &str = "urn:vmm:host:";

/// The DNS name in the coordinator's certificate on the agents' port.
pub const COORDINATOR_SERVER_NAME: &str = "vmm-coordinator";

/// The URI naming `host` in its certificate.
pub fn host_uri(host: &HostId) -> String {
    format!("{HOST_URI_PREFIX}{host}")
}

/// The host a certificate's URI names, if it is a host URI with a valid host ID in lower case
/// (a certificate is never read more leniently than it was written).
pub fn host_from_uri(uri: &str) -> Option<HostId> {
    let id = uri.strip_prefix(HOST_URI_PREFIX)?;
    let host: HostId = id.parse().ok()?;
    (host.as_str() == id).then_some(host)
}

const JOIN_TOKEN_PREFIX: &str = "vmmj1";

/// A join token, as an admin hands it to a new host. Its `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// 64 lower-case hex digits.
    secret: String,
    /// The SHA-256 of the coordinator's CA certificate (DER), 64 lower-case hex digits.
    ca_sha256: String,
}

/// Why a text is not a join token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a join token: expected `vmmj1.<64 hex digits>.<64 hex digits>`, as \
     POST /api/hosts/join-tokens answers it"
)]
pub struct InvalidJoinToken;

impl JoinToken {
    /// A token from its parts, both 32 bytes.
    pub fn new(secret: &[u8; 32], ca_sha256: &[u8; 32]) -> Self {
        Self {
            secret: to_hex(secret),
            ca_sha256: to_hex(ca_sha256),
        }
    }

    /// The secret part, as hex: what the coordinator hashes and looks up.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The SHA-256 of the CA certificate the coordinator must present, as hex.
    pub fn ca_sha256(&self) -> &str {
        &self.ca_sha256
    }

    /// The token as text (secret included): only for handing it over.
    pub fn expose(&self) -> String {
        format!("{JOIN_TOKEN_PREFIX}.{}.{}", self.secret, self.ca_sha256)
    }
}

impl FromStr for JoinToken {
    type Err = InvalidJoinToken;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.trim().split('.');
        let (Some(JOIN_TOKEN_PREFIX), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(InvalidJoinToken);
        };
        let hex64 = |part: &str| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit());
        if !(hex64(secret) && hex64(ca)) {
            return Err(InvalidJoinToken);
        }
        Ok(Self {
            secret: secret.to_ascii_lowercase(),
            ca_sha256: ca.to_ascii_lowercase(),
        })
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("ca_sha256", &self.ca_sha256)
            .finish()
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_uris_round_trip_and_nothing_else_passes() {
        let host: HostId = "KVM-01".parse().unwrap();
        assert_eq!(host_uri(&host), "urn:vmm:host:kvm-01");
        assert_eq!(host_from_uri("urn:vmm:host:kvm-01"), Some(host));
        for not_a_host in [
            "urn:vmm:host:KVM-01",
            "urn:vmm:host:",
            "urn:vmm:host:a b",
            "urn:vmm:hostkvm-01",
            "https://kvm-01",
        ] {
            assert_eq!(host_from_uri(not_a_host), None, "{not_a_host}");
        }
    }

    #[test]
    fn join_tokens_round_trip_and_keep_their_secret_out_of_debug() {
        let token = JoinToken::new(&[0xab; 32], &[0x01; 32]);
        let text = token.expose();
        assert_eq!(text.len(), 6 + 64 + 1 + 64);
        assert!(text.starts_with("vmmj1.abab"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_eq!(
            format!("{text}\n").parse::<JoinToken>().unwrap(),
            token,
            "a trailing line break is not part of it"
        );
        assert_eq!(token.ca_sha256(), "01".repeat(32));
        assert!(!format!("{token:?}").contains("abab"));
        for bad in [
            "",
            "vmmj1",
            "vmmj2.",
            &format!("vmmj1.{}", "a".repeat(64)),
            &format!("vmmj1.{}.{}", "a".repeat(63), "b".repeat(64)),
            &format!("vmmj1.{}.{}", "g".repeat(64), "b".repeat(64)),
            &format!("vmmj1.{}.{}.x", "a".repeat(64), "b".repeat(64)),
        ] {
            assert!(bad.parse::<JoinToken>().is_err(), "{bad}");
        }
    }
}
