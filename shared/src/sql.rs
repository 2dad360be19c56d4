//! Storing the shared types in a database through sqlx (feature `sqlx`): every ID, the VM
//! status and the operation kind are stored as their text form (the one `Display` writes and
//! `FromStr` reads), for any database whose strings sqlx maps to text. A stored value that
//! does not parse back is a decode error naming the value, never a panic.
//!
//! [`text_column!`](crate::text_column) gives the same to any other type with `Display` and
//! `FromStr`, such as the coordinator's own status enums.

/// Implements `sqlx::Type`, `sqlx::Encode` and `sqlx::Decode` for `$type`, stored as the text
/// its `Display` writes and read back with its `FromStr`, for every database whose `str` is a
/// text type (SQLite, PostgreSQL).
#[macro_export]
macro_rules! text_column {
    ($($type:ty),+ $(,)?) => {$(
        impl<DB: $crate::sql::sqlx::Database> $crate::sql::sqlx::Type<DB> for $type
        where
            str: $crate::sql::sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <str as $crate::sql::sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <str as $crate::sql::sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'q, DB: $crate::sql::sqlx::Database> $crate::sql::sqlx::Encode<'q, DB> for $type
        where
            String: $crate::sql::sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as $crate::sql::sqlx::Database>::ArgumentBuffer,
            ) -> Result<$crate::sql::sqlx::encode::IsNull, $crate::sql::sqlx::error::BoxDynError> {
                <String as $crate::sql::sqlx::Encode<'q, DB>>::encode(self.to_string(), buf)
            }
        }

        impl<'r, DB: $crate::sql::sqlx::Database> $crate::sql::sqlx::Decode<'r, DB> for $type
        where
            String: $crate::sql::sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as $crate::sql::sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, $crate::sql::sqlx::error::BoxDynError> {
                let text = <String as $crate::sql::sqlx::Decode<'r, DB>>::decode(value)?;
                text.parse::<$type>().map_err(|err| {
                    format!(
                        "stored {} {text:?} does not parse: {err}",
                        stringify!($type)
                    )
                    .into()
                })
            }
        }
    )+};
}

/// Re-exported for [`text_column!`], so its users need no `sqlx` of their own in scope.
pub use sqlx;

text_column!(
    crate::VmId,
    crate::UserId,
    crate::SnapshotId,
    crate::OperationId,
    crate::ImageId,
    crate::SshKeyId,
    crate::ApiTokenId,
    crate::HostId,
    crate::VmStatus,
    crate::OperationKind,
);

#[cfg(test)]
mod tests {
    use sqlx::{Connection, Row, SqliteConnection};

    use crate::{HostId, OperationKind, VmId, VmStatus};

    #[tokio::test]
    async fn values_round_trip_through_sqlite_text_and_bad_text_is_a_decode_error() {
        let mut conn = SqliteConnection::connect("sqlite::memory:").await.unwrap();
        let id = VmId::new_random();
        let host: HostId = "kvm-1".parse().unwrap();
        let row = sqlx::query("SELECT ? AS id, ? AS host, ? AS status, ? AS kind, typeof(?) AS t")
            .bind(id)
            .bind(&host)
            .bind(VmStatus::Paused)
            .bind(OperationKind::SnapshotCreate)
            .bind(VmStatus::Paused)
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(row.get::<VmId, _>("id"), id);
        assert_eq!(row.get::<HostId, _>("host"), host);
        assert_eq!(row.get::<VmStatus, _>("status"), VmStatus::Paused);
        assert_eq!(
            row.get::<OperationKind, _>("kind"),
            OperationKind::SnapshotCreate
        );
        assert_eq!(row.get::<String, _>("t"), "text");

        let row = sqlx::query("SELECT 'stoped' AS status")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let err = row.try_get::<VmStatus, _>("status").unwrap_err();
        assert!(err.to_string().contains("stoped"), "{err}");
    }
}
