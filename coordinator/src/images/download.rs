//! Importing an image from its `source_url`: a background task per image streams the
//! response body to disk (never into memory) within the size limit, then the file takes the
//! same path as an upload ([`accept`]): checked, compared with the expected checksum,
//! renamed into place, the image marked `ready`. Any failure marks it `error` with a message
//! an admin can act on, and keeps no file. A download cut off by a coordinator restart is
//! started again from the beginning at the next start ([`resume_after_restart`]).
//!
//! Plain `http` and `https` only (the system's trusted CAs); redirects are followed. A
//! connection that cannot be made within 30 s, or a response that stalls for 2 minutes,
//! fails the download.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use vmm_shared::ImageId;

use super::files::ReceiveError;
use super::{Checked, ImageStatus, Images, Transfer, store};
use crate::db::Db;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A download that receives nothing for this long fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Longest `source_url` accepted.
pub const MAX_URL_LEN: usize = 2048;

/// The HTTP client of every download.
pub fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .user_agent(concat!("vmm-coordinator/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(STALL_TIMEOUT)
        .build()?)
}

/// Checks a `source_url`: absolute `http` or `https` with a host. Returns it parsed.
pub fn parse_source_url(text: &str) -> Result<reqwest::Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!(
            "source_url is {} characters long; at most {MAX_URL_LEN} are allowed",
            text.len()
        ));
    }
    let url = reqwest::Url::parse(text)
        .map_err(|err| format!("source_url {text:?} is not a URL: {err}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "source_url must be an http or https URL, not {}:",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("source_url has no host".into());
    }
    Ok(url)
}

/// The URL as shown in messages and logs: without user name, password or query, which may
/// carry credentials.
pub fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// What a download needs to know of its image.
#[derive(Clone, Debug)]
pub struct Job {
    pub image: ImageId,
    pub url: String,
    pub expected_sha256: Option<String>,
}

/// Starts the download of an image recorded `downloading`, in the background. The transfer
/// claim is held until the outcome is recorded.
pub fn start(db: Db, images: Arc<Images>, transfer: Transfer, job: Job) {
    tokio::spawn(async move {
        let outcome = download(&images, &transfer, &job).await;
        let image = job.image;
        match outcome {
            Outcome::Ready(checked) => {
                match store::mark_ready(&db, image, ImageStatus::Downloading, &checked).await {
                    Ok(true) => {
                        tracing::info!(image_id = %image, size_bytes = checked.size_bytes, format = %checked.format,
                        sha256 = %checked.sha256, "image downloaded and ready");
                        crate::telemetry::record_image_import("download", true);
                    }
                    Ok(false) => {
                        tracing::info!(image_id = %image, "image deleted during its download; file removed");
                        images.files.remove(image).await;
                    }
                    Err(err) => {
                        tracing::error!(image_id = %image, error = %err, "cannot record a downloaded image as ready");
                        images.files.remove(image).await;
                    }
                }
            }
            Outcome::Failed(why) => {
                tracing::warn!(image_id = %image, error = %why, "image download failed");
                crate::telemetry::record_image_import("download", false);
                if let Err(err) =
                    store::mark_failed(&db, image, ImageStatus::Downloading, &why).await
                {
                    tracing::error!(image_id = %image, error = %err, "cannot record a failed download");
                }
            }
            Outcome::Cancelled => {
                tracing::info!(image_id = %image, "download stopped: the image was deleted");
            }
        }
        drop(transfer);
    });
}

/// At start: downloads the last run left `downloading` are started again from the start.
pub async fn resume_after_restart(db: &Db, images: &Arc<Images>) -> Result<(), sqlx::Error> {
    for image in store::with_status(db, ImageStatus::Downloading).await? {
        let Some(url) = image.source_url.clone() else {
            store::mark_failed(
                db,
                image.id,
                ImageStatus::Downloading,
                "the download has no source URL",
            )
            .await?;
            continue;
        };
        let Some(transfer) = images.claim_transfer(image.id) else {
            continue;
        };
        tracing::info!(image_id = %image.id, name = %image.name, "restarting the download the last stop cut off");
        let job = Job {
            image: image.id,
            url,
            expected_sha256: image.expected_sha256,
        };
        start(db.clone(), Arc::clone(images), transfer, job);
    }
    Ok(())
}

/// How a transfer ended.
enum Outcome {
    Ready(Checked),
    Failed(String),
    /// The image was deleted meanwhile: nothing to record.
    Cancelled,
}

async fn download(images: &Images, transfer: &Transfer, job: &Job) -> Outcome {
    let image = job.image;
    let parsed = match parse_source_url(&job.url) {
        Ok(parsed) => parsed,
        Err(why) => return Outcome::Failed(why),
    };
    let shown = display_url(&parsed);
    tracing::info!(image_id = %image, url = %shown, "downloading image");
    let response = match images.http.get(parsed).send().await {
        Ok(response) => response,
        Err(err) => {
            return Outcome::Failed(format!(
                "cannot download {shown}: {}",
                vmm_shared::error_chain(&err.without_url())
            ));
        }
    };
    let status = response.status();
    if !status.is_success() {
        return Outcome::Failed(format!(
            "downloading {shown} failed: the server answered {status}"
        ));
    }
    if let Some(length) = response.content_length()
        && length > images.max_bytes
    {
        return Outcome::Failed(format!(
            "the file at {shown} is {length} bytes, larger than the limit of {} bytes \
             (IMAGE_MAX_BYTES)",
            images.max_bytes
        ));
    }
    let body = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(|err| vmm_shared::error_chain(&err.without_url())));
    let received = images
        .files
        .receive(image, body, images.max_bytes, transfer.cancelled())
        .await;
    let received = match received {
        Ok(received) => received,
        Err(ReceiveError::Cancelled) => return Outcome::Cancelled,
        Err(ReceiveError::Source(why)) => {
            return Outcome::Failed(format!("the download from {shown} broke off: {why}"));
        }
        Err(err) => return Outcome::Failed(format!("downloading {shown} failed: {err}")),
    };
    match super::accept(images, image, &received, job.expected_sha256.as_deref()).await {
        Ok(checked) => Outcome::Ready(checked),
        Err(why) => Outcome::Failed(why.to_string()),
    }
}
