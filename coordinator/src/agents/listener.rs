//! The agents' gRPC listener as a stream of admitted connections for tonic: every accepted
//! socket passes the listener's [`Admission`] (a cap on connections; those that have sent
//! nothing yet are closed to make room) and is served through a [`TrackedIo`], which closes
//! it when it has not started talking within the header timeout. Accept errors (out of file
//! descriptors, typically) are logged and retried, never passed to tonic, so the listener
//! keeps serving whatever happens on the REST API's port.

use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::connections::{Admission, TrackedIo};

/// Admitted connections from `listener`, forever.
pub fn incoming(
    listener: TcpListener,
    admission: Arc<Admission>,
) -> impl Stream<Item = Result<TrackedIo<TcpStream>, std::io::Error>> {
    futures::stream::unfold(
        (listener, admission, None::<Instant>),
        |(listener, admission, mut last_error)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        crate::http::server::accept_failed("grpc", &error, &mut last_error).await;
                        continue;
                    }
                };
                match admission.admit(peer.ip()) {
                    Ok(ticket) => {
                        if admission.pending_evictions() > 0 {
                            tokio::task::yield_now().await;
                        }
                        let _ = stream.set_nodelay(true);
                        let io = TrackedIo::new(stream, ticket);
                        return Some((Ok(io), (listener, admission, last_error)));
                    }
                    Err(refusal) => {
                        tracing::debug!(peer = %peer, reason = refusal.as_str(), "agent connection refused");
                    }
                }
            }
        },
    )
}

impl Connected for TrackedIo<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
