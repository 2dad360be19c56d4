//! A VM's consoles as a host hands them out: which console ([`ConsoleKind`]) and how to
//! reach it ([`ConsoleAccess`]). The bytes themselves are relayed one layer up
//! (`crate::console`), outside the hypervisor thread: nothing here reads or writes them.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// Which console of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConsoleKind {
    /// The first serial port: raw bytes, as a terminal sees them.
    Serial,
    /// The screen, as an RFB (VNC) server with security type None.
    Vnc,
}

impl ConsoleKind {
    /// The word used in logs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serial => "serial",
            Self::Vnc => "vnc",
        }
    }
}

/// How to reach a console.
#[derive(Debug)]
pub enum ConsoleAccess {
    /// A UNIX socket the VM's serial port listens on, to connect to (from async code: a
    /// connect may wait while another client holds the port).
    Socket(PathBuf),
    /// A stream already connected to the console.
    Connected(UnixStream),
}
