//! The start-up sweep of the agent's storage pool: disk volumes (blank or overlays) and
//! seed volumes named like a product VM's (`vmm-<uuid>.qcow2`, `vmm-<uuid>-seed.img`) for
//! which no domain of that UUID exists are what an agent killed in the middle of a create
//! leaves (the volumes are made first, then the domain is defined); a file still named
//! `.vmm-importing-…` is an image copy into the pool that was cut short. They are deleted,
//! and each deletion is logged. Cached images (`vmm-image-<id>`) are never swept.
//!
//! Only at start, before the agent accepts any command: later, a volume without a domain may
//! be a create in progress. Volumes with other names are never touched, and neither is a
//! volume whose UUID some domain has (whoever made that domain). Tested with the contract
//! every implementation keeps (`hypervisor::contract_tests`).

use std::collections::HashSet;

use super::images::IMPORTING_PREFIX;
use super::{LibvirtHost, failed};
use crate::hypervisor::{HypervisorError, vm_id_of_seed_volume, vm_id_of_volume};

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
            if name.starts_with(IMPORTING_PREFIX) {
                let volume = pool
                    .lookup_storage_vol_by_name(&name)
                    .map_err(failed(format!("looking up volume {name}")))?;
                volume
                    .delete(0)
                    .map_err(failed(format!("deleting the interrupted import {name}")))?;
                tracing::warn!(volume = %name, "deleted an image copy cut short by the agent's stop");
                removed.push(name);
                continue;
            }
            let Some(vm_id) = vm_id_of_volume(&name).or_else(|| vm_id_of_seed_volume(&name)) else {
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
                "deleted a volume without a domain (left by an interrupted create)");
            removed.push(name);
        }
        Ok(removed)
    }
}
