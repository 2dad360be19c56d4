//! Images in the database, and which host caches which image (`host_images`: replaced by
//! each registration's `cached_images`, and added to when a host makes a VM from an image).
//!
//! Status changes after a transfer are guarded by the status the transfer started from
//! (`… WHERE status = ?`): an image deleted meanwhile matches nothing, and its file is then
//! removed by the caller. Deleting checks that no VM uses the image in the same write
//! transaction that deletes it; a VM is recorded with its image in a write transaction that
//! checks the image is still there and ready (`vms::store::place_and_record`), so the two
//! never interleave.

use std::collections::HashMap;

use sqlx::AnyExecutor;
use vmm_proto::CachedImage;
use vmm_shared::api::hosts::CachedImage as CachedImageView;
use vmm_shared::{HostId, ImageId};

use super::{Checked, DiskFormat, Image, ImageStatus};
use crate::db::{self, Db};
use crate::http::page::{Cursor, Page, Paged, push_keyset};

/// The columns of [`ImageRow`], in a `SELECT`.
macro_rules! image_columns {
    () => {
        "id, name, os, status, error, source_url, expected_sha256, min_disk_gb, default_user, \
         size_bytes, virtual_size_bytes, format, sha256, created_at"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("an image named {0:?} already exists")]
    NameTaken(String),
    #[error("no image with ID {0}")]
    NotFound(ImageId),
    #[error("image {name:?} is used by {vms} VM(s); delete them first")]
    InUse { name: String, vms: u64 },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An image row as stored: sizes are signed 64-bit SQL integers.
#[derive(sqlx::FromRow)]
struct ImageRow {
    id: ImageId,
    name: String,
    os: Option<String>,
    status: ImageStatus,
    error: Option<String>,
    source_url: Option<String>,
    expected_sha256: Option<String>,
    min_disk_gb: Option<i64>,
    default_user: String,
    size_bytes: Option<i64>,
    virtual_size_bytes: Option<i64>,
    format: Option<DiskFormat>,
    sha256: Option<String>,
    created_at: String,
}

fn unsigned(value: Option<i64>) -> Option<u64> {
    value.and_then(|value| u64::try_from(value).ok())
}

impl From<ImageRow> for Image {
    fn from(row: ImageRow) -> Self {
        Image {
            id: row.id,
            name: row.name,
            os: row.os,
            status: row.status,
            error: row.error,
            source_url: row.source_url,
            expected_sha256: row.expected_sha256,
            min_disk_gb: unsigned(row.min_disk_gb),
            default_user: row.default_user,
            size_bytes: unsigned(row.size_bytes),
            virtual_size_bytes: unsigned(row.virtual_size_bytes),
            format: row.format,
            sha256: row.sha256,
            created_at: row.created_at,
        }
    }
}

/// What an admin asked to create.
#[derive(Clone, Debug)]
pub struct NewImage {
    pub name: String,
    pub os: Option<String>,
    pub source_url: Option<String>,
    pub expected_sha256: Option<String>,
    pub min_disk_gb: Option<u64>,
    pub default_user: String,
}

/// Records a new image: `downloading` when it has a source URL, else `pending`.
pub async fn insert(db: &Db, new: &NewImage) -> Result<Image, Error> {
    let image = Image {
        id: ImageId::new_random(),
        name: new.name.clone(),
        os: new.os.clone(),
        status: if new.source_url.is_some() {
            ImageStatus::Downloading
        } else {
            ImageStatus::Pending
        },
        error: None,
        source_url: new.source_url.clone(),
        expected_sha256: new.expected_sha256.clone(),
        min_disk_gb: new.min_disk_gb,
        default_user: new.default_user.clone(),
        size_bytes: None,
        virtual_size_bytes: None,
        format: None,
        sha256: None,
        created_at: db::now(),
    };
    sqlx::query(
        "INSERT INTO images (id, name, os, status, source_url, expected_sha256, min_disk_gb,
                             default_user, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(image.id)
    .bind(&image.name)
    .bind(&image.os)
    .bind(image.status)
    .bind(&image.source_url)
    .bind(&image.expected_sha256)
    .bind(image.min_disk_gb.map(db::to_i64))
    .bind(&image.default_user)
    .bind(&image.created_at)
    .execute(db)
    .await
    .map_err(|err| {
        if db::is_unique_violation(&err) {
            Error::NameTaken(new.name.clone())
        } else {
            err.into()
        }
    })?;
    Ok(image)
}

pub async fn find<'e>(
    executor: impl AnyExecutor<'e>,
    id: ImageId,
) -> Result<Option<Image>, sqlx::Error> {
    let row: Option<ImageRow> = sqlx::query_as(concat!(
        "SELECT ",
        image_columns!(),
        " FROM images WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Image::from))
}

pub async fn find_by_name<'e>(
    executor: impl AnyExecutor<'e>,
    name: &str,
) -> Result<Option<Image>, sqlx::Error> {
    let row: Option<ImageRow> = sqlx::query_as(concat!(
        "SELECT ",
        image_columns!(),
        " FROM images WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Image::from))
}

/// Every image, by name.
pub async fn list(db: &Db) -> Result<Vec<Image>, sqlx::Error> {
    let rows: Vec<ImageRow> = sqlx::query_as(concat!(
        "SELECT ",
        image_columns!(),
        " FROM images ORDER BY name"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Image::from).collect())
}

/// One page of the catalogue (of `status`, if given), oldest first.
pub async fn list_page(
    db: &Db,
    status: Option<ImageStatus>,
    page: &Page,
) -> Result<Paged<Image>, sqlx::Error> {
    let mut query = crate::db::SqlBuilder::new(concat!(
        "SELECT ",
        image_columns!(),
        " FROM images WHERE 1 = 1"
    ));
    if let Some(status) = status {
        query.push(" AND status = ").push_bind(status);
    }
    push_keyset(&mut query, page, "", true);
    let rows: Vec<ImageRow> = query.build_query_as()?.fetch_all(db).await?;
    let images = rows.into_iter().map(Image::from).collect();
    Ok(Paged::from_rows(images, page, |image: &Image| Cursor {
        created_at: image.created_at.clone(),
        id: image.id.to_string(),
    }))
}

pub async fn with_status(db: &Db, status: ImageStatus) -> Result<Vec<Image>, sqlx::Error> {
    let rows: Vec<ImageRow> = sqlx::query_as(concat!(
        "SELECT ",
        image_columns!(),
        " FROM images WHERE status = $1 ORDER BY created_at, id"
    ))
    .bind(status)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Image::from).collect())
}

/// Records a checked file as the image's, if the image is still in status `from`. Returns
/// false, changing nothing, when it is not (it was deleted meanwhile).
pub async fn mark_ready(
    db: &Db,
    id: ImageId,
    from: ImageStatus,
    checked: &Checked,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE images SET status = $1, error = NULL, size_bytes = $2, virtual_size_bytes = $3,
                           format = $4, sha256 = $5
         WHERE id = $6 AND status = $7",
    )
    .bind(ImageStatus::Ready)
    .bind(db::to_i64(checked.size_bytes))
    .bind(db::to_i64(checked.virtual_size_bytes))
    .bind(checked.format)
    .bind(&checked.sha256)
    .bind(id)
    .bind(from)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Records why the image's transfer failed, if it is still in status `from`.
pub async fn mark_failed(
    db: &Db,
    id: ImageId,
    from: ImageStatus,
    why: &str,
) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("UPDATE images SET status = $1, error = $2 WHERE id = $3 AND status = $4")
            .bind(ImageStatus::Error)
            .bind(why)
            .bind(id)
            .bind(from)
            .execute(db)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// How many VMs were made from the image.
pub async fn vms_using<'e>(
    executor: impl AnyExecutor<'e>,
    id: ImageId,
) -> Result<u64, sqlx::Error> {
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM vms WHERE image_id = $1")
        .bind(id)
        .fetch_one(executor)
        .await?;
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Deletes the image's record (and the record of its cached copies) unless a VM uses it,
/// in one write transaction. Returns the image as it was.
pub async fn delete_unused(db: &Db, id: ImageId) -> Result<Image, Error> {
    let mut tx = db::begin_write(db).await?;
    let image = find(&mut *tx, id).await?.ok_or(Error::NotFound(id))?;
    let vms = vms_using(&mut *tx, id).await?;
    if vms > 0 {
        return Err(Error::InUse {
            name: image.name,
            vms,
        });
    }
    sqlx::query("DELETE FROM images WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(image)
}

/// Images by status, for the metrics.
pub async fn count_by_status(db: &Db) -> Result<Vec<(ImageStatus, i64)>, sqlx::Error> {
    sqlx::query_as("SELECT status, COUNT(*) FROM images GROUP BY status")
        .fetch_all(db)
        .await
}

/// Replaces what the coordinator knows `host` caches by what its agent just registered.
/// A copy is recorded only when it is of a ready image with the same checksum; the IDs of
/// every other copy (images deleted since, unknown or different files) are returned, for the
/// host to evict.
pub async fn record_host_copies(
    db: &Db,
    host: &HostId,
    reported: &[CachedImage],
) -> Result<Vec<String>, sqlx::Error> {
    let mut tx = db::begin_write(db).await?;
    let evict = record_host_copies_in(&mut tx, host, reported).await?;
    tx.commit().await?;
    Ok(evict)
}

/// [`record_host_copies`] inside the caller's write transaction.
pub async fn record_host_copies_in(
    conn: &mut sqlx::AnyConnection,
    host: &HostId,
    reported: &[CachedImage],
) -> Result<Vec<String>, sqlx::Error> {
    let mut evict = Vec::new();
    sqlx::query("DELETE FROM host_images WHERE host_id = $1")
        .bind(host)
        .execute(&mut *conn)
        .await?;
    for copy in reported {
        let known = match copy.image_id.parse::<ImageId>() {
            Ok(id) => find(&mut *conn, id).await?.filter(|image| {
                image.status == ImageStatus::Ready
                    && image.sha256.as_deref() == Some(copy.sha256.as_str())
            }),
            Err(_) => None,
        };
        match known {
            Some(image) => {
                upsert_copy(&mut *conn, host, &image).await?;
            }
            None => evict.push(copy.image_id.chars().take(64).collect()),
        }
    }
    Ok(evict)
}

/// Records that `host` holds a verified copy of `image`: it has just made a VM's disk on
/// it, which it does only on a copy whose checksum matched. Nothing for an image that is
/// gone meanwhile.
pub async fn record_copy(db: &Db, host: &HostId, image: ImageId) -> Result<(), sqlx::Error> {
    match find(db, image).await? {
        Some(image) if image.status == ImageStatus::Ready => upsert_copy(db, host, &image).await,
        _ => Ok(()),
    }
}

async fn upsert_copy<'e>(
    executor: impl AnyExecutor<'e>,
    host: &HostId,
    image: &Image,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO host_images (host_id, image_id, sha256, size_bytes, updated_at)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (host_id, image_id) DO UPDATE SET
            sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
            updated_at = excluded.updated_at",
    )
    .bind(host)
    .bind(image.id)
    .bind(image.sha256.as_deref().unwrap_or_default())
    .bind(db::to_i64(image.size_bytes.unwrap_or_default()))
    .bind(db::now())
    .execute(executor)
    .await?;
    Ok(())
}

/// One cached copy, as read.
#[derive(Clone, Debug, sqlx::FromRow)]
struct CachedCopy {
    image_id: ImageId,
    name: String,
    #[sqlx(try_from = "i64")]
    size_bytes: u64,
    host_id: HostId,
}

/// Every host's cached copies, by host, as `GET /api/hosts` shows them.
pub async fn copies_by_host(db: &Db) -> Result<HashMap<HostId, Vec<CachedImageView>>, sqlx::Error> {
    let copies: Vec<CachedCopy> = sqlx::query_as(
        "SELECT hi.host_id, hi.image_id, i.name, hi.size_bytes
         FROM host_images hi JOIN images i ON i.id = hi.image_id
         ORDER BY hi.host_id, i.name",
    )
    .fetch_all(db)
    .await?;
    let mut by_host: HashMap<HostId, Vec<CachedImageView>> = HashMap::new();
    for copy in copies {
        by_host
            .entry(copy.host_id)
            .or_default()
            .push(CachedImageView {
                id: copy.image_id,
                name: copy.name,
                size_bytes: copy.size_bytes,
            });
    }
    Ok(by_host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestDb;

    fn new_image(name: &str) -> NewImage {
        NewImage {
            name: name.into(),
            os: None,
            source_url: None,
            expected_sha256: None,
            min_disk_gb: None,
            default_user: "root".into(),
        }
    }

    fn checked(sha256: &str) -> Checked {
        Checked {
            size_bytes: 1000,
            sha256: sha256.into(),
            format: DiskFormat::Qcow2,
            virtual_size_bytes: 1 << 30,
        }
    }

    #[tokio::test]
    async fn names_are_unique_and_transfers_finish_only_from_their_status() {
        let t = TestDb::new().await;
        let image = insert(&t.db, &new_image("debian")).await.unwrap();
        assert_eq!(image.status, ImageStatus::Pending);
        let err = insert(&t.db, &new_image("debian")).await.unwrap_err();
        assert!(matches!(err, Error::NameTaken(_)), "{err:?}");

        // A download's outcome does not apply to an image waiting for an upload.
        let applied = mark_ready(&t.db, image.id, ImageStatus::Downloading, &checked("aa"))
            .await
            .unwrap();
        assert!(!applied);
        assert!(
            mark_ready(&t.db, image.id, ImageStatus::Pending, &checked("aa"))
                .await
                .unwrap()
        );
        let ready = find(&t.db, image.id).await.unwrap().unwrap();
        assert_eq!(ready.status, ImageStatus::Ready);
        assert_eq!(ready.to_proto().unwrap().sha256, "aa");

        delete_unused(&t.db, image.id).await.unwrap();
        assert!(
            !mark_failed(&t.db, image.id, ImageStatus::Ready, "late")
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn host_copies_are_recorded_only_for_ready_images_with_their_checksum() {
        let t = TestDb::new().await;
        let ready = insert(&t.db, &new_image("ready")).await.unwrap();
        mark_ready(&t.db, ready.id, ImageStatus::Pending, &checked("aa"))
            .await
            .unwrap();
        let pending = insert(&t.db, &new_image("pending")).await.unwrap();
        let copy = |id: String, sha256: &str| CachedImage {
            image_id: id,
            sha256: sha256.into(),
            size_bytes: 1000,
        };
        let gone = ImageId::new_random().to_string();
        let reported = [
            copy(ready.id.to_string(), "aa"),
            copy(pending.id.to_string(), "aa"),
            copy(gone.clone(), "bb"),
            copy("not-an-id".into(), "cc"),
        ];
        let evict = record_host_copies(&t.db, &t.host, &reported).await.unwrap();
        assert_eq!(
            evict,
            vec![pending.id.to_string(), gone, "not-an-id".into()]
        );
        let copies = copies_by_host(&t.db).await.unwrap();
        let names: Vec<&str> = copies[&t.host].iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ready"]);

        // A different file under a known ID is not the image.
        let evict = record_host_copies(&t.db, &t.host, &[copy(ready.id.to_string(), "ff")])
            .await
            .unwrap();
        assert_eq!(evict, vec![ready.id.to_string()]);
        assert!(copies_by_host(&t.db).await.unwrap().is_empty());
    }
}
