//! Crafting tokens the coordinator must refuse: signed with the wrong secret, expired, or
//! with `alg: none`. The claims are the coordinator's (`sub`, `exp`, `iat`, `role`,
//! `username`), so a refusal can only come from the signature or the expiry, never from a
//! claim the coordinator does not understand.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The coordinator's JWT claims.
#[derive(Debug, Clone, Serialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub role: String,
    pub username: String,
}

impl Claims {
    /// Claims for `user_id` valid from now for `ttl_secs` (negative: already expired).
    pub fn new(user_id: &str, username: &str, role: &str, ttl_secs: i64) -> Self {
        let now = now_secs();
        Self {
            sub: user_id.to_owned(),
            exp: now + ttl_secs,
            iat: now.min(now + ttl_secs),
            role: role.to_owned(),
            username: username.to_owned(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970");
    i64::try_from(since_epoch.as_secs()).expect("time fits in i64")
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn sign_hs256(secret: &str, claims: &Claims) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing claims with HS256 cannot fail")
}

/// An unsigned token (`{"alg":"none"}` and an empty signature) over `claims`.
pub fn unsigned_alg_none(claims: &Claims) -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = base64url(&serde_json::to_vec(claims).expect("claims serialize"));
    format!("{header}.{payload}.")
}

/// `token` with its payload replaced by `claims` and its signature kept: what an attacker
/// gets by editing a real token (e.g. to make themselves admin).
pub fn with_replaced_payload(token: &str, claims: &Claims) -> String {
    let mut parts = token.split('.');
    let (header, _payload, signature) = (parts.next(), parts.next(), parts.next());
    let payload = base64url(&serde_json::to_vec(claims).expect("claims serialize"));
    format!(
        "{}.{payload}.{}",
        header.unwrap_or_default(),
        signature.unwrap_or_default()
    )
}

/// Unpadded URL-safe base64 (RFC 4648 §5), as JWTs use.
pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::base64url;

    /// The engine chosen is the JWT one: URL-safe alphabet, no padding.
    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }
}
