//! Login tokens: HS256 JWTs carrying the user's ID, name and role, with a short lifetime.
//! Verification accepts only HS256 (so `alg: none` and algorithm swaps are refused) and
//! requires `exp`.

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use vmm_shared::UserId;

use crate::users::{Role, User};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub username: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

pub struct TokenIssuer {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: chrono::Duration,
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

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }
}
