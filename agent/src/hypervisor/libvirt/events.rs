//! libvirt's domain lifecycle events as the agent's hints ([`crate::hypervisor::hints`]),
//! through the fenced `vmm-libvirt-events` crate: its event loop, started once before the
//! first connection opens; client keepalives on every connection, so a libvirtd that hangs
//! without closing the socket is noticed in about 20 s; and one registration per
//! connection, whose stream goes out through the poller's outlet.
//!
//! Registering and deregistering block like any libvirt call: both run here, on the
//! hypervisor thread. Events never change a domain and never say its state: the poller
//! reads the domain when one comes.

use vmm_libvirt_events::{Registration, register, start_event_loop};

use super::LibvirtHost;
use crate::hypervisor::hints::{HintOutlet, HintStream};
use crate::hypervisor::{FailureKind, HypervisorError};

/// Events a connection's queue holds before it drops them (then the poller polls).
const QUEUE_CAPACITY: usize = 4096;
/// Client keepalive: a probe after 5 s of silence, the connection closed after 3 unanswered.
const KEEPALIVE_INTERVAL_SECS: i32 = 5;
const KEEPALIVE_COUNT: u32 = 3;

/// The event side of one libvirt connection.
#[derive(Default)]
pub(super) struct ConnectionEvents {
    /// Where every connection's stream goes; `None` until the poller asks for hints.
    outlet: Option<HintOutlet>,
    /// The current connection's registration; dropping it deregisters.
    registration: Option<Registration>,
}

/// Starts libvirt's event loop (once per process); it must run before a connection opens
/// for the remote driver to deliver events and answer keepalives. A failure leaves the
/// agent without events, polling only.
pub(super) fn start_loop_before_connecting() {
    if let Err(error) = start_event_loop() {
        tracing::warn!(%error, "no libvirt lifecycle events: the agent only polls");
    }
}

/// Turns client keepalives on; drivers without a persistent connection (`test:///`) do
/// not need them and refuse.
pub(super) fn enable_keepalive(connection: &virt::connect::Connect) {
    if let Err(error) = connection.set_keep_alive(KEEPALIVE_INTERVAL_SECS, KEEPALIVE_COUNT) {
        tracing::debug!(
            error = error.message(),
            "no keepalive on this libvirt connection"
        );
    }
}

impl LibvirtHost {
    /// Keeps `outlet` for every connection from now on, and registers the current one.
    pub(super) fn send_hints_from_now_on(
        &mut self,
        outlet: HintOutlet,
    ) -> Result<(), HypervisorError> {
        self.events.outlet = Some(outlet);
        self.register_for_events()
    }

    /// Drops the registration of a connection that is being replaced. Call before the new
    /// connection is registered.
    pub(super) fn forget_connection_events(&mut self) {
        self.events.registration = None;
    }

    /// Registers the current connection for lifecycle events and hands its stream out, if
    /// an outlet was given; nothing to do otherwise.
    pub(super) fn register_for_events(&mut self) -> Result<(), HypervisorError> {
        let Some(outlet) = self.events.outlet.clone() else {
            return Ok(());
        };
        self.events.registration = None;
        let (registration, receiver) =
            register(&self.connection, QUEUE_CAPACITY).map_err(|error| {
                HypervisorError::new(
                    FailureKind::Unavailable,
                    format!("cannot receive libvirt lifecycle events: {error}"),
                )
            })?;
        self.events.registration = Some(registration);
        if !outlet.hand_out(HintStream::from_libvirt(receiver)) {
            // Nobody reads hints any more: no registration to keep.
            self.events = ConnectionEvents::default();
        }
        Ok(())
    }
}
