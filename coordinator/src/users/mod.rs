//! User accounts: registration, login, roles, and the admin account ensured at start.
//! Usernames are unique regardless of case and shown as registered.

pub mod cache;
pub mod routes;
pub mod store;

use vmm_shared::UserId;
pub use vmm_shared::api::users::Role;

/// A user as stored. `password_hash` never leaves the coordinator.
#[derive(Clone, sqlx::FromRow)]
pub struct User {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub created_at: String,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

pub const USERNAME_LEN: (usize, usize) = (3, 64);

/// What makes two usernames the same: case does not count (usernames are ASCII).
pub fn username_key(username: &str) -> String {
    username.to_ascii_lowercase()
}
/// bcrypt reads at most 72 bytes; longer passwords are refused rather than cut silently.
pub const PASSWORD_BYTES: (usize, usize) = (8, 72);

pub fn validate_username(username: &str) -> Result<(), String> {
    let (min, max) = USERNAME_LEN;
    let len = username.chars().count();
    if !(min..=max).contains(&len) {
        return Err(format!(
            "username must be {min}-{max} characters long (got {len})"
        ));
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("username may contain only letters, digits, '_', '.' and '-'".into());
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), String> {
    let (min, max) = PASSWORD_BYTES;
    if password.chars().count() < min {
        return Err(format!("password must be at least {min} characters long"));
    }
    if password.len() > max {
        return Err(format!("password must be at most {max} bytes long"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_and_password_rules() {
        assert!(validate_username("alice_01").is_ok());
        assert!(validate_username("al").is_err());
        assert!(validate_username("al ice").is_err());
        assert!(validate_username(&"a".repeat(65)).is_err());
        assert!(validate_password("12345678").is_ok());
        assert!(validate_password("1234567").is_err());
        assert!(validate_password(&"x".repeat(73)).is_err());
    }
}
