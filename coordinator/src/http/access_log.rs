//! One log line per request, with its method, path, request ID, status, latency and, for a
//! state-changing request, its operation ID; the request's span carries the same fields to
//! every line logged while it is handled.
//!
//! Reads that succeed (`GET` and `HEAD` answered below 400) are logged at `debug`, everything
//! else at `info`: every change, and every refusal or failure, read or not. A fleet's clients
//! poll; at thousands of reads a second an `info` line for each one cost the coordinator
//! about an eighth of its throughput (BENCHMARKS.md) and flooded the journal with lines that
//! say nothing happened. `RUST_LOG=vmm_coordinator::http::access_log=debug` shows them.

use std::time::Instant;

use axum::extract::Request;
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;
use tracing::Instrument;

use crate::operations::OPERATION_ID_HEADER;

/// The access-log middleware (`axum::middleware::from_fn`).
pub async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // Clones share the request's bytes: nothing is copied unless a line is written.
    let uri = request.uri().clone();
    let path = uri.path();
    let request_id = RequestIdText(
        request
            .extensions()
            .get::<RequestId>()
            .map(|id| id.header_value().clone()),
    );
    let read = method == Method::GET || method == Method::HEAD;
    let span = if read {
        tracing::debug_span!("request", %method, %path, %request_id)
    } else {
        tracing::info_span!(
            "request",
            %method,
            %path,
            %request_id,
            operation_id = tracing::field::Empty
        )
    };
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_millis() as u64;
    let operation_id = response
        .headers()
        .get(OPERATION_ID_HEADER)
        .and_then(|value| value.to_str().ok());
    if let Some(operation_id) = operation_id {
        span.record("operation_id", tracing::field::display(operation_id));
    }
    match (read, status < 400) {
        (true, true) => tracing::debug!(parent: &span, status, latency_ms, "request finished"),
        // The read's span is at `debug`, off by default: the line names the request itself.
        (true, false) => tracing::info!(parent: &span, %method, %path, %request_id, status,
            latency_ms, "request finished"),
        (false, _) => tracing::info!(parent: &span, status, latency_ms, "request finished"),
    }
    response
}

/// A request's ID as logged: `-` when it has none or it is not text.
struct RequestIdText(Option<HeaderValue>);

impl std::fmt::Display for RequestIdText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.as_ref().and_then(|id| id.to_str().ok());
        f.write_str(text.unwrap_or("-"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// What a subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    /// The log lines of one request per (method, path) at `level`.
    async fn logged(level: tracing::Level) -> String {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let router = Router::new()
            .route("/read", get(|| async { "fine" }))
            .route(
                "/change",
                axum::routing::post(|| async { ([(OPERATION_ID_HEADER, "op-1")], "changed") }),
            )
            .layer(axum::middleware::from_fn(log_request));
        for (method, path, status) in [
            ("GET", "/read", StatusCode::OK),
            ("GET", "/missing", StatusCode::NOT_FOUND),
            ("POST", "/change", StatusCode::OK),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap();
            let response = router.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), status, "{method} {path}");
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[tokio::test]
    async fn reads_that_succeed_are_logged_at_debug_and_the_rest_at_info() {
        let info = logged(tracing::Level::INFO).await;
        let lines: Vec<&str> = info.lines().collect();
        assert_eq!(lines.len(), 2, "{info}");
        assert!(
            lines[0].contains("method=GET path=/missing") && lines[0].contains("status=404"),
            "a failed read names itself: {info}"
        );
        assert!(
            lines[1].contains("method=POST")
                && lines[1].contains("path=/change")
                && lines[1].contains("operation_id=op-1")
                && lines[1].contains("status=200"),
            "a change with its operation: {info}"
        );
        let debug = logged(tracing::Level::DEBUG).await;
        assert!(
            debug.contains("path=/read") && debug.contains("status=200"),
            "{debug}"
        );
    }
}
