//! What a new VM boots from: its image (by ID or name, ready), its disk size against the
//! image's, and what its cloud-init is given (the VM's name as hostname, the SSH keys — the
//! caller's stored ones and inline ones, each checked like a stored key — and the user
//! data). Everything here is checked before anything is recorded: a refusal creates nothing
//! and claims no quota.
//!
//! A VM without an image gets a blank disk and no seed, as before images existed; keys and
//! user data without an image are refused rather than silently dropped.

use std::collections::HashSet;

use vmm_proto::{CloudInit, ImageRef};
use vmm_shared::{ImageId, SshKeyId, VmSize};

use crate::error::ApiError;
use crate::images::{Image, ImageStatus, gib_rounded_up, store as image_store};
use crate::keys::{self, store as key_store};
use crate::state::AppState;

/// Largest `user_data`, in bytes.
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;
/// Most inline keys one request may give.
pub const MAX_INLINE_KEYS: usize = 100;

/// What the request asked for, besides name and size.
#[derive(Debug, Default)]
pub struct BootRequest<'a> {
    pub image: Option<&'a str>,
    pub ssh_keys: Option<&'a [String]>,
    pub ssh_authorized_keys: Option<&'a [String]>,
    pub user_data: Option<&'a str>,
    pub disk_gb: Option<u64>,
}

/// What the VM is made from, checked.
#[derive(Debug)]
pub struct Boot {
    pub image: Option<Image>,
    pub disk_gb: u64,
    /// Set for every VM made from an image.
    pub cloud_init: Option<CloudInit>,
}

impl Boot {
    pub fn image_ref(&self) -> Option<ImageRef> {
        self.image.as_ref().and_then(Image::to_proto)
    }
}

/// Resolves and checks what `user` asked the VM `name` to boot from.
pub async fn resolve(
    app: &AppState,
    user: vmm_shared::UserId,
    name: &str,
    request: &BootRequest<'_>,
) -> Result<Boot, ApiError> {
    if let Some(user_data) = request.user_data
        && user_data.len() > MAX_USER_DATA_BYTES
    {
        return Err(ApiError::Unprocessable(format!(
            "user_data is {} bytes; at most {MAX_USER_DATA_BYTES} (64 KiB) are allowed",
            user_data.len()
        )));
    }
    let Some(reference) = request.image else {
        let asks_for_seed = request.user_data.is_some_and(|data| !data.is_empty())
            || request.ssh_keys.is_some_and(|ids| !ids.is_empty())
            || request
                .ssh_authorized_keys
                .is_some_and(|keys| !keys.is_empty());
        if asks_for_seed {
            return Err(ApiError::Unprocessable(
                "ssh_keys, ssh_authorized_keys and user_data need an \"image\": a blank disk has \
                 no operating system to give them to"
                    .into(),
            ));
        }
        return Ok(Boot {
            image: None,
            disk_gb: request.disk_gb.unwrap_or(VmSize::DEFAULT_DISK_GB),
            cloud_init: None,
        });
    };
    let image = find_ready_image(app, reference).await?;
    let disk_gb = disk_gb_for(&image, request.disk_gb).map_err(ApiError::Unprocessable)?;
    let ssh_authorized_keys = collect_keys(app, user, request).await?;
    Ok(Boot {
        image: Some(image),
        disk_gb,
        cloud_init: Some(CloudInit {
            hostname: name.to_owned(),
            ssh_authorized_keys,
            user_data: request.user_data.unwrap_or_default().to_owned(),
        }),
    })
}

/// The image named by ID or name; 422 when there is none, 409 when it is not ready.
async fn find_ready_image(app: &AppState, reference: &str) -> Result<Image, ApiError> {
    let by_id = match reference.parse::<ImageId>() {
        Ok(id) => image_store::find(&app.db, id).await?,
        Err(_) => None,
    };
    let image = match by_id {
        Some(image) => image,
        None => image_store::find_by_name(&app.db, reference)
            .await?
            .ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "image: there is no image with ID or name {reference:?} (GET /api/images \
                     lists them)"
                ))
            })?,
    };
    match image.status {
        ImageStatus::Ready => Ok(image),
        ImageStatus::Error => Err(ApiError::Conflict(format!(
            "image {:?} is in error ({}); it cannot be used",
            image.name,
            image.error.as_deref().unwrap_or("no file")
        ))),
        status => Err(ApiError::Conflict(format!(
            "image {:?} is {status}; wait until it is ready",
            image.name
        ))),
    }
}

/// The VM's disk size: as asked when it holds the image, by default the largest of 10 GiB,
/// the image's virtual size rounded up to GiB and the image's `min_disk_gb`.
pub fn disk_gb_for(image: &Image, requested: Option<u64>) -> Result<u64, String> {
    let virtual_size = image.virtual_size_bytes.unwrap_or_default();
    let min_disk_gb = image.min_disk_gb.unwrap_or_default();
    let needed_gb = gib_rounded_up(virtual_size).max(min_disk_gb);
    let Some(disk_gb) = requested else {
        return Ok(needed_gb.max(VmSize::DEFAULT_DISK_GB));
    };
    let holds_image = disk_gb.saturating_mul(crate::images::BYTES_PER_GIB) >= virtual_size;
    if !holds_image {
        return Err(format!(
            "disk_gb {disk_gb} is smaller than image {:?}, whose virtual size is {virtual_size} \
             bytes ({} GiB); use a disk_gb of at least {needed_gb}",
            image.name,
            gib_rounded_up(virtual_size)
        ));
    }
    if disk_gb < min_disk_gb {
        return Err(format!(
            "disk_gb {disk_gb} is smaller than image {:?}'s min_disk_gb {min_disk_gb}; use a \
             disk_gb of at least {needed_gb}",
            image.name
        ));
    }
    Ok(disk_gb)
}

/// The keys the guest gets: the caller's stored keys named by `ssh_keys` (all of them when
/// it is absent) and the inline `ssh_authorized_keys`, each once, in that order.
async fn collect_keys(
    app: &AppState,
    user: vmm_shared::UserId,
    request: &BootRequest<'_>,
) -> Result<Vec<String>, ApiError> {
    let inline = request.ssh_authorized_keys.unwrap_or_default();
    if inline.len() > MAX_INLINE_KEYS {
        return Err(ApiError::Unprocessable(format!(
            "ssh_authorized_keys has {} keys; at most {MAX_INLINE_KEYS} are allowed",
            inline.len()
        )));
    }
    let mut inline_keys = Vec::with_capacity(inline.len());
    for (index, text) in inline.iter().enumerate() {
        let key = keys::parse_public_key(text).map_err(|why| {
            ApiError::Unprocessable(format!("ssh_authorized_keys[{index}]: {why}"))
        })?;
        inline_keys.push(key);
    }
    let stored = match request.ssh_keys {
        None => key_store::list(&app.db, user).await?,
        Some(ids) => {
            let mut stored = Vec::with_capacity(ids.len());
            for id in ids {
                let not_found = || {
                    ApiError::Unprocessable(format!(
                        "ssh_keys: you have no key with ID {id:?} (GET /api/keys lists yours)"
                    ))
                };
                let id: SshKeyId = id.parse().map_err(|_| not_found())?;
                let key = key_store::find_owned(&app.db, user, id)
                    .await?
                    .ok_or_else(not_found)?;
                stored.push(key);
            }
            stored
        }
    };
    let mut seen = HashSet::new();
    let all = stored
        .into_iter()
        .map(|key| (key.fingerprint, key.public_key))
        .chain(
            inline_keys
                .into_iter()
                .map(|key| (key.fingerprint, key.public_key)),
        );
    Ok(all
        .filter(|(fingerprint, _)| seen.insert(fingerprint.clone()))
        .map(|(_, public_key)| public_key)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{BYTES_PER_GIB, DiskFormat};

    fn image(virtual_size_bytes: u64, min_disk_gb: Option<u64>) -> Image {
        Image {
            id: ImageId::new_random(),
            name: "debian".into(),
            os: None,
            status: ImageStatus::Ready,
            error: None,
            source_url: None,
            expected_sha256: None,
            min_disk_gb,
            default_user: "debian".into(),
            size_bytes: Some(1),
            virtual_size_bytes: Some(virtual_size_bytes),
            format: Some(DiskFormat::Qcow2),
            sha256: Some("aa".into()),
            created_at: String::new(),
        }
    }

    #[test]
    fn the_default_disk_holds_the_image_and_its_minimum() {
        assert_eq!(disk_gb_for(&image(2 * BYTES_PER_GIB, None), None), Ok(10));
        assert_eq!(
            disk_gb_for(&image(20 * BYTES_PER_GIB + 1, None), None),
            Ok(21)
        );
        assert_eq!(disk_gb_for(&image(BYTES_PER_GIB, Some(40)), None), Ok(40));
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused_naming_both() {
        let big = image(3 * BYTES_PER_GIB / 2, None);
        let message = disk_gb_for(&big, Some(1)).unwrap_err();
        assert!(message.contains("disk_gb 1"), "{message}");
        assert!(
            message.contains(&(3 * BYTES_PER_GIB / 2).to_string()),
            "{message}"
        );
        assert!(message.contains("at least 2"), "{message}");
        assert_eq!(disk_gb_for(&big, Some(2)), Ok(2));

        let minimum = image(BYTES_PER_GIB, Some(8));
        let message = disk_gb_for(&minimum, Some(5)).unwrap_err();
        assert!(
            message.contains("disk_gb 5") && message.contains("min_disk_gb 8"),
            "{message}"
        );
        assert_eq!(disk_gb_for(&minimum, Some(8)), Ok(8));
    }
}
