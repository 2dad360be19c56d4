//! Statistics of every domain for the metrics endpoint, from ONE libvirt bulk-stats call
//! (`virConnectGetAllDomainStats`), plus the host's capacity.
//!
//! What comes from where:
//! - per domain, from the bulk call's `state`, `cpu-total`, `balloon`, `vcpu`, `interface`
//!   and `block` groups; the domain's name and UUID are read from the returned domain
//!   handle (no round trip);
//! - the VM ID from the product's instance metadata, read once per domain and cached;
//! - an interface's bridge (which the bulk call does not report) from the domain's XML,
//!   read again only when the domain's set of interfaces changes (tap names change on
//!   every start);
//! - drivers that do not implement a group (the test driver answers only `state`), and
//!   domains busy with a long job (which answer only what needs no job), get the missing
//!   CPU and memory figures from `virDomainGetInfo`, for active domains only. On a QEMU
//!   host whose domains are not busy there is no per-domain call.
//!
//! Only reads; runs on the hypervisor thread like every libvirt call.

use std::collections::{HashMap, HashSet};

use virt::connect::Connect;
use virt::domain::Domain;
use vmm_libvirt_stats::{DomainStats, ParamValue, StatGroups, all_domain_stats, flags};

use super::vm_ids::VmIdCache;
use crate::hypervisor::sample::{DomainSample, HostSample, PoolSample, StatsSample};
use crate::hypervisor::{FailureKind, HypervisorError};

/// No domain has more devices than this; a larger index in a parameter name is ignored.
const MAX_DEVICES: usize = 4096;

/// What is remembered between collections, per domain UUID, so that each collection costs
/// one bulk call and no per-domain calls.
#[derive(Debug, Default)]
pub struct StatsCache {
    bridges: HashMap<String, InterfaceBridges>,
}

/// A domain's interface bridges, valid for the interface names they were read with.
#[derive(Debug, Default)]
struct InterfaceBridges {
    names: Vec<String>,
    bridge_by_device: HashMap<String, String>,
}

/// Collects one [`StatsSample`]. Fails only if the bulk call fails; a host figure libvirt
/// will not give is left out.
pub fn collect(
    connection: &Connect,
    storage_pool: &str,
    cache: &mut StatsCache,
    vm_ids: &mut VmIdCache,
) -> Result<StatsSample, HypervisorError> {
    let groups = StatGroups::STATE
        | StatGroups::CPU_TOTAL
        | StatGroups::BALLOON
        | StatGroups::VCPU
        | StatGroups::INTERFACE
        | StatGroups::BLOCK;
    // NOWAIT: a domain busy with a long job (a snapshot, a migration) answers what needs
    // no job instead of holding up every other domain's statistics until it is done.
    let records = all_domain_stats(connection, groups, flags::NOWAIT).map_err(|error| {
        HypervisorError::new(
            FailureKind::Unavailable,
            format!("reading domain statistics: {}", error.message()),
        )
    })?;
    let mut domains = Vec::with_capacity(records.len());
    for record in &records {
        // Gone between the call and now: left out, the next collection agrees.
        if let Some(domain) = domain_sample(record, cache, vm_ids) {
            domains.push(domain);
        }
    }
    let present: HashSet<&str> = domains.iter().map(|domain| domain.uuid.as_str()).collect();
    vm_ids.retain_present(&present);
    cache
        .bridges
        .retain(|uuid, _| present.contains(uuid.as_str()));
    Ok(StatsSample {
        domains,
        host: host_sample(connection, storage_pool),
    })
}

fn domain_sample(
    record: &DomainStats,
    cache: &mut StatsCache,
    vm_ids: &mut VmIdCache,
) -> Option<DomainSample> {
    let domain = &record.domain;
    let uuid = domain.uuid_string().ok()?;
    let name = domain.name().ok()?;
    let mut sample = parse_params(&record.params);
    sample.vm_id = vm_ids.vm_id(&uuid, domain);
    sample.uuid = uuid;
    sample.name = name;
    if sample.is_active() {
        fill_from_info_if_missing(domain, &mut sample);
        fill_bridges(domain, &mut sample, cache);
    } else {
        // libvirt reports leftovers (an old CPU time, the defined memory) for shut-off
        // domains; a domain that does not run uses nothing.
        sample.cpu_time_ns = None;
        sample.virtual_cpus = None;
        sample.maximum_memory_kib = None;
        sample.memory_kib = None;
        sample.blocks.clear();
        sample.interfaces.clear();
    }
    Some(sample)
}

/// Turns the flat `name=value` parameters of one bulk-stats record into a sample (name,
/// UUID and VM ID left empty).
pub fn parse_params(params: &[(String, ParamValue)]) -> DomainSample {
    let mut sample = DomainSample::default();
    for (name, value) in params {
        let number = value.as_u64();
        match name.as_str() {
            "state.state" => sample.state = number.and_then(|n| u32::try_from(n).ok()).unwrap_or(0),
            "cpu.time" => sample.cpu_time_ns = number,
            "balloon.current" => sample.memory_kib = number,
            "balloon.maximum" => sample.maximum_memory_kib = number,
            "vcpu.current" => sample.virtual_cpus = number,
            other => {
                if let Some((index, field)) = device_field(other, "block.") {
                    let block = slot(&mut sample.blocks, index);
                    match field {
                        "name" => block.target_device = text(value),
                        "path" => block.source_file = text(value),
                        "rd.bytes" => block.read_bytes = number,
                        "rd.reqs" => block.read_requests = number,
                        "wr.bytes" => block.write_bytes = number,
                        "wr.reqs" => block.write_requests = number,
                        _ => {}
                    }
                } else if let Some((index, field)) = device_field(other, "net.") {
                    let interface = slot(&mut sample.interfaces, index);
                    match field {
                        "name" => interface.target_device = text(value),
                        "rx.bytes" => interface.receive_bytes = number,
                        "rx.pkts" => interface.receive_packets = number,
                        "rx.errs" => interface.receive_errors = number,
                        "rx.drop" => interface.receive_drops = number,
                        "tx.bytes" => interface.transmit_bytes = number,
                        "tx.pkts" => interface.transmit_packets = number,
                        "tx.errs" => interface.transmit_errors = number,
                        "tx.drop" => interface.transmit_drops = number,
                        _ => {}
                    }
                }
            }
        }
    }
    // A device libvirt listed without a name cannot be labelled.
    sample
        .blocks
        .retain(|block| !block.target_device.is_empty());
    sample
        .interfaces
        .retain(|interface| !interface.target_device.is_empty());
    sample
}

/// `block.3.rd.bytes` with prefix `block.` → `(3, "rd.bytes")`.
fn device_field<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?;
    let (index, field) = rest.split_once('.')?;
    let index: usize = index.parse().ok()?;
    (index < MAX_DEVICES).then_some((index, field))
}

fn slot<T: Default>(devices: &mut Vec<T>, index: usize) -> &mut T {
    if devices.len() <= index {
        devices.resize_with(index + 1, T::default);
    }
    &mut devices[index]
}

fn text(value: &ParamValue) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// For drivers without the `cpu-total`, `balloon` or `vcpu` groups: one `virDomainGetInfo`.
fn fill_from_info_if_missing(domain: &Domain, sample: &mut DomainSample) {
    if sample.cpu_time_ns.is_some()
        && sample.virtual_cpus.is_some()
        && sample.maximum_memory_kib.is_some()
        && sample.memory_kib.is_some()
    {
        return;
    }
    let Ok(info) = domain.info() else {
        return;
    };
    sample.cpu_time_ns.get_or_insert(info.cpu_time);
    sample
        .virtual_cpus
        .get_or_insert(u64::from(info.nr_virt_cpu));
    sample.maximum_memory_kib.get_or_insert(info.max_mem);
    sample.memory_kib.get_or_insert(info.memory);
}

fn fill_bridges(domain: &Domain, sample: &mut DomainSample, cache: &mut StatsCache) {
    if sample.interfaces.is_empty() {
        cache.bridges.remove(&sample.uuid);
        return;
    }
    let names: Vec<String> = sample
        .interfaces
        .iter()
        .map(|interface| interface.target_device.clone())
        .collect();
    let known = cache
        .bridges
        .get(&sample.uuid)
        .is_some_and(|bridges| bridges.names == names);
    if !known {
        let bridge_by_device = domain
            .xml_desc(0)
            .map(|xml| interface_bridges(&xml))
            .unwrap_or_default();
        cache.bridges.insert(
            sample.uuid.clone(),
            InterfaceBridges {
                names,
                bridge_by_device,
            },
        );
    }
    if let Some(bridges) = cache.bridges.get(&sample.uuid) {
        for interface in &mut sample.interfaces {
            if let Some(bridge) = bridges.bridge_by_device.get(&interface.target_device) {
                interface.source_bridge.clone_from(bridge);
            }
        }
    }
}

/// Host-side device → bridge, for every interface of a domain's (live) XML that has both.
/// A document that does not parse gives none.
pub fn interface_bridges(domain_xml: &str) -> HashMap<String, String> {
    let Ok(document) = roxmltree::Document::parse(domain_xml) else {
        return HashMap::new();
    };
    let child_attribute = |interface: roxmltree::Node<'_, '_>, tag: &str, attribute: &str| {
        interface
            .children()
            .find(|child| child.has_tag_name(tag))
            .and_then(|child| child.attribute(attribute))
            .map(str::to_owned)
    };
    document
        .root_element()
        .children()
        .filter(|child| child.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .filter(|device| device.has_tag_name("interface"))
        .filter_map(|interface| {
            let device = child_attribute(interface, "target", "dev")?;
            let bridge = child_attribute(interface, "source", "bridge")?;
            Some((device, bridge))
        })
        .collect()
}

fn host_sample(connection: &Connect, storage_pool: &str) -> HostSample {
    let node = connection.node_info().ok();
    let pool = connection
        .lookup_storage_pool_by_name(storage_pool)
        .and_then(|pool| pool.info())
        .ok()
        .map(|info| PoolSample {
            name: storage_pool.to_owned(),
            capacity_bytes: info.capacity,
            allocation_bytes: info.allocation,
            available_bytes: info.available,
        });
    HostSample {
        cpus: node.as_ref().map(|node| node.cpus),
        memory_bytes: node.map(|node| node.memory.saturating_mul(1024)),
        pool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, ParamValue)]) -> Vec<(String, ParamValue)> {
        pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }

    #[test]
    fn bulk_parameters_become_a_sample() {
        use ParamValue::{Int, String as Text, UInt, ULLong};
        let sample = parse_params(&params(&[
            ("state.state", Int(1)),
            ("state.reason", Int(1)),
            ("cpu.time", ULLong(1_772_439_000)),
            ("balloon.current", ULLong(65_536)),
            ("balloon.maximum", ULLong(131_072)),
            ("vcpu.current", UInt(2)),
            ("vcpu.maximum", UInt(4)),
            ("vcpu.0.time", ULLong(9)),
            ("net.count", UInt(1)),
            ("net.0.name", Text("vnet0".into())),
            ("net.0.rx.bytes", ULLong(90)),
            ("net.0.tx.drop", ULLong(3)),
            ("block.count", UInt(2)),
            ("block.0.name", Text("vda".into())),
            ("block.0.path", Text("/images/a.qcow2".into())),
            ("block.0.rd.bytes", ULLong(512)),
            ("block.0.rd.reqs", ULLong(1)),
            ("block.0.wr.bytes", ULLong(0)),
            ("block.0.wr.reqs", ULLong(0)),
            ("block.1.name", Text("sda".into())),
            ("block.99999999.rd.bytes", ULLong(1)),
        ]));
        assert_eq!(sample.state, 1);
        assert_eq!(sample.cpu_time_ns, Some(1_772_439_000));
        assert_eq!(sample.memory_kib, Some(65_536));
        assert_eq!(sample.maximum_memory_kib, Some(131_072));
        assert_eq!(sample.virtual_cpus, Some(2));
        assert_eq!(sample.interfaces.len(), 1);
        assert_eq!(sample.interfaces[0].target_device, "vnet0");
        assert_eq!(sample.interfaces[0].receive_bytes, Some(90));
        assert_eq!(sample.interfaces[0].transmit_drops, Some(3));
        assert_eq!(sample.interfaces[0].receive_packets, None);
        assert_eq!(sample.blocks.len(), 2);
        assert_eq!(sample.blocks[0].source_file, "/images/a.qcow2");
        assert_eq!(sample.blocks[0].read_bytes, Some(512));
        // An empty CD-ROM: a name, no file, no figures.
        assert_eq!(sample.blocks[1].target_device, "sda");
        assert_eq!(sample.blocks[1].source_file, "");
        assert_eq!(sample.blocks[1].read_bytes, None);
    }

    #[test]
    fn bridges_are_read_from_the_live_xml() {
        let xml = "<domain><devices>
            <interface type='bridge'>
              <mac address='52:54:00:aa:bb:cc'/>
              <source bridge='br&amp;0'/>
              <target dev='vnet7'/>
            </interface>
            <interface type=\"network\">
              <source network=\"default\" portid=\"x\" bridge=\"virbr0\"/>
              <target dev=\"vnet8\"/>
            </interface>
            <interface type='user'><mac address='52:54:00:00:00:01'/></interface>
            <interface type='ethernet'><target dev='tap1'/></interface>
        </devices></domain>";
        let bridges = interface_bridges(xml);
        assert_eq!(bridges.len(), 2);
        assert_eq!(bridges["vnet7"], "br&0");
        assert_eq!(bridges["vnet8"], "virbr0");
    }

    #[test]
    fn attributes_match_whole_names_only() {
        let xml = "<domain><devices><interface type='bridge'>\
            <source portbridge='nope'/><target portdev='x'/></interface></devices></domain>";
        assert!(interface_bridges(xml).is_empty());
        assert!(interface_bridges("<domain><devices><interface").is_empty());
    }
}
