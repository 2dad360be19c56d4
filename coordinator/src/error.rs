//! The coordinator's one error type. Every handler returns it; it maps once to an HTTP
//! status with a JSON body `{"code", "message"}` and once to a `tonic::Status` for the
//! agent stream. Internal causes are logged, never sent to clients.
//!
//! The stores, the lifecycle and the operation runner return errors of their own domain
//! (`vms::store::Error`, `lifecycle::Refused`, …) that know nothing of HTTP; the `From`
//! impls at the end of this file are the one place that decides their status.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use vmm_shared::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request cannot be parsed (malformed JSON, bad headers).
    #[error("{0}")]
    BadRequest(String),
    /// The request parses but its values are not acceptable.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state (name taken, action invalid in the
    /// VM's state, another operation in flight).
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A host's agent carried out the command and failed.
    #[error("{0}")]
    HostFailed(String),
    /// Nothing can serve the request now (the host is not connected).
    #[error("{0}")]
    Unavailable(String),
    /// No connected host has room for the VM, or no host is connected: a capacity
    /// condition, answered 503 like `Unavailable` but counted apart
    /// (`http_capacity_refusals_total`) so that alerts can tell it from a failure.
    #[error("{0}")]
    NoCapacity(String),
    /// The request took longer than `HTTP_REQUEST_TIMEOUT` (a slow body, typically).
    #[error("{0}")]
    RequestTimeout(String),
    /// The host did not answer in time; the operation's outcome is not known yet.
    #[error("{0}")]
    Timeout(String),
    /// The client or user spent their request budget.
    #[error("{message}")]
    TooManyRequests {
        message: String,
        retry_after_secs: u64,
    },
    /// The request would take the user past a quota limit.
    #[error(transparent)]
    QuotaExceeded(#[from] crate::quotas::QuotaExceeded),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::QuotaExceeded(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::HostFailed(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) | ApiError::NoCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The JSON body clients get: `{"code", "message"}`, plus the quota fields for a
    /// quota refusal.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.status().as_u16(), self.to_string());
        if let ApiError::QuotaExceeded(exceeded) = self {
            body.resource = Some(exceeded.resource.to_owned());
            body.current = Some(exceeded.current);
            body.limit = Some(exceeded.limit);
            body.requested = Some(exceeded.requested);
        }
        body
    }

    /// [`Self::body`] as a JSON value (for records that keep an answer).
    pub fn body_value(&self) -> serde_json::Value {
        let body = self.body();
        serde_json::to_value(&body)
            .unwrap_or_else(|_| serde_json::json!({ "code": body.code, "message": body.message }))
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        ApiError::Internal(err.into())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        ApiError::Internal(anyhow::Error::new(err).context("database error"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(
                error = format!("{cause:#}"),
                "request failed with an internal error"
            );
        }
        let mut response = (status, Json(self.body())).into_response();
        if let ApiError::NoCapacity(_) = &self {
            response.extensions_mut().insert(CapacityRefusal);
        }
        if let ApiError::TooManyRequests {
            retry_after_secs, ..
        } = &self
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(*retry_after_secs),
            );
        }
        response
    }
}

/// Marks a response as a capacity refusal (see [`ApiError::NoCapacity`]) for the metrics.
#[derive(Clone, Copy, Debug)]
pub struct CapacityRefusal;

impl From<ApiError> for tonic::Status {
    fn from(err: ApiError) -> Self {
        let message = err.to_string();
        match err {
            ApiError::BadRequest(_) | ApiError::Unprocessable(_) => {
                tonic::Status::invalid_argument(message)
            }
            ApiError::QuotaExceeded(_) | ApiError::TooManyRequests { .. } => {
                tonic::Status::resource_exhausted(message)
            }
            ApiError::Unauthorized(_) => tonic::Status::unauthenticated(message),
            ApiError::Forbidden(_) => tonic::Status::permission_denied(message),
            ApiError::NotFound(_) => tonic::Status::not_found(message),
            ApiError::Conflict(_) => tonic::Status::failed_precondition(message),
            ApiError::PayloadTooLarge(_) => tonic::Status::resource_exhausted(message),
            ApiError::MethodNotAllowed(_) | ApiError::UnsupportedMediaType(_) => {
                tonic::Status::unimplemented(message)
            }
            ApiError::Unavailable(_) | ApiError::NoCapacity(_) | ApiError::HostFailed(_) => {
                tonic::Status::unavailable(message)
            }
            ApiError::Timeout(_) | ApiError::RequestTimeout(_) => {
                tonic::Status::deadline_exceeded(message)
            }
            ApiError::Internal(cause) => {
                tracing::error!(error = format!("{cause:#}"), "agent stream internal error");
                tonic::Status::internal("internal error")
            }
        }
    }
}

impl From<crate::hosts::DispatchError> for ApiError {
    fn from(err: crate::hosts::DispatchError) -> Self {
        use crate::hosts::DispatchError;
        use vmm_proto::ErrorKind;
        match err {
            DispatchError::NotConnected(_) | DispatchError::Disconnected(_) => {
                ApiError::Unavailable(err.to_string())
            }
            DispatchError::Failed { kind, message } => match kind {
                ErrorKind::Conflict => ApiError::Conflict(message),
                ErrorKind::Invalid => ApiError::Unprocessable(message),
                ErrorKind::Unavailable => ApiError::Unavailable(message),
                ErrorKind::NotFound | ErrorKind::Internal | ErrorKind::Unspecified => {
                    ApiError::HostFailed(format!("the host failed: {message}"))
                }
            },
        }
    }
}

impl From<crate::lifecycle::Refused> for ApiError {
    fn from(err: crate::lifecycle::Refused) -> Self {
        ApiError::Conflict(err.to_string())
    }
}

impl From<crate::operations::store::Error> for ApiError {
    fn from(err: crate::operations::store::Error) -> Self {
        use crate::operations::store::Error;
        match err {
            Error::Busy => ApiError::Conflict(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::operations::runner::Error> for ApiError {
    fn from(err: crate::operations::runner::Error) -> Self {
        use crate::operations::runner::Error;
        match err {
            Error::HostNotConnected(_) => ApiError::Unavailable(err.to_string()),
            Error::VmGone(_) | Error::SnapshotGone(_) => ApiError::NotFound(err.to_string()),
            Error::Refused(err) => err.into(),
            Error::Operation(err) => err.into(),
            Error::NoAnswerYet { .. } => ApiError::Timeout(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::vms::store::Error> for ApiError {
    fn from(err: crate::vms::store::Error) -> Self {
        use crate::vms::store::Error;
        match err {
            Error::NameTaken(_) => ApiError::Conflict(err.to_string()),
            Error::QuotaExceeded(exceeded) => exceeded.into(),
            Error::NoHostConnected | Error::NoRoom(_) => ApiError::NoCapacity(err.to_string()),
            Error::LargerThanEveryHost { .. } => ApiError::Unprocessable(err.to_string()),
            Error::ImageUnavailable(_) => ApiError::Conflict(err.to_string()),
            Error::Operation(err) => err.into(),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::snapshots::store::Error> for ApiError {
    fn from(err: crate::snapshots::store::Error) -> Self {
        use crate::snapshots::store::Error;
        match err {
            Error::NameTaken(_) => ApiError::Conflict(err.to_string()),
            Error::VmGone(_) => ApiError::NotFound(err.to_string()),
            Error::Refused(err) => err.into(),
            Error::QuotaExceeded(exceeded) => exceeded.into(),
            Error::Operation(err) => err.into(),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::images::store::Error> for ApiError {
    fn from(err: crate::images::store::Error) -> Self {
        use crate::images::store::Error;
        match err {
            Error::NameTaken(_) | Error::InUse { .. } => ApiError::Conflict(err.to_string()),
            Error::NotFound(_) => ApiError::NotFound(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::keys::store::Error> for ApiError {
    fn from(err: crate::keys::store::Error) -> Self {
        use crate::keys::store::Error;
        match err {
            Error::NameTaken(_) | Error::AlreadyStored(_) => ApiError::Conflict(err.to_string()),
            Error::TooMany => ApiError::Unprocessable(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::api_tokens::store::Error> for ApiError {
    fn from(err: crate::api_tokens::store::Error) -> Self {
        use crate::api_tokens::store::Error;
        match err {
            Error::NameTaken(_) => ApiError::Conflict(err.to_string()),
            Error::TooMany => ApiError::Unprocessable(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::users::store::Error> for ApiError {
    fn from(err: crate::users::store::Error) -> Self {
        use crate::users::store::Error;
        match err {
            Error::UsernameTaken(_) => ApiError::Conflict(err.to_string()),
            Error::Database(err) => err.into(),
        }
    }
}

impl From<crate::pki::enrolment::IssueError> for ApiError {
    fn from(err: crate::pki::enrolment::IssueError) -> Self {
        use crate::pki::enrolment::IssueError;
        use crate::pki::join_tokens::Refused;
        match err {
            IssueError::BadRequest(message) => ApiError::BadRequest(message),
            IssueError::Token(refused @ Refused::OtherHost(_)) => {
                ApiError::Forbidden(refused.to_string())
            }
            IssueError::Token(refused) => ApiError::Unauthorized(refused.to_string()),
            IssueError::Revoked => ApiError::Unauthorized(err.to_string()),
            IssueError::Signing(cause) => {
                ApiError::Internal(anyhow::Error::new(cause).context("issuing a certificate"))
            }
            IssueError::Database(cause) => ApiError::from(cause),
        }
    }
}
