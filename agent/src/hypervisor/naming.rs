//! How the product names what it makes on a host, the same for every implementation: a
//! VM's domain is `vmm-<vm_id>`, its disk volume `vmm-<vm_id>.qcow2`. Users' names are
//! never hypervisor identifiers.

use vmm_shared::VmId;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_volume_names_are_recognised() {
        let vm_id = VmId::new_random();
        assert_eq!(vm_id_of_volume(&volume_name(vm_id)), Some(vm_id));
        for other in ["vmm-.qcow2", "vmm-abc.qcow2", "data.qcow2", "vmm-x", ""] {
            assert_eq!(vm_id_of_volume(other), None, "{other}");
        }
    }
}
