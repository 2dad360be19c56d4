//! Images in the agent's terms: the ID and format of an image the coordinator holds, the
//! copy of it a host caches as a base volume, and what evicting one did.
//!
//! Pure types; fetching and verifying images is [`crate::images`], keeping them is each
//! [`super::Hypervisor`] implementation.

use std::fmt;

/// An image in the coordinator's catalogue; also names the host's cached copy of it.
pub type ImageId = vmm_shared::ImageId;

/// How an image's bytes are laid out, as the coordinator detected it from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageFormat {
    Qcow2,
    Raw,
}

impl ImageFormat {
    /// The name libvirt and `qemu-img` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }

    /// `qcow2` or `raw`; anything else is `None`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "qcow2" => Some(Self::Qcow2),
            "raw" => Some(Self::Raw),
            _ => None,
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The image a VM's disk is an overlay of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseImage {
    pub image_id: ImageId,
    pub format: ImageFormat,
}

/// An image cached on the host as a base volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBase {
    pub image_id: ImageId,
    /// The size of the base volume's file.
    pub size_bytes: u64,
    /// The disk size the image declares (its virtual size).
    pub virtual_size_bytes: u64,
}

/// What [`super::Hypervisor::evict_image`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Removed,
    /// Kept: this many disks are overlays of it.
    InUse {
        disks: usize,
    },
    /// There was no cached copy.
    NotCached,
}
