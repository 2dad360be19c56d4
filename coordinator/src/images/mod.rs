//! The image catalogue: disk images VMs boot from, managed by admins and readable by every
//! user. An image is a record (`store`) and, once `ready`, one file under
//! `<data-dir>/images/<id>` (`files`) whose content never changes: a new file is a new image.
//!
//! ```text
//!   POST (no source_url) ──▶ pending ──PUT file, checked──▶ ready
//!   POST (source_url)    ──▶ downloading ──fetched, checked──▶ ready
//!                                 │  └─ failed ─▶ error (message) ──PUT file──▶ ready
//!                                 └─ coordinator restart: downloaded again from the start
//! ```
//!
//! Every file is received into a temporary file (`<id>.part`) while its SHA-256 is computed,
//! checked (`check`: its format detected from the content by `qemu-img info`, never from a
//! name; qcow2 without backing or data files or encryption, or raw with a partition table),
//! compared with the checksum the admin expects, and only then renamed into place and the
//! image marked `ready`. A refused or failed transfer keeps nothing.
//!
//! Hosts never get an image from anywhere else: an agent that needs one fetches it over its
//! authenticated channel (`AgentControl.FetchImage` in `agents`), and the catalogue records
//! which host caches which image (`store::record_host_copies`). An image a VM uses cannot be
//! deleted; deleting one removes its file and tells every connected host to evict its copy.
//!
//! What it must never do: trust a file's name or the format an admin claims, keep a partly
//! received file as an image, or hand a host a file that is not `ready`.

pub mod check;
pub mod download;
pub mod files;
pub mod routes;
pub mod store;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use vmm_shared::ImageId;

pub use check::DiskFormat;
pub use files::ImageFiles;

/// Where an image is in its life (see the module doc).
pub use vmm_shared::api::images::{ImageStatus, ImageView};

/// An image as recorded.
#[derive(Clone, Debug)]
pub struct Image {
    pub id: ImageId,
    pub name: String,
    pub os: Option<String>,
    pub status: ImageStatus,
    pub error: Option<String>,
    pub source_url: Option<String>,
    pub expected_sha256: Option<String>,
    pub min_disk_gb: Option<u64>,
    pub default_user: String,
    pub size_bytes: Option<u64>,
    pub virtual_size_bytes: Option<u64>,
    pub format: Option<DiskFormat>,
    pub sha256: Option<String>,
    pub created_at: String,
}

impl Image {
    /// What a host is told about this image when a VM is made from it; `None` unless ready.
    pub fn to_proto(&self) -> Option<vmm_proto::ImageRef> {
        if self.status != ImageStatus::Ready {
            return None;
        }
        Some(vmm_proto::ImageRef {
            image_id: self.id.to_string(),
            sha256: self.sha256.clone()?,
            size_bytes: self.size_bytes?,
            format: self.format?.as_str().to_owned(),
            virtual_size_bytes: self.virtual_size_bytes?,
        })
    }
}

impl From<Image> for ImageView {
    fn from(image: Image) -> Self {
        ImageView {
            id: image.id,
            name: image.name,
            os: image.os,
            status: image.status,
            error: image.error,
            size_bytes: image.size_bytes,
            virtual_size_bytes: image.virtual_size_bytes,
            format: image.format,
            sha256: image.sha256,
            min_disk_gb: image.min_disk_gb,
            default_user: image.default_user,
            created_at: image.created_at,
        }
    }
}

/// What the image routes, the download tasks and the agents' `FetchImage` share: the files,
/// the size limit, the HTTP client for downloads, and the transfers in progress.
#[derive(Debug)]
pub struct Images {
    pub files: ImageFiles,
    /// Largest file accepted, uploaded or downloaded (`IMAGE_MAX_BYTES`).
    pub max_bytes: u64,
    http: reqwest::Client,
    /// One transfer (upload or download) at a time per image; the sender cancels it.
    transfers: Mutex<HashMap<ImageId, watch::Sender<bool>>>,
}

impl Images {
    pub fn new(files: ImageFiles, max_bytes: u64) -> anyhow::Result<Self> {
        Ok(Self {
            files,
            max_bytes,
            http: download::client()?,
            transfers: Mutex::default(),
        })
    }

    /// Claims the one transfer `image` may have at a time; `None` while another runs.
    pub fn claim_transfer(self: &Arc<Self>, image: ImageId) -> Option<Transfer> {
        let mut transfers = lock(&self.transfers);
        if transfers.contains_key(&image) {
            return None;
        }
        let (cancel, cancelled) = watch::channel(false);
        transfers.insert(image, cancel);
        Some(Transfer {
            images: Arc::clone(self),
            image,
            cancelled,
        })
    }

    /// Tells the transfer of `image`, if one runs, to stop and keep nothing.
    pub fn cancel_transfer(&self, image: ImageId) {
        if let Some(cancel) = lock(&self.transfers).get(&image) {
            let _ = cancel.send(true);
        }
    }
}

/// The claim on an image's one transfer; released when dropped.
#[derive(Debug)]
pub struct Transfer {
    images: Arc<Images>,
    image: ImageId,
    cancelled: watch::Receiver<bool>,
}

impl Transfer {
    /// Becomes true when the image is deleted during the transfer.
    pub fn cancelled(&self) -> watch::Receiver<bool> {
        self.cancelled.clone()
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        lock(&self.images.transfers).remove(&self.image);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts and
    // removes), so a poisoned lock is used as is.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A received file that passed every check and is in place as the image's file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checked {
    pub size_bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
    pub format: DiskFormat,
    pub virtual_size_bytes: u64,
}

/// Why a received file did not become the image's file. Its temporary file is gone.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Not an acceptable image, or not the one expected; the message says why.
    #[error("{0}")]
    Refused(String),
    /// The file could not be checked now (e.g. qemu-img is missing).
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot store the image file: {0}")]
    Io(#[from] std::io::Error),
}

/// Takes a file received into `image`'s temporary file: compares its checksum with the
/// `expected` one, checks its content, and renames it into place. Anything refused is
/// removed.
pub async fn accept(
    images: &Images,
    image: ImageId,
    received: &files::Received,
    expected_sha256: Option<&str>,
) -> Result<Checked, AcceptError> {
    let result = async {
        if received.size_bytes == 0 {
            return Err(AcceptError::Refused("the file is empty".into()));
        }
        if let Some(expected) = expected_sha256
            && expected != received.sha256
        {
            return Err(AcceptError::Refused(format!(
                "the file's SHA-256 is {}, not the expected {expected}",
                received.sha256
            )));
        }
        let inspected = check::inspect(&images.files.part_path(image))
            .await
            .map_err(|err| match err {
                check::CheckError::Refused(why) => AcceptError::Refused(why),
                unavailable @ check::CheckError::Unavailable(_) => {
                    AcceptError::Unavailable(unavailable.to_string())
                }
            })?;
        images.files.commit(image).await?;
        Ok(Checked {
            size_bytes: received.size_bytes,
            sha256: received.sha256.clone(),
            format: inspected.format,
            virtual_size_bytes: inspected.virtual_size_bytes,
        })
    }
    .await;
    if result.is_err() {
        images.files.remove_part(image).await;
    }
    result
}

/// GiB, the unit of a VM's `disk_gb`.
pub const BYTES_PER_GIB: u64 = 1 << 30;

/// `bytes` rounded up to whole GiB.
pub fn gib_rounded_up(bytes: u64) -> u64 {
    bytes.div_ceil(BYTES_PER_GIB)
}
