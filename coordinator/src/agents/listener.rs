//! The agents' gRPC listener as a stream of admitted connections for tonic: every accepted
//! socket passes the listener's [`Admission`] (a cap on connections; those that have sent
//! nothing yet are closed to make room) and is served through a [`TrackedIo`], which closes
//! it when it has not started talking within the header timeout. Accept errors (out of file
//! descriptors, typically) are logged and retried, never passed to tonic, so the listener
//! keeps serving whatever happens on the REST API's port.
//!
//! With TLS ([`incoming_tls`]), each admitted socket's handshake runs in a task of its own,
//! bounded by the header timeout, so a slow or silent client never holds up the others; a
//! failed handshake (a certificate of another CA, an expired one) is logged and the socket
//! closed. Only finished handshakes reach tonic, whose `Request::peer_certs` then reads the
//! client's certificate.

use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
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

/// Handshakes in progress at once, at most: the connection cap bounds them already; this
/// bounds the queue of finished ones waiting for tonic.
const READY_QUEUE: usize = 64;

/// Admitted connections from `listener` that completed a TLS handshake with `config`.
pub fn incoming_tls(
    listener: TcpListener,
    admission: Arc<Admission>,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsStream<TrackedIo<TcpStream>>, std::io::Error>> {
    let (ready, ready_queue) = mpsc::channel(READY_QUEUE);
    let acceptor = TlsAcceptor::from(config);
    let handshake_timeout = admission.limits().header_timeout;
    let plain = incoming(listener, admission);
    tokio::spawn(async move {
        let mut plain = std::pin::pin!(plain);
        loop {
            let next = tokio::select! {
                next = futures::StreamExt::next(&mut plain) => next,
                () = ready.closed() => return,
            };
            let Some(Ok(io)) = next else { return };
            let peer = io.get_ref().peer_addr().ok();
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(?peer, error = %error, "agent connection refused: TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(?peer, "agent connection closed: no TLS handshake in time");
                    }
                }
            });
        }
    });
    ReceiverStream::new(ready_queue)
}

impl Connected for TrackedIo<TcpStream> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}
