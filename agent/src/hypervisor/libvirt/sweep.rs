//! The start-up sweep of the agent's storage pool: disk volumes named like a product VM's
//! (`vmm-<uuid>.qcow2`) for which no domain of that UUID exists are what an agent killed in
//! the middle of a create leaves (the volume is made first, then the domain is defined).
//! They are deleted, and each deletion is logged.
//!
//! Only at start, before the agent accepts any command: later, a volume without a domain may
//! be a create in progress. Volumes with other names are never touched, and neither is a
//! volume whose UUID some domain has (whoever made that domain).

use std::collections::HashSet;

use vmm_shared::VmId;

use super::{LibvirtHost, failed};
use crate::hypervisor::HypervisorError;

/// The VM ID a volume name belongs to, if it is a product disk's name.
pub(crate) fn vm_id_of_volume(name: &str) -> Option<VmId> {
    name.strip_prefix("vmm-")?
        .strip_suffix(".qcow2")?
        .parse()
        .ok()
}

impl LibvirtHost {
    pub(super) fn sweep_orphan_volumes(&mut self) -> Result<Vec<String>, HypervisorError> {
        let pool = self.storage_pool()?;
        pool.refresh(0).map_err(failed(format!(
            "refreshing storage pool {}",
            self.settings.storage_pool
        )))?;
        let domains = self
            .connection
            .list_all_domains(0)
            .map_err(failed("listing domains"))?;
        let mut uuids = HashSet::with_capacity(domains.len());
        for domain in &domains {
            let uuid = domain
                .uuid_string()
                .map_err(failed("reading a domain's UUID"))?;
            uuids.insert(uuid);
        }
        let names = pool.list_volumes().map_err(failed(format!(
            "listing the volumes of pool {}",
            self.settings.storage_pool
        )))?;
        let mut removed = Vec::new();
        for name in names {
            let Some(vm_id) = vm_id_of_volume(&name) else {
                continue;
            };
            if uuids.contains(&vm_id.to_string()) {
                continue;
            }
            let volume = pool
                .lookup_storage_vol_by_name(&name)
                .map_err(failed(format!("looking up volume {name}")))?;
            volume
                .delete(0)
                .map_err(failed(format!("deleting orphaned volume {name}")))?;
            tracing::warn!(volume = %name, %vm_id, pool = %self.settings.storage_pool,
                "deleted a disk volume without a domain (left by an interrupted create)");
            removed.push(name);
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::Hypervisor;
    use crate::hypervisor::domain_xml::{self, BYTES_PER_GIB, volume_name};
    use crate::hypervisor::libvirt::test_driver_tests::open_test_host;

    #[test]
    fn product_volume_names_are_recognised() {
        let vm_id = VmId::new_random();
        assert_eq!(vm_id_of_volume(&volume_name(vm_id)), Some(vm_id));
        for other in ["vmm-.qcow2", "vmm-abc.qcow2", "data.qcow2", "vmm-x", ""] {
            assert_eq!(vm_id_of_volume(other), None, "{other}");
        }
    }

    #[test]
    fn only_product_volumes_without_a_domain_are_swept() {
        let mut host = open_test_host();
        let pool = host.storage_pool().unwrap();
        let make_volume = |name: &str| {
            virt::storage_vol::StorageVol::create_xml(
                &pool,
                &domain_xml::volume_xml(name, BYTES_PER_GIB),
                0,
            )
            .unwrap();
        };
        let orphan = VmId::new_random();
        make_volume(&volume_name(orphan));
        make_volume("someone-elses.qcow2");
        let alive = VmId::new_random();
        host.create_vm(
            alive,
            &crate::hypervisor::VmSpec {
                display_name: "alive".into(),
                cpu: 1,
                memory_mib: 128,
                disk_gb: 1,
                start: false,
            },
        )
        .unwrap();

        let removed = host.sweep_orphan_volumes().unwrap();
        assert_eq!(removed, vec![volume_name(orphan)]);
        let left = pool.list_volumes().unwrap();
        assert!(left.contains(&"someone-elses.qcow2".to_owned()), "{left:?}");
        assert!(left.contains(&volume_name(alive)), "{left:?}");
        assert!(!left.contains(&volume_name(orphan)), "{left:?}");
        assert!(host.sweep_orphan_volumes().unwrap().is_empty());
    }
}
