//! HTTP plumbing shared by every route: the JSON body and path extractors that turn
//! request problems into our error type, the fallbacks for unknown routes and methods, the
//! server loop with its connection caps and timeouts ([`server`]), the whole-request
//! deadline ([`timeout`]), and who a request came from behind proxies ([`forwarded`]).

pub mod forwarded;
mod json;
mod path;
pub mod server;
pub mod timeout;

pub use json::ApiJson;
pub use path::ApiPath;

use axum::http::{Method, Uri};

use crate::error::ApiError;

pub async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no such endpoint: {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} is not allowed on {}", method, uri.path()))
}
