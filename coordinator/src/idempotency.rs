//! `Idempotency-Key`: a client that retries a create (after a timeout or a dropped
//! connection) sends the same key, and gets the first request's answer instead of a second
//! VM or snapshot.
//!
//! The key is claimed inside the very transaction that records the new resource, so of
//! any number of concurrent requests with one key exactly one creates; the others wait for
//! its answer and return it. A request that fails before recording anything (bad input,
//! over quota, no host) leaves no key behind, so its retry is carried out afresh. Reusing a
//! key for a different request is refused with 422. Keys are kept for 24 hours.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::Digest as _;
use sqlx::AnyConnection;
use vmm_shared::UserId;

use crate::db::{self, Db};
use crate::error::ApiError;

pub const HEADER: &str = "idempotency-key";
const MAX_KEY_LEN: usize = 255;
/// How long keys are remembered.
pub const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// A request's idempotency key and what the request was, for one user.
#[derive(Clone, Debug)]
pub struct IdempotentRequest {
    pub user: UserId,
    pub key: String,
    /// Method, path and the SHA-256 of the body, so a reused key for something else is
    /// caught without keeping the body (which may carry a VM's user data) for a day.
    pub fingerprint: String,
}

impl IdempotentRequest {
    /// The key from the request headers, if the client sent one.
    pub fn from_headers(
        headers: &HeaderMap,
        user: UserId,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .filter(|key| {
                !key.is_empty()
                    && key.len() <= MAX_KEY_LEN
                    && key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "the Idempotency-Key header must be 1-{MAX_KEY_LEN} visible ASCII characters"
                ))
            })?;
        Ok(Some(Self {
            user,
            key: key.to_owned(),
            fingerprint: format!(
                "{method} {path} sha256:{}",
                crate::images::files::hex(&sha2::Sha256::digest(body.to_string()))
            ),
        }))
    }
}

/// Whether this request is the first with its key.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    First,
    Repeat,
}

/// Claims the key in the caller's transaction (the one that records the resource).
pub async fn claim(
    conn: &mut AnyConnection,
    request: &IdempotentRequest,
) -> Result<Claim, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO idempotency_keys (user_id, key, request_digest, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, key) DO NOTHING",
    )
    .bind(request.user)
    .bind(&request.key)
    .bind(&request.fingerprint)
    .bind(db::now())
    .execute(&mut *conn)
    .await?;
    Ok(if done.rows_affected() == 1 {
        Claim::First
    } else {
        Claim::Repeat
    })
}

/// Claims the key, when there is one; true when an earlier request holds it.
pub async fn is_repeat(
    conn: &mut AnyConnection,
    request: Option<&IdempotentRequest>,
) -> Result<bool, sqlx::Error> {
    match request {
        Some(request) => Ok(claim(conn, request).await? == Claim::Repeat),
        None => Ok(false),
    }
}

/// Stores the first request's answer for its repeats.
pub async fn record_response(
    db: &Db,
    request: &IdempotentRequest,
    status: StatusCode,
    body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idempotency_keys SET response_status = $1, response_body = $2 WHERE user_id = $3 AND key = $4")
        .bind(i64::from(status.as_u16()))
        .bind(body.to_string())
        .bind(request.user)
        .bind(&request.key)
        .execute(db)
        .await?;
    Ok(())
}

/// Stores a first request's outcome, when it carried a key: the success's status and JSON,
/// or the error's status and body. A failure that left no record behind (the host refused,
/// or never got the command) forgets the key instead, so a retry is carried out afresh, as
/// for a request that failed before recording anything.
pub async fn remember(
    db: &Db,
    request: Option<&IdempotentRequest>,
    outcome: Result<(StatusCode, &Option<Value>), &ApiError>,
    record_kept: bool,
) -> Result<(), sqlx::Error> {
    let Some(request) = request else {
        return Ok(());
    };
    let (status, body) = match outcome {
        Ok((status, body)) => (status, body.clone().unwrap_or(Value::Null)),
        Err(_) if !record_kept => {
            sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2")
                .bind(request.user)
                .bind(&request.key)
                .execute(db)
                .await?;
            return Ok(());
        }
        Err(err) => (err.status(), err.body_value()),
    };
    record_response(db, request, status, &body).await
}

/// Gives every key still waiting for its first request's answer this one: used at start,
/// for requests a restart cut off, which will never answer.
pub async fn answer_all_unanswered(
    conn: &mut AnyConnection,
    status: StatusCode,
    body: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $1, response_body = $2 WHERE response_status IS NULL",
    )
    .bind(i64::from(status.as_u16()))
    .bind(body.to_string())
    .execute(conn)
    .await?;
    Ok(())
}

/// Answers a create that repeats an earlier one's key with that one's answer, waiting for
/// it (up to `patience`) while the first is still being carried out.
pub async fn answer_repeat(
    db: &Db,
    request: Option<&IdempotentRequest>,
    patience: Duration,
) -> Result<Response, ApiError> {
    let request = request.ok_or_else(|| {
        ApiError::internal(anyhow::anyhow!("a repeat without an Idempotency-Key"))
    })?;
    tracing::info!(key = %request.key, "repeated create answered from its Idempotency-Key");
    replay(db, request, patience).await
}

/// Answers a repeat with the first request's answer, waiting (up to `patience`) for that
/// answer when the first request is still being carried out.
pub async fn replay(
    db: &Db,
    request: &IdempotentRequest,
    patience: Duration,
) -> Result<Response, ApiError> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let (digest, status, body): (String, Option<i64>, Option<String>) = sqlx::query_as(
            "SELECT request_digest, response_status, response_body FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(request.user)
        .bind(&request.key)
        .fetch_optional(db)
        .await?
        .ok_or_else(|| ApiError::Conflict("the Idempotency-Key expired meanwhile; send the request again".into()))?;
        if digest != request.fingerprint {
            return Err(ApiError::Unprocessable(
                "this Idempotency-Key was already used for a different request; use a new key"
                    .into(),
            ));
        }
        if let (Some(status), Some(body)) = (status, body) {
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body: Value = serde_json::from_str(&body).map_err(ApiError::internal)?;
            return Ok((status, Json(body)).into_response());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still being carried out; retry later"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Forgets keys older than [`RETENTION`].
pub async fn forget_expired(db: &Db) -> Result<u64, sqlx::Error> {
    let cutoff = chrono::Utc::now() - chrono::Duration::from_std(RETENTION).unwrap_or_default();
    let cutoff = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let done = sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1")
        .bind(cutoff)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    fn request(t: &TestDb, key: &str) -> IdempotentRequest {
        IdempotentRequest {
            user: t.user,
            key: key.into(),
            fingerprint: "POST /api/vms {}".into(),
        }
    }

    #[tokio::test]
    async fn a_failure_that_kept_nothing_frees_the_key_and_one_that_kept_a_record_is_replayed() {
        let t = TestDb::new().await;
        let failed = ApiError::Unavailable("host refused".into());

        let fresh = request(&t, "nothing-kept");
        assert!(
            !is_repeat(&mut t.db.acquire().await.unwrap(), Some(&fresh))
                .await
                .unwrap()
        );
        remember(&t.db, Some(&fresh), Err(&failed), false)
            .await
            .unwrap();
        assert!(
            !is_repeat(&mut t.db.acquire().await.unwrap(), Some(&fresh))
                .await
                .unwrap(),
            "the retry is carried out afresh"
        );

        let kept = request(&t, "record-kept");
        assert!(
            !is_repeat(&mut t.db.acquire().await.unwrap(), Some(&kept))
                .await
                .unwrap()
        );
        remember(&t.db, Some(&kept), Err(&failed), true)
            .await
            .unwrap();
        let replayed = replay(&t.db, &kept, Duration::from_secs(1)).await.unwrap();
        assert_eq!(replayed.status(), StatusCode::SERVICE_UNAVAILABLE);

        let other = IdempotentRequest {
            fingerprint: "POST /api/vms {\"x\":1}".into(),
            ..kept
        };
        assert!(matches!(
            replay(&t.db, &other, Duration::from_secs(1)).await,
            Err(ApiError::Unprocessable(_))
        ));
    }
}
