//! Personal API tokens, for scripts and automation that should not store a password:
//! `POST /api/tokens`, `GET /api/tokens`, `DELETE /api/tokens/{id}`, and [`authenticate`],
//! which the `CurrentUser` extractor calls for every bearer token that starts with
//! [`TOKEN_PREFIX`].
//!
//! - A token is `vmm_pat_` and 32 random bytes (base64url). It is shown once, in the answer
//!   that creates it; the database keeps only its SHA-256. A plain hash is enough for a
//!   random 256-bit secret: there is no dictionary to try, so a slow password hash would only
//!   slow every request down.
//! - A token acts as its owner (role included, read at each request) within its scope:
//!   `read` allows GET requests only, anything else answers 403. `write` allows what the
//!   owner may do, except creating tokens: a token cannot mint longer-lived tokens, so that
//!   takes a password login.
//! - Deleting a token revokes it at once (every request looks it up); an expired token is
//!   refused. Requests with a token count in its owner's rate-limit budget.
//! - Users see and revoke only their own tokens (another's answers 404); administrators may
//!   list and revoke anyone's.
//!
//! Never logged or returned after creation: the token itself.

pub mod routes;
pub mod store;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use vmm_shared::{ApiTokenId, UserId};

pub use store::authenticate;

/// What every API token starts with, so that the coordinator (and secret scanners) can tell
/// it from a login token.
pub const TOKEN_PREFIX: &str = "vmm_pat_";
/// Random bytes in a token.
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Characters of a token kept in clear to recognise it by (prefix included).
pub const SHOWN_PREFIX_LEN: usize = TOKEN_PREFIX.len() + 6;
/// Tokens one user may hold.
pub const MAX_TOKENS_PER_USER: i64 = 100;
/// Longest lifetime a token may be given: about five years.
pub const MAX_EXPIRES_IN_SECS: u64 = 5 * 366 * 24 * 3600;

/// What a token may do (`read`: GET only; `write`: all but creating tokens).
pub use vmm_shared::api::tokens::TokenScope as Scope;

/// A token that authenticated a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenGrant {
    pub id: ApiTokenId,
    pub owner: UserId,
    pub scope: Scope,
}

/// A new random token, as shown to its owner once.
pub fn generate() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What the database keeps of a token: its SHA-256, lower-case hex.
pub fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// True when `token` looks like an API token (rather than a login token).
pub fn is_api_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_random_and_hashed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(is_api_token(&a));
        // 32 bytes in base64 without padding.
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 43);
        let hash = digest(&a);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&a[TOKEN_PREFIX.len()..]));
        assert_eq!(hash, digest(&a));
        assert_ne!(hash, digest(&b));
        // The SHA-256 of "abc", as `sha256sum` prints it.
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
