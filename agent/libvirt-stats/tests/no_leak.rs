//! Every record libvirt returns is freed: thousands of calls leave the process's memory
//! flat (`virt`'s own `Connect::all_domain_stats` and `Domain::interface_addresses` leak
//! each record). A test binary of its own, so no other test's allocations blur the figure;
//! its tests take turns, for the same reason.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use virt::connect::Connect;
use vmm_libvirt_stats::addresses::{AddressSource, interface_addresses};
use vmm_libvirt_stats::{StatGroups, all_domain_stats};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

#[test]
fn many_calls_keep_memory_flat() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    virt::error::clear_error_callback();
    let connection = Connect::open(Some("test:///default")).unwrap();
    let groups = StatGroups::STATE | StatGroups::VCPU | StatGroups::BLOCK;
    for _ in 0..1_000 {
        all_domain_stats(&connection, groups, 0).unwrap();
    }
    let before = resident_kib();
    for _ in 0..50_000 {
        let stats = all_domain_stats(&connection, groups, 0).unwrap();
        assert_eq!(stats.len(), 1);
    }
    let grown_kib = resident_kib().saturating_sub(before);
    // A leaked record (domain reference and parameters) is a few hundred bytes: 50000 of
    // them would be megabytes.
    assert!(
        grown_kib < 1_024,
        "RSS grew by {grown_kib} KiB over 50000 calls"
    );
}

#[test]
fn asking_for_addresses_again_and_again_keeps_memory_flat() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    virt::error::clear_error_callback();
    let connection = Connect::open(Some("test:///default")).unwrap();
    let domain = connection.lookup_domain_by_name("test").unwrap();
    for _ in 0..1_000 {
        interface_addresses(&domain, AddressSource::Lease).unwrap();
    }
    let before = resident_kib();
    for _ in 0..200_000 {
        let interfaces = interface_addresses(&domain, AddressSource::Lease).unwrap();
        assert!(!interfaces.is_empty());
    }
    let grown_kib = resident_kib().saturating_sub(before);
    // `virt`'s version grew by about 15 MiB over these calls here: one interface record and
    // its address array each time.
    assert!(
        grown_kib < 2_048,
        "RSS grew by {grown_kib} KiB over 200000 calls"
    );
}
