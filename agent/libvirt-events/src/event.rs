//! What libvirt tells: a domain's lifecycle event, and why a connection was closed, as
//! plain owned Rust values that outlive the callback that produced them.
//!
//! Pure data: no libvirt calls, no `unsafe`.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Instant;

use virt::sys;

/// The kind of a lifecycle event (`virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleKind {
    /// A persistent configuration was added or changed.
    Defined,
    /// The persistent configuration was removed.
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    /// The guest is shutting down or has finished shutting down; a `Stopped` follows when
    /// the process is gone.
    Shutdown,
    PmSuspended,
    Crashed,
    /// A kind newer than this crate; the raw `virDomainEventType` value.
    Unknown(i32),
}

impl LifecycleKind {
    pub fn from_raw(raw: i32) -> Self {
        let Ok(known) = u32::try_from(raw) else {
            return Self::Unknown(raw);
        };
        match known {
            sys::VIR_DOMAIN_EVENT_DEFINED => Self::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => Self::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => Self::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => Self::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => Self::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => Self::Stopped,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => Self::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => Self::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => Self::Crashed,
            _ => Self::Unknown(raw),
        }
    }

    /// Lower-case name, as `virsh event` prints it (`unknown` for [`Self::Unknown`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Defined => "defined",
            Self::Undefined => "undefined",
            Self::Started => "started",
            Self::Suspended => "suspended",
            Self::Resumed => "resumed",
            Self::Stopped => "stopped",
            Self::Shutdown => "shutdown",
            Self::PmSuspended => "pmsuspended",
            Self::Crashed => "crashed",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for LifecycleKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// One `VIR_DOMAIN_EVENT_ID_LIFECYCLE` event.
///
/// A hint that the domain changed, not the domain's state: events can be coalesced by
/// libvirt, dropped here when the queue is full (see [`crate::Notice::Missed`]) and lost
/// with a connection. Read the domain's state when one arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// The domain's UUID in canonical lower-case form (`6695eb01-f6a4-8304-79aa-…`).
    pub uuid: String,
    pub name: String,
    pub kind: LifecycleKind,
    /// The raw detail (`virDomainEvent*DetailType` of the kind), e.g.
    /// `VIR_DOMAIN_EVENT_STOPPED_DESTROYED`; see [`Self::detail_name`].
    pub detail: i32,
    /// When libvirt's event thread handed the event to this crate.
    pub received_at: Instant,
}

impl LifecycleEvent {
    /// The detail's name, as `virsh event` prints it (`unknown` for one newer than this
    /// crate).
    pub fn detail_name(&self) -> &'static str {
        detail_name(self.kind, self.detail)
    }
}

impl fmt::Display for LifecycleEvent {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "domain {} ({}) {} {}",
            self.name,
            self.uuid,
            self.kind,
            self.detail_name()
        )
    }
}

fn detail_name(kind: LifecycleKind, detail: i32) -> &'static str {
    let Ok(detail) = u32::try_from(detail) else {
        return "unknown";
    };
    let names: &[&str] = match kind {
        LifecycleKind::Defined => &["added", "updated", "renamed", "from-snapshot"],
        LifecycleKind::Undefined => &["removed", "renamed"],
        LifecycleKind::Started => &[
            "booted",
            "migrated",
            "restored",
            "from-snapshot",
            "wakeup",
            "recreated",
        ],
        LifecycleKind::Suspended => &[
            "paused",
            "migrated",
            "ioerror",
            "watchdog",
            "restored",
            "from-snapshot",
            "api-error",
            "postcopy",
            "postcopy-failed",
            "guest-shutdown",
        ],
        LifecycleKind::Resumed => &[
            "unpaused",
            "migrated",
            "from-snapshot",
            "postcopy",
            "postcopy-failed",
        ],
        LifecycleKind::Stopped => &[
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from-snapshot",
            "recreated",
        ],
        LifecycleKind::Shutdown => &["finished", "guest", "host"],
        LifecycleKind::PmSuspended => &["memory", "disk"],
        LifecycleKind::Crashed => &["panicked", "crashloaded"],
        LifecycleKind::Unknown(_) => &[],
    };
    usize::try_from(detail)
        .ok()
        .and_then(|index| names.get(index))
        .copied()
        .unwrap_or("unknown")
}

/// Why libvirt closed a connection (`virConnectCloseReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// A socket or protocol error.
    Error,
    /// libvirtd closed the socket (it stopped, restarted, or dropped this client).
    Eof,
    /// libvirtd stopped answering keepalive probes.
    Keepalive,
    /// This process closed the connection.
    Client,
    Unknown(i32),
}

impl CloseReason {
    pub fn from_raw(raw: i32) -> Self {
        let Ok(known) = u32::try_from(raw) else {
            return Self::Unknown(raw);
        };
        match known {
            sys::VIR_CONNECT_CLOSE_REASON_ERROR => Self::Error,
            sys::VIR_CONNECT_CLOSE_REASON_EOF => Self::Eof,
            sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => Self::Keepalive,
            sys::VIR_CONNECT_CLOSE_REASON_CLIENT => Self::Client,
            _ => Self::Unknown(raw),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error => formatter.write_str("connection error"),
            Self::Eof => formatter.write_str("libvirtd closed the connection"),
            Self::Keepalive => formatter.write_str("libvirtd stopped answering keepalives"),
            Self::Client => formatter.write_str("closed by this process"),
            Self::Unknown(raw) => write!(formatter, "unknown reason {raw}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_libvirts_numbering() {
        let kinds: Vec<_> = (0..=9).map(LifecycleKind::from_raw).collect();
        assert_eq!(
            kinds,
            [
                LifecycleKind::Defined,
                LifecycleKind::Undefined,
                LifecycleKind::Started,
                LifecycleKind::Suspended,
                LifecycleKind::Resumed,
                LifecycleKind::Stopped,
                LifecycleKind::Shutdown,
                LifecycleKind::PmSuspended,
                LifecycleKind::Crashed,
                LifecycleKind::Unknown(9),
            ]
        );
        assert_eq!(LifecycleKind::from_raw(-1), LifecycleKind::Unknown(-1));
    }

    #[test]
    fn details_are_named_per_kind() {
        let name = |kind, detail| detail_name(kind, detail);
        let destroyed = i32::try_from(sys::VIR_DOMAIN_EVENT_STOPPED_DESTROYED).unwrap();
        assert_eq!(name(LifecycleKind::Stopped, destroyed), "destroyed");
        let booted = i32::try_from(sys::VIR_DOMAIN_EVENT_STARTED_BOOTED).unwrap();
        assert_eq!(name(LifecycleKind::Started, booted), "booted");
        let recreated = i32::try_from(sys::VIR_DOMAIN_EVENT_STOPPED_RECREATED).unwrap();
        assert_eq!(name(LifecycleKind::Stopped, recreated), "recreated");
        let guest_shutdown = i32::try_from(sys::VIR_DOMAIN_EVENT_SUSPENDED_GUEST_SHUTDOWN).unwrap();
        assert_eq!(
            name(LifecycleKind::Suspended, guest_shutdown),
            "guest-shutdown"
        );
        let crashloaded = i32::try_from(sys::VIR_DOMAIN_EVENT_CRASHED_CRASHLOADED).unwrap();
        assert_eq!(name(LifecycleKind::Crashed, crashloaded), "crashloaded");
        assert_eq!(name(LifecycleKind::Stopped, 99), "unknown");
        assert_eq!(name(LifecycleKind::Stopped, -1), "unknown");
        assert_eq!(name(LifecycleKind::Unknown(12), 0), "unknown");
    }

    #[test]
    fn close_reasons_follow_libvirts_numbering() {
        let reasons: Vec<_> = (0..=4).map(CloseReason::from_raw).collect();
        assert_eq!(
            reasons,
            [
                CloseReason::Error,
                CloseReason::Eof,
                CloseReason::Keepalive,
                CloseReason::Client,
                CloseReason::Unknown(4),
            ]
        );
    }
}
