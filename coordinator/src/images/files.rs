//! Image files on the coordinator's disk: `<data-dir>/images/<id>` for a ready image and
//! `<id>.part` while one is received. Receiving streams to the temporary file in bounded
//! chunks, never holding a file in memory, counts the bytes against the size limit and
//! computes the SHA-256 as it goes; a transfer that fails, is refused or is cancelled
//! removes its temporary file.
//!
//! It never decides whether a file is an acceptable image (`check` does), and never writes
//! a file under a ready image's name except by renaming a complete, checked one into place.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::sync::watch;
use vmm_shared::ImageId;

/// Writes to the temporary file go through a buffer of this size.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The directory of image files.
#[derive(Clone, Debug)]
pub struct ImageFiles {
    dir: PathBuf,
}

/// A file received completely into its temporary file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    pub size_bytes: u64,
    /// Lower-case hex.
    pub sha256: String,
}

/// Why a file was not received. The temporary file is gone in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    #[error("the file is larger than the limit of {limit} bytes (IMAGE_MAX_BYTES)")]
    TooLarge { limit: u64 },
    /// The sender failed or went away (the message says how).
    #[error("{0}")]
    Source(String),
    #[error("the image was deleted during the transfer")]
    Cancelled,
    #[error("cannot write the image file: {0}")]
    Io(#[from] std::io::Error),
}

impl ImageFiles {
    /// Creates the directory (mode 0700) if needed; the path is made absolute, so that no
    /// tool ever reads a file name as something else.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::path::absolute(dir)?;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a ready image.
    pub fn path(&self, image: ImageId) -> PathBuf {
        self.dir.join(image.to_string())
    }

    /// The temporary file of a transfer in progress.
    pub fn part_path(&self, image: ImageId) -> PathBuf {
        self.dir.join(format!("{image}.part"))
    }

    /// Streams `chunks` into the image's temporary file, at most `limit` bytes, until the
    /// stream ends or `cancelled` becomes true.
    pub async fn receive<S, B, E>(
        &self,
        image: ImageId,
        chunks: S,
        limit: u64,
        mut cancelled: watch::Receiver<bool>,
    ) -> Result<Received, ReceiveError>
    where
        S: Stream<Item = Result<B, E>>,
        B: AsRef<[u8]>,
        E: Display,
    {
        let path = self.part_path(image);
        let result = async {
            let file = tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .await?;
            let mut file = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
            let mut hasher = Sha256::new();
            let mut size_bytes: u64 = 0;
            let mut chunks = std::pin::pin!(chunks);
            loop {
                let chunk = tokio::select! {
                    chunk = chunks.next() => chunk,
                    _ = cancelled.wait_for(|cancelled| *cancelled) => {
                        return Err(ReceiveError::Cancelled);
                    }
                };
                let Some(chunk) = chunk else { break };
                let chunk = chunk.map_err(|err| ReceiveError::Source(err.to_string()))?;
                let bytes = chunk.as_ref();
                size_bytes = size_bytes.saturating_add(bytes.len() as u64);
                if size_bytes > limit {
                    return Err(ReceiveError::TooLarge { limit });
                }
                hasher.update(bytes);
                file.write_all(bytes).await?;
            }
            file.flush().await?;
            file.get_ref().sync_all().await?;
            Ok(Received {
                size_bytes,
                sha256: hex(&hasher.finalize()),
            })
        }
        .await;
        if result.is_err() {
            self.remove_part(image).await;
        }
        result
    }

    /// Renames a received and checked temporary file into place as the image's file.
    pub async fn commit(&self, image: ImageId) -> std::io::Result<()> {
        tokio::fs::rename(self.part_path(image), self.path(image)).await
    }

    pub async fn remove_part(&self, image: ImageId) {
        remove_if_present(&self.part_path(image)).await;
    }

    /// Removes the image's file and any temporary file.
    pub async fn remove(&self, image: ImageId) {
        remove_if_present(&self.path(image)).await;
        remove_if_present(&self.part_path(image)).await;
    }

    /// At start: temporary files are what transfers cut off by the last stop left. Only
    /// those untouched for at least `min_age` go: where several coordinators share the
    /// directory, a file written a moment ago is another coordinator's transfer.
    pub fn remove_leftover_parts(&self, min_age: Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "part") {
                continue;
            }
            let age = entry
                .metadata()?
                .modified()?
                .elapsed()
                .unwrap_or(Duration::ZERO);
            if age >= min_age {
                std::fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

async fn remove_if_present(path: &Path) {
    match tokio::fs::remove_file(path).await {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove an image file")
        }
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<&'static [u8], String>> {
        futures::stream::iter(parts.iter().map(|part| Ok(*part)).collect::<Vec<_>>())
    }

    #[test]
    fn leftover_parts_go_once_old_enough_and_images_stay() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(dir.path()).unwrap();
        let (old, fresh, image) = (
            ImageId::new_random(),
            ImageId::new_random(),
            ImageId::new_random(),
        );
        for path in [
            files.part_path(old),
            files.part_path(fresh),
            files.path(image),
        ] {
            std::fs::write(path, b"bytes").unwrap();
        }
        let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
        std::fs::File::options()
            .write(true)
            .open(files.part_path(old))
            .unwrap()
            .set_modified(two_days_ago)
            .unwrap();

        // Beside other coordinators: only the part untouched for a day goes.
        assert_eq!(
            files
                .remove_leftover_parts(Duration::from_secs(24 * 3600))
                .unwrap(),
            1
        );
        assert!(!files.part_path(old).exists());
        assert!(files.part_path(fresh).exists());
        // Alone: every part goes; image files never do.
        assert_eq!(files.remove_leftover_parts(Duration::ZERO).unwrap(), 1);
        assert!(!files.part_path(fresh).exists());
        assert!(files.path(image).exists());
    }

    #[tokio::test]
    async fn receives_counts_and_hashes_and_keeps_nothing_when_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(dir.path()).unwrap();
        let image = ImageId::new_random();
        let (_cancel, cancelled) = watch::channel(false);
        let received = files
            .receive(image, chunks(&[b"ab", b"c"]), 3, cancelled.clone())
            .await
            .unwrap();
        // SHA-256 of "abc" (FIPS 180-2 test vector).
        assert_eq!(
            received,
            Received {
                size_bytes: 3,
                sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            }
        );
        files.commit(image).await.unwrap();
        assert_eq!(std::fs::read(files.path(image)).unwrap(), b"abc");

        let other = ImageId::new_random();
        let err = files
            .receive(other, chunks(&[b"ab", b"cd"]), 3, cancelled)
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::TooLarge { limit: 3 }), "{err}");
        assert!(!files.part_path(other).exists());
    }

    #[tokio::test]
    async fn a_failed_or_cancelled_transfer_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = ImageFiles::open(dir.path()).unwrap();
        let image = ImageId::new_random();
        let (cancel, cancelled) = watch::channel(false);
        let failing = futures::stream::iter(vec![Ok(&b"abc"[..]), Err("connection reset")]);
        let err = files
            .receive(image, failing, 100, cancelled.clone())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "connection reset");
        assert!(!files.part_path(image).exists());

        cancel.send(true).unwrap();
        let endless = futures::stream::pending::<Result<&[u8], String>>();
        let err = files
            .receive(image, endless, 100, cancelled)
            .await
            .unwrap_err();
        assert!(matches!(err, ReceiveError::Cancelled), "{err}");
        assert!(!files.part_path(image).exists());
    }
}
