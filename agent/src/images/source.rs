//! Where the agent gets an image's bytes: the [`ImageSource`] trait the image cache
//! receives, and its real implementation over the agent's authenticated gRPC channel to the
//! coordinator ([`GrpcImageSource`], `AgentControl.FetchImage`: same URL and credential as
//! the session, no second secret). Tests give the cache a source of their own beside it.
//!
//! A source only delivers bytes in order from an offset; checking them is the cache's job.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use tonic::transport::Endpoint;
use tonic::{Code, Request, Status};
use vmm_proto::FetchImageRequest;
use vmm_shared::{HostId, error_chain};

use crate::enrol::{CoordinatorDialer, Credentials};
use crate::hypervisor::ImageId;

/// The bytes of an image, chunk after chunk.
pub type ChunkStream = BoxStream<'static, Result<Vec<u8>, FetchError>>;

/// Delivers images' bytes.
pub trait ImageSource: Send + Sync {
    /// The bytes of `image_id` from byte `offset` on, in order.
    fn fetch(
        &self,
        image_id: ImageId,
        offset: u64,
    ) -> BoxFuture<'static, Result<ChunkStream, FetchError>>;
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub kind: FetchErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// The source is unreachable or the transfer broke off: trying again may work.
    Unavailable,
    /// The source does not have the image (any more).
    NotFound,
    /// The source refused this agent.
    Refused,
}

impl FetchError {
    pub fn new(kind: FetchErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Whether trying again (from where the transfer stopped) may work.
    pub fn is_transient(&self) -> bool {
        self.kind == FetchErrorKind::Unavailable
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches images from the coordinator with `FetchImage`, over a connection of its own to
/// the session's URL (one per fetch: fetches are rare and long), with the session's
/// credential.
#[derive(Clone)]
pub struct GrpcImageSource {
    dialer: CoordinatorDialer,
    host_id: HostId,
}

impl std::fmt::Debug for GrpcImageSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcImageSource")
            .field("host_id", &self.host_id)
            .finish_non_exhaustive()
    }
}

impl GrpcImageSource {
    /// A source for the coordinator at `coordinator_url`. Connects on each fetch.
    pub fn new(
        coordinator_url: &str,
        host_id: HostId,
        credentials: Credentials,
    ) -> Result<Self, tonic::transport::Error> {
        let settings = |endpoint: Endpoint| {
            endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
        };
        Ok(Self {
            dialer: CoordinatorDialer::new(coordinator_url, settings, credentials)?,
            host_id,
        })
    }

    /// Fetches from the coordinator of the agent's current session (see
    /// [`CurrentCoordinator`]) rather than the URL given to [`GrpcImageSource::new`].
    ///
    /// [`CurrentCoordinator`]: crate::enrol::CurrentCoordinator
    pub fn following(mut self, current: crate::enrol::CurrentCoordinator) -> Self {
        self.dialer = self.dialer.following(current);
        self
    }
}

impl ImageSource for GrpcImageSource {
    fn fetch(
        &self,
        image_id: ImageId,
        offset: u64,
    ) -> BoxFuture<'static, Result<ChunkStream, FetchError>> {
        let dialer = self.dialer.clone();
        let mut request = Request::new(FetchImageRequest {
            host_id: self.host_id.to_string(),
            image_id: image_id.to_string(),
            offset,
        });
        dialer.authorize(&mut request);
        Box::pin(async move {
            let mut client = dialer.client().await.map_err(|error| {
                FetchError::new(
                    FetchErrorKind::Unavailable,
                    format!(
                        "fetching image {image_id}: cannot reach the coordinator: {}",
                        error_chain(&error)
                    ),
                )
            })?;
            let chunks = client
                .fetch_image(request)
                .await
                .map_err(|status| fetch_error(image_id, &status))?
                .into_inner();
            let stream: ChunkStream = chunks
                .map(move |chunk| {
                    chunk
                        .map(|chunk| chunk.data)
                        .map_err(|status| fetch_error(image_id, &status))
                })
                .boxed();
            Ok(stream)
        })
    }
}

fn fetch_error(image_id: ImageId, status: &Status) -> FetchError {
    let kind = match status.code() {
        Code::NotFound => FetchErrorKind::NotFound,
        Code::Unauthenticated | Code::PermissionDenied => FetchErrorKind::Refused,
        _ => FetchErrorKind::Unavailable,
    };
    FetchError::new(
        kind,
        format!(
            "fetching image {image_id} from the coordinator: {}: {}",
            status.code(),
            status.message()
        ),
    )
}

/// A source that has no images: for agents simulated without a coordinator (and tests that
/// never create VMs from images). Every fetch fails, saying so.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoImageSource;

impl ImageSource for NoImageSource {
    fn fetch(
        &self,
        image_id: ImageId,
        _offset: u64,
    ) -> BoxFuture<'static, Result<ChunkStream, FetchError>> {
        Box::pin(async move {
            Err(FetchError::new(
                FetchErrorKind::NotFound,
                format!("image {image_id}: this agent has no image source"),
            ))
        })
    }
}
