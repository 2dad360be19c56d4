//! The image routes: `POST /api/images`, `PUT /api/images/{id}/file` and
//! `DELETE /api/images/{id}` for administrators (anyone else: 403, before any body is
//! read), `GET /api/images` and `GET /api/images/{id}` for every logged-in user.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use vmm_proto::{EvictImage, coordinator_message};
use vmm_shared::api::images::{CreateImageRequest, ListImagesQuery};
use vmm_shared::{ImageId, VmSize, validate_resource_name};

use super::download::{self, Job};
use super::files::ReceiveError;
use super::store::{self, NewImage};
use super::{AcceptError, Image, ImageStatus, ImageView};
use crate::auth::{AdminUser, CurrentUser};
use crate::error::ApiError;
use crate::http::page::{self, ApiQuery, DEFAULT_CAP, Page};
use crate::http::{ApiJson, ApiPath};
use crate::state::AppState;

/// Longest `os` text, in characters.
const MAX_OS_LEN: usize = 64;
/// Longest login user name (as Linux allows).
const MAX_USER_LEN: usize = 32;
const DEFAULT_USER: &str = "root";

/// The request checked and normalised, or a message naming the field that is wrong.
fn validate(body: CreateImageRequest) -> Result<NewImage, String> {
    validate_resource_name(&body.name)?;
    let os = body.os.filter(|os| !os.is_empty());
    if let Some(os) = &os {
        if os.chars().count() > MAX_OS_LEN {
            return Err(format!("os is longer than {MAX_OS_LEN} characters"));
        }
        if os.chars().any(char::is_control) {
            return Err("os must not contain control characters".into());
        }
    }
    if let Some(gb) = body.min_disk_gb {
        let (min, max) = VmSize::DISK_GB_RANGE;
        if !(min..=max).contains(&gb) {
            return Err(format!("min_disk_gb must be {min}-{max} (got {gb})"));
        }
    }
    let expected_sha256 = body.sha256.map(|sha| validate_sha256(&sha)).transpose()?;
    let default_user = body.default_user.unwrap_or_else(|| DEFAULT_USER.into());
    validate_login_user(&default_user)?;
    let source_url = body
        .source_url
        .map(|url| download::parse_source_url(&url).map(|_| url))
        .transpose()?;
    Ok(NewImage {
        name: body.name,
        os,
        source_url,
        expected_sha256,
        min_disk_gb: body.min_disk_gb,
        default_user,
    })
}

/// A SHA-256 as 64 hex digits, returned lower-case.
fn validate_sha256(text: &str) -> Result<String, String> {
    if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err("sha256 must be 64 hexadecimal digits (the output of sha256sum)".into())
    }
}

/// A login user name as cloud images use them: a lower-case letter or `_`, then lower-case
/// letters, digits, `_` and `-`, at most 32 characters.
fn validate_login_user(user: &str) -> Result<(), String> {
    let mut chars = user.chars();
    let valid = user.len() <= MAX_USER_LEN
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "default_user {user:?} is not a login name: a lower-case letter or '_', then \
             lower-case letters, digits, '_' or '-', at most {MAX_USER_LEN} characters"
        ))
    }
}

/// The image with this ID; otherwise 404.
async fn load(app: &AppState, id: &str) -> Result<Image, ApiError> {
    let not_found = || ApiError::NotFound(format!("no image with ID {id}"));
    let id: ImageId = id.parse().map_err(|_| not_found())?;
    store::find(&app.db, id).await?.ok_or_else(not_found)
}

#[utoipa::path(
    post, path = "/api/images", tag = "images",
    request_body = vmm_shared::api::images::CreateImageRequest,
    responses(
        (status = 201, description = "The image is recorded: `pending` (upload its file) or `downloading`", body = vmm_shared::api::images::ImageView),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The name is taken", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "A value breaks a rule", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn create_image(
    State(app): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiJson(body): ApiJson<CreateImageRequest>,
) -> Result<(StatusCode, Json<ImageView>), ApiError> {
    let new = validate(body).map_err(ApiError::Unprocessable)?;
    let image = store::insert(&app.db, &new).await?;
    match &image.source_url {
        Some(url) => {
            let shown = download::parse_source_url(url)
                .map(|url| download::display_url(&url))
                .unwrap_or_default();
            tracing::info!(admin = %admin.id, image_id = %image.id, name = %image.name, url = %shown,
                "image created; downloading its file");
            // A new image has no transfer yet: the claim cannot fail.
            if let Some(transfer) = app.images.claim_transfer(image.id) {
                let job = Job {
                    image: image.id,
                    url: url.clone(),
                    expected_sha256: image.expected_sha256.clone(),
                };
                download::start(app.db.clone(), app.images.clone(), transfer, job);
            }
        }
        None => {
            tracing::info!(admin = %admin.id, image_id = %image.id, name = %image.name,
                "image created; waiting for its file");
        }
    }
    Ok((StatusCode::CREATED, Json(image.into())))
}

#[utoipa::path(
    get, path = "/api/images", tag = "images",
    params(vmm_shared::api::images::ListImagesQuery),
    responses(
        (status = 200, description = "A page of the catalogue, oldest first", body = Vec<vmm_shared::api::images::ImageView>, headers(
            ("X-Next-Cursor" = String, description = "The next page's cursor, when more follow"),
            ("Link" = String, description = "`<…>; rel=\"next\"`, when more follow"),
        )),
        (status = 422, description = "A parameter is not valid", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn list_images(
    State(app): State<AppState>,
    _user: CurrentUser,
    ApiQuery(query): ApiQuery<ListImagesQuery>,
) -> Result<Response, ApiError> {
    let mut echo = Vec::new();
    let status = page::filter::<ImageStatus>(
        "status",
        query.status.as_deref(),
        "an image status (pending, downloading, ready, error)",
        &mut echo,
    )?;
    if let Some(limit) = query.limit {
        echo.push(("limit", limit.to_string()));
    }
    let page = Page::new(query.limit, query.cursor.as_deref(), Some(DEFAULT_CAP))?;
    let images = store::list_page(&app.db, status, &page).await?;
    Ok(images
        .map(ImageView::from)
        .into_response("/api/images", &echo))
}

#[utoipa::path(
    get, path = "/api/images/{id}", tag = "images",
    params(("id" = String, Path, description = "The image's ID")),
    responses(
        (status = 200, description = "The image", body = vmm_shared::api::images::ImageView),
        (status = 404, description = "No such image", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn get_image(
    State(app): State<AppState>,
    _user: CurrentUser,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<ImageView>, ApiError> {
    Ok(Json(load(&app, &id).await?.into()))
}

/// `PUT /api/images/{id}/file`: the body is the image file, streamed to disk.
#[utoipa::path(
    put, path = "/api/images/{id}/file", tag = "images",
    params(("id" = String, Path, description = "The image's ID")),
    request_body(content = String, content_type = "application/octet-stream", description = "The image file (qcow2 without backing or data files, or raw with a partition table), streamed"),
    responses(
        (status = 200, description = "The file was checked and the image is ready", body = vmm_shared::api::images::ImageView),
        (status = 400, description = "The upload broke off", body = vmm_shared::api::ErrorBody),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such image, or it was deleted during the upload", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "The image is not waiting for a file, or a transfer is in progress", body = vmm_shared::api::ErrorBody),
        (status = 413, description = "The file is larger than `IMAGE_MAX_BYTES`", body = vmm_shared::api::ErrorBody),
        (status = 422, description = "The file is not an acceptable image, or its SHA-256 differs from the expected one", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn upload_file(
    State(app): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImageView>, ApiError> {
    let image = load(&app, &id).await?;
    if !image.status.awaits_file() {
        return Err(ApiError::Conflict(format!(
            "image {:?} is {}; a file can be uploaded only while it is pending or in error \
             (to replace a ready image's file, create a new image)",
            image.name, image.status
        )));
    }
    let transfer = app.images.claim_transfer(image.id).ok_or_else(|| {
        ApiError::Conflict(format!(
            "a transfer of image {:?} is already in progress",
            image.name
        ))
    })?;
    let limit = app.images.max_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit
    {
        return Err(too_large(length, limit));
    }
    let received = app
        .images
        .files
        .receive(
            image.id,
            body.into_data_stream(),
            limit,
            transfer.cancelled(),
        )
        .await
        .map_err(|err| match err {
            ReceiveError::TooLarge { limit } => ApiError::PayloadTooLarge(format!(
                "the file is larger than the limit of {limit} bytes (IMAGE_MAX_BYTES)"
            )),
            ReceiveError::Source(why) => {
                ApiError::BadRequest(format!("the upload broke off: {why}"))
            }
            ReceiveError::Cancelled => ApiError::NotFound(format!(
                "image {:?} was deleted during the upload",
                image.name
            )),
            ReceiveError::Io(err) => ApiError::internal(err),
        })?;
    let expected = image.expected_sha256.as_deref();
    let checked = super::accept(&app.images, image.id, &received, expected)
        .await
        .map_err(|err| match err {
            AcceptError::Refused(why) => {
                tracing::info!(admin = %admin.id, image_id = %image.id, reason = %why, "image upload refused");
                crate::telemetry::record_image_import("upload", false);
                ApiError::Unprocessable(why)
            }
            AcceptError::Unavailable(why) => ApiError::Unavailable(why),
            AcceptError::Io(err) => ApiError::internal(err),
        })?;
    if !store::mark_ready(&app.db, image.id, image.status, &checked).await? {
        app.images.files.remove(image.id).await;
        return Err(ApiError::NotFound(format!(
            "image {:?} was deleted during the upload",
            image.name
        )));
    }
    drop(transfer);
    crate::telemetry::record_image_import("upload", true);
    tracing::info!(admin = %admin.id, image_id = %image.id, name = %image.name, size_bytes = checked.size_bytes,
        format = %checked.format, sha256 = %checked.sha256, "image uploaded and ready");
    let image = store::find(&app.db, image.id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no image with ID {id}")))?;
    Ok(Json(image.into()))
}

/// Middleware of the upload route: a refused upload (403, 413, 422, …) is answered before
/// its body has been read, so the connection cannot carry another request; saying
/// `Connection: close` keeps clients from reusing it.
pub async fn close_connection_when_refused(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = next.run(request).await;
    if !response.status().is_success() {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

fn too_large(length: u64, limit: u64) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "the file is {length} bytes, larger than the limit of {limit} bytes (IMAGE_MAX_BYTES)"
    ))
}

#[utoipa::path(
    delete, path = "/api/images/{id}", tag = "images",
    params(("id" = String, Path, description = "The image's ID")),
    responses(
        (status = 204, description = "The image and its file are gone; hosts were told to evict their copies"),
        (status = 403, description = "Administrators only", body = vmm_shared::api::ErrorBody),
        (status = 404, description = "No such image", body = vmm_shared::api::ErrorBody),
        (status = 409, description = "A VM uses the image", body = vmm_shared::api::ErrorBody),
    )
)]
pub async fn delete_image(
    State(app): State<AppState>,
    AdminUser(admin): AdminUser,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let image = load(&app, &id).await?;
    let deleted = store::delete_unused(&app.db, image.id).await?;
    app.images.cancel_transfer(deleted.id);
    app.images.files.remove(deleted.id).await;
    let evict = coordinator_message::Body::EvictImage(EvictImage {
        image_id: deleted.id.to_string(),
    });
    let hosts = app.registry.notify_all(evict).await;
    tracing::info!(admin = %admin.id, image_id = %deleted.id, name = %deleted.name,
        status = %deleted.status, hosts_told_to_evict = hosts, "image deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> CreateImageRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_request_is_normalised_or_refused_naming_the_field() {
        let new = validate(request(serde_json::json!({
            "name": "debian-12",
            "os": "Debian 12",
            "sha256": "AB".repeat(32),
            "source_url": "https://cloud.example/debian.qcow2",
            "default_user": "debian"
        })))
        .unwrap();
        assert_eq!(new.expected_sha256.unwrap(), "ab".repeat(32));
        assert_eq!(new.default_user, "debian");
        assert_eq!(
            validate(request(serde_json::json!({"name": "x"})))
                .unwrap()
                .default_user,
            "root"
        );

        let refused = |json: serde_json::Value, field: &str| {
            let message = validate(request(json)).unwrap_err();
            assert!(message.contains(field), "{message}");
        };
        refused(serde_json::json!({"name": "a b"}), "name");
        refused(serde_json::json!({"name": "x", "sha256": "abc"}), "sha256");
        refused(
            serde_json::json!({"name": "x", "source_url": "ftp://example/x"}),
            "source_url",
        );
        refused(
            serde_json::json!({"name": "x", "source_url": "file:///etc/passwd"}),
            "source_url",
        );
        refused(
            serde_json::json!({"name": "x", "source_url": "not a url"}),
            "source_url",
        );
        refused(
            serde_json::json!({"name": "x", "default_user": "Root; rm"}),
            "default_user",
        );
        refused(
            serde_json::json!({"name": "x", "min_disk_gb": 0}),
            "min_disk_gb",
        );
        refused(serde_json::json!({"name": "x", "os": "a\nb"}), "os");
    }
}
