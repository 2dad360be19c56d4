//! Helpers shared by the test binaries and the latency example: reading the receiver with
//! a deadline, tiny domains on the test driver and on real QEMU, and their clean-up.
// Each test binary uses a different part of it.
#![allow(dead_code)]
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use virt::connect::Connect;
use virt::domain::Domain;
use vmm_libvirt_events::{EventReceiver, LifecycleEvent, LifecycleKind, Notice};

pub const QEMU_URI: &str = "qemu:///system";

/// What the receiver gave within a deadline.
#[derive(Debug)]
pub enum Next {
    Notice(Notice),
    Ended,
    TimedOut,
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

pub fn next(runtime: &tokio::runtime::Runtime, events: &mut EventReceiver, wait: Duration) -> Next {
    runtime.block_on(async {
        match tokio::time::timeout(wait, events.recv()).await {
            Ok(Some(notice)) => Next::Notice(notice),
            Ok(None) => Next::Ended,
            Err(_) => Next::TimedOut,
        }
    })
}

/// The next lifecycle event of the domain with `uuid`, skipping other domains' events;
/// `None` after `wait`. Any other notice fails the test.
pub fn next_event_of(
    runtime: &tokio::runtime::Runtime,
    events: &mut EventReceiver,
    uuid: &str,
    wait: Duration,
) -> Option<LifecycleEvent> {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next(runtime, events, left) {
            Next::Notice(Notice::Lifecycle(event)) if event.uuid == uuid => return Some(event),
            Next::Notice(Notice::Lifecycle(_)) => {}
            Next::Notice(other) => panic!("unexpected notice {other:?}"),
            Next::Ended => panic!("the event stream ended"),
            Next::TimedOut => return None,
        }
    }
}

/// `count` lifecycle events of the domain with `uuid` as (kind, detail name).
pub fn events_of(
    runtime: &tokio::runtime::Runtime,
    events: &mut EventReceiver,
    uuid: &str,
    count: usize,
    wait: Duration,
) -> Vec<(LifecycleKind, &'static str)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match next_event_of(runtime, events, uuid, wait) {
            Some(event) => seen.push((event.kind, event.detail_name())),
            None => break,
        }
    }
    seen
}

/// A domain name no other test (or earlier run) uses.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A diskless domain: enough for lifecycle events, nothing to clean up but the domain.
pub fn tiny_domain_xml(name: &str, domain_type: &str, memory_mib: u32) -> String {
    format!(
        "<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='{arch}'>hvm</type></os>
  <on_crash>destroy</on_crash>
</domain>",
        arch = std::env::consts::ARCH,
    )
}

/// A domain on the test driver (`test:///default`).
pub fn test_driver_domain_xml(name: &str) -> String {
    tiny_domain_xml(name, "test", 16)
}

/// Destroys and undefines the domain when dropped, whatever state the test left it in.
pub struct DomainGuard {
    pub domain: Domain,
    pub name: String,
    pub uuid: String,
}

impl DomainGuard {
    pub fn define(connection: &Connect, xml: &str) -> Self {
        let domain = connection.define_domain_xml(xml).unwrap();
        let name = domain.name().unwrap();
        let uuid = domain.uuid_string().unwrap();
        Self { domain, name, uuid }
    }
}

impl Drop for DomainGuard {
    fn drop(&mut self) {
        if self.domain.is_active().unwrap_or(false) {
            let _ = self.domain.destroy();
        }
        let _ = self.domain.undefine();
    }
}

/// `kvm` when a transient KVM domain really starts and keeps running here, else `qemu`
/// (TCG): the agent's own probe, since KVM works on some machines of this kind and not on
/// others whatever `/dev/kvm` says.
pub fn probe_domain_type(connection: &Connect) -> &'static str {
    let name = unique_name("vmm-events-kvm-probe");
    let Ok(probe) = connection.create_domain_xml(&tiny_domain_xml(&name, "kvm", 16), 0) else {
        return "qemu";
    };
    std::thread::sleep(Duration::from_millis(300));
    let running = probe.is_active().unwrap_or(false);
    let _ = probe.destroy();
    if running { "kvm" } else { "qemu" }
}

/// Opens `qemu:///system`, or fails the test saying why: these tests are never skipped.
pub fn open_qemu() -> Connect {
    virt::error::clear_error_callback();
    Connect::open(Some(QEMU_URI)).unwrap_or_else(|error| {
        panic!(
            "libvirtd does not answer at {QEMU_URI} ({error}); start it with \
             scripts/setup-host.sh"
        )
    })
}

/// Runs `virsh -c qemu:///system <args>`: a change made outside this process.
pub fn virsh(args: &[&str]) {
    let output = Command::new("virsh")
        .args(["-c", QEMU_URI])
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "virsh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `p`-th percentile (0..=100) of `samples`, nearest rank.
pub fn percentile(samples: &[Duration], p: u32) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p as usize).div_ceil(100).max(1);
    sorted[rank - 1]
}
