//! Users in the database.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use vmm_shared::UserId;

use super::{Role, User};
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

pub async fn find_by_username(db: &Db, username: &str) -> Result<Option<User>, sqlx::Error> {
    sqlx::query("SELECT * FROM users WHERE username = ?")
        .bind(username)
        .fetch_optional(db)
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// Inserts a new user; a taken username fails with a unique violation.
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
        "INSERT INTO users (id, username, password_hash, role, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(user.id.to_string())
    .bind(&user.username)
    .bind(&user.password_hash)
    .bind(role.as_str())
    .bind(&user.created_at)
    .execute(db)
    .await?;
    Ok(user)
}

/// Creates the account, or gives an existing one this password and the admin role.
pub async fn upsert_admin(db: &Db, username: &str, password_hash: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, created_at) VALUES (?, ?, ?, 'admin', ?)
         ON CONFLICT (username) DO UPDATE SET password_hash = excluded.password_hash, role = 'admin'",
    )
    .bind(UserId::new_random().to_string())
    .bind(username)
    .bind(password_hash)
    .bind(db::now())
    .execute(db)
    .await?;
    Ok(())
}
