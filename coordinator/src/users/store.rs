//! Users in the database.

use vmm_shared::UserId;

use super::{Role, User, username_key};
use crate::db::{self, Db};

/// The columns of [`User`], in a `SELECT`.
macro_rules! user_columns {
    () => {
        "id, username, role, password_hash, created_at"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("username {0:?} is taken")]
    UsernameTaken(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

pub async fn find_by_id(db: &Db, id: UserId) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The user whose name is `username` regardless of case.
pub async fn find_by_username(db: &Db, username: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        user_columns!(),
        " FROM users WHERE username_key = $1"
    ))
    .bind(username_key(username))
    .fetch_optional(db)
    .await
}

/// Inserts a new user; a username taken (in any case) is [`Error::UsernameTaken`].
pub async fn insert(
    db: &Db,
    username: &str,
    password_hash: &str,
    role: Role,
) -> Result<User, Error> {
    let user = User {
        id: UserId::new_random(),
        username: username.to_owned(),
        role,
        password_hash: password_hash.to_owned(),
        created_at: db::now(),
    };
    sqlx::query(
        "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(user.id)
    .bind(&user.username)
    .bind(username_key(&user.username))
    .bind(&user.password_hash)
    .bind(role)
    .bind(&user.created_at)
    .execute(db)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            Error::UsernameTaken(username.to_owned())
        } else {
            err.into()
        }
    })?;
    Ok(user)
}

/// Creates the account, or gives an existing one (the same name in any case) this password
/// and the admin role.
pub async fn upsert_admin(db: &Db, username: &str, password_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (username_key) DO UPDATE SET password_hash = excluded.password_hash, role = excluded.role",
    )
    .bind(UserId::new_random())
    .bind(username)
    .bind(username_key(username))
    .bind(password_hash)
    .bind(Role::Admin)
    .bind(db::now())
    .execute(db)
    .await?;
    Ok(())
}

/// Accounts that cannot log in because an older account has the same name in another case
/// (see migration 0006): their names, for the operator.
pub async fn shadowed_by_case(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT username FROM users WHERE username_key LIKE '%#%' ORDER BY username")
        .fetch_all(db)
        .await
}
