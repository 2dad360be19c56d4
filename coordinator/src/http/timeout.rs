//! The whole-request deadline (`HTTP_REQUEST_TIMEOUT`): from the end of a request's headers
//! to its answer, reading the body included. A request that takes longer is answered
//! `408` with a JSON body; what it started on a host goes on (VM operations run in their own
//! task and are recorded as operations), and the deadline is always at least 5 s longer
//! than `OPERATION_TIMEOUT_SECS` (`crate::config::REQUEST_TIMEOUT_MARGIN`), so a request
//! waiting for a host answers 504 first.
//!
//! Long-lived routes are exempt by route template: a WebSocket route needs no entry (its
//! handler answers `101` at once, and the upgraded connection leaves the server's deadlines,
//! see `crate::connections`), but a route whose handler legitimately takes longer than any
//! deadline before answering goes into [`LONG_LIVED_ROUTES`].

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Route templates (as in the router, e.g. `/api/vms/{id}/console`) without a whole-request
/// deadline.
///
/// - `/api/console/{ticket}`: the console's WebSocket answers `101` only once the host has
///   attached the console, which its handler waits for up to its own bound
///   (`ConsoleSettings::open_timeout`, 10 s), whatever `HTTP_REQUEST_TIMEOUT` is; it reads
///   no body. The upgraded connection leaves every deadline anyway.
pub const LONG_LIVED_ROUTES: &[&str] = &["/api/console/{ticket}"];

/// Middleware: answers 408 when the handler has not answered within the deadline.
pub async fn limit_request_time(
    State(app): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let long_lived = request
        .extensions()
        .get::<MatchedPath>()
        .is_some_and(|path| LONG_LIVED_ROUTES.contains(&path.as_str()));
    if long_lived {
        return next.run(request).await;
    }
    let deadline: Duration = app.settings.request_timeout;
    match tokio::time::timeout(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::RequestTimeout(format!(
            "the request was not completed within {} (HTTP_REQUEST_TIMEOUT)",
            vmm_shared::duration::display(deadline)
        ))
        .into_response(),
    }
}
