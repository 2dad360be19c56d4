//! Cached images, overlays and seeds in the agent's storage pool.
//!
//! - A cached image is the base volume `vmm-image-<id>`: the verified file the agent
//!   fetched, moved into the pool's directory (renamed where it is on the same file system,
//!   copied under a temporary name and renamed otherwise, so a base is never seen half
//!   written), made read-only (0444) and never written or chowned again: domains name it
//!   with `relabel='no'`.
//! - A VM's disk from an image is a qcow2 overlay of the base made by libvirt's storage
//!   API (`<backingStore>` in the volume XML, the base's format given, never probed),
//!   grown to the VM's disk size.
//! - A seed is a raw volume `vmm-<vm id>-seed.img` whose bytes are uploaded through a
//!   libvirt stream.
//! - A base is in use while a volume of the pool is an overlay of it; then it is not
//!   evicted or replaced.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use virt::error::ErrorNumber;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use vmm_shared::VmId;

use super::{LibvirtHost, domain_xml, failed, has_code};
use crate::hypervisor::{
    BaseImage, CachedBase, Eviction, FailureKind, HypervisorError, ImageId, image_id_of_volume,
    image_volume_name, seed_volume_name, volume_name,
};

/// The name a base being copied into the pool has until it is complete. Swept at start.
pub(super) const IMPORTING_PREFIX: &str = ".vmm-importing-";

impl LibvirtHost {
    /// Refuses image contents on a driver whose volumes hold none.
    pub(super) fn require_file_storage(&self) -> Result<(), HypervisorError> {
        if self.holds_files {
            Ok(())
        } else {
            Err(HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "libvirt at {} keeps its volumes in memory without contents, so it cannot \
                     hold images or cloud-init seeds: VMs from images need a host with real \
                     storage (e.g. qemu:///system)",
                    self.settings.uri
                ),
            ))
        }
    }

    /// The directory the pool keeps its volumes in.
    fn pool_directory(&self, pool: &StoragePool) -> Result<PathBuf, HypervisorError> {
        let xml = pool.xml_desc(0).map_err(failed(format!(
            "reading storage pool {}",
            self.settings.storage_pool
        )))?;
        domain_xml::pool_target_path(&xml)
            .map(PathBuf::from)
            .filter(|path| path.is_dir())
            .ok_or_else(|| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!(
                        "storage pool {} has no directory on this host to keep images in",
                        self.settings.storage_pool
                    ),
                )
            })
    }

    pub(super) fn list_cached_images(&mut self) -> Result<Vec<CachedBase>, HypervisorError> {
        if !self.holds_files {
            return Ok(Vec::new());
        }
        let pool = self.storage_pool()?;
        let volumes = pool.list_all_volumes(0).map_err(failed(format!(
            "listing the volumes of pool {}",
            self.settings.storage_pool
        )))?;
        let mut cached = Vec::new();
        for volume in volumes {
            let Some(image_id) = volume.name().ok().as_deref().and_then(image_id_of_volume) else {
                continue;
            };
            cached.push(cached_base(image_id, &volume)?);
        }
        Ok(cached)
    }

    pub(super) fn import_base(
        &mut self,
        image: &BaseImage,
        staged: &Path,
    ) -> Result<CachedBase, HypervisorError> {
        self.require_file_storage()?;
        let pool = self.storage_pool()?;
        let directory = self.pool_directory(&pool)?;
        let name = image_volume_name(image.image_id);
        match pool.lookup_storage_vol_by_name(&name) {
            Ok(stale) => {
                let path = stale
                    .path()
                    .map_err(failed(format!("reading volume {name}")))?;
                let overlays = self.overlays_of(&pool, &path)?;
                if overlays > 0 {
                    return Err(HypervisorError::new(
                        FailureKind::Conflict,
                        format!(
                            "image {} is cached already and {overlays} disk(s) are overlays of \
                             that copy; it is not replaced",
                            image.image_id
                        ),
                    ));
                }
                stale
                    .delete(0)
                    .map_err(failed(format!("deleting the stale base {name}")))?;
            }
            Err(error) if has_code(&error, ErrorNumber::NoStorageVolume) => {}
            Err(error) => return Err(failed(format!("looking up volume {name}"))(error)),
        }
        let io_failure = |action: &str| {
            let action = action.to_owned();
            move |error: io::Error| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!("{action} for image {}: {error}", image.image_id),
                )
            }
        };
        std::fs::set_permissions(staged, std::fs::Permissions::from_mode(0o444))
            .map_err(io_failure("making the fetched file read-only"))?;
        move_into(staged, &directory, &name)
            .map_err(io_failure("moving the fetched file into the storage pool"))?;
        pool.refresh(0).map_err(failed(format!(
            "refreshing storage pool {}",
            self.settings.storage_pool
        )))?;
        let volume = pool
            .lookup_storage_vol_by_name(&name)
            .map_err(failed(format!("looking up the new base {name}")))?;
        tracing::info!(image_id = %image.image_id, volume = %name, "image cached as a base volume");
        cached_base(image.image_id, &volume)
    }

    pub(super) fn evict_base(&mut self, image_id: ImageId) -> Result<Eviction, HypervisorError> {
        if !self.holds_files {
            return Ok(Eviction::NotCached);
        }
        let pool = self.storage_pool()?;
        let name = image_volume_name(image_id);
        let base = match pool.lookup_storage_vol_by_name(&name) {
            Ok(base) => base,
            Err(error) if has_code(&error, ErrorNumber::NoStorageVolume) => {
                return Ok(Eviction::NotCached);
            }
            Err(error) => return Err(failed(format!("looking up volume {name}"))(error)),
        };
        let path = base
            .path()
            .map_err(failed(format!("reading volume {name}")))?;
        let disks = self.overlays_of(&pool, &path)?;
        if disks > 0 {
            return Ok(Eviction::InUse { disks });
        }
        base.delete(0)
            .map_err(failed(format!("deleting the cached image {name}")))?;
        Ok(Eviction::Removed)
    }

    /// How many volumes of the pool are overlays of the file at `base_path`.
    fn overlays_of(&self, pool: &StoragePool, base_path: &str) -> Result<usize, HypervisorError> {
        let volumes = pool.list_all_volumes(0).map_err(failed(format!(
            "listing the volumes of pool {}",
            self.settings.storage_pool
        )))?;
        Ok(volumes
            .iter()
            .filter_map(|volume| volume.xml_desc(0).ok())
            .filter(|xml| domain_xml::volume_backing_path(xml).as_deref() == Some(base_path))
            .count())
    }

    /// The VM's disk as an overlay of the cached `image`, of `capacity_bytes`; returns it
    /// and the base's path.
    pub(super) fn create_overlay(
        &self,
        pool: &StoragePool,
        vm_id: VmId,
        image: &BaseImage,
        capacity_bytes: u64,
    ) -> Result<(StorageVol, String), HypervisorError> {
        let base_name = image_volume_name(image.image_id);
        let base = match pool.lookup_storage_vol_by_name(&base_name) {
            Ok(base) => base,
            Err(error) if has_code(&error, ErrorNumber::NoStorageVolume) => {
                return Err(HypervisorError::new(
                    FailureKind::Unavailable,
                    format!("image {} is not cached on this host", image.image_id),
                ));
            }
            Err(error) => return Err(failed(format!("looking up volume {base_name}"))(error)),
        };
        let base_path = base
            .path()
            .map_err(failed(format!("reading volume {base_name}")))?;
        let virtual_size = base
            .info()
            .map_err(failed(format!("reading volume {base_name}")))?
            .capacity;
        if capacity_bytes < virtual_size {
            return Err(HypervisorError::new(
                FailureKind::Invalid,
                format!(
                    "a disk of {capacity_bytes} bytes is smaller than image {}, which declares \
                     {virtual_size} bytes",
                    image.image_id
                ),
            ));
        }
        let name = volume_name(vm_id);
        let overlay = StorageVol::create_xml(
            pool,
            &domain_xml::overlay_volume_xml(&name, capacity_bytes, &base_path, image.format),
            0,
        )
        .map_err(failed(format!(
            "creating disk volume {name} as an overlay of image {}",
            image.image_id
        )))?;
        Ok((overlay, base_path))
    }

    /// The seed volume of `vm_id`, holding `bytes`.
    pub(super) fn create_seed(
        &self,
        pool: &StoragePool,
        vm_id: VmId,
        bytes: &[u8],
    ) -> Result<StorageVol, HypervisorError> {
        let name = seed_volume_name(vm_id);
        let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let volume = StorageVol::create_xml(pool, &domain_xml::raw_volume_xml(&name, length), 0)
            .map_err(failed(format!("creating seed volume {name}")))?;
        if let Err(error) = self.upload(&volume, bytes) {
            let _ = volume.delete(0);
            return Err(failed(format!("writing seed volume {name}"))(error));
        }
        Ok(volume)
    }

    fn upload(&self, volume: &StorageVol, bytes: &[u8]) -> Result<(), virt::error::Error> {
        let stream = Stream::new(&self.connection, 0)?;
        let length = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        volume.upload(&stream, 0, length, 0)?;
        let mut sent = 0;
        while sent < bytes.len() {
            match stream.send(&bytes[sent..]) {
                Ok(count) if count > 0 => sent += count.unsigned_abs(),
                Ok(_) => {
                    let _ = stream.abort();
                    return Err(virt::error::Error::last_error());
                }
                Err(error) => {
                    let _ = stream.abort();
                    return Err(error);
                }
            }
        }
        stream.finish()
    }
}

fn cached_base(image_id: ImageId, volume: &StorageVol) -> Result<CachedBase, HypervisorError> {
    let name = image_volume_name(image_id);
    let physical = volume
        .info_flags(virt::sys::VIR_STORAGE_VOL_GET_PHYSICAL)
        .map_err(failed(format!("reading volume {name}")))?;
    let info = volume
        .info()
        .map_err(failed(format!("reading volume {name}")))?;
    Ok(CachedBase {
        image_id,
        size_bytes: physical.allocation,
        virtual_size_bytes: info.capacity,
    })
}

/// Moves `file` to `directory/name`: a rename where both are on one file system, else a
/// copy to a temporary name in `directory` renamed into place (a reader never sees a
/// partial file under `name`) and the removal of `file`.
fn move_into(file: &Path, directory: &Path, name: &str) -> io::Result<()> {
    let target = directory.join(name);
    match std::fs::rename(file, &target) {
        Ok(()) => return Ok(()),
        Err(error) if error.kind() == io::ErrorKind::CrossesDevices => {}
        Err(error) => return Err(error),
    }
    let temporary = directory.join(format!("{IMPORTING_PREFIX}{name}"));
    let copied = std::fs::copy(file, &temporary)
        .and_then(|_| std::fs::File::open(&temporary)?.sync_all())
        .and_then(|()| std::fs::rename(&temporary, &target));
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    std::fs::remove_file(file)
}
