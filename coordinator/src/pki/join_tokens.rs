//! Join tokens: single-use, short-lived credentials an admin makes for one host ID, with
//! which a new host's agent gets its first certificate (`HostIdentity.Enrol`).
//!
//! The secret is 32 random bytes, shown once (in the token, which also carries the CA's
//! fingerprint for the agent's first contact, see `vmm_shared::identity`); only its SHA-256
//! is stored. A token is redeemed by one conditional `UPDATE` inside the enrolment's write
//! transaction: of two agents racing with the same token, one enrols and the other is told
//! the token was used.
//!
//! Never logged or returned after creation: the secret.

use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use vmm_shared::identity::{JoinToken, to_hex};
use vmm_shared::{HostId, UserId};

use crate::db::{self, Db, DbConnection};

/// Shortest and longest lifetime of a join token.
pub const MIN_TTL: Duration = Duration::from_secs(1);
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The lifetime of a token made without one.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// A token just made: the only time its secret exists outside the agent.
#[derive(Debug)]
pub struct NewJoinToken {
    pub token: JoinToken,
    pub host: HostId,
    pub expires_at: String,
}

/// Why a token does not enrol a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the join token is not known to this coordinator")]
    Unknown,
    #[error("the join token was already used; ask an admin for a new one")]
    Used,
    #[error("the join token expired; ask an admin for a new one")]
    Expired,
    #[error(
        "the join token is for host {0}, not this one (set HOST_ID, or ask for a token for this host)"
    )]
    OtherHost(HostId),
}

fn hash(secret: &str) -> String {
    to_hex(&Sha256::digest(secret.as_bytes()))
}

/// Makes a token for `host`, valid for `ttl`, naming the CA whose SHA-256 is `ca_sha256`.
pub async fn create(
    db: &Db,
    host: &HostId,
    ttl: Duration,
    ca_sha256: &[u8; 32],
    created_by: UserId,
) -> Result<NewJoinToken, sqlx::Error> {
    let secret: [u8; 32] = rand::random();
    let token = JoinToken::new(&secret, ca_sha256);
    let expires_at = db::timestamp(SystemTime::now() + ttl);
    sqlx::query(
        "INSERT INTO join_tokens (token_hash, host_id, created_by, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(hash(token.secret()))
    .bind(host)
    .bind(created_by)
    .bind(db::now())
    .bind(&expires_at)
    .execute(db)
    .await?;
    Ok(NewJoinToken {
        token,
        host: host.clone(),
        expires_at,
    })
}

/// Spends `token` for `host`, inside the caller's write transaction. On `Err(Refused)`
/// nothing changed.
pub async fn redeem(
    conn: &mut DbConnection,
    token: &JoinToken,
    host: &HostId,
) -> Result<Result<(), Refused>, sqlx::Error> {
    let token_hash = hash(token.secret());
    let row: Option<(HostId, String, Option<String>)> = sqlx::query_as(
        "SELECT host_id, expires_at, used_at FROM join_tokens WHERE token_hash = $1",
    )
    .bind(&token_hash)
    .fetch_optional(&mut *conn)
    .await?;
    let Some((for_host, expires_at, used_at)) = row else {
        return Ok(Err(Refused::Unknown));
    };
    let now = db::now();
    if used_at.is_some() {
        return Ok(Err(Refused::Used));
    }
    if expires_at <= now {
        return Ok(Err(Refused::Expired));
    }
    if &for_host != host {
        return Ok(Err(Refused::OtherHost(for_host)));
    }
    let done = sqlx::query(
        "UPDATE join_tokens SET used_at = $1
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(&now)
    .bind(&token_hash)
    .bind(&now)
    .execute(&mut *conn)
    .await?;
    Ok(if done.rows_affected() == 1 {
        Ok(())
    } else {
        Err(Refused::Used)
    })
}

/// Withdraws the unused tokens of `host` (it was deleted); returns how many.
pub async fn withdraw_for_host(conn: &mut DbConnection, host: &HostId) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM join_tokens WHERE host_id = $1 AND used_at IS NULL")
        .bind(host)
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Forgets tokens that expired (or were used) over a day ago.
pub async fn forget_old(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff = db::timestamp(SystemTime::now() - Duration::from_secs(86400));
    let done = sqlx::query("DELETE FROM join_tokens WHERE expires_at < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    #[tokio::test]
    async fn a_token_works_once_only_for_its_host_and_only_before_it_expires() {
        let t = TestDb::new().await;
        let host: HostId = "new-host".parse().unwrap();
        let other: HostId = "other-host".parse().unwrap();
        let made = create(&t.db, &host, Duration::from_secs(60), &[7; 32], t.user)
            .await
            .unwrap();
        let redeem_now = |token: JoinToken, host: HostId| {
            let db = t.db.clone();
            async move {
                let mut tx = db::begin_write(&db).await.unwrap();
                let outcome = redeem(&mut tx, &token, &host).await.unwrap();
                tx.commit().await.unwrap();
                outcome
            }
        };
        assert_eq!(
            redeem_now(made.token.clone(), other.clone()).await,
            Err(Refused::OtherHost(host.clone()))
        );
        assert_eq!(redeem_now(made.token.clone(), host.clone()).await, Ok(()));
        assert_eq!(
            redeem_now(made.token.clone(), host.clone()).await,
            Err(Refused::Used)
        );

        let forged = JoinToken::new(&[1; 32], &[7; 32]);
        assert_eq!(
            redeem_now(forged, host.clone()).await,
            Err(Refused::Unknown)
        );

        let short = create(&t.db, &host, Duration::from_secs(1), &[7; 32], t.user)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            redeem_now(short.token, host.clone()).await,
            Err(Refused::Expired)
        );

        let stored: Vec<String> = sqlx::query_scalar("SELECT token_hash FROM join_tokens")
            .fetch_all(&t.db)
            .await
            .unwrap();
        assert!(
            stored
                .iter()
                .all(|hash| !hash.contains(made.token.secret())),
            "only hashes are stored"
        );
    }
}
