//! Lifecycle events on libvirt's test driver (`test:///default`): the order and identity
//! of events, one registration per connection, the end of the stream after a
//! deregistration, drops made visible, and deregistration while events arrive.
//!
//! Connections opened at the same time in one process share the test driver's in-memory
//! host (and its events), so every test uses domains of its own and looks only at them, and
//! the tests run one at a time: a test that counts what its registration delivered must not
//! count another test's events.
// Test code: a failed `unwrap` is how a test says its precondition did not hold.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use support::{DomainGuard, Next, events_of, next, runtime, test_driver_domain_xml, unique_name};
use virt::connect::Connect;
use vmm_libvirt_events::{LifecycleKind, Notice, RegisterError, register, start_event_loop};

const WAIT: Duration = Duration::from_secs(5);

/// Held for a whole test: one test at a time on the shared in-memory host.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn open() -> Connect {
    virt::error::clear_error_callback();
    start_event_loop().unwrap();
    Connect::open(Some("test:///default")).unwrap()
}

#[test]
fn define_start_destroy_undefine_arrive_in_order_with_the_uuid_and_name() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let (_registration, mut events) = register(&connection, 64).unwrap();

    let guard = DomainGuard::define(
        &connection,
        &test_driver_domain_xml(&unique_name("events-order")),
    );
    guard.domain.create().unwrap();
    guard.domain.destroy().unwrap();
    guard.domain.undefine().unwrap();

    let first = support::next_event_of(&runtime, &mut events, &guard.uuid, WAIT).unwrap();
    assert_eq!(first.name, guard.name);
    assert_eq!(
        (first.kind, first.detail_name()),
        (LifecycleKind::Defined, "added")
    );
    assert_eq!(
        events_of(&runtime, &mut events, &guard.uuid, 3, WAIT),
        [
            (LifecycleKind::Started, "booted"),
            (LifecycleKind::Stopped, "destroyed"),
            (LifecycleKind::Undefined, "removed"),
        ]
    );
    assert!(events.stats().delivered >= 4);
    assert_eq!(events.stats().dropped, 0);
}

#[test]
fn suspend_and_resume_are_reported() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let (_registration, mut events) = register(&connection, 64).unwrap();
    let guard = DomainGuard::define(
        &connection,
        &test_driver_domain_xml(&unique_name("events-pause")),
    );
    guard.domain.create().unwrap();
    guard.domain.suspend().unwrap();
    guard.domain.resume().unwrap();
    assert_eq!(
        events_of(&runtime, &mut events, &guard.uuid, 4, WAIT),
        [
            (LifecycleKind::Defined, "added"),
            (LifecycleKind::Started, "booted"),
            (LifecycleKind::Suspended, "paused"),
            (LifecycleKind::Resumed, "unpaused"),
        ]
    );
}

#[test]
fn a_second_registration_on_one_connection_is_refused_and_the_first_keeps_working() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let (_registration, mut events) = register(&connection, 64).unwrap();

    let second = register(&connection, 64);
    let error = second.err().unwrap();
    assert!(
        matches!(error, RegisterError::Libvirt { .. }),
        "unexpected error {error:?}"
    );
    assert!(
        error.to_string().contains("already"),
        "the error should say why: {error}"
    );
    // A clone is the same connection for libvirt.
    assert!(register(&connection.clone(), 64).is_err());

    let guard = DomainGuard::define(
        &connection,
        &test_driver_domain_xml(&unique_name("events-second")),
    );
    assert_eq!(
        events_of(&runtime, &mut events, &guard.uuid, 1, WAIT),
        [(LifecycleKind::Defined, "added")]
    );
}

#[test]
fn dropping_the_registration_ends_the_stream_after_what_was_queued() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let (registration, mut events) = register(&connection, 64).unwrap();
    let guard = DomainGuard::define(
        &connection,
        &test_driver_domain_xml(&unique_name("events-end")),
    );
    guard.domain.undefine().unwrap();
    // Both events are queued before the registration goes.
    let deadline = std::time::Instant::now() + WAIT;
    while registration.stats().delivered < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(registration);

    let mut kinds = Vec::new();
    loop {
        match next(&runtime, &mut events, WAIT) {
            Next::Notice(Notice::Lifecycle(event)) if event.uuid == guard.uuid => {
                kinds.push(event.kind)
            }
            Next::Notice(Notice::Lifecycle(_)) => {}
            Next::Notice(other) => panic!("unexpected notice {other:?}"),
            // libvirt freed the sink: the only way the stream can end.
            Next::Ended => break,
            Next::TimedOut => panic!("the stream did not end after the deregistration"),
        }
    }
    assert_eq!(kinds, [LifecycleKind::Defined, LifecycleKind::Undefined]);

    // The connection can be registered again, and the new registration works.
    let (_again, mut events) = register(&connection, 64).unwrap();
    let other = DomainGuard::define(
        &connection,
        &test_driver_domain_xml(&unique_name("events-again")),
    );
    assert_eq!(
        events_of(&runtime, &mut events, &other.uuid, 1, WAIT),
        [(LifecycleKind::Defined, "added")]
    );
}

#[test]
fn a_full_queue_drops_counts_and_says_so_first() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let (registration, mut events) = register(&connection, 2).unwrap();
    let name = unique_name("events-full");
    for _ in 0..5 {
        let guard = DomainGuard::define(&connection, &test_driver_domain_xml(&name));
        guard.domain.undefine().unwrap();
    }
    // 10 events (other tests' domains may add more); the queue holds 2.
    let deadline = std::time::Instant::now() + WAIT;
    while registration.stats().delivered + registration.stats().dropped < 10
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stats = registration.stats();
    assert_eq!(stats.delivered, 2, "{stats:?}");
    assert!(stats.dropped >= 8, "{stats:?}");

    match next(&runtime, &mut events, WAIT) {
        Next::Notice(Notice::Missed { count }) => assert_eq!(count, stats.dropped),
        other => panic!("expected the drops to be reported first, got {other:?}"),
    }
    for _ in 0..2 {
        assert!(matches!(
            next(&runtime, &mut events, WAIT),
            Next::Notice(Notice::Lifecycle(_))
        ));
    }
}

/// libvirt's side of a deregistration races with its event thread dispatching to the same
/// callback: the sink must be freed once, after the last callback that uses it, and no
/// event may reach a freed sink. Thousands of registrations come and go while another
/// thread keeps domains changing on the same connection.
#[test]
fn deregistering_while_events_arrive_is_safe() {
    let _serial = one_at_a_time();
    let connection = open();
    let runtime = runtime();
    let stop = AtomicBool::new(false);
    let name = unique_name("events-churn");
    let mut delivered_total = 0;
    let mut deferred_frees = 0;
    std::thread::scope(|scope| {
        let churn = scope.spawn(|| {
            let mut changes = 0_u64;
            while !stop.load(Ordering::Relaxed) {
                let domain = connection
                    .define_domain_xml(&test_driver_domain_xml(&name))
                    .unwrap();
                domain.undefine().unwrap();
                changes += 2;
            }
            changes
        });
        for round in 0..10_000 {
            let (registration, mut events) = register(&connection, 8).unwrap();
            if round % 2 == 0 {
                // Sometimes read a little first, so some drops happen mid-dispatch.
                let _ = next(&runtime, &mut events, Duration::from_millis(1));
            }
            drop(registration);
            // Still open right after the drop: libvirt was dispatching to this very
            // callback and freed the sink only when that dispatch ended.
            loop {
                match events.try_recv() {
                    Ok(_) => {}
                    Err(vmm_libvirt_events::TryRecvError::Empty) => {
                        deferred_frees += 1;
                        break;
                    }
                    Err(vmm_libvirt_events::TryRecvError::Disconnected) => break,
                }
            }
            loop {
                match next(&runtime, &mut events, WAIT) {
                    Next::Notice(_) => {}
                    Next::Ended => break,
                    Next::TimedOut => panic!("round {round}: the stream did not end"),
                }
            }
            delivered_total += events.stats().delivered;
        }
        stop.store(true, Ordering::Relaxed);
        let changes = churn.join().unwrap();
        assert!(changes > 1_000, "too few changes to race with: {changes}");
    });
    eprintln!(
        "10000 registrations: {delivered_total} events delivered, {deferred_frees} freed by \
         libvirt only after a callback in flight returned"
    );
    assert!(
        delivered_total > 0,
        "no registration saw an event, so nothing raced"
    );
    assert!(
        deferred_frees > 0,
        "no deregistration met a callback in flight, so the race was not exercised"
    );
}
