//! libvirt domain lifecycle events for the agent: libvirt's default event loop on a
//! thread of its own, and `VIR_DOMAIN_EVENT_ID_LIFECYCLE` events (defined, undefined,
//! started, suspended, resumed, stopped, shutdown, pmsuspended, crashed, with their
//! detail) delivered as owned Rust values into a bounded queue the agent reads with
//! `recv().await`. Also tells when libvirtd drops the connection.
//!
//! Why a crate of its own: `virt` 0.5 has no safe wrapper for
//! `virConnectDomainEventRegisterAny` or `virConnectRegisterCloseCallback`. The `unsafe`
//! they need is confined to `src/ffi.rs`, behind a safe API; every other module forbids
//! `unsafe`.
//!
//! # How the agent uses it
//!
//! 1. **Set-up order.** Call [`start_event_loop`] once, early, BEFORE opening the
//!    libvirt connection: the remote driver (`qemu:///system`) decides at open whether it
//!    can watch its socket from an event loop and answer libvirtd's keepalive probes.
//!    Calling it again is harmless. Optionally turn on client keepalives on the new
//!    connection (`Connect::set_keep_alive(5, 3)`), so a libvirtd that hangs without
//!    closing the socket is noticed in about 20 s rather than never.
//! 2. **One registration per connection.** [`register`] the connection once; keep the
//!    [`Registration`] as long as the connection and read the [`EventReceiver`] from a
//!    task of its own. A second registration on the same connection is refused.
//!    Registering and dropping the registration block like any libvirt call: do both on
//!    the thread that owns the connection (or `spawn_blocking`).
//! 3. **Events are hints; the poll is the safety net.** A [`Notice::Lifecycle`] says
//!    "this domain changed": look the domain up (or poll it) and report what it is now,
//!    never the event's kind as the state. Events can be coalesced by libvirt, are lost
//!    while the connection is down, and are dropped here if the agent falls a whole queue
//!    behind. Keep a slow periodic poll (e.g. every 30 s), and poll at once on
//!    [`Notice::Missed`].
//! 4. **Re-register after a reconnect.** A registration belongs to one connection. On
//!    [`Notice::ConnectionClosed`] (or whenever the agent notices a dead connection and
//!    opens a new one), drop the old registration, open the new connection, register it,
//!    and poll every domain: whatever happened in between produced no event here.
//!
//! What real QEMU reports (libvirt 11.3, QEMU 10): a start is `resumed/unpaused` then
//! `started/booted` (QEMU starts paused); a destroy is `shutdown/host` then
//! `stopped/destroyed`; a QEMU process that dies is `stopped/failed`; define and undefine
//! are `defined/added` and `undefined/removed`. libvirt emits a `stopped` only once the
//! QEMU process is gone, after the destroy's own work.
//!
//! Events run on libvirt's event thread, which this crate never blocks: the callback
//! copies the event and `try_send`s it. A full queue drops the event and counts it
//! ([`EventReceiver::stats`], [`Notice::Missed`]). Bounded-and-dropping rather than
//! unbounded: an agent that stalls while a host churns through domains must not grow
//! without limit, and a drop costs only an earlier poll.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use vmm_libvirt_events::{Notice, register, start_event_loop};
//!
//! start_event_loop()?; // before Connect::open
//! let connection = virt::connect::Connect::open(Some("qemu:///system"))?;
//! let (registration, mut events) = register(&connection, 4096)?;
//! while let Some(notice) = events.recv().await {
//!     match notice {
//!         Notice::Lifecycle(event) => println!("{event}: look at domain {}", event.uuid),
//!         Notice::Missed { count } => println!("{count} events dropped: poll everything now"),
//!         Notice::ConnectionClosed(reason) => {
//!             println!("{reason}: reconnect, register again, poll");
//!             break;
//!         }
//!     }
//! }
//! drop(registration);
//! # Ok(())
//! # }
//! ```

mod event;
mod event_loop;
mod ffi;
mod queue;

pub use event::{CloseReason, LifecycleEvent, LifecycleKind};
pub use event_loop::{
    EventLoopError, is_running as event_loop_running, iteration_failures as event_loop_failures,
    start as start_event_loop,
};
pub use ffi::{RegisterError, Registration, register};
pub use queue::{EventReceiver, EventStats, MAX_QUEUE_CAPACITY, Notice, TryRecvError};

#[cfg(test)]
mod tests {
    #[test]
    fn the_handles_can_move_to_other_threads() {
        fn movable<T: Send + 'static>() {}
        movable::<super::Registration>();
        movable::<super::EventReceiver>();
    }
}
