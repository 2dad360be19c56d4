//! Authentication: bcrypt password hashes, signed login tokens (JWT, HS256), the signing
//! secret, and the `CurrentUser` extractor every protected route takes (which also accepts
//! the API tokens of `crate::api_tokens`).
//!
//! Never logged or returned: passwords, password hashes, the signing secret.

mod bounded_map;
mod current_user;
mod password;
mod secret;
mod tokens;

pub use bounded_map::BoundedMap;
pub use current_user::{AdminUser, ApiTokenLookup, CurrentUser};
pub use password::PasswordHasher;
pub use secret::load_or_create_jwt_secret;
pub use tokens::{IssuedToken, TokenIssuer};
