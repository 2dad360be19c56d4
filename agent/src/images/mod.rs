//! The host's image cache: makes sure an image a VM is created from is cached as a
//! verified base volume, fetching it from an [`ImageSource`] if not, and evicts unused
//! bases when the coordinator says so.
//!
//! - A fetch writes to a temporary file in the cache directory and hashes every chunk as
//!   it is written (SHA-256); more bytes than the image's size stop it early. Only a file
//!   whose checksum and size match what the coordinator said becomes a base: its record
//!   (see `records`) is written, then the hypervisor takes the file as the base volume
//!   `vmm-image-<id>`. A mismatch is refused with an error naming both checksums, and
//!   nothing is kept. A transfer that breaks off is resumed from where it stopped, a few
//!   times, with the hash carried on.
//! - One lock per image: concurrent creates from the same image wait for one fetch, and
//!   an eviction never removes a base a create is about to use (a create holds the
//!   image's lock until its disk exists, then the disk keeps the base in use).
//! - At start, [`ImageCache::sweep`] removes the temporary files of fetches the agent's
//!   death cut short, and records whose base is gone: neither ever counts as cached.
//!
//! The cache never decides where an image comes from or what a VM is; the command layer
//! asks it for an image, and the session reports what it holds.

mod records;
pub mod source;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;
use tokio::sync::OwnedMutexGuard;

use crate::hypervisor::{
    BaseImage, Eviction, HypervisorError, HypervisorHandle, ImageFormat, ImageId,
};
pub use records::is_sha256;
pub use source::{FetchError, FetchErrorKind, GrpcImageSource, ImageSource, NoImageSource};

/// How often a broken-off transfer is resumed before the fetch fails.
const FETCH_ATTEMPTS: u32 = 4;
/// The wait before resuming a broken-off transfer (doubled each time).
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// How long a transfer may go without a chunk before it counts as broken off.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// An image a VM is to be made from, as the coordinator describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedImage {
    pub image_id: ImageId,
    /// Lower-case hex.
    pub sha256: String,
    pub size_bytes: u64,
    pub format: ImageFormat,
}

impl WantedImage {
    /// Checks the coordinator's description of an image.
    pub fn from_ref(image: &vmm_proto::ImageRef) -> Result<Self, ImageError> {
        let image_id = image.image_id.parse().map_err(|_| {
            ImageError::Invalid(format!("image ID {:?} is not a UUID", image.image_id))
        })?;
        let sha256 = image.sha256.to_ascii_lowercase();
        if !is_sha256(&sha256) {
            return Err(ImageError::Invalid(format!(
                "image {image_id}: {:?} is not a SHA-256 in hex",
                image.sha256
            )));
        }
        let format = ImageFormat::parse(&image.format).ok_or_else(|| {
            ImageError::Invalid(format!(
                "image {image_id}: format {:?} is neither qcow2 nor raw",
                image.format
            ))
        })?;
        if image.size_bytes == 0 {
            return Err(ImageError::Invalid(format!("image {image_id} has no size")));
        }
        Ok(Self {
            image_id,
            sha256,
            size_bytes: image.size_bytes,
            format,
        })
    }
}

/// Why an image cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The image's description or content is refused.
    #[error("{0}")]
    Invalid(String),
    /// The image cannot be had now (its source is unreachable, the host cannot hold it...).
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
}

/// One image the host holds, as reported to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldImage {
    pub image_id: ImageId,
    /// As verified when it was fetched; empty for a base the agent has no record of.
    pub sha256: String,
    pub size_bytes: u64,
}

/// A cached image a create may use: the image's lock is held until this is dropped.
#[derive(Debug)]
pub struct ImageLease {
    pub base: BaseImage,
    _lock: OwnedMutexGuard<()>,
}

/// The image cache of one host. See the module docs.
pub struct ImageCache {
    hypervisor: HypervisorHandle,
    source: Arc<dyn ImageSource>,
    /// Records of verified images and fetches in progress.
    dir: PathBuf,
    locks: Mutex<HashMap<ImageId, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageCache {
    /// A cache whose records and fetches live in `dir` (made when first needed).
    pub fn new(hypervisor: HypervisorHandle, source: Arc<dyn ImageSource>, dir: PathBuf) -> Self {
        Self {
            hypervisor,
            source,
            dir,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// At start, before any command: removes fetches cut short and records whose base is
    /// gone. Returns how many files were removed.
    pub async fn sweep(&self) -> Result<usize, ImageError> {
        let dir = self.dir.clone();
        let listing = blocking(move || records::list(&dir)).await?;
        let cached: Vec<ImageId> = self
            .hypervisor
            .call(|hv| hv.cached_images())
            .await?
            .into_iter()
            .map(|base| base.image_id)
            .collect();
        let mut removed = 0;
        for path in listing.leftovers {
            tracing::warn!(path = %path.display(), "removing the temporary file of an image fetch cut short by the agent's stop");
            let _ = tokio::fs::remove_file(&path).await;
            removed += 1;
        }
        for image_id in listing.records {
            if !cached.contains(&image_id) {
                let dir = self.dir.clone();
                blocking(move || records::remove(&dir, image_id)).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Every cached base, with the checksum verified when it was fetched.
    pub async fn held(&self) -> Result<Vec<HeldImage>, ImageError> {
        let cached = self.hypervisor.call(|hv| hv.cached_images()).await?;
        let mut held = Vec::with_capacity(cached.len());
        for base in cached {
            let dir = self.dir.clone();
            let record = blocking(move || records::read(&dir, base.image_id)).await?;
            held.push(HeldImage {
                image_id: base.image_id,
                sha256: record.map(|r| r.sha256).unwrap_or_default(),
                size_bytes: base.size_bytes,
            });
        }
        Ok(held)
    }

    /// The image, cached and verified, with its lock held: fetched first if the host has no
    /// verified copy of it (or one with another checksum).
    pub async fn acquire(&self, wanted: &WantedImage) -> Result<ImageLease, ImageError> {
        let lock = self.lock_of(wanted.image_id).lock_owned().await;
        let image_id = wanted.image_id;
        let dir = self.dir.clone();
        let record = blocking(move || records::read(&dir, image_id)).await?;
        let cached = self
            .hypervisor
            .call(move |hv| hv.cached_images())
            .await?
            .iter()
            .any(|base| base.image_id == image_id);
        let format = match record {
            Some(record) if cached && record.sha256 == wanted.sha256 => record.format,
            _ => {
                self.fetch_and_import(wanted).await?;
                wanted.format
            }
        };
        Ok(ImageLease {
            base: BaseImage { image_id, format },
            _lock: lock,
        })
    }

    /// Removes the cached base of `image_id` if no disk uses it.
    pub async fn evict(&self, image_id: ImageId) -> Result<Eviction, ImageError> {
        let lock = self.lock_of(image_id).lock_owned().await;
        let eviction = self
            .hypervisor
            .call(move |hv| hv.evict_image(image_id))
            .await?;
        if !matches!(eviction, Eviction::InUse { .. }) {
            let dir = self.dir.clone();
            blocking(move || records::remove(&dir, image_id)).await?;
        }
        drop(lock);
        self.release_idle_locks();
        Ok(eviction)
    }

    fn lock_of(&self, image_id: ImageId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        Arc::clone(locks.entry(image_id).or_default())
    }

    fn release_idle_locks(&self) {
        let mut locks = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
    }

    async fn fetch_and_import(&self, wanted: &WantedImage) -> Result<(), ImageError> {
        // Before a byte is fetched: a host that cannot keep images says so at once.
        self.hypervisor.call(|hv| hv.image_support()).await?;
        let dir = self.dir.clone();
        blocking(move || {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
        })
        .await?;
        let staged = TemporaryFile(records::fetch_path(&self.dir, wanted.image_id));
        let started = std::time::Instant::now();
        tracing::info!(image_id = %wanted.image_id, size_bytes = wanted.size_bytes, "fetching an image from the coordinator");
        let sha256 = self.download(wanted, &staged.0).await?;
        if sha256 != wanted.sha256 {
            tracing::warn!(image_id = %wanted.image_id, expected = %wanted.sha256, fetched = %sha256,
                "a fetched image does not match its checksum; refused, nothing cached");
            return Err(ImageError::Invalid(format!(
                "image {}: the fetched file has SHA-256 {sha256}, but the coordinator's checksum \
                 is {}; refused, nothing was cached",
                wanted.image_id, wanted.sha256
            )));
        }
        let verified = records::VerifiedImage {
            sha256,
            size_bytes: wanted.size_bytes,
            format: wanted.format,
        };
        let dir = self.dir.clone();
        let image_id = wanted.image_id;
        blocking(move || records::write(&dir, image_id, &verified)).await?;
        let base = BaseImage {
            image_id,
            format: wanted.format,
        };
        let path = staged.0.clone();
        let imported = self
            .hypervisor
            .call(move |hv| hv.import_image(&base, &path))
            .await;
        if let Err(error) = imported {
            let dir = self.dir.clone();
            let _ = blocking(move || records::remove(&dir, image_id)).await;
            return Err(error.into());
        }
        tracing::info!(image_id = %wanted.image_id, seconds = started.elapsed().as_secs_f64(),
            "image fetched, verified and cached");
        Ok(())
    }

    /// Writes the image's bytes to `path`, resuming a broken-off transfer; returns the
    /// SHA-256 of what was written.
    async fn download(&self, wanted: &WantedImage, path: &Path) -> Result<String, ImageError> {
        let mut file = create_private(path).await?;
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut attempt = 0;
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            attempt += 1;
            match self
                .transfer(wanted, &mut file, &mut hasher, &mut written)
                .await
            {
                Ok(()) => break,
                Err(Transfer::Failed(error)) => return Err(error),
                Err(Transfer::BrokeOff(error)) if attempt < FETCH_ATTEMPTS => {
                    tracing::warn!(image_id = %wanted.image_id, written, %error, retry_in = ?delay,
                        "an image transfer broke off; resuming");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(Transfer::BrokeOff(error)) => {
                    return Err(ImageError::Unavailable(format!(
                        "{error} (gave up after {FETCH_ATTEMPTS} attempts)"
                    )));
                }
            }
        }
        file.sync_all()
            .await
            .map_err(write_failed(wanted.image_id))?;
        if written != wanted.size_bytes {
            return Err(ImageError::Unavailable(format!(
                "image {}: the coordinator sent {written} bytes, the image has {}",
                wanted.image_id, wanted.size_bytes
            )));
        }
        Ok(hex(&hasher.finalize()))
    }

    /// One attempt: the bytes from `written` on, appended and hashed.
    async fn transfer(
        &self,
        wanted: &WantedImage,
        file: &mut tokio::fs::File,
        hasher: &mut Sha256,
        written: &mut u64,
    ) -> Result<(), Transfer> {
        let classify = |error: FetchError| {
            if error.is_transient() {
                Transfer::BrokeOff(error.message)
            } else {
                Transfer::Failed(ImageError::Unavailable(error.message))
            }
        };
        let mut chunks = self
            .source
            .fetch(wanted.image_id, *written)
            .await
            .map_err(classify)?;
        loop {
            let next = tokio::time::timeout(CHUNK_TIMEOUT, chunks.next())
                .await
                .map_err(|_| {
                    Transfer::BrokeOff(format!(
                        "image {}: no data for {}s",
                        wanted.image_id,
                        CHUNK_TIMEOUT.as_secs()
                    ))
                })?;
            let Some(chunk) = next else {
                return Ok(());
            };
            let chunk = chunk.map_err(classify)?;
            let length = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
            if written.saturating_add(length) > wanted.size_bytes {
                return Err(Transfer::Failed(ImageError::Invalid(format!(
                    "image {}: the coordinator sent more than the image's {} bytes; refused, \
                     nothing was cached",
                    wanted.image_id, wanted.size_bytes
                ))));
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|error| Transfer::Failed(write_failed(wanted.image_id)(error)))?;
            *written += length;
        }
    }
}

enum Transfer {
    /// Trying again from where it stopped may work.
    BrokeOff(String),
    Failed(ImageError),
}

fn write_failed(image_id: ImageId) -> impl FnOnce(std::io::Error) -> ImageError {
    move |error| {
        ImageError::Unavailable(format!(
            "cannot write the fetched image {image_id} to disk: {error}"
        ))
    }
}

/// A file created for the owner only (fetched images may be private until they are bases).
async fn create_private(path: &Path) -> Result<tokio::fs::File, ImageError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(|error| {
            ImageError::Unavailable(format!("cannot create {}: {error}", path.display()))
        })
}

/// Removes the file when dropped, whatever happened (the hypervisor may have taken it).
struct TemporaryFile(PathBuf);

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// Runs file work on the blocking pool.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<R> + Send + 'static,
) -> Result<R, ImageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| {
            ImageError::Unavailable(format!("the image cache's worker failed: {error}"))
        })?
        .map_err(|error| ImageError::Unavailable(format!("the image cache's files: {error}")))
}

#[cfg(test)]
mod tests;
