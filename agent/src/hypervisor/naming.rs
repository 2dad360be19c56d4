//! How the product names what it makes on a host, the same for every implementation: a
//! VM's domain is `vmm-<vm_id>`, its disk volume `vmm-<vm_id>.qcow2`, its cloud-init seed
//! `vmm-<vm_id>-seed.img`, and the cached copy of an image `vmm-image-<image_id>`. Users'
//! names are never hypervisor identifiers.

use vmm_shared::VmId;

use super::ImageId;

/// Bytes in one GiB; disk sizes on the wire are GB and the agent allocates them as GiB.
pub const BYTES_PER_GIB: u64 = 1_073_741_824;

/// The domain name of a product VM.
pub fn domain_name(vm_id: VmId) -> String {
    format!("vmm-{vm_id}")
}

/// The storage volume holding a product VM's disk.
pub fn volume_name(vm_id: VmId) -> String {
    format!("vmm-{vm_id}.qcow2")
}

/// The VM ID a volume name belongs to, if it is a product disk's name.
pub fn vm_id_of_volume(name: &str) -> Option<VmId> {
    name.strip_prefix("vmm-")?
        .strip_suffix(".qcow2")?
        .parse()
        .ok()
}

/// The storage volume holding a product VM's cloud-init seed.
pub fn seed_volume_name(vm_id: VmId) -> String {
    format!("vmm-{vm_id}-seed.img")
}

/// The VM ID a volume name belongs to, if it is a product seed's name.
pub fn vm_id_of_seed_volume(name: &str) -> Option<VmId> {
    name.strip_prefix("vmm-")?
        .strip_suffix("-seed.img")?
        .parse()
        .ok()
}

/// The base volume holding a host's cached copy of an image.
pub fn image_volume_name(image_id: ImageId) -> String {
    format!("vmm-image-{image_id}")
}

/// The image a volume name belongs to, if it is a cached image's name.
pub fn image_id_of_volume(name: &str) -> Option<ImageId> {
    name.strip_prefix("vmm-image-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_and_image_volume_names_are_recognised() {
        let vm_id = VmId::new_random();
        let image_id = ImageId::new_random();
        assert_eq!(vm_id_of_seed_volume(&seed_volume_name(vm_id)), Some(vm_id));
        assert_eq!(
            image_id_of_volume(&image_volume_name(image_id)),
            Some(image_id)
        );
        // No name is taken for another kind.
        assert_eq!(vm_id_of_volume(&seed_volume_name(vm_id)), None);
        assert_eq!(vm_id_of_seed_volume(&volume_name(vm_id)), None);
        assert_eq!(vm_id_of_volume(&image_volume_name(image_id)), None);
        assert_eq!(image_id_of_volume(&volume_name(vm_id)), None);
        for other in [
            "vmm-image-",
            "vmm-image-x",
            "vmm--seed.img",
            "vmm-image-a.qcow2",
        ] {
            assert_eq!(image_id_of_volume(other), None, "{other}");
            assert_eq!(vm_id_of_seed_volume(other), None, "{other}");
        }
    }

    #[test]
    fn product_volume_names_are_recognised() {
        let vm_id = VmId::new_random();
        assert_eq!(vm_id_of_volume(&volume_name(vm_id)), Some(vm_id));
        for other in ["vmm-.qcow2", "vmm-abc.qcow2", "data.qcow2", "vmm-x", ""] {
            assert_eq!(vm_id_of_volume(other), None, "{other}");
        }
    }
}
