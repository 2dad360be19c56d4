//! Placement: which connected host gets a new VM. Pure functions over a snapshot of host
//! capacity and allocation that the caller reads inside the same write transaction that
//! records the VM, so two concurrent creates never both take the last room on a host.
//!
//! A host fits a VM when, after adding it, allocated vCPUs stay within
//! `cpus × cpu_allocation_ratio`, allocated memory within the host's memory (memory is
//! never overcommitted) and allocated disk within its storage pool's capacity.
//! Among the hosts that fit, `spread` takes the one with the most free memory, `pack` the
//! one with the least; ties go first to a host that already caches the VM's image (its disk
//! is then made at once, without a transfer), then to the host with fewer VMs, then to the
//! smaller host ID. Caching never outweighs free memory: it only breaks ties.

use vmm_shared::{HostId, VmSize};

use crate::config::Placement;

/// A host's capacity and what the VMs recorded on it take (read by `hosts::store`).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct HostLoad {
    pub id: HostId,
    #[sqlx(try_from = "i64")]
    pub cpus: u64,
    #[sqlx(try_from = "i64")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
    #[sqlx(try_from = "i64")]
    pub allocated_cpu: u64,
    #[sqlx(try_from = "i64")]
    pub allocated_memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub allocated_disk_gb: u64,
    #[sqlx(try_from = "i64")]
    pub vm_count: u64,
    /// Whether the host holds a verified copy of the new VM's image.
    #[sqlx(try_from = "crate::db::Flag")]
    pub caches_image: bool,
}

/// The vCPUs a host of `cpus` CPUs may allocate.
pub fn cpu_capacity(cpus: u64, cpu_allocation_ratio: f64) -> u64 {
    (cpus as f64 * cpu_allocation_ratio).floor() as u64
}

impl HostLoad {
    pub fn fits(&self, size: &VmSize, cpu_allocation_ratio: f64) -> bool {
        let cpu_capacity = cpu_capacity(self.cpus, cpu_allocation_ratio);
        self.allocated_cpu + u64::from(size.cpu) <= cpu_capacity
            && self.allocated_memory_mib + size.memory_mib <= self.memory_mib
            && self.allocated_disk_gb + size.disk_gb <= self.disk_gb
    }

    fn free_memory_mib(&self) -> u64 {
        self.memory_mib.saturating_sub(self.allocated_memory_mib)
    }
}

pub fn choose_host<'a>(
    hosts: &'a [HostLoad],
    size: &VmSize,
    placement: Placement,
    cpu_allocation_ratio: f64,
) -> Option<&'a HostLoad> {
    let fitting = hosts
        .iter()
        .filter(|host| host.fits(size, cpu_allocation_ratio));
    let key = |host: &&HostLoad| {
        (
            host.free_memory_mib(),
            host.caches_image,
            std::cmp::Reverse(host.vm_count),
            std::cmp::Reverse(host.id.clone()),
        )
    };
    match placement {
        Placement::Spread => fitting.max_by_key(key),
        Placement::Pack => fitting.min_by_key(|host| {
            (
                host.free_memory_mib(),
                !host.caches_image,
                host.vm_count,
                host.id.clone(),
            )
        }),
    }
}

/// A host's size, whatever runs on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HostSize {
    #[sqlx(try_from = "i64")]
    pub cpus: u64,
    #[sqlx(try_from = "i64")]
    pub memory_mib: u64,
    #[sqlx(try_from = "i64")]
    pub disk_gb: u64,
}

impl HostSize {
    /// Whether a VM of `size` fits the host with nothing else on it.
    pub fn could_hold(&self, size: &VmSize, cpu_allocation_ratio: f64) -> bool {
        u64::from(size.cpu) <= cpu_capacity(self.cpus, cpu_allocation_ratio)
            && size.memory_mib <= self.memory_mib
            && size.disk_gb <= self.disk_gb
    }
}

/// The largest of `hosts` in each dimension apart, when no host could ever hold a VM of
/// `size` (a create that no wait for room can make succeed); `None` when one could, or when
/// there is no host at all.
pub fn larger_than_every_host(
    hosts: &[HostSize],
    size: &VmSize,
    cpu_allocation_ratio: f64,
) -> Option<HostSize> {
    if hosts.is_empty()
        || hosts
            .iter()
            .any(|host| host.could_hold(size, cpu_allocation_ratio))
    {
        return None;
    }
    Some(HostSize {
        cpus: hosts.iter().map(|host| host.cpus).max().unwrap_or(0),
        memory_mib: hosts.iter().map(|host| host.memory_mib).max().unwrap_or(0),
        disk_gb: hosts.iter().map(|host| host.disk_gb).max().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, memory_mib: u64, allocated_memory_mib: u64) -> HostLoad {
        HostLoad {
            id: id.parse().unwrap(),
            cpus: 4,
            memory_mib,
            disk_gb: 100,
            allocated_cpu: 0,
            allocated_memory_mib,
            allocated_disk_gb: 0,
            vm_count: 0,
            caches_image: false,
        }
    }

    const SMALL: VmSize = VmSize {
        cpu: 1,
        memory_mib: 1024,
        disk_gb: 10,
    };

    #[test]
    fn spread_prefers_the_emptiest_host_and_pack_the_fullest() {
        let hosts = [
            host("a", 4096, 2048),
            host("b", 4096, 0),
            host("c", 4096, 3072),
        ];
        assert_eq!(
            choose_host(&hosts, &SMALL, Placement::Spread, 4.0)
                .unwrap()
                .id
                .as_str(),
            "b"
        );
        assert_eq!(
            choose_host(&hosts, &SMALL, Placement::Pack, 4.0)
                .unwrap()
                .id
                .as_str(),
            "c"
        );
    }

    #[test]
    fn never_places_on_a_host_without_room() {
        let hosts = [host("a", 4096, 3500)];
        assert!(choose_host(&hosts, &SMALL, Placement::Spread, 4.0).is_none());
        let mut busy = host("b", 65536, 0);
        busy.allocated_cpu = 16;
        assert!(choose_host(&[busy.clone()], &SMALL, Placement::Pack, 4.0).is_none());
        assert!(choose_host(&[busy], &SMALL, Placement::Pack, 4.5).is_some());
        let mut full_disk = host("c", 65536, 0);
        full_disk.allocated_disk_gb = 95;
        assert!(choose_host(&[full_disk], &SMALL, Placement::Spread, 4.0).is_none());
    }

    #[test]
    fn ties_go_to_fewer_vms_then_lower_id() {
        let mut a = host("a", 4096, 0);
        let b = host("b", 4096, 0);
        assert_eq!(
            choose_host(&[a.clone(), b.clone()], &SMALL, Placement::Spread, 4.0)
                .unwrap()
                .id
                .as_str(),
            "a"
        );
        a.vm_count = 1;
        assert_eq!(
            choose_host(&[a, b], &SMALL, Placement::Spread, 4.0)
                .unwrap()
                .id
                .as_str(),
            "b"
        );
    }

    #[test]
    fn a_host_caching_the_image_wins_ties_only() {
        let a = host("a", 4096, 0);
        let mut b = host("b", 4096, 0);
        b.vm_count = 3;
        b.caches_image = true;
        for placement in [Placement::Spread, Placement::Pack] {
            assert_eq!(
                choose_host(&[a.clone(), b.clone()], &SMALL, placement, 4.0)
                    .unwrap()
                    .id
                    .as_str(),
                "b",
                "{placement:?}"
            );
        }
        // More free memory still wins over a cached image under spread, less under pack.
        let roomier = host("c", 8192, 0);
        assert_eq!(
            choose_host(
                &[b.clone(), roomier.clone()],
                &SMALL,
                Placement::Spread,
                4.0
            )
            .unwrap()
            .id
            .as_str(),
            "c"
        );
        let fuller = host("d", 2048, 0);
        assert_eq!(
            choose_host(&[b, fuller], &SMALL, Placement::Pack, 4.0)
                .unwrap()
                .id
                .as_str(),
            "d"
        );
    }

    #[test]
    fn a_vm_no_host_could_hold_even_empty_is_told_the_largest_of_each() {
        let hosts = [
            HostSize {
                cpus: 8,
                memory_mib: 32_768,
                disk_gb: 100,
            },
            HostSize {
                cpus: 32,
                memory_mib: 8_192,
                disk_gb: 2_000,
            },
        ];
        let size = |cpu, memory_mib, disk_gb| VmSize {
            cpu,
            memory_mib,
            disk_gb,
        };
        // Each fits one host empty (at 4 vCPUs per CPU): room may come, no verdict.
        for fits in [size(32, 32_768, 100), size(128, 8_192, 2_000)] {
            assert_eq!(larger_than_every_host(&hosts, &fits, 4.0), None, "{fits:?}");
        }
        // Within the largest of each dimension, but no single host has them all.
        let largest = HostSize {
            cpus: 32,
            memory_mib: 32_768,
            disk_gb: 2_000,
        };
        for never in [size(1, 32_769, 1), size(1, 16_384, 1_000), size(129, 1, 1)] {
            assert_eq!(
                larger_than_every_host(&hosts, &never, 4.0),
                Some(largest),
                "{never:?}"
            );
        }
        assert_eq!(larger_than_every_host(&[], &size(1, 1, 1), 4.0), None);
    }
}
