//! Login tokens: HS256 JWTs carrying the user's ID, name and role, with a short lifetime.
//! Verification accepts only HS256 (so `alg: none` and algorithm swaps are refused) and
//! requires `exp`.
//!
//! A client sends the same token with every request until it expires, and verifying it
//! (base64, HMAC-SHA-256 and JSON) was about 8 % of the time of a user's `GET /api/vms`
//! (BENCHMARKS.md). [`TokenIssuer::user_of`] keeps each token that verified with its subject
//! and expiry: the very same bytes get the subject again once the expiry is checked again.
//! Only tokens that verified are kept, so forged ones cannot fill it, and it is bounded
//! ([`MOST_TOKENS`]). Nothing after the signature is skipped: the caller still reads the
//! account (a deleted user's tokens stop, a changed role applies).

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use vmm_shared::UserId;

use super::BoundedMap;
use crate::users::{Role, User};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub username: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

/// Most verified tokens kept ([`BoundedMap`]).
const MOST_TOKENS: usize = 10_000;

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
    /// Tokens that verified, by their exact text: their subject and expiry (`exp`).
    verified: BoundedMap<Box<str>, (UserId, i64)>,
}

pub struct IssuedToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
}

impl TokenIssuer {
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl: chrono::Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 2)),
            verified: BoundedMap::new(MOST_TOKENS),
        }
    }

    pub fn issue(&self, user: &User) -> anyhow::Result<IssuedToken> {
        let now = Utc::now();
        let expires_at = now + self.ttl;
        let claims = Claims {
            sub: user.id,
            username: user.username.clone(),
            role: user.role,
            iat: now.timestamp(),
            exp: expires_at.timestamp(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(IssuedToken { token, expires_at })
    }

    /// The token's claims when its signature, algorithm and lifetime are valid.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
    }

    /// The user a valid token was issued to: [`Self::verify`], once per token (see the
    /// module's documentation).
    pub fn user_of(&self, token: &str) -> Result<UserId, jsonwebtoken::errors::Error> {
        self.user_of_at(token, jsonwebtoken::get_current_timestamp())
    }

    /// [`Self::user_of`] at `now` (seconds since the epoch, the clock `verify` reads).
    fn user_of_at(&self, token: &str, now: u64) -> Result<UserId, jsonwebtoken::errors::Error> {
        let kept = self.verified.get(token);
        if let Some((user, exp)) = kept {
            // `verify`'s own expiry check: expired once `exp` is more than the leeway past.
            let expired = u64::try_from(exp)
                .map_or(true, |exp| exp.saturating_add(self.validation.leeway) < now);
            if expired {
                self.verified.remove(token);
                return Err(jsonwebtoken::errors::ErrorKind::ExpiredSignature.into());
            }
            return Ok(user);
        }
        let claims = self.verify(token)?;
        self.verified.insert(token.into(), (claims.sub, claims.exp));
        Ok(claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: UserId::new_random(),
            username: "alice".into(),
            role: Role::User,
            password_hash: String::new(),
            created_at: String::new(),
        }
    }

    #[test]
    fn issued_tokens_verify_and_foreign_ones_do_not() {
        let issuer = TokenIssuer::new(&[7u8; 32], 60);
        let alice = user();
        let issued = issuer.issue(&alice).unwrap();
        assert_eq!(issuer.verify(&issued.token).unwrap().sub, alice.id);

        let other = TokenIssuer::new(&[8u8; 32], 60);
        assert!(other.verify(&issued.token).is_err());
        assert!(issuer.verify("not.a.token").is_err());
    }

    #[test]
    fn unsigned_and_expired_tokens_are_refused() {
        let issuer = TokenIssuer::new(&[7u8; 32], 60);
        let alice = user();
        // alg: none, with the claims of a valid token and an empty signature.
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let exp = Utc::now().timestamp() + 600;
        let payload = base64_url(
            format!(
                r#"{{"sub":"{}","username":"alice","role":"admin","iat":0,"exp":{exp}}}"#,
                alice.id
            )
            .as_bytes(),
        );
        assert!(issuer.verify(&format!("{header}.{payload}.")).is_err());

        let expired = Claims {
            sub: alice.id,
            username: "alice".into(),
            role: Role::User,
            iat: 0,
            exp: Utc::now().timestamp() - 60,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &expired, &issuer.encoding)
                .unwrap();
        assert!(issuer.verify(&token).is_err());
    }

    #[test]
    fn a_kept_token_is_still_checked_for_its_bytes_and_expiry() {
        let issuer = TokenIssuer::new(&[7u8; 32], 60);
        let alice = user();
        let issued = issuer.issue(&alice).unwrap();
        assert_eq!(issuer.user_of(&issued.token).unwrap(), alice.id);
        assert_eq!(issuer.verified.len(), 1);
        // Kept: the same token again, and again within the leeway past its expiry.
        assert_eq!(issuer.user_of(&issued.token).unwrap(), alice.id);
        let exp = u64::try_from(issued.expires_at.timestamp()).unwrap();
        let leeway = issuer.validation.leeway;
        assert_eq!(
            issuer.user_of_at(&issued.token, exp + leeway).unwrap(),
            alice.id
        );
        // Any other bytes are verified afresh: the signature's last character changed.
        let mut forged = issued.token.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(issuer.user_of(&forged).is_err());
        assert_eq!(issuer.verified.len(), 1, "a forged token is not kept");
        // Past the leeway the kept token is refused, and forgotten.
        assert!(issuer.user_of_at(&issued.token, exp + leeway + 1).is_err());
        assert!(issuer.verified.is_empty());
        // Another issuer's cache knows nothing of it (another key, another coordinator).
        assert!(
            TokenIssuer::new(&[8u8; 32], 60)
                .user_of(&issued.token)
                .is_err()
        );
    }

    #[test]
    fn kept_tokens_are_bounded() {
        let issuer = TokenIssuer::new(&[7u8; 32], 60);
        let alice = user();
        // Tokens issued within the same second are equal: each gets its own name.
        let tokens: Vec<String> = (0..MOST_TOKENS + 2)
            .map(|i| {
                let claims = Claims {
                    sub: alice.id,
                    username: format!("alice-{i}"),
                    role: Role::User,
                    iat: 0,
                    exp: Utc::now().timestamp() + 60,
                };
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &issuer.encoding)
                    .unwrap()
            })
            .collect();
        for token in &tokens {
            assert_eq!(issuer.user_of(token).unwrap(), alice.id);
            assert!(issuer.verified.len() <= MOST_TOKENS);
        }
        assert_eq!(issuer.verified.len(), tokens.len() - MOST_TOKENS);
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
