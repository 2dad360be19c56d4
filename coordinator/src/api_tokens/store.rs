//! API tokens in the database: only the SHA-256 of each token is stored (see the module doc
//! of `api_tokens`). The per-user limit is checked in the write transaction that inserts, so
//! concurrent creates cannot pass it together.

use chrono::{DateTime, Utc};
use vmm_shared::{ApiTokenId, UserId};

use super::{MAX_TOKENS_PER_USER, SHOWN_PREFIX_LEN, Scope, TokenGrant, digest, generate};
use crate::db::{self, Db};
use crate::http::page::{Page, push_keyset};
use crate::users::Role;

/// How stale `last_used_at` may get before a request writes it again: one write a minute
/// at most per token, not one per request.
const LAST_USED_RESOLUTION: chrono::Duration = chrono::Duration::seconds(60);

/// A stored token (never the token itself), with its owner's name.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ApiToken {
    pub id: ApiTokenId,
    pub owner_id: UserId,
    pub owner: String,
    pub name: String,
    pub scope: Scope,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// The columns of [`ApiToken`], from `api_tokens t JOIN users u`.
macro_rules! token_columns {
    () => {
        "t.id, t.owner_id, u.username AS owner, t.name, t.scope, t.prefix, t.created_at, \
         t.expires_at, t.last_used_at FROM api_tokens t JOIN users u ON u.id = t.owner_id"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("you already have a token named {0:?}")]
    NameTaken(String),
    #[error("you have {MAX_TOKENS_PER_USER} tokens, the most one user may hold; revoke one first")]
    TooMany,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Creates a token for `owner` and returns its record and the token itself, which exists
/// nowhere else from then on.
pub async fn insert(
    db: &Db,
    owner: UserId,
    name: &str,
    scope: Scope,
    expires_at: Option<DateTime<Utc>>,
) -> Result<(ApiToken, String), Error> {
    let token = generate();
    let mut tx = db::begin_write(db).await?;
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE owner_id = $1")
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
    if held >= MAX_TOKENS_PER_USER {
        return Err(Error::TooMany);
    }
    let id = ApiTokenId::new_random();
    sqlx::query(
        "INSERT INTO api_tokens (id, owner_id, name, scope, token_sha256, prefix, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(id)
    .bind(owner)
    .bind(name)
    .bind(scope)
    .bind(digest(&token))
    .bind(&token[..SHOWN_PREFIX_LEN])
    .bind(db::now())
    .bind(expires_at.map(stored_time))
    .execute(&mut *tx)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            Error::NameTaken(name.to_owned())
        } else {
            err.into()
        }
    })?;
    let record = find_in(&mut *tx, id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    tx.commit().await?;
    Ok((record, token))
}

/// What a presented token turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A live token, and its owner as they are now.
    Valid {
        grant: TokenGrant,
        username: String,
        role: Role,
    },
    /// A token that expired at this time.
    Expired(String),
    /// No such token: never issued, or revoked.
    Unknown,
}

#[derive(sqlx::FromRow)]
struct LookupRow {
    id: ApiTokenId,
    owner_id: UserId,
    scope: Scope,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    username: String,
    role: Role,
}

/// Looks a presented token up by its hash (revocation and expiry take effect at the next
/// request), and records its use at most once a minute.
pub async fn authenticate(db: &Db, token: &str) -> Result<Lookup, sqlx::Error> {
    let row: Option<LookupRow> = sqlx::query_as(
        "SELECT t.id, t.owner_id, t.scope, t.expires_at, t.last_used_at, u.username, u.role
         FROM api_tokens t JOIN users u ON u.id = t.owner_id WHERE t.token_sha256 = $1",
    )
    .bind(digest(token))
    .fetch_optional(db)
    .await?;
    let Some(row) = row else {
        return Ok(Lookup::Unknown);
    };
    let now = Utc::now();
    if let Some(expires_at) = &row.expires_at
        && expires_at.as_str() <= stored_time(now).as_str()
    {
        return Ok(Lookup::Expired(expires_at.clone()));
    }
    let stale = stored_time(now - LAST_USED_RESOLUTION);
    if row
        .last_used_at
        .as_deref()
        .is_none_or(|used| used < stale.as_str())
    {
        sqlx::query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(stored_time(now))
            .bind(row.id)
            .execute(db)
            .await?;
    }
    Ok(Lookup::Valid {
        grant: TokenGrant {
            id: row.id,
            owner: row.owner_id,
            scope: row.scope,
        },
        username: row.username,
        role: row.role,
    })
}

/// Whose tokens a list shows.
#[derive(Clone, Copy, Debug)]
pub enum Owners {
    One(UserId),
    Everyone,
}

/// Tokens of `owners`, oldest first, a page at a time.
pub async fn list(db: &Db, owners: Owners, page: &Page) -> Result<Vec<ApiToken>, sqlx::Error> {
    let mut sql = crate::db::SqlBuilder::new(concat!("SELECT ", token_columns!(), " WHERE 1 = 1"));
    if let Owners::One(owner) = owners {
        sql.push(" AND t.owner_id = ").push_bind(owner);
    }
    push_keyset(&mut sql, page, "t.", true);
    sql.build_query_as()?.fetch_all(db).await
}

/// The token with this ID, whoever owns it.
pub async fn find(db: &Db, id: ApiTokenId) -> Result<Option<ApiToken>, sqlx::Error> {
    find_in(db, id).await
}

async fn find_in<'e>(
    executor: impl sqlx::AnyExecutor<'e>,
    id: ApiTokenId,
) -> Result<Option<ApiToken>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", token_columns!(), " WHERE t.id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// Deletes (revokes) the token; false when it no longer exists.
pub async fn delete(db: &Db, id: ApiTokenId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// A time as the database stores it (the format of `db::now`, so that stored times compare
/// as text).
pub fn stored_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    #[tokio::test]
    async fn a_token_is_found_by_itself_only_and_stops_when_deleted() {
        let t = TestDb::new().await;
        let (record, token) = insert(&t.db, t.user, "ci", Scope::Read, None)
            .await
            .unwrap();
        assert_eq!(record.owner, "tester");
        assert!(token.starts_with(&record.prefix));
        match authenticate(&t.db, &token).await.unwrap() {
            Lookup::Valid { grant, .. } => {
                assert_eq!(grant.owner, t.user);
                assert_eq!(grant.scope, Scope::Read);
            }
            other => panic!("expected a valid token, got {other:?}"),
        }
        let used = find(&t.db, record.id).await.unwrap().unwrap();
        assert!(used.last_used_at.is_some());
        // One character off is another token.
        let mut wrong = token.clone();
        wrong.pop();
        wrong.push(if token.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(authenticate(&t.db, &wrong).await.unwrap(), Lookup::Unknown);
        // Stored: the hash, never the token.
        let stored: String =
            sqlx::query_scalar("SELECT token_sha256 FROM api_tokens WHERE id = $1")
                .bind(record.id)
                .fetch_one(&t.db)
                .await
                .unwrap();
        assert_eq!(stored, digest(&token));

        let err = insert(&t.db, t.user, "ci", Scope::Write, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NameTaken(_)), "{err:?}");

        assert!(delete(&t.db, record.id).await.unwrap());
        assert_eq!(authenticate(&t.db, &token).await.unwrap(), Lookup::Unknown);
        assert!(!delete(&t.db, record.id).await.unwrap());
    }

    #[tokio::test]
    async fn an_expired_token_is_refused() {
        let t = TestDb::new().await;
        let past = Utc::now() - chrono::Duration::seconds(1);
        let (_, token) = insert(&t.db, t.user, "old", Scope::Write, Some(past))
            .await
            .unwrap();
        assert!(matches!(
            authenticate(&t.db, &token).await.unwrap(),
            Lookup::Expired(_)
        ));
        let future = Utc::now() + chrono::Duration::seconds(60);
        let (_, token) = insert(&t.db, t.user, "new", Scope::Write, Some(future))
            .await
            .unwrap();
        assert!(matches!(
            authenticate(&t.db, &token).await.unwrap(),
            Lookup::Valid { .. }
        ));
    }

    #[tokio::test]
    async fn a_user_holds_at_most_the_limit() {
        let t = TestDb::new().await;
        for i in 0..MAX_TOKENS_PER_USER {
            insert(&t.db, t.user, &format!("t{i}"), Scope::Read, None)
                .await
                .unwrap();
        }
        let err = insert(&t.db, t.user, "one-more", Scope::Read, None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooMany), "{err:?}");
    }
}
