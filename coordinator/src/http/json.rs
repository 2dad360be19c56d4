//! `ApiJson<T>`: axum's `Json` with its rejections mapped to `ApiError`, so a body that is
//! not JSON answers 400, well-formed JSON with wrong or missing fields or a value of the
//! wrong type answers 422, and both carry a message that says what to fix.
//!
//! Every body the API takes is a JSON object: any other JSON value (an array, which serde
//! would read as the struct's fields in order, a string, a number) is 422. serde_json reports
//! some type mismatches (a number where an enum's string goes) as syntax errors; a body that
//! parses as JSON is never answered 400 for them.

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::de::{DeserializeOwned, IgnoredAny};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be JSON with `Content-Type: application/json`".into(),
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge("the request body is too large".into())
            } else {
                ApiError::BadRequest(rejection.body_text())
            }
        })?;
        let starts_as_object = bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'{');
        if !starts_as_object && serde_json::from_slice::<IgnoredAny>(&bytes).is_ok() {
            return Err(ApiError::Unprocessable(
                "the request body must be a JSON object".into(),
            ));
        }
        match axum::Json::<T>::from_bytes(&bytes) {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(JsonRejection::JsonSyntaxError(syntax))
                if serde_json::from_slice::<IgnoredAny>(&bytes).is_ok() =>
            {
                Err(type_mismatch::<T>(&bytes)
                    .unwrap_or_else(|| ApiError::Unprocessable(syntax.body_text())))
            }
            Err(rejection) => Err(rejection_to_error(rejection)),
        }
    }
}

/// `Content-Type: application/json`, or `application/<anything>+json`, parameters allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    subtype == "json" || subtype.ends_with("+json")
}

/// The 422 for valid JSON that serde_json's streaming parser called a syntax error: the
/// same document read as a value names the field and the types.
fn type_mismatch<T: DeserializeOwned>(bytes: &[u8]) -> Option<ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let error = serde_path_to_error::deserialize::<_, T>(value).err()?;
    let path = error.path().to_string();
    let inner = error.into_inner();
    Some(ApiError::Unprocessable(if path == "." {
        format!("Failed to deserialize the JSON body into the target type: {inner}")
    } else {
        format!("Failed to deserialize the JSON body into the target type: {path}: {inner}")
    }))
}

fn rejection_to_error(rejection: JsonRejection) -> ApiError {
    let detail = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) => ApiError::Unprocessable(detail),
        JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest(detail),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "the request body must be JSON with `Content-Type: application/json`".into(),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::PayloadTooLarge("the request body is too large".into())
        }
        _ => ApiError::BadRequest(detail),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Action {
        Start,
        Stop,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body1 {
        action: Action,
    }

    async fn extract(content_type: &str, body: &str) -> Result<ApiJson<Body1>, ApiError> {
        let request = Request::builder()
            .method("POST")
            .header(CONTENT_TYPE, content_type)
            .body(Body::from(body.to_owned()))
            .unwrap();
        ApiJson::<Body1>::from_request(request, &()).await
    }

    #[tokio::test]
    async fn wrong_types_are_422_and_broken_json_is_400() {
        for body in [
            r#"{"action": 1}"#,
            r#"{"action": null}"#,
            r#"{"action": [1]}"#,
            r#"{"action": true}"#,
            r#"{"action": "fly"}"#,
            r#"{"action": "start", "extra": 1}"#,
            r#"{}"#,
            r#"[]"#,
            r#"["start"]"#,
            r#""start""#,
            "12",
        ] {
            let error = extract("application/json", body).await.unwrap_err();
            assert_eq!(
                error.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {error}"
            );
        }
        let error = extract("application/json", r#"{"action": 1}"#)
            .await
            .unwrap_err();
        assert!(
            error.to_string().contains("action"),
            "names the field: {error}"
        );
        for body in [r#"{"action": "#, "not json", "", r#"{"action": "start"} x"#] {
            let error = extract("application/json", body).await.unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{body:?}: {error}");
        }
        let error = extract("text/plain", r#"{"action": "start"}"#)
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        extract("application/json; charset=utf-8", r#"{"action": "start"}"#)
            .await
            .unwrap();
        extract("application/vnd.api+json", r#"{"action": "stop"}"#)
            .await
            .unwrap();
    }
}
