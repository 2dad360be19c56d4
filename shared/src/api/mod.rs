//! The REST API's request and response bodies, by domain: what the coordinator answers and
//! what a client (the `vmmctl` CLI) sends and reads, defined once so the two cannot drift.
//!
//! Everything here is plain data with serde derives, the same JSON on both sides. With the
//! `openapi` feature each type also derives `utoipa::ToSchema` (query parameter sets:
//! `utoipa::IntoParams`) for the coordinator's OpenAPI document.
//!
//! What it must never do: carry a secret a response must not show (password hashes, image
//! source URLs), or hold logic beyond naming and parsing values: rules live in the
//! coordinator.

pub mod console;
pub mod error;
pub mod health;
pub mod hosts;
pub mod images;
pub mod keys;
pub mod operations;
pub mod page;
pub mod quotas;
pub mod snapshots;
pub mod tokens;
pub mod users;
pub mod vms;

pub use error::ErrorBody;

/// A string that names none of an enum's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a known value")]
pub struct UnknownValue(pub String);

/// An enum of the API whose JSON form is a fixed string per variant, the variant's name in
/// snake case (as `ToSchema` reads it from `rename_all`; a test checks that each listed
/// string is that name): the type with serde derives, `ALL`, `as_str`, `Display` and `FromStr`
/// from the same list, `ToSchema` with the `openapi` feature and the sqlx column traits
/// (stored as that string) with the `sqlx` feature.
macro_rules! api_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            pub const ALL: [$name; [$($text),+].len()] = [$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::api::UnknownValue;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .into_iter()
                    .find(|value| value.as_str() == s)
                    .ok_or_else(|| $crate::api::UnknownValue(s.to_owned()))
            }
        }

        #[cfg(feature = "sqlx")]
        $crate::text_column!($name);
    };
}
pub(crate) use api_enum;

#[cfg(test)]
mod tests {
    use super::*;

    /// JSON, `as_str`, `Display` and `FromStr` agree for every value.
    fn same_string_everywhere<T>(all: &[T])
    where
        T: serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Display
            + std::str::FromStr
            + Copy
            + PartialEq
            + std::fmt::Debug,
        T::Err: std::fmt::Debug,
    {
        for &value in all {
            let json = serde_json::to_string(&value).unwrap();
            assert_eq!(json, format!("\"{value}\""));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
            assert_eq!(value.to_string().parse::<T>().unwrap(), value);
        }
    }

    #[test]
    fn enums_read_and_write_the_same_string_in_json_and_text() {
        same_string_everywhere(&vms::VmAction::ALL);
        same_string_everywhere(&users::Role::ALL);
        same_string_everywhere(&snapshots::SnapshotStatus::ALL);
        same_string_everywhere(&snapshots::CapturedState::ALL);
        same_string_everywhere(&images::ImageStatus::ALL);
        same_string_everywhere(&images::DiskFormat::ALL);
        same_string_everywhere(&hosts::HostStatus::ALL);
        same_string_everywhere(&operations::OperationStatus::ALL);
        same_string_everywhere(&console::ConsoleKind::ALL);
        same_string_everywhere(&tokens::TokenScope::ALL);
        assert_eq!(vms::VmAction::ForceStop.as_str(), "force_stop");
        assert!("fly".parse::<vms::VmAction>().is_err());
        let kind: console::ConsoleKind = serde_json::from_str("\"vnc\"").unwrap();
        assert_eq!(kind, console::ConsoleKind::Vnc);
    }

    #[test]
    fn the_error_body_shows_quota_fields_only_for_a_quota_refusal() {
        let plain = ErrorBody::new(404, "no VM with ID x");
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"code": 404, "message": "no VM with ID x"})
        );
    }
}
