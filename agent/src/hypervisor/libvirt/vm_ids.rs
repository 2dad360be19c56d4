//! Which coordinator VM each domain is, read once per domain from its metadata and
//! remembered by domain UUID. One cache serves both the state poll and the statistics
//! collection, which run on the same libvirt thread.

use std::collections::{HashMap, HashSet};

use virt::domain::Domain;
use virt::enumutil::Enum;
use virt::error::ErrorNumber;
use vmm_shared::VmId;

use super::domain_xml::{self, INSTANCE_METADATA_NAMESPACE};

#[derive(Debug, Default)]
pub struct VmIdCache {
    by_uuid: HashMap<String, Option<VmId>>,
}

impl VmIdCache {
    /// The VM ID of `domain` (whose UUID is `uuid`), `None` for a domain the product did not
    /// make. Only a definite answer is remembered: a read that failed for another reason
    /// (libvirt busy, connection lost) is tried again next time, so a product VM never gets
    /// stuck looking hand-made.
    pub fn vm_id(&mut self, uuid: &str, domain: &Domain) -> Option<VmId> {
        if let Some(known) = self.by_uuid.get(uuid) {
            return *known;
        }
        let read = domain.metadata(
            virt::sys::VIR_DOMAIN_METADATA_ELEMENT as i32,
            Some(INSTANCE_METADATA_NAMESPACE),
            0,
        );
        let answer = match read {
            Ok(xml) => Some(domain_xml::parse_instance_vm_id(&xml)),
            Err(error) if error.code() == Enum::Known(ErrorNumber::NoDomainMetadata) => Some(None),
            Err(_) => None,
        };
        match answer {
            Some(vm_id) => {
                self.by_uuid.insert(uuid.to_owned(), vm_id);
                vm_id
            }
            None => None,
        }
    }

    pub fn forget(&mut self, uuid: &str) {
        self.by_uuid.remove(uuid);
    }

    /// Drops the domains that no longer exist.
    pub fn retain_present(&mut self, present: &HashSet<&str>) {
        self.by_uuid
            .retain(|uuid, _| present.contains(uuid.as_str()));
    }
}
