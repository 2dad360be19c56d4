//! The snapshot XML the agent hands to libvirt, and the few facts it reads back out of
//! libvirt's snapshot XML (the state the domain was in, the creation time).
//!
//! As in [`super::domain_xml`], documents are built from typed values and every
//! interpolated string goes through [`escape`], and libvirt's XML is read with `roxmltree`.
//! Nothing here talks to libvirt.

use roxmltree::Document;
use vmm_shared::{SnapshotId, VmId};

use super::domain_xml::escape;
use crate::hypervisor::{PowerState, domain_name};

/// What a new snapshot holds besides the disks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMemory {
    /// A full system checkpoint of a running domain: disks and RAM, inside the qcow2 image,
    /// so reverting brings the guest back running where it was.
    Internal,
    /// Disks only: the domain is stopped and has no RAM to save.
    None,
}

/// Everything needed to write the snapshot XML of one product snapshot.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotDefinition {
    pub vm_id: VmId,
    pub snapshot_id: SnapshotId,
    pub memory: SnapshotMemory,
}

impl SnapshotDefinition {
    /// The `<domainsnapshot>` document. Disks are left to libvirt's default, which for a
    /// qcow2 disk and internal (or no) memory is an internal qcow2 snapshot; asking for
    /// `disk-only` instead would make libvirt write an *external* overlay file and switch
    /// the domain's disk over to it.
    pub fn to_xml(self) -> String {
        let name = escape(&self.snapshot_id.to_string());
        let description = escape(&format!(
            "vmm snapshot {} of {}",
            self.snapshot_id,
            domain_name(self.vm_id)
        ));
        let memory = match self.memory {
            SnapshotMemory::Internal => "internal",
            SnapshotMemory::None => "no",
        };
        format!(
            "<domainsnapshot>
  <name>{name}</name>
  <description>{description}</description>
  <memory snapshot='{memory}'/>
</domainsnapshot>
"
        )
    }
}

/// What the agent reads from libvirt's description of one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFacts {
    /// The domain's state when the snapshot was taken.
    pub taken_in_state: PowerState,
    /// Unix seconds, from `<creationTime>`.
    pub created_at_unix: i64,
}

/// Reads the state and creation time from a snapshot's XML (as returned by
/// `virDomainSnapshotGetXMLDesc`): the `<state>` and `<creationTime>` children of
/// `<domainsnapshot>` itself, so nothing inside the embedded `<domain>` copy can be taken
/// for them.
///
/// `<state>` uses libvirt's domain state names; `shutoff` (and the rare `nostate`) is a
/// stopped domain, `disk-snapshot` an external disk-only snapshot of a running one.
pub fn parse_snapshot_facts(snapshot_xml: &str) -> Option<SnapshotFacts> {
    let document = Document::parse(snapshot_xml).ok()?;
    let snapshot = document.root_element();
    let own_text = |tag: &str| {
        snapshot
            .children()
            .find(|child| child.has_tag_name(tag))
            .map(|child| child.text().unwrap_or_default().trim())
    };
    let created_at_unix = own_text("creationTime")?.parse().ok()?;
    let taken_in_state = match own_text("state")? {
        "running" | "blocked" | "shutdown" => PowerState::Running,
        "paused" | "pmsuspended" => PowerState::Paused,
        "shutoff" | "nostate" => PowerState::Stopped,
        "crashed" => PowerState::Crashed,
        _ => PowerState::Unknown,
    };
    Some(SnapshotFacts {
        taken_in_state,
        created_at_unix,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VM_ID: &str = "6f1c2a4e-8d7b-4c1e-9f3a-2b5d7e9a1c3f";
    const SNAPSHOT_ID: &str = "0b7e3d55-2c4f-4a8e-9d61-5f2a7c9e1b30";

    fn definition(memory: SnapshotMemory) -> String {
        SnapshotDefinition {
            vm_id: VM_ID.parse().unwrap(),
            snapshot_id: SNAPSHOT_ID.parse().unwrap(),
            memory,
        }
        .to_xml()
    }

    #[test]
    fn snapshot_xml_names_the_snapshot_by_its_id() {
        let running = definition(SnapshotMemory::Internal);
        assert!(running.contains(&format!("<name>{SNAPSHOT_ID}</name>")));
        assert!(running.contains(&format!(
            "<description>vmm snapshot {SNAPSHOT_ID} of vmm-{VM_ID}</description>"
        )));
        assert!(running.contains("<memory snapshot='internal'/>"));
        assert!(!running.contains("<disks"), "disks are libvirt's default");
        assert!(definition(SnapshotMemory::None).contains("<memory snapshot='no'/>"));
    }

    #[test]
    fn facts_are_read_from_the_snapshots_own_elements() {
        // Shaped like libvirt 11.3's answer; the embedded domain has a <name> and could
        // one day have anything else.
        let xml = "<domainsnapshot>
  <name>s1</name>
  <description>d</description>
  <state>running</state>
  <parent><name>s0</name></parent>
  <creationTime>1795521286</creationTime>
  <memory snapshot='internal'/>
  <disks><disk name='vda' snapshot='internal'/></disks>
  <domain type='qemu'><name>vm</name><state>shutoff</state></domain>
  <active>1</active>
</domainsnapshot>";
        assert_eq!(
            parse_snapshot_facts(xml),
            Some(SnapshotFacts {
                taken_in_state: PowerState::Running,
                created_at_unix: 1_795_521_286,
            })
        );
        let stopped = xml.replace("<state>running</state>", "<state>shutoff</state>");
        assert_eq!(
            parse_snapshot_facts(&stopped).map(|facts| facts.taken_in_state),
            Some(PowerState::Stopped)
        );
        let paused = xml.replace("<state>running</state>", "<state>paused</state>");
        assert_eq!(
            parse_snapshot_facts(&paused).map(|facts| facts.taken_in_state),
            Some(PowerState::Paused)
        );
    }

    #[test]
    fn snapshot_xml_without_the_facts_is_not_understood() {
        assert_eq!(parse_snapshot_facts("<domainsnapshot/>"), None);
        // Only in the embedded domain: not the snapshot's.
        assert_eq!(
            parse_snapshot_facts(
                "<domainsnapshot><creationTime>1</creationTime>\
                 <domain><state>running</state></domain></domainsnapshot>"
            ),
            None
        );
        assert_eq!(
            parse_snapshot_facts(
                "<domainsnapshot><state>running</state>\
                 <creationTime>soon</creationTime></domainsnapshot>"
            ),
            None
        );
    }
}
