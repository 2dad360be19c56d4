//! `AgentControl.Console`: a host attaching a console it was asked to open (the caller has
//! checked the agent's credential). The first frame must be `attach`, within
//! [`ATTACH_TIMEOUT`], naming a console this coordinator is waiting for from that very host,
//! which must have a live session. The stream is then handed to the request waiting for it
//! (`routes::open_console`); what goes down to the agent is whatever that request's relay
//! sends, through a queue of [`DOWN_QUEUE`] frames.
//!
//! The host named in `attach` is the agent's claim; with per-host agent credentials it is
//! checked against the credential's host (the same rule as every agent RPC). Meanwhile the
//! console ID, random and sent only down that host's session, is what proves the claim.

use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};
use vmm_proto::console_frame::Body as FrameBody;
use vmm_proto::{ConsoleFrame, ErrorKind};
use vmm_shared::HostId;

use super::sessions::{AttachOutcome, Attached};
use crate::state::AppState;

/// How long an agent has to send `attach` after opening the stream.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued towards the agent before the relay waits for it.
pub const DOWN_QUEUE: usize = 4;

pub type DownStream = Pin<Box<dyn Stream<Item = Result<ConsoleFrame, Status>> + Send>>;

/// Reads the `attach` frame and hands the console to the request waiting for it.
pub async fn attach(
    app: &AppState,
    caller: &crate::agents::identity::Caller,
    mut inbound: Streaming<ConsoleFrame>,
    peer: Option<SocketAddr>,
) -> Result<DownStream, Status> {
    let first = match tokio::time::timeout(ATTACH_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(frame))) => frame,
        Ok(Ok(None)) => return Err(Status::cancelled("stream closed before attach")),
        Ok(Err(status)) => return Err(status),
        Err(_) => return Err(Status::deadline_exceeded("no attach within 10 s")),
    };
    let Some(FrameBody::Attach(attach)) = first.body else {
        return Err(Status::invalid_argument(
            "the first frame of a console must be attach",
        ));
    };
    // A host attaches consoles only for itself: its certificate must name the host it says.
    let host: HostId = caller.speaks_for(&attach.host_id)?;
    let console_id = attach.console_id.parse().map_err(|_| {
        Status::invalid_argument(format!("console_id {:?} is not a UUID", attach.console_id))
    })?;
    if !app.registry.is_connected(&host) {
        tracing::warn!(host = %host, ?peer, %console_id, "console attach refused: the host has no session");
        return Err(Status::permission_denied(format!(
            "host {host} has no session with this coordinator"
        )));
    }
    let (outcome, down) = match attach.error {
        Some(error) => (
            AttachOutcome::Failed {
                kind: ErrorKind::try_from(error.kind).unwrap_or(ErrorKind::Internal),
                message: error.message,
            },
            None,
        ),
        None => {
            let (outbound, queue) = tokio::sync::mpsc::channel(DOWN_QUEUE);
            (
                AttachOutcome::Attached(Box::new(Attached { inbound, outbound })),
                Some(queue),
            )
        }
    };
    app.consoles
        .sessions
        .attach(console_id, &host, outcome)
        .map_err(|refusal| {
            tracing::warn!(host = %host, ?peer, %console_id, reason = %refusal, "console attach refused");
            Status::failed_precondition(refusal.to_string())
        })?;
    Ok(match down {
        Some(queue) => Box::pin(ReceiverStream::new(queue)),
        None => Box::pin(futures::stream::empty()),
    })
}
