//! The libvirt part of the agent's `/metrics`: per-domain families under the names and
//! labels `prometheus-libvirt-exporter` (Debian's 0.2.0) uses, so existing dashboards and
//! alerts keep working, plus the host's capacity.
//!
//! Compared with the exporter:
//! - every per-domain series also carries `vm_id`, the coordinator's VM ID (empty for
//!   domains the product did not create);
//! - `libvirt_domain_state_code` covers defined-but-stopped domains too (state 5), so a
//!   stopped VM is visible; every other per-domain family, and `libvirt_domains_number`,
//!   covers running (active) domains only, as the exporter's do, so sums over a host stay
//!   what they were.

use super::exposition::{Exposition, MetricType::Counter, MetricType::Gauge};
use crate::hypervisor::sample::{BlockSample, DomainSample, InterfaceSample, StatsSample};

const NANOS_PER_SECOND: f64 = 1e9;

/// Writes `libvirt_up 1` and every family of `sample`.
pub fn write_sample(out: &mut Exposition, sample: &StatsSample) {
    out.single(
        "libvirt_up",
        "Whether scraping libvirt's metrics was successful.",
        Gauge,
        true,
    );
    let domains: Vec<Labelled<'_>> = sample
        .domains
        .iter()
        .map(|domain| Labelled {
            vm_id: domain.vm_id.map(|id| id.to_string()).unwrap_or_default(),
            domain,
        })
        .collect();
    let active = domains.iter().filter(|d| d.domain.is_active()).count() as u64;
    out.single(
        "libvirt_domains_number",
        "Number of domains.",
        Gauge,
        active,
    );

    write_domain_family(
        out,
        &domains,
        "libvirt_domain_state_code",
        "State of the domain.",
        Gauge,
        |d| Some(d.state.into()),
    );

    write_domain_family(
        out,
        &domains,
        "libvirt_domain_info_cpu_time_seconds_total",
        "Amount of CPU time used by the domain, in seconds.",
        Counter,
        |d| {
            d.cpu_time_ns
                .map(|ns| (ns as f64 / NANOS_PER_SECOND).into())
        },
    );
    write_domain_family(
        out,
        &domains,
        "libvirt_domain_info_maximum_memory_bytes",
        "Maximum allowed memory of the domain, in bytes.",
        Gauge,
        |d| {
            d.maximum_memory_kib
                .map(|kib| kib.saturating_mul(1024).into())
        },
    );
    write_domain_family(
        out,
        &domains,
        "libvirt_domain_info_memory_usage_bytes",
        "Memory usage of the domain, in bytes.",
        Gauge,
        |d| d.memory_kib.map(|kib| kib.saturating_mul(1024).into()),
    );
    write_domain_family(
        out,
        &domains,
        "libvirt_domain_info_virtual_cpus",
        "Number of virtual CPUs for the domain.",
        Gauge,
        |d| d.virtual_cpus.map(Into::into),
    );

    let block_families: [(&'static str, &'static str, BlockField); 4] = [
        (
            "libvirt_domain_block_stats_read_bytes_total",
            "Number of bytes read from a block device, in bytes.",
            |b| b.read_bytes,
        ),
        (
            "libvirt_domain_block_stats_read_requests_total",
            "Number of read requests from a block device.",
            |b| b.read_requests,
        ),
        (
            "libvirt_domain_block_stats_write_bytes_total",
            "Number of bytes written from a block device, in bytes.",
            |b| b.write_bytes,
        ),
        (
            "libvirt_domain_block_stats_write_requests_total",
            "Number of write requests from a block device.",
            |b| b.write_requests,
        ),
    ];
    for (name, help, field) in block_families {
        let mut family = out.family(name, help, Counter);
        for labelled in &domains {
            for block in &labelled.domain.blocks {
                if let Some(value) = field(block) {
                    let [domain, uuid, vm_id] = labelled.labels();
                    family.sample(
                        &[
                            domain,
                            ("source_file", &block.source_file),
                            ("target_device", &block.target_device),
                            uuid,
                            vm_id,
                        ],
                        value,
                    );
                }
            }
        }
    }

    let interface_families: [(&'static str, &'static str, InterfaceField); 8] = [
        (
            "libvirt_domain_interface_stats_receive_bytes_total",
            "Number of bytes received on a network interface, in bytes.",
            |i| i.receive_bytes,
        ),
        (
            "libvirt_domain_interface_stats_receive_packets_total",
            "Number of packets received on a network interface.",
            |i| i.receive_packets,
        ),
        (
            "libvirt_domain_interface_stats_receive_errors_total",
            "Number of packet receive errors on a network interface.",
            |i| i.receive_errors,
        ),
        (
            "libvirt_domain_interface_stats_receive_drops_total",
            "Number of packet receive drops on a network interface.",
            |i| i.receive_drops,
        ),
        (
            "libvirt_domain_interface_stats_transmit_bytes_total",
            "Number of bytes transmitted on a network interface, in bytes.",
            |i| i.transmit_bytes,
        ),
        (
            "libvirt_domain_interface_stats_transmit_packets_total",
            "Number of packets transmitted on a network interface.",
            |i| i.transmit_packets,
        ),
        (
            "libvirt_domain_interface_stats_transmit_errors_total",
            "Number of packet transmit errors on a network interface.",
            |i| i.transmit_errors,
        ),
        (
            "libvirt_domain_interface_stats_transmit_drops_total",
            "Number of packet transmit drops on a network interface.",
            |i| i.transmit_drops,
        ),
    ];
    for (name, help, field) in interface_families {
        let mut family = out.family(name, help, Counter);
        for labelled in &domains {
            for interface in &labelled.domain.interfaces {
                if let Some(value) = field(interface) {
                    let [domain, uuid, vm_id] = labelled.labels();
                    family.sample(
                        &[
                            domain,
                            ("source_bridge", &interface.source_bridge),
                            ("target_device", &interface.target_device),
                            uuid,
                            vm_id,
                        ],
                        value,
                    );
                }
            }
        }
    }

    write_host(out, sample);
}

/// Only `libvirt_up 0`: libvirt did not answer, so nothing about its domains is known.
pub fn write_unavailable(out: &mut Exposition) {
    out.single(
        "libvirt_up",
        "Whether scraping libvirt's metrics was successful.",
        Gauge,
        false,
    );
}

type BlockField = fn(&BlockSample) -> Option<u64>;
type InterfaceField = fn(&InterfaceSample) -> Option<u64>;

/// A domain with its label values worked out once.
struct Labelled<'a> {
    domain: &'a DomainSample,
    vm_id: String,
}

impl Labelled<'_> {
    fn labels(&self) -> [(&'static str, &str); 3] {
        [
            ("domain", &self.domain.name),
            ("uuid", &self.domain.uuid),
            ("vm_id", &self.vm_id),
        ]
    }
}

fn write_domain_family(
    out: &mut Exposition,
    domains: &[Labelled<'_>],
    name: &'static str,
    help: &'static str,
    kind: super::exposition::MetricType,
    value: impl Fn(&DomainSample) -> Option<super::exposition::Value>,
) {
    let mut family = out.family(name, help, kind);
    for labelled in domains {
        if let Some(value) = value(labelled.domain) {
            family.sample(&labelled.labels(), value);
        }
    }
}

fn write_host(out: &mut Exposition, sample: &StatsSample) {
    let host = &sample.host;
    if let Some(cpus) = host.cpus {
        out.single(
            "agent_host_cpus",
            "Logical CPUs of the host, as libvirt reports them.",
            Gauge,
            cpus,
        );
    }
    if let Some(bytes) = host.memory_bytes {
        out.single(
            "agent_host_memory_bytes",
            "Memory of the host, in bytes, as libvirt reports it.",
            Gauge,
            bytes,
        );
    }
    if let Some(pool) = &host.pool {
        let labels = [("pool", pool.name.as_str())];
        out.family(
            "agent_storage_pool_capacity_bytes",
            "Size of the storage pool that holds the VMs' disks, in bytes.",
            Gauge,
        )
        .sample(&labels, pool.capacity_bytes);
        out.family(
            "agent_storage_pool_allocation_bytes",
            "Bytes of the storage pool in use.",
            Gauge,
        )
        .sample(&labels, pool.allocation_bytes);
        out.family(
            "agent_storage_pool_available_bytes",
            "Bytes of the storage pool still free.",
            Gauge,
        )
        .sample(&labels, pool.available_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::sample::{HostSample, PoolSample};

    fn running(name: &str) -> DomainSample {
        DomainSample {
            name: name.into(),
            uuid: format!("uuid-{name}"),
            vm_id: None,
            state: 1,
            cpu_time_ns: Some(1_500_000_000),
            virtual_cpus: Some(2),
            maximum_memory_kib: Some(65_536),
            memory_kib: Some(32_768),
            blocks: vec![BlockSample {
                target_device: "vda".into(),
                source_file: "/img/a.qcow2".into(),
                read_bytes: Some(512),
                read_requests: Some(1),
                write_bytes: Some(0),
                write_requests: Some(0),
            }],
            interfaces: vec![InterfaceSample {
                target_device: "vnet0".into(),
                source_bridge: "br0".into(),
                receive_bytes: Some(90),
                ..InterfaceSample::default()
            }],
        }
    }

    #[test]
    fn domains_are_written_with_the_exporters_names_and_labels() {
        let vm_id = vmm_shared::VmId::new_random();
        let mut managed = running("vmm-a");
        managed.vm_id = Some(vm_id);
        let stopped = DomainSample {
            name: "old".into(),
            uuid: "uuid-old".into(),
            state: 5,
            ..DomainSample::default()
        };
        let sample = StatsSample {
            domains: vec![managed, running("hand\"made"), stopped],
            host: HostSample {
                cpus: Some(2),
                memory_bytes: Some(1 << 30),
                pool: Some(PoolSample {
                    name: "vmm".into(),
                    capacity_bytes: 10,
                    allocation_bytes: 4,
                    available_bytes: 6,
                }),
            },
        };
        let mut out = Exposition::new();
        write_sample(&mut out, &sample);
        let text = out.into_text();

        assert!(text.contains("libvirt_up 1\n"));
        assert!(text.contains("libvirt_domains_number 2\n"));
        assert!(text.contains(&format!(
            "libvirt_domain_info_virtual_cpus{{domain=\"vmm-a\",uuid=\"uuid-vmm-a\",vm_id=\"{vm_id}\"}} 2\n"
        )));
        assert!(text.contains(
            "libvirt_domain_info_cpu_time_seconds_total{domain=\"hand\\\"made\",uuid=\"uuid-hand\\\"made\",vm_id=\"\"} 1.5\n"
        ));
        assert!(text.contains(
            "libvirt_domain_info_maximum_memory_bytes{domain=\"vmm-a\",uuid=\"uuid-vmm-a\","
        ));
        assert!(text.contains("} 67108864\n"));
        assert!(text.contains(
            "libvirt_domain_block_stats_read_bytes_total{domain=\"vmm-a\",source_file=\"/img/a.qcow2\",target_device=\"vda\",uuid=\"uuid-vmm-a\","
        ));
        assert!(text.contains(
            "libvirt_domain_interface_stats_receive_bytes_total{domain=\"vmm-a\",source_bridge=\"br0\",target_device=\"vnet0\","
        ));
        // Figures libvirt did not give are left out, not written as 0.
        assert!(!text.contains("libvirt_domain_interface_stats_receive_packets_total"));
        // The stopped domain: its state, nothing else.
        assert!(text.contains(
            "libvirt_domain_state_code{domain=\"old\",uuid=\"uuid-old\",vm_id=\"\"} 5\n"
        ));
        assert_eq!(text.matches("domain=\"old\"").count(), 1);
        assert!(text.contains("agent_storage_pool_available_bytes{pool=\"vmm\"} 6\n"));
        assert!(text.contains("agent_host_memory_bytes 1073741824\n"));
        for line in text.lines().filter(|line| line.starts_with("# TYPE")) {
            assert_eq!(text.matches(&format!("{line}\n")).count(), 1, "{line}");
        }
    }

    #[test]
    fn without_libvirt_only_libvirt_up_is_written() {
        let mut out = Exposition::new();
        write_unavailable(&mut out);
        let text = out.into_text();
        assert!(text.ends_with("libvirt_up 0\n"));
        assert!(!text.contains("libvirt_domain"));
    }
}
