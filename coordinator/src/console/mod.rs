//! Consoles: a VM's serial console or its screen (VNC), for its owner (or an admin), in the
//! browser, through the coordinator, because users never reach hypervisor hosts.
//!
//! ```text
//!  client ──WebSocket──▶ coordinator ◀──AgentControl.Console (gRPC, dialled by the agent)── agent ──▶ serial socket / VNC
//! ```
//!
//! 1. `POST /api/vms/{id}/console` `{"type": "serial"|"vnc", "force"?}` ([`routes`]) gives a
//!    ticket ([`tickets`]): single-use, bound to the user, the VM and the type, valid for
//!    `CONSOLE_TICKET_TTL` (30 s), because a browser cannot put a bearer token on a
//!    WebSocket.
//! 2. `GET /api/console/{ticket}` redeems it: the coordinator reserves the console
//!    ([`sessions`]: one session per VM and type; a second one is refused with 409 unless it
//!    asked to take over), sends `OpenConsole` down the host's session, and waits for the
//!    agent to attach the console with `AgentControl.Console` ([`agent_side`]). Only then does
//!    it answer `101 Switching Protocols`, so that a console the host cannot open is an HTTP
//!    error with a message, not a WebSocket that closes at once.
//! 3. [`relay`] carries bytes both ways (binary messages; the form noVNC speaks for VNC)
//!    until either end closes, the session is taken over, or nothing moved for
//!    `CONSOLE_IDLE_TIMEOUT` (15 min); the WebSocket is closed with a code and a reason
//!    that say which.
//!
//! Flow control is end to end: the relay reads the agent's stream only when the WebSocket
//! took the last message, and HTTP/2's window stops the agent, which stops reading the
//! console, which stops QEMU. Nothing in the coordinator buffers more than a message per
//! direction and the HTTP/2 stream window per console. HTTP/2 keeps some bookkeeping per
//! frame it holds, so the agent gathers output that keeps coming into large frames: a
//! window full of frames of a few bytes each (one per read of a serial port) took some
//! 10 MiB of the coordinator's memory per stalled console.
//!
//! What this module must never do: relay a console to anyone but the user the ticket was
//! issued to, accept a console from a host other than the VM's, log a ticket, or hold a
//! console open after either end closed.

pub mod agent_side;
mod relay;
pub mod routes;
pub mod sessions;
pub mod tickets;

use std::time::Duration;

use sessions::Sessions;
use tickets::Tickets;

/// Which console of a VM.
pub use vmm_shared::api::console::ConsoleKind;

/// The agent's name for a console kind.
pub fn kind_to_proto(kind: ConsoleKind) -> vmm_proto::ConsoleKind {
    match kind {
        ConsoleKind::Serial => vmm_proto::ConsoleKind::Serial,
        ConsoleKind::Vnc => vmm_proto::ConsoleKind::Vnc,
    }
}

/// The consoles' settings, fixed at start.
#[derive(Clone, Debug)]
pub struct ConsoleSettings {
    /// How long a ticket may wait to be redeemed (`CONSOLE_TICKET_TTL`).
    pub ticket_ttl: Duration,
    /// A session in which no byte moved either way for this long is closed
    /// (`CONSOLE_IDLE_TIMEOUT`).
    pub idle_timeout: Duration,
    /// How long the host may take to attach a console it was asked to open.
    pub open_timeout: Duration,
    /// Most consoles open at once on one host.
    pub max_per_host: usize,
}

/// Consoles open at once on one host, at most: each may hold an HTTP/2 stream window of the
/// agent's connection (see `crate::app`).
pub const MAX_CONSOLES_PER_HOST: usize = 32;

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            ticket_ttl: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            open_timeout: Duration::from_secs(10),
            max_per_host: MAX_CONSOLES_PER_HOST,
        }
    }
}

/// The tickets issued and the sessions open.
#[derive(Debug)]
pub struct Consoles {
    pub settings: ConsoleSettings,
    pub tickets: Tickets,
    pub sessions: Sessions,
}

impl Consoles {
    pub fn new(settings: ConsoleSettings) -> Self {
        Self {
            tickets: Tickets::new(settings.ticket_ttl),
            sessions: Sessions::new(settings.max_per_host),
            settings,
        }
    }
}

/// Describes the consoles' metrics (called once by `crate::telemetry::install`).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "console_sessions_open",
        "Console sessions open now, by type (serial, vnc)."
    );
    metrics::describe_counter!(
        "console_sessions_opened_total",
        "Console sessions opened (the host attached the console), by type."
    );
    metrics::describe_counter!(
        "console_sessions_total",
        "Console sessions that ended, by type and why (client, host, idle, taken_over, \
         agent_gone)."
    );
    metrics::describe_counter!(
        "console_bytes_total",
        metrics::Unit::Bytes,
        "Console bytes relayed, by type and direction (to_client: from the guest; to_guest: \
         from the client)."
    );
}
