//! Typed identifiers. A `VmId` can never be passed where a `UserId` is expected, and every
//! ID prints and parses as the same lowercase hyphenated UUID everywhere (database, JSON,
//! libvirt metadata, logs).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random ID.
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::ids::openapi::uuid_schema()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A VM, chosen by the coordinator. Also the libvirt domain's UUID on its host.
    VmId
);
uuid_id!(
    /// A user account.
    UserId
);
uuid_id!(
    /// A VM snapshot, chosen by the coordinator. Also the snapshot's name in libvirt.
    SnapshotId
);
uuid_id!(
    /// One state-changing operation, from the API request to the agent's answer.
    OperationId
);
uuid_id!(
    /// An image in the coordinator's catalogue. Also names the host's cached copy of it.
    ImageId
);
uuid_id!(
    /// A user's stored SSH public key.
    SshKeyId
);
uuid_id!(
    /// A user's API token (the record, never the secret itself).
    ApiTokenId
);

/// The schemas of the IDs in the OpenAPI document: a UUID string, or a host name.
#[cfg(feature = "openapi")]
mod openapi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};

    pub fn uuid_schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("uuid".into())))
            .into()
    }

    impl utoipa::PartialSchema for super::HostId {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(253))
                .pattern(Some("^[A-Za-z0-9._-]+$"))
                .into()
        }
    }

    impl utoipa::ToSchema for super::HostId {}
}

/// A hypervisor host, named by its agent (by default the machine's hostname).
///
/// Host IDs are case-insensitive, like the host names they usually are: every spelling is
/// normalised to lower case when parsed, so `KVM-1` and `kvm-1` are one host everywhere (the
/// registry of connected agents, the database, certificates, logs). There is no other way
/// to make one than parsing, deserialising included.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

/// Why a string is not a valid host ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a host ID is 1-253 characters of letters, digits, '-', '_' and '.'")]
pub struct InvalidHostId;

impl HostId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostId {
    type Err = InvalidHostId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= 253
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if valid {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(InvalidHostId)
        }
    }
}

impl TryFrom<String> for HostId {
    type Error = InvalidHostId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<HostId> for String {
    fn from(host: HostId) -> Self {
        host.0
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_strings() {
        let id = VmId::new_random();
        assert_eq!(id.to_string().parse::<VmId>().unwrap(), id);
        assert!("not-a-uuid".parse::<VmId>().is_err());
    }

    #[test]
    fn host_ids_refuse_markup_and_empty_names() {
        assert!("kvm-01.rack4".parse::<HostId>().is_ok());
        assert!("".parse::<HostId>().is_err());
        assert!("a<b>".parse::<HostId>().is_err());
        assert!("a b".parse::<HostId>().is_err());
    }

    #[test]
    fn host_ids_ignore_case_also_when_deserialised() {
        let upper: HostId = "KVM-01.Rack4".parse().unwrap();
        assert_eq!(upper, "kvm-01.rack4".parse().unwrap());
        assert_eq!(upper.as_str(), "kvm-01.rack4");
        let from_json: HostId = serde_json::from_str("\"Host-A\"").unwrap();
        assert_eq!(from_json.as_str(), "host-a");
        assert!(serde_json::from_str::<HostId>("\"a<b>\"").is_err());
    }
}
