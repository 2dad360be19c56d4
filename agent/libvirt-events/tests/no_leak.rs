//! Nothing a registration or an event allocates is left behind: tens of thousands of
//! register/deregister cycles, and tens of thousands of events received, leave the
//! process's memory flat. What would leak: the sink (and its channel) libvirt must free
//! through its free callback, libvirt's own callback record and connection reference,
//! the close-watch entry, each event's copied name and UUID. A test binary of its own, so
//! no other test's allocations blur the figure.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Next, next, runtime, test_driver_domain_xml};
use virt::connect::Connect;
use vmm_libvirt_events::{Notice, register, start_event_loop};

const CYCLES: usize = 20_000;
const DOMAIN_CHANGES: usize = 25_000;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Registers, lets one event through, deregisters and reads the stream to its end.
fn cycle(connection: &Connect, runtime: &tokio::runtime::Runtime, xml: &str) {
    let (registration, mut events) = register(connection, 16).unwrap();
    let domain = connection.define_domain_xml(xml).unwrap();
    domain.undefine().unwrap();
    match next(runtime, &mut events, Duration::from_secs(5)) {
        Next::Notice(Notice::Lifecycle(_)) => {}
        other => panic!("expected an event, got {other:?}"),
    }
    drop(registration);
    loop {
        match next(runtime, &mut events, Duration::from_secs(5)) {
            Next::Notice(_) => {}
            Next::Ended => break,
            Next::TimedOut => panic!("the stream did not end after the deregistration"),
        }
    }
}

/// Defines and undefines a domain `changes` times (two events each) and receives every
/// event.
fn churn(connection: &Connect, runtime: &tokio::runtime::Runtime, xml: &str, changes: usize) {
    let (registration, mut events) = register(connection, 1024).unwrap();
    for _ in 0..changes {
        let domain = connection.define_domain_xml(xml).unwrap();
        domain.undefine().unwrap();
        for _ in 0..2 {
            match next(runtime, &mut events, Duration::from_secs(5)) {
                Next::Notice(Notice::Lifecycle(_)) => {}
                other => panic!("expected an event, got {other:?}"),
            }
        }
    }
    assert_eq!(registration.stats().dropped, 0);
}

#[test]
fn registrations_and_events_keep_memory_flat() {
    virt::error::clear_error_callback();
    start_event_loop().unwrap();
    let connection = Connect::open(Some("test:///default")).unwrap();
    let runtime = runtime();
    let xml = test_driver_domain_xml("no-leak");

    // Warm-up: allocator pools, libvirt's lazily built tables, tokio's channel blocks.
    for _ in 0..1_000 {
        cycle(&connection, &runtime, &xml);
    }
    churn(&connection, &runtime, &xml, 1_000);

    let before = resident_kib();
    for _ in 0..CYCLES {
        cycle(&connection, &runtime, &xml);
    }
    let after_cycles = resident_kib();
    churn(&connection, &runtime, &xml, DOMAIN_CHANGES);
    let after_events = resident_kib();

    let cycles_grew = after_cycles.saturating_sub(before);
    let events_grew = after_events.saturating_sub(after_cycles);
    eprintln!(
        "RSS {before} KiB; +{cycles_grew} KiB after {CYCLES} register/deregister cycles; \
         +{events_grew} KiB after {} events",
        DOMAIN_CHANGES * 2
    );
    // A leaked sink is its channel (hundreds of bytes at least), a leaked event its two
    // strings: 20000 or 50000 of either would be megabytes.
    assert!(
        cycles_grew < 1_024,
        "RSS grew by {cycles_grew} KiB over {CYCLES} register/deregister cycles"
    );
    assert!(
        events_grew < 1_024,
        "RSS grew by {events_grew} KiB over {} events",
        DOMAIN_CHANGES * 2
    );
}
