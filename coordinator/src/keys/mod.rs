//! Users' SSH public keys: `POST /api/keys`, `GET /api/keys`, `DELETE /api/keys/{id}`, and
//! the one check every public key passes before it is stored or sent to a host
//! ([`parse_public_key`]), for stored keys and for keys given inline when creating a VM.
//!
//! Accepted: `ssh-ed25519`, ECDSA (`ecdsa-sha2-nistp256`, `-nistp384`, `-nistp521`) and
//! `ssh-rsa` of at least 2048 bits, one key in OpenSSH's one-line format (`<type> <base64>
//! [comment]`), without `authorized_keys` options. Keys are stored normalised, as the parser
//! writes them back, so nothing but a key and its comment ever reaches a guest.
//!
//! Keys belong to their user alone: another user's key answers 404, like one that does not
//! exist (administrators included: a key is a personal credential).

pub mod routes;
pub mod store;

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};
use vmm_shared::SshKeyId;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Longest public key line accepted, in bytes (an RSA 16384-bit key is about 2.8 KB).
pub const MAX_KEY_LEN: usize = 8 * 1024;
/// Longest comment kept, in characters.
pub const MAX_COMMENT_LEN: usize = 256;
/// Keys one user may store.
pub const MAX_KEYS_PER_USER: u64 = 100;

/// A public key that passed [`parse_public_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidKey {
    /// The algorithm, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// `<type> <base64> [comment]`.
    pub public_key: String,
}

/// Checks one OpenSSH public key; the error says what is wrong with it.
pub fn parse_public_key(text: &str) -> Result<ValidKey, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("the public key is empty".into());
    }
    if text.len() > MAX_KEY_LEN {
        return Err(format!(
            "the public key is {} bytes long; at most {MAX_KEY_LEN} are allowed",
            text.len()
        ));
    }
    if text.starts_with("-----BEGIN") || text.contains("PRIVATE KEY") {
        return Err(
            "this looks like a private key; give the public key (the .pub file) and keep the \
             private key secret"
                .into(),
        );
    }
    if text.contains(['\n', '\r']) {
        return Err("give one public key, on one line".into());
    }
    let key = PublicKey::from_openssh(text).map_err(|err| {
        format!(
            "not an OpenSSH public key ({err}); expected one line like \
             `ssh-ed25519 AAAAC3Nza… user@host`, as in ~/.ssh/id_ed25519.pub"
        )
    })?;
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => {}
        KeyData::Rsa(rsa) => {
            let bits = modulus_bits(rsa.n.as_positive_bytes().unwrap_or_default());
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required \
                     (better: ssh-keygen -t ed25519)"
                ));
            }
        }
        KeyData::Dsa(_) => {
            return Err(
                "DSA (ssh-dss) keys are not accepted: they are limited to 1024 bits and \
                 OpenSSH no longer allows them; use ssh-ed25519, ECDSA or RSA of at least 2048 \
                 bits"
                    .into(),
            );
        }
        other => {
            return Err(format!(
                "{} keys are not accepted; use ssh-ed25519, ECDSA (nistp256, nistp384, \
                 nistp521) or RSA of at least 2048 bits",
                other.algorithm()
            ));
        }
    }
    let comment = key.comment();
    if comment.chars().count() > MAX_COMMENT_LEN {
        return Err(format!(
            "the key's comment is longer than {MAX_COMMENT_LEN} characters"
        ));
    }
    if comment.chars().any(char::is_control) {
        return Err("the key's comment must not contain control characters".into());
    }
    let public_key = key
        .to_openssh()
        .map_err(|err| format!("the public key cannot be written back: {err}"))?;
    Ok(ValidKey {
        key_type: key.algorithm().as_str().to_owned(),
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        public_key,
    })
}

/// The bit length of a big-endian unsigned integer.
fn modulus_bits(bytes: &[u8]) -> usize {
    let bytes = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    bytes.len() * 8 - bytes[0].leading_zeros() as usize
}

/// A stored key.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SshKey {
    pub id: SshKeyId,
    pub owner_id: vmm_shared::UserId,
    pub name: String,
    pub key_type: String,
    pub fingerprint: String,
    pub public_key: String,
    pub created_at: String,
}

/// The JSON shape of a stored key.
pub use vmm_shared::api::keys::SshKeyView;

impl From<SshKey> for SshKeyView {
    fn from(key: SshKey) -> Self {
        SshKeyView {
            id: key.id,
            name: key.name,
            key_type: key.key_type,
            fingerprint: key.fingerprint,
            public_key: key.public_key,
            created_at: key.created_at,
        }
    }
}

#[cfg(test)]
pub(crate) mod test_keys {
    //! Real public keys made by `ssh-keygen` (OpenSSH 9.2), with the fingerprints
    //! `ssh-keygen -l` printed for them; and a security-key public key built by hand.
    pub const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEL4ExQvr2yenWuWW1VazBlavzBomFuxLpKf4pi0TYdv test@vmm";
    pub const ED25519_FINGERPRINT: &str = "SHA256:qtIai1w+H/3uVoLBdP6kb4GaPrbiMZV3rl5aNqsAS20";
    pub const ECDSA_P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBBXhPCRkRlMdFwltMSsHYUa6PUkQBJNt/ItSuwFB319msFZt4+Jn2C/yhbYow7mXZNm9DiOxTfDXuUoPJ//gmLU= test@vmm";
    pub const ECDSA_P256_FINGERPRINT: &str = "SHA256:7DL3X4qaxvyMEtO5FpjbHNa54/CP8eVFJdR5288UbqM";
    pub const ECDSA_P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBHPYcceXNbQ6ug0QL9f0MuxbzzRLe5YPNFQ90yxt16ex0LNuM9pYXVjJhyyUOZEzTSGab9Tj4S2yTAIlX0FTIRsmqM9wHpe1QYrAcnGyPMrP19P2inNtuvgyZtlE4xBM5A== test@vmm";
    pub const ECDSA_P384_FINGERPRINT: &str = "SHA256:j5s+8zXVb80vEgmi75nJ5d+PaOGjskW1SWKdFGZr9E8";
    pub const ECDSA_P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBAFlPZWbZFyvL5ZucZe397FUxr+z3LQWjUMdrsJP7vu3lKCdx8CjTEmZgN4cd/1GnE2vTqc3/i0OtBqslXbE92zh7QF1veMkQQ788eU/xriFpp2su9H5OFVoctcbqPRm3sOxtt6YXq7vvjYQF3eqbWD7TmQTjydKpxxHvVi/O5SsQnUZOg== test@vmm";
    pub const ECDSA_P521_FINGERPRINT: &str = "SHA256:/iTk7P2k1QnsOt8e4pCWLeAyUwlNSsIGEebjJyOtvH0";
    pub const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDYcPlfV0Cs0w6MUaNzcjzKTgovib1IkfXoh06Pav3JYSH4YtUuJLGW684whwlhpJIOpzYPlIngpW7j4UDbMJkkTBvysIUuk/wEIzCTaIz/4ysl+ltvKR0gDIDLc+0WBLmdNfa35topIfKSe5iuHII4HoTohCLVo2rm2+58VqsC7hWVwVVgQ8MIVJXqw0i8UiQ2MtNWE7E2Rm5kiGwoDhu2mEzZPZY+AKkPiHKXcdWRJx/koaPMyjXPbb0xKGMwz7XrbynEvp75ZldT1lJFxhmjpQKfspu0J4h/cfIidWDhz7ZV5LOFw/zi5Nr0LpHZnjfwk9n1b/y3xJstyp8Cqqr5 test@vmm";
    pub const RSA_2048_FINGERPRINT: &str = "SHA256:iK+w5fxONp6OCaiMZQGkbXpbyG1eupaTsh1MAHNVu/g";
    pub const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQCqDTMd74Nf0g/9LeKsPUNH2yix7cmf4WlYzOaHriGrU2/KNELwGCdQqgo5q6qdXrH3DJmGIa4fmMNP0o7AbkM7ufmTNVRO1fURxMKDVOp6gLd6yu8CBu3gIALuMON02uqNPUeaPhjYeZF5G2N2f7JUDvoqUj6gCYlW+JPUw6snvQ== test@vmm";
    pub const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAOQLsGHifzgHtLUlhSECVV6/BHlX5kJoUP070m8djmOgL7vr+I3wRMRIE8nKXKlU6Kfu7Xfuqxob2Zvi7f+c6q4pu5rwoHuR7xBbO0dYlsfvN4FNyjsSn5YlBlsG7WbLlEKlrTUMwmIwW/jm1wE43Y/SjLzFlJjNRN39yLYqbff9AAAAFQD69ZCjOcWm6/2mXvPSbKMN0XbQwwAAAIBHKbyHQUb+gCt8hYZjL4+ds6W8u1NWTzveWsDFjc/nYfHJ7bxRegz0uUkWdqXQKdH0PdlQ+wcVZwrC1OfCZr/QcBjimOMKarxZwxPmDHk34rOM4a7jhAf+dAVn6e/cpWTZB9iIqaLmsVlUQYsO5W69hB5HydypMslRkg8iO2HIDwAAAIEAleF/E50Yqij2C0Wq6YtX2JL176gxipeHxJeaDilk/R8Cwv8UdkeaeVSdxubwoeSBGw1//H79vThT0npRSVupJfPSGt9QOMbXZTS6iFJ8L0JLu+uoPj811Tr0aq9zNiDcK2mciFqJZ86ix/bXL20SLoeYGsRKqDC/Inh1MBxixXI= test@vmm";
    pub const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4fAAAABHNzaDo= yubikey";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_from_the_first_set_bit() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x7f, 0xff]), 15);
    }

    #[test]
    fn ed25519_is_accepted_normalised_with_its_fingerprint() {
        let key = parse_public_key(&format!("  {}\n", test_keys::ED25519)).unwrap();
        assert_eq!(key.key_type, "ssh-ed25519");
        assert_eq!(key.public_key, test_keys::ED25519);
        assert!(
            key.fingerprint.starts_with("SHA256:"),
            "{}",
            key.fingerprint
        );
    }

    #[test]
    fn accepted_kinds_match_ssh_keygen_and_others_are_refused_naming_why() {
        for (key, fingerprint, key_type) in [
            (
                test_keys::ED25519,
                test_keys::ED25519_FINGERPRINT,
                "ssh-ed25519",
            ),
            (
                test_keys::ECDSA_P256,
                test_keys::ECDSA_P256_FINGERPRINT,
                "ecdsa-sha2-nistp256",
            ),
            (
                test_keys::ECDSA_P384,
                test_keys::ECDSA_P384_FINGERPRINT,
                "ecdsa-sha2-nistp384",
            ),
            (
                test_keys::ECDSA_P521,
                test_keys::ECDSA_P521_FINGERPRINT,
                "ecdsa-sha2-nistp521",
            ),
            (
                test_keys::RSA_2048,
                test_keys::RSA_2048_FINGERPRINT,
                "ssh-rsa",
            ),
        ] {
            let valid = parse_public_key(key).unwrap();
            assert_eq!(valid.fingerprint, fingerprint, "{key_type}");
            assert_eq!(valid.key_type, key_type);
            assert_eq!(valid.public_key, key);
        }
        for (key, says) in [
            (test_keys::RSA_1024, "1024 bits; at least 2048"),
            (test_keys::DSA, "DSA (ssh-dss) keys are not accepted"),
            (
                test_keys::SK_ED25519,
                "sk-ssh-ed25519@openssh.com keys are not accepted",
            ),
        ] {
            let message = parse_public_key(key).unwrap_err();
            assert!(message.contains(says), "{message}");
        }
    }

    #[test]
    fn garbage_private_keys_and_options_are_refused_with_a_reason() {
        for (text, says) in [
            ("", "empty"),
            ("hello", "not an OpenSSH public key"),
            ("ssh-ed25519 AAAA-not-base64", "not an OpenSSH public key"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----",
                "looks like a private key",
            ),
            (
                &format!("command=\"/bin/sh\" {}", test_keys::ED25519),
                "not an OpenSSH public key",
            ),
            (
                &format!("{}\n{}", test_keys::ED25519, test_keys::ED25519),
                "one line",
            ),
        ] {
            let message = parse_public_key(text).unwrap_err();
            assert!(message.contains(says), "{text:?}: {message}");
        }
    }
}
