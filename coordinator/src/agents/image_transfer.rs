//! `AgentControl.FetchImage`: the bytes of a ready image's file, from an offset, to a host
//! with a live session (the caller has checked the agent token). The file is read one chunk
//! (at most 1 MiB) at a time, each only when the host's stream takes the next, so a slow
//! host slows the reads and a file is never held in memory. The transfer stops when the
//! host's session ends.
//!
//! It never serves an image that is not `ready`, nor a host the coordinator has no session
//! with, nor anything but the image's own file.

use std::net::SocketAddr;
use std::pin::Pin;

use futures::Stream;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tonic::Status;
use vmm_proto::{FetchImageRequest, ImageChunk};
use vmm_shared::{HostId, ImageId};

use crate::images::{ImageStatus, store as image_store};
use crate::state::AppState;

/// Largest chunk sent.
pub const CHUNK_BYTES: usize = 1 << 20;

pub type ImageStream = Pin<Box<dyn Stream<Item = Result<ImageChunk, Status>> + Send>>;

/// Checks the request and returns the stream of the file's bytes from `offset` on.
pub async fn open(
    app: &AppState,
    request: FetchImageRequest,
    peer: Option<SocketAddr>,
) -> Result<ImageStream, Status> {
    let host: HostId = request
        .host_id
        .parse()
        .map_err(|err| Status::invalid_argument(format!("host_id {:?}: {err}", request.host_id)))?;
    if !app.registry.is_connected(&host) {
        tracing::warn!(host = %host, ?peer, image_id = %request.image_id,
            "image fetch refused: the host has no session");
        return Err(Status::permission_denied(format!(
            "host {host} has no session with this coordinator; images are served only to \
             connected hosts"
        )));
    }
    let not_found = || Status::not_found(format!("no image with ID {:?}", request.image_id));
    let id: ImageId = request.image_id.parse().map_err(|_| not_found())?;
    let image = image_store::find(&app.db, id)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "database error while serving an image");
            Status::internal("internal error")
        })?
        .ok_or_else(not_found)?;
    if image.status != ImageStatus::Ready {
        return Err(Status::failed_precondition(format!(
            "image {id} is {}, not ready",
            image.status
        )));
    }
    let size = image.size_bytes.unwrap_or_default();
    if request.offset > size {
        return Err(Status::out_of_range(format!(
            "offset {} is past the end of image {id} ({size} bytes)",
            request.offset
        )));
    }
    let path = app.images.files.path(id);
    let mut file = tokio::fs::File::open(&path).await.map_err(|err| {
        tracing::error!(image_id = %id, path = %path.display(), error = %err, "cannot open a ready image's file");
        Status::unavailable(format!("the coordinator cannot read the file of image {id}"))
    })?;
    file.seek(std::io::SeekFrom::Start(request.offset))
        .await
        .map_err(|err| Status::internal(format!("cannot seek in the image file: {err}")))?;
    tracing::info!(host = %host, image_id = %id, offset = request.offset, size_bytes = size, "serving image to host");

    let transfer = Transfer {
        app: app.clone(),
        host,
        image: id,
        file,
        remaining: size - request.offset,
        served: 0,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(transfer, next_chunk)))
}

/// One transfer's state between chunks.
struct Transfer {
    app: AppState,
    host: HostId,
    image: ImageId,
    file: tokio::fs::File,
    remaining: u64,
    served: u64,
    done: bool,
}

async fn next_chunk(mut transfer: Transfer) -> Option<(Result<ImageChunk, Status>, Transfer)> {
    if transfer.done {
        return None;
    }
    if transfer.remaining == 0 {
        tracing::info!(host = %transfer.host, image_id = %transfer.image, bytes = transfer.served, "image served");
        return None;
    }
    if !transfer.app.registry.is_connected(&transfer.host) {
        transfer.done = true;
        tracing::warn!(host = %transfer.host, image_id = %transfer.image, "image transfer stopped: the host's session ended");
        let status = Status::aborted("the host's session ended; fetch again once reconnected");
        return Some((Err(status), transfer));
    }
    let want = usize::try_from(transfer.remaining)
        .unwrap_or(CHUNK_BYTES)
        .min(CHUNK_BYTES);
    let mut data = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        match transfer.file.read(&mut data[filled..]).await {
            Ok(0) => {
                transfer.done = true;
                tracing::error!(image_id = %transfer.image, "an image file is shorter than recorded");
                let status = Status::data_loss("the image file is shorter than recorded");
                return Some((Err(status), transfer));
            }
            Ok(read) => filled += read,
            Err(err) => {
                transfer.done = true;
                tracing::error!(image_id = %transfer.image, error = %err, "cannot read an image file");
                return Some((
                    Err(Status::internal("cannot read the image file")),
                    transfer,
                ));
            }
        }
    }
    transfer.remaining -= want as u64;
    transfer.served += want as u64;
    crate::telemetry::record_image_bytes_served(transfer.host.as_str(), want as u64);
    Some((Ok(ImageChunk { data }), transfer))
}
