//! HTTP plumbing shared by every route: the JSON body and path extractors that turn
//! request problems into our error type, the fallbacks for unknown routes and methods, the
//! server loop with its connection caps and timeouts ([`server`]), the whole-request
//! deadline ([`timeout`]), who a request came from behind proxies ([`forwarded`]), and the
//! log line of each request ([`access_log`]).

pub mod access_log;
pub mod forwarded;
mod json;
pub mod page;
mod path;
pub mod server;
pub mod timeout;

pub use json::ApiJson;
pub use path::ApiPath;

use axum::http::{Method, Uri};

use crate::error::ApiError;

/// The answer to a request whose handler panicked (`CatchPanicLayer`): the same JSON 500 as
/// any internal error; the panic is logged, never sent.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    ApiError::internal(anyhow::anyhow!("a request handler panicked: {detail}")).into_response()
}

pub async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", method, uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_answers_the_json_500_and_keeps_its_message_to_the_log() {
        let response = panic_response(Box::new("secret detail"));
        assert_eq!(
            response.status(),
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        );
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["code"], 500);
        assert_eq!(body["message"], "internal error");
    }
}
