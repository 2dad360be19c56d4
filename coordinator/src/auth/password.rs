//! Password hashing with bcrypt, off the async runtime (each hash costs tens to hundreds of
//! milliseconds by design).
//!
//! Login for an unknown user still runs one bcrypt verification, against a hash made at
//! start, so that "no such user" and "wrong password" take the same time.

use std::sync::Arc;

use anyhow::Context;

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    decoy_hash: Arc<str>,
}

impl PasswordHasher {
    pub async fn new(cost: u32) -> anyhow::Result<Self> {
        let decoy: String = {
            use rand::Rng;
            rand::rng()
                .sample_iter(rand::distr::Alphanumeric)
                .take(24)
                .map(char::from)
                .collect()
        };
        let decoy_hash = tokio::task::spawn_blocking(move || bcrypt::hash(decoy, cost))
            .await?
            .context("cannot compute the decoy password hash")?;
        Ok(Self {
            cost,
            decoy_hash: decoy_hash.into(),
        })
    }

    pub async fn hash(&self, password: &str) -> anyhow::Result<String> {
        let password = password.to_owned();
        let cost = self.cost;
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost)).await??;
        Ok(hash)
    }

    /// True when `password` matches `stored_hash`. With no stored hash (unknown user) it
    /// does the same work and answers false.
    pub async fn verify(&self, password: &str, stored_hash: Option<&str>) -> bool {
        let known_user = stored_hash.is_some();
        let hash = stored_hash
            .map(str::to_owned)
            .unwrap_or_else(|| self.decoy_hash.to_string());
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        known_user && matches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let hasher = PasswordHasher::new(4).await.unwrap();
        let hash = hasher.hash("correct horse").await.unwrap();
        assert!(hash.starts_with("$2"));
        assert!(!hash.contains("correct horse"));
        assert!(hasher.verify("correct horse", Some(&hash)).await);
        assert!(!hasher.verify("wrong horse", Some(&hash)).await);
        assert!(!hasher.verify("correct horse", None).await);
    }
}
