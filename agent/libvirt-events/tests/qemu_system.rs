//! Lifecycle events from real QEMU under libvirtd (`qemu:///system`, through libvirt's
//! remote driver): a diskless domain is defined, started, paused, resumed, destroyed,
//! started again and destroyed out of band with `virsh`, started again and its QEMU
//! process killed, and undefined; every event arrives in order with the domain's UUID.
//! Then libvirtd drops the connection (through `virt-admin client-disconnect`, which
//! touches no other client) and the registration hears of it at once.
//!
//! These tests need libvirtd; they fail, saying so, when it does not answer, and are
//! never skipped. The domain type is probed (`kvm` where it really runs, else `qemu`).
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{
    DomainGuard, Next, events_of, next, open_qemu, probe_domain_type, runtime, tiny_domain_xml,
    unique_name, virsh,
};
use vmm_libvirt_events::{CloseReason, LifecycleKind, Notice, register, start_event_loop};

/// Generous: a TCG guest on a busy 2-core machine; events come within milliseconds.
const WAIT: Duration = Duration::from_secs(20);

/// The tests of this binary take turns: the close test finds its own libvirtd client by
/// process ID, which a connection opened meanwhile by the other test would confuse.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn api_and_out_of_band_changes_arrive_in_order_with_the_uuid() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    start_event_loop().unwrap();
    let connection = open_qemu();
    let domain_type = probe_domain_type(&connection);
    let runtime = runtime();
    let (registration, mut events) = register(&connection, 256).unwrap();

    let name = unique_name("vmm-events-test");
    let guard = DomainGuard::define(&connection, &tiny_domain_xml(&name, domain_type, 32));
    let uuid = guard.uuid.clone();
    let mut step = |count: usize| events_of(&runtime, &mut events, &uuid, count, WAIT);
    // QEMU starts with its vCPUs paused and libvirt then lets them run: a start is a
    // `resumed` followed by `started`.
    let start = [
        (LifecycleKind::Resumed, "unpaused"),
        (LifecycleKind::Started, "booted"),
    ];
    // QEMU reports the SIGTERM libvirt sends it as a shutdown on host request, then
    // libvirt reports the process gone.
    let destroy = [
        (LifecycleKind::Shutdown, "host"),
        (LifecycleKind::Stopped, "destroyed"),
    ];

    assert_eq!(step(1), [(LifecycleKind::Defined, "added")]);
    guard.domain.create().unwrap();
    assert_eq!(step(2), start, "domain type {domain_type}");
    guard.domain.suspend().unwrap();
    assert_eq!(step(1), [(LifecycleKind::Suspended, "paused")]);
    guard.domain.resume().unwrap();
    assert_eq!(step(1), [(LifecycleKind::Resumed, "unpaused")]);
    guard.domain.destroy().unwrap();
    assert_eq!(step(2), destroy);
    guard.domain.create().unwrap();
    assert_eq!(step(2), start);

    // Out of band: another process (virsh) destroys the running domain.
    let destroyed_at = Instant::now();
    virsh(&["destroy", &name]);
    let shutdown = support::next_event_of(&runtime, &mut events, &uuid, WAIT)
        .expect("no event after `virsh destroy`");
    let stopped = support::next_event_of(&runtime, &mut events, &uuid, WAIT)
        .expect("no second event after `virsh destroy`");
    assert_eq!(
        [
            (shutdown.kind, shutdown.detail_name()),
            (stopped.kind, stopped.detail_name())
        ],
        destroy
    );
    assert_eq!(stopped.name, name);
    eprintln!(
        "`virsh destroy` (process start included) to the stopped event: {:?}",
        stopped.received_at.duration_since(destroyed_at)
    );

    // Out of band: the QEMU process dies (killed here, as a crash would end it).
    guard.domain.create().unwrap();
    assert_eq!(events_of(&runtime, &mut events, &uuid, 2, WAIT), start);
    let pid_file = format!("/run/libvirt/qemu/{name}.pid");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(
        killed.success(),
        "cannot kill QEMU (pid {pid} from {pid_file})"
    );
    assert_eq!(
        events_of(&runtime, &mut events, &uuid, 1, WAIT),
        [(LifecycleKind::Stopped, "failed")]
    );

    guard.domain.undefine().unwrap();
    assert_eq!(
        events_of(&runtime, &mut events, &uuid, 1, WAIT),
        [(LifecycleKind::Undefined, "removed")]
    );
    assert_eq!(registration.stats().dropped, 0);
}

/// libvirtd's client IDs of this process (`virt-admin`, as root).
fn own_client_ids() -> Vec<String> {
    let listing = virt_admin(&["srv-clients-list", "libvirtd"]);
    listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|id| id.chars().all(|c| c.is_ascii_digit()))
        .filter(|id| {
            // A client listed a moment ago may be gone already (another process's).
            client_info(id).lines().any(|line| {
                line.split_once(':').is_some_and(|(key, value)| {
                    key.trim() == "unix_process_id"
                        && value.trim() == std::process::id().to_string()
                })
            })
        })
        .map(str::to_owned)
        .collect()
}

/// `virt-admin client-info` of one client; empty when it has gone meanwhile.
fn client_info(id: &str) -> String {
    let output = Command::new("virt-admin")
        .args(["client-info", "libvirtd", id])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn virt_admin(args: &[&str]) -> String {
    let output = Command::new("virt-admin").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "virt-admin {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn libvirtd_dropping_the_connection_is_reported_at_once() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    start_event_loop().unwrap();
    let before = own_client_ids();
    let connection = open_qemu();
    let runtime = runtime();
    let (registration, mut events) = register(&connection, 16).unwrap();
    let ours: Vec<_> = own_client_ids()
        .into_iter()
        .filter(|id| !before.contains(id))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "cannot tell this connection's client: {ours:?}"
    );

    let dropped_at = Instant::now();
    virt_admin(&["client-disconnect", "libvirtd", &ours[0]]);
    match next(&runtime, &mut events, WAIT) {
        Next::Notice(Notice::ConnectionClosed(reason)) => {
            assert_eq!(reason, CloseReason::Eof);
            eprintln!(
                "client-disconnect (virt-admin run included) to the close notice: {:?}",
                dropped_at.elapsed()
            );
        }
        other => panic!("expected the close to be reported, got {other:?}"),
    }
    assert!(!connection.is_alive().unwrap_or(false));

    // Deregistering on the dead connection still frees everything: the stream ends.
    drop(registration);
    assert!(matches!(next(&runtime, &mut events, WAIT), Next::Ended));
}
