//! SSH keys in the database. The per-user limit is checked in the write transaction that
//! inserts, so concurrent adds cannot pass it together.

use sqlx::AnyExecutor;
use vmm_shared::{SshKeyId, UserId};

use super::{MAX_KEYS_PER_USER, SshKey, ValidKey};
use crate::db::{self, Db};
use crate::http::page::{Cursor, Page, Paged, push_keyset};

/// The columns of [`SshKey`], in a `SELECT`.
macro_rules! key_columns {
    () => {
        "id, owner_id, name, key_type, fingerprint, public_key, created_at"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("you already have a key named {0:?}")]
    NameTaken(String),
    #[error("you already have this key, named {0:?}")]
    AlreadyStored(String),
    #[error("you have {MAX_KEYS_PER_USER} keys, the most one user may store; delete one first")]
    TooMany,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Stores `key` as `owner`'s, named `name`.
pub async fn insert(db: &Db, owner: UserId, name: &str, key: &ValidKey) -> Result<SshKey, Error> {
    let mut tx = db::begin_write(db).await?;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM ssh_keys WHERE owner_id = $1")
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
    if u64::try_from(stored).unwrap_or_default() >= MAX_KEYS_PER_USER {
        return Err(Error::TooMany);
    }
    let same: Option<String> =
        sqlx::query_scalar("SELECT name FROM ssh_keys WHERE owner_id = $1 AND fingerprint = $2")
            .bind(owner)
            .bind(&key.fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some(existing) = same {
        return Err(Error::AlreadyStored(existing));
    }
    let record = SshKey {
        id: SshKeyId::new_random(),
        owner_id: owner,
        name: name.to_owned(),
        key_type: key.key_type.clone(),
        fingerprint: key.fingerprint.clone(),
        public_key: key.public_key.clone(),
        created_at: db::now(),
    };
    sqlx::query(
        "INSERT INTO ssh_keys (id, owner_id, name, key_type, fingerprint, public_key, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(record.id)
    .bind(record.owner_id)
    .bind(&record.name)
    .bind(&record.key_type)
    .bind(&record.fingerprint)
    .bind(&record.public_key)
    .bind(&record.created_at)
    .execute(&mut *tx)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            Error::NameTaken(name.to_owned())
        } else {
            err.into()
        }
    })?;
    tx.commit().await?;
    Ok(record)
}

/// `owner`'s keys, oldest first.
pub async fn list<'e>(
    executor: impl AnyExecutor<'e>,
    owner: UserId,
) -> Result<Vec<SshKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM ssh_keys WHERE owner_id = $1 ORDER BY created_at, id"
    ))
    .bind(owner)
    .fetch_all(executor)
    .await
}

/// One page of `owner`'s keys, oldest first.
pub async fn list_page(db: &Db, owner: UserId, page: &Page) -> Result<Paged<SshKey>, sqlx::Error> {
    let mut query = crate::db::SqlBuilder::new(concat!(
        "SELECT ",
        key_columns!(),
        " FROM ssh_keys WHERE owner_id = "
    ));
    query.push_bind(owner);
    push_keyset(&mut query, page, "", true);
    let keys: Vec<SshKey> = query.build_query_as()?.fetch_all(db).await?;
    Ok(Paged::from_rows(keys, page, |key| Cursor {
        created_at: key.created_at.clone(),
        id: key.id.to_string(),
    }))
}

/// `owner`'s key with this ID; `None` also when it is someone else's.
pub async fn find_owned<'e>(
    executor: impl AnyExecutor<'e>,
    owner: UserId,
    id: SshKeyId,
) -> Result<Option<SshKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM ssh_keys WHERE id = $1 AND owner_id = $2"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(executor)
    .await
}

/// Deletes `owner`'s key; false when they have none with this ID.
pub async fn delete_owned(db: &Db, owner: UserId, id: SshKeyId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM ssh_keys WHERE id = $1 AND owner_id = $2")
        .bind(id)
        .bind(owner)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{parse_public_key, test_keys};
    use crate::test_support::TestDb;

    #[tokio::test]
    async fn names_and_keys_are_unique_per_user_and_others_keys_are_invisible() {
        let t = TestDb::new().await;
        let key = parse_public_key(test_keys::ED25519).unwrap();
        let stored = insert(&t.db, t.user, "laptop", &key).await.unwrap();
        let err = insert(
            &t.db,
            t.user,
            "laptop",
            &parse_public_key(test_keys::RSA_2048).unwrap(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, Error::NameTaken(_)), "{err:?}");
        let err = insert(&t.db, t.user, "again", &key).await.unwrap_err();
        assert!(
            matches!(err, Error::AlreadyStored(ref name) if name == "laptop"),
            "{err:?}"
        );

        let other = crate::users::store::insert(&t.db, "other", "x", crate::users::Role::User)
            .await
            .unwrap()
            .id;
        // Another user may store the same key.
        insert(&t.db, other, "laptop", &key).await.unwrap();
        assert!(find_owned(&t.db, other, stored.id).await.unwrap().is_none());
        assert!(!delete_owned(&t.db, other, stored.id).await.unwrap());
        assert!(delete_owned(&t.db, t.user, stored.id).await.unwrap());
        assert!(list(&t.db, t.user).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_user_stores_at_most_the_limit() {
        let t = TestDb::new().await;
        for i in 0..MAX_KEYS_PER_USER {
            // Distinct fingerprints without distinct key material: the limit is counted
            // before uniqueness, so rows are inserted directly.
            sqlx::query(
                "INSERT INTO ssh_keys (id, owner_id, name, key_type, fingerprint, public_key, created_at)
                 VALUES ($1, $2, $3, 'ssh-ed25519', $4, 'k', '2026-01-01T00:00:00Z')",
            )
            .bind(SshKeyId::new_random())
            .bind(t.user)
            .bind(format!("key-{i}"))
            .bind(format!("SHA256:{i}"))
            .execute(&t.db)
            .await
            .unwrap();
        }
        let key = parse_public_key(test_keys::ED25519).unwrap();
        let err = insert(&t.db, t.user, "one-more", &key).await.unwrap_err();
        assert!(matches!(err, Error::TooMany), "{err:?}");
    }
}
