//! The HTTP server of the REST API and of the metrics listener: an accept loop on hyper's
//! HTTP/1.1 connection builder, because `axum::serve` has no way to cap connections or to
//! time out a client that is slow or silent.
//!
//! Every accepted socket first goes through its listener's [`Admission`] (caps per client
//! address and per listener, see `crate::connections`); a refused one gets a `503` with a
//! JSON body and `Connection: close`, written without waiting, and is closed. An admitted
//! one is served through a [`TrackedIo`] (header, idle and stalled-write deadlines), each
//! request tells the connection it is busy until its answer's body is written out, and a
//! `101 Switching Protocols` answer takes the connection out of every deadline (WebSockets).
//!
//! With TLS (`TLS_CERT`/`TLS_KEY`), each admitted connection's handshake runs in its own
//! task within the header timeout, then the connection is served the same way; a refused one
//! is closed without an answer (a plain-text 503 would be garbage inside TLS).
//!
//! Shutdown: the loop stops accepting, every connection is asked to finish its request in
//! flight and close, and [`serve`] returns once all have.
//!
//! Where hyper answers on its own, before a request reaches the router, the answer is
//! hyper's: a header block over [`MAX_HEADER_BYTES`] gets `431` and a request line or
//! header hyper cannot parse gets `400`, both with an empty body, and the connection is
//! closed. Everything the router answers is JSON.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use crate::connections::{Admission, Connection, Refusal, RequestGuard, TrackedIo};

/// The most bytes a request's line and headers may take (hyper's read buffer). Larger
/// header blocks are answered `431` by hyper.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Serves `router` on `listener` until `shutdown` completes, then lets the connections
/// finish the requests they are serving and returns.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    admission: Arc<Admission>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let handshake_timeout = admission.limits().header_timeout;
    let (close_tx, close_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(admission.limits().listener, &error, &mut last_accept_error).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let ticket = match admission.admit(peer.ip()) {
            Ok(ticket) => ticket,
            Err(refusal) if tls.is_some() => {
                tracing::debug!(peer = %peer, reason = refusal.as_str(), "connection refused");
                continue;
            }
            Err(refusal) => {
                refuse(&stream, refusal);
                continue;
            }
        };
        // Let the connections told to make room close before accepting more.
        if admission.pending_evictions() > 0 {
            tokio::task::yield_now().await;
        }
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let close_rx = close_rx.clone();
        let io = TrackedIo::new(stream, ticket);
        let connection = Arc::clone(io.connection());
        match &tls {
            None => {
                tokio::spawn(serve_connection(io, connection, peer, router, close_rx));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            serve_connection(tls, connection, peer, router, close_rx).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(peer = %peer, error = %error, "TLS handshake failed");
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "no TLS handshake in time");
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    drop(close_rx);
    let _ = close_tx.send(true);
    // Every connection task holds a receiver: this returns once the last one has ended.
    close_tx.closed().await;
}

/// Logs an accept error (at most every 10 s: under a flood of them the log would drown)
/// and pauses briefly, as the error (out of file descriptors, typically) may persist.
pub async fn accept_failed(
    listener: &'static str,
    error: &std::io::Error,
    last_logged: &mut Option<Instant>,
) {
    if last_logged.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
        tracing::warn!(listener, error = %error, "cannot accept a connection");
        *last_logged = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Answers a refused connection with a `503` and closes it. The answer is written only if
/// the socket takes it at once: a refused client never holds anything up.
fn refuse(stream: &TcpStream, refusal: Refusal) {
    let body = serde_json::json!({ "code": 503, "message": refusal.message() }).to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.try_write(response.as_bytes());
    tracing::debug!(peer = ?stream.peer_addr().ok(), reason = refusal.as_str(), "connection refused");
}

async fn serve_connection<Io>(
    io: Io,
    connection: Arc<Connection>,
    peer: SocketAddr,
    router: Router,
    mut close_rx: watch::Receiver<bool>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let guard = connection.request_started();
        let connection = Arc::clone(&connection);
        async move {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                connection.upgraded();
            }
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.keep_alive(true).max_buf_size(MAX_HEADER_BYTES);
    let mut conn = pin!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
    );
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(peer = %peer, error = %error, "connection ended with an error");
                }
                break;
            }
            changed = close_rx.changed(), if !closing => {
                closing = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A response body that keeps its request marked in flight until it is written out (or
/// dropped), so that the idle deadline starts only then.
struct GuardedBody {
    body: Body,
    /// Held for its `Drop`.
    _guard: RequestGuard,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
