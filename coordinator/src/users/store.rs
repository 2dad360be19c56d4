//! Users in the database.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use vmm_shared::UserId;

use super::{Role, User, username_key};
use crate::db::{self, Db};

fn from_row(row: &SqliteRow) -> Result<User, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let role: String = row.try_get("role")?;
    Ok(User {
        id: id.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        username: row.try_get("username")?,
        role: Role::parse(&role)
            .ok_or_else(|| sqlx::Error::Decode(format!("bad role {role:?}").into()))?,
        password_hash: row.try_get("password_hash")?,
        created_at: row.try_get("created_at")?,
    })
}

pub async fn find_by_id(db: &Db, id: UserId) -> Result<Option<User>, sqlx::Error> {
    sqlx::query("SELECT * FROM users WHERE id = ?")
        .bind(id.to_string())
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// The user whose name is `username` regardless of case.
pub async fn find_by_username(db: &Db, username: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query("SELECT * FROM users WHERE username_key = ?")
        .bind(username_key(username))
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Inserts a new user; a username taken (in any case) fails with a unique violation.
pub async fn insert(
    db: &Db,
    username: &str,
    password_hash: &str,
    role: Role,
) -> Result<User, sqlx::Error> {
    let user = User {
        id: UserId::new_random(),
        username: username.to_owned(),
        role,
        password_hash: password_hash.to_owned(),
        created_at: db::now(),
    };
    sqlx::query(
        "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(&user.username)
    .bind(username_key(&user.username))
    .bind(&user.password_hash)
    .bind(role.as_str())
    .bind(&user.created_at)
    .execute(db)
    .await?;
    Ok(user)
}

/// Creates the account, or gives an existing one (the same name in any case) this password
/// and the admin role.
pub async fn upsert_admin(db: &Db, username: &str, password_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, username, username_key, password_hash, role, created_at)
         VALUES (?, ?, ?, ?, 'admin', ?)
         ON CONFLICT (username_key) DO UPDATE SET password_hash = excluded.password_hash, role = 'admin'",
    )
    .bind(UserId::new_random().to_string())
    .bind(username)
    .bind(username_key(username))
    .bind(password_hash)
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
