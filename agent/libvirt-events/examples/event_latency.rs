//! How long a change to a domain takes to reach the agent as a lifecycle event, on real
//! QEMU under libvirtd. `--trials` times (default 50), a diskless domain is paused and
//! resumed out of band (`virsh suspend`, `virsh resume`), destroyed through the API
//! (`virDomainDestroy`) and, once started again, destroyed out of band (`virsh destroy`).
//! Prints p50/p99/max of each leg.
//!
//!     cargo run -p vmm-libvirt-events --example event_latency -- --trials 50
//!
//! Legs, all on this process's monotonic clock:
//! - *call → event*: from the start of the change (API call made, or `virsh` spawned) to
//!   the event in the callback: the out-of-band change's cost up to the agent, libvirt's
//!   own work included. For a destroy, *first* is the first event of the destroy
//!   (`shutdown`, from QEMU) and *stopped* the event that says the process is gone.
//! - *return → event*: from the change's return (API call returned, `virsh` exited) to
//!   the event. libvirtd emits the event before it answers, so this bounds the
//!   libvirt-to-callback leg; negative means the event came before the answer.
//! - *callback → receiver*: from the callback to a receiver waiting in `recv().await`
//!   on a thread of its own (this crate's queue), over every event.
//!
//! Reading the figures: libvirt emits `stopped` (and, on a destroy, even QEMU's
//! `shutdown`) only once it sees the QEMU process gone, and it checks with `kill(pid, 0)`,
//! for which a zombie still counts. QEMU is an orphan re-parented to PID 1, so a PID 1
//! that reaps orphans late (on the machines this project was measured on, every ~2 s)
//! adds that wait to every destroy or crash; the call → event legs of a destroy measure
//! that, not the event path.
//!
//! Touches only the domain it defines (named `vmm-events-latency-…`), which it removes.
// An example is a test tool: a failed `unwrap` is how it says a precondition failed.
#![allow(clippy::unwrap_used)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::{DomainGuard, open_qemu, probe_domain_type, runtime, unique_name};
use vmm_libvirt_events::{LifecycleEvent, LifecycleKind, Notice, register, start_event_loop};

const WAIT: Duration = Duration::from_secs(30);

/// Signed milliseconds, one per trial.
#[derive(Default)]
struct Leg(Vec<f64>);

impl Leg {
    fn record(&mut self, later: Instant, earlier: Instant) {
        let millis = match later.checked_duration_since(earlier) {
            Some(after) => after.as_secs_f64() * 1e3,
            None => -(earlier.duration_since(later).as_secs_f64() * 1e3),
        };
        self.0.push(millis);
    }

    fn percentile(&self, p: usize) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        let rank = (sorted.len() * p).div_ceil(100).max(1);
        sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
    }
}

/// The domain's events as the receiver thread saw them, with when it saw them.
struct Seen {
    events: mpsc::Receiver<(LifecycleEvent, Instant)>,
    callback_to_receiver: Leg,
}

impl Seen {
    fn next(&mut self) -> LifecycleEvent {
        let (event, seen_at) = self.events.recv_timeout(WAIT).expect("no event in time");
        self.callback_to_receiver.record(seen_at, event.received_at);
        event
    }

    /// Events until one of `kind`, which is returned.
    fn until(&mut self, kind: LifecycleKind) -> LifecycleEvent {
        loop {
            let event = self.next();
            if event.kind == kind {
                return event;
            }
        }
    }
}

fn main() {
    let trials = trials_from_args();
    start_event_loop().unwrap();
    let connection = open_qemu();
    let domain_type = probe_domain_type(&connection);
    let (registration, mut receiver) = register(&connection, 256).unwrap();
    let name = unique_name("vmm-events-latency");
    let guard = DomainGuard::define(
        &connection,
        &support::tiny_domain_xml(&name, domain_type, 32),
    );

    // The agent's shape: a receiver parked in `recv().await` on a thread of its own.
    let (forward, events) = mpsc::channel();
    let uuid = guard.uuid.clone();
    let receiving = std::thread::spawn(move || {
        let runtime = runtime();
        runtime.block_on(async {
            while let Some(notice) = receiver.recv().await {
                let seen_at = Instant::now();
                match notice {
                    Notice::Lifecycle(event) if event.uuid == uuid => {
                        if forward.send((event, seen_at)).is_err() {
                            break;
                        }
                    }
                    Notice::Lifecycle(_) => {}
                    other => panic!("unexpected notice {other:?}"),
                }
            }
        });
    });
    let mut seen = Seen {
        events,
        callback_to_receiver: Leg::default(),
    };
    seen.until(LifecycleKind::Defined);

    let virsh = |command: &str| {
        let status = Command::new("virsh")
            .args(["-q", "-c", support::QEMU_URI, command, &name])
            .status()
            .unwrap();
        assert!(status.success(), "virsh {command} failed");
    };
    let (mut suspend_call, mut suspend_return) = (Leg::default(), Leg::default());
    let (mut resume_call, mut resume_return) = (Leg::default(), Leg::default());
    let mut destroy = [DestroyLegs::default(), DestroyLegs::default()];
    for trial in 0..trials {
        guard.domain.create().unwrap();
        seen.until(LifecycleKind::Started);

        let called = Instant::now();
        virsh("suspend");
        let returned = Instant::now();
        let suspended = seen.until(LifecycleKind::Suspended);
        suspend_call.record(suspended.received_at, called);
        suspend_return.record(suspended.received_at, returned);

        let called = Instant::now();
        virsh("resume");
        let returned = Instant::now();
        let resumed = seen.until(LifecycleKind::Resumed);
        resume_call.record(resumed.received_at, called);
        resume_return.record(resumed.received_at, returned);

        for (legs, out_of_band) in destroy.iter_mut().zip([false, true]) {
            if out_of_band {
                guard.domain.create().unwrap();
                seen.until(LifecycleKind::Started);
            }
            let called = Instant::now();
            if out_of_band {
                virsh("destroy");
            } else {
                guard.domain.destroy().unwrap();
            }
            let returned = Instant::now();
            let first = seen.next();
            legs.call_to_first.record(first.received_at, called);
            let stopped = if first.kind == LifecycleKind::Stopped {
                first
            } else {
                seen.until(LifecycleKind::Stopped)
            };
            legs.call_to_stopped.record(stopped.received_at, called);
            legs.return_to_stopped.record(stopped.received_at, returned);
        }
        eprint!("\rtrial {}/{trials}", trial + 1);
    }
    eprintln!();
    let stats = registration.stats();
    drop(registration);
    drop(seen.events);
    receiving.join().unwrap();

    println!(
        "lifecycle events from {} ({domain_type} guest), {trials} trials; {} events \
         delivered, {} dropped",
        support::QEMU_URI,
        stats.delivered,
        stats.dropped
    );
    println!(
        "{:<15} {:<22} {:>9} {:>9} {:>9}",
        "change", "leg", "p50 ms", "p99 ms", "max ms"
    );
    let [api, out_of_band] = &destroy;
    let rows = [
        ("virsh suspend", "call → suspended", &suspend_call),
        ("virsh suspend", "return → suspended", &suspend_return),
        ("virsh resume", "call → resumed", &resume_call),
        ("virsh resume", "return → resumed", &resume_return),
        ("API destroy", "call → first event", &api.call_to_first),
        ("API destroy", "call → stopped", &api.call_to_stopped),
        ("API destroy", "return → stopped", &api.return_to_stopped),
        (
            "virsh destroy",
            "call → first event",
            &out_of_band.call_to_first,
        ),
        (
            "virsh destroy",
            "call → stopped",
            &out_of_band.call_to_stopped,
        ),
        (
            "virsh destroy",
            "return → stopped",
            &out_of_band.return_to_stopped,
        ),
        (
            "every event",
            "callback → receiver",
            &seen.callback_to_receiver,
        ),
    ];
    for (change, leg, samples) in rows {
        println!(
            "{change:<15} {leg:<22} {:>9.2} {:>9.2} {:>9.2}",
            samples.percentile(50),
            samples.percentile(99),
            samples.percentile(100)
        );
    }
}

#[derive(Default)]
struct DestroyLegs {
    call_to_first: Leg,
    call_to_stopped: Leg,
    return_to_stopped: Leg,
}

fn trials_from_args() -> usize {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|arg| arg == "--trials") {
        Some(index) => args
            .get(index + 1)
            .and_then(|value| value.parse().ok())
            .filter(|&trials| trials > 0)
            .unwrap_or_else(|| {
                eprintln!("usage: event_latency [--trials N]  (N > 0, default 50)");
                std::process::exit(2)
            }),
        None => 50,
    }
}
