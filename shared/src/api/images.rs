//! The image catalogue: `POST /api/images`, `GET /api/images`, `GET /api/images/{id}`,
//! `PUT /api/images/{id}/file`, `DELETE /api/images/{id}`.

use serde::{Deserialize, Serialize};

use super::api_enum;
use crate::ImageId;

api_enum! {
    /// Where an image is in its life.
    pub enum ImageStatus {
        /// Waiting for its file to be uploaded.
        Pending => "pending",
        /// The coordinator is fetching its file from its `source_url`.
        Downloading => "downloading",
        /// Its file is checked and in place: VMs can be made from it.
        Ready => "ready",
        /// Its transfer failed (`error` says why); a file can still be uploaded.
        Error => "error",
    }
}

impl ImageStatus {
    /// Whether `PUT /api/images/{id}/file` is accepted in this status.
    pub fn awaits_file(self) -> bool {
        matches!(self, ImageStatus::Pending | ImageStatus::Error)
    }
}

api_enum! {
    /// The on-disk formats accepted.
    pub enum DiskFormat {
        Qcow2 => "qcow2",
        Raw => "raw",
    }
}

/// `POST /api/images`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateImageRequest {
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_.-]+$")
    )]
    pub name: String,
    /// Free text, at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// The smallest disk a VM made from it may have, GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_gb: Option<u64>,
    /// An http(s) URL the coordinator downloads the file from; absent: upload it with
    /// `PUT /api/images/{id}/file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// The file's expected SHA-256, 64 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The login user of the image's guests (default `root`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_user: Option<String>,
}

/// An image. Its source URL is not shown: it may carry credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageView {
    pub id: ImageId,
    pub name: String,
    pub os: Option<String>,
    pub status: ImageStatus,
    /// Why the last transfer failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub size_bytes: Option<u64>,
    pub virtual_size_bytes: Option<u64>,
    pub format: Option<DiskFormat>,
    pub sha256: Option<String>,
    pub min_disk_gb: Option<u64>,
    pub default_user: String,
    pub created_at: String,
}

/// `GET /api/images`'s parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "openapi",
    derive(utoipa::IntoParams),
    into_params(parameter_in = Query)
)]
#[serde(deny_unknown_fields)]
pub struct ListImagesQuery {
    /// Items per page, 1-1000 (default: 1000).
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 1000))]
    pub limit: Option<u32>,
    /// The `X-Next-Cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only images of this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<ImageStatus>))]
    pub status: Option<String>,
}
