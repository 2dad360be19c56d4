//! Accounts: `POST /api/auth/register`, `POST /api/auth/login`, and user administration
//! under `/api/admin/users`.

use serde::{Deserialize, Serialize};

use super::api_enum;
use super::quotas::QuotaUsage;
use crate::UserId;

api_enum! {
    /// What a user may do: an admin manages images, hosts, users and quotas, and sees
    /// every user's VMs.
    pub enum Role {
        Admin => "admin",
        User => "user",
    }
}

/// `POST /api/auth/register` and `POST /api/auth/login`.
#[derive(Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// 3-64 letters, digits, `_`, `.` or `-`; unique regardless of case.
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 3, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")
    )]
    pub username: String,
    /// 8 characters to 72 bytes.
    #[cfg_attr(feature = "openapi", schema(min_length = 8, max_length = 72))]
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The account a registration created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisteredUser {
    pub id: UserId,
    pub username: String,
}

/// A login's answer: the bearer token for `Authorization: Bearer <token>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginResponse {
    pub token: String,
    /// RFC 3339.
    pub expires_at: String,
    pub user: UserView,
}

/// A user, as login and the admin routes show one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserView {
    pub id: UserId,
    pub username: String,
    pub role: Role,
}

/// `POST /api/admin/users`: an account made by an administrator.
#[derive(Clone, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    /// Default: `user`.
    #[serde(default = "user_role")]
    pub role: Role,
}

fn user_role() -> Role {
    Role::User
}

impl std::fmt::Debug for NewUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUser")
            .field("username", &self.username)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `PUT /api/admin/users/{id}/role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    pub role: Role,
}

/// A user with what their resources take, in `GET /api/admin/users`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminUserView {
    pub id: UserId,
    pub username: String,
    pub role: Role,
    pub created_at: String,
    /// What the user's resources take now.
    pub usage: QuotaUsage,
}

/// `GET /api/admin/users`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListUsersQuery {
    /// Items per page, 1-1000 (default: 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only users of this role: `admin` or `user`.
    #[cfg_attr(feature = "openapi", param(value_type = Option<Role>))]
    pub role: Option<String>,
}
