//! Consoles of libvirt domains, reached without any network listener:
//!
//! - **Serial**: the domain's first serial port is a UNIX socket (`<serial type='unix'>`,
//!   `mode='bind'`) at `<consoles dir>/<vm-id>.serial`, which libvirt creates and hands to
//!   QEMU, and labels with the agent's user and group so the agent may connect. The agent
//!   connects to it directly, outside this thread: a client that stops reading fills the
//!   socket and QEMU stops the guest's writes (the UART waits), so nothing buffers without
//!   bound. `virsh console` still works (libvirt connects to the same socket), while no
//!   session of the agent holds it: QEMU serves one client at a time.
//!   libvirt's own console stream (`virDomainOpenConsole`) is not used: its client library
//!   keeps reading the stream off the libvirt socket into memory whether or not the agent
//!   reads it (a known limitation while an event loop runs), which would buffer a guest's
//!   output without bound in the agent.
//! - **Screen**: the VNC server listens nowhere (`<listen type='none'/>`); for each session
//!   the agent makes a socket pair and hands one end to QEMU through
//!   `virDomainOpenGraphics` (with `SKIPAUTH`: security type None on that one connection).
//!   Also works for domains defined before consoles were relayed (their VNC on loopback).
//!
//! Domains defined before this (a `pty` serial port) have no serial console through the
//! agent until they are created again; asking for it is a `Conflict` that says so.

use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use vmm_shared::VmId;

use super::{LibvirtHost, domain_xml, failed};
use crate::hypervisor::{ConsoleAccess, ConsoleKind, FailureKind, HypervisorError, domain_name};

/// The longest path a UNIX socket may have (`sun_path` less its terminating zero).
const MAX_SOCKET_PATH: usize = 107;

/// The serial console socket of `vm_id`.
pub(super) fn serial_socket_path(consoles_dir: &Path, vm_id: VmId) -> String {
    consoles_dir
        .join(format!("{vm_id}.serial"))
        .to_string_lossy()
        .into_owned()
}

/// Makes the consoles directory (mode 0700) if missing, checks that socket paths in it fit,
/// and returns the DAC label of its owner (`+uid:+gid`), which libvirt gives the sockets.
pub(super) fn prepare_consoles_dir(dir: &Path) -> Result<String, HypervisorError> {
    let unusable = |reason: String| {
        HypervisorError::new(
            FailureKind::Invalid,
            format!("the consoles directory {}: {reason}", dir.display()),
        )
    };
    let longest = serial_socket_path(dir, VmId::new_random()).len();
    if longest > MAX_SOCKET_PATH {
        return Err(unusable(format!(
            "its socket paths would be {longest} bytes long, over the {MAX_SOCKET_PATH} a \
             UNIX socket allows; choose a shorter data directory"
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| unusable(format!("cannot be made: {error}")))?;
    let metadata =
        std::fs::metadata(dir).map_err(|error| unusable(format!("cannot be read: {error}")))?;
    Ok(format!("+{}:+{}", metadata.uid(), metadata.gid()))
}

impl LibvirtHost {
    pub(super) fn open_console_of(
        &mut self,
        vm_id: VmId,
        kind: ConsoleKind,
    ) -> Result<ConsoleAccess, HypervisorError> {
        let (domain, observed) = self.require_managed(vm_id)?;
        if !observed.state.is_active() {
            return Err(HypervisorError::new(
                FailureKind::Conflict,
                format!(
                    "VM {vm_id} is {}; its console exists only while it runs",
                    observed.state.word()
                ),
            ));
        }
        let name = domain_name(vm_id);
        match kind {
            ConsoleKind::Serial => {
                let xml = domain
                    .xml_desc(0)
                    .map_err(failed(format!("reading domain {name}")))?;
                let path = domain_xml::serial_socket(&xml).ok_or_else(|| {
                    HypervisorError::new(
                        FailureKind::Conflict,
                        format!(
                            "VM {vm_id} was defined before serial consoles were relayed (its \
                             serial port is not a socket); it has one once created again"
                        ),
                    )
                })?;
                Ok(ConsoleAccess::Socket(PathBuf::from(path)))
            }
            ConsoleKind::Vnc => {
                let (ours, theirs) = UnixStream::pair().map_err(|error| {
                    HypervisorError::new(
                        FailureKind::Unavailable,
                        format!("cannot make a socket pair for the screen: {error}"),
                    )
                })?;
                // libvirt passes a duplicate of the descriptor to QEMU; ours is closed when
                // `theirs` drops at the end of this block.
                domain
                    .open_graphics(
                        0,
                        theirs.as_raw_fd(),
                        virt::sys::VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH,
                    )
                    .map_err(failed(format!("opening the screen of domain {name}")))?;
                Ok(ConsoleAccess::Connected(ours))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consoles_dir_is_made_private_and_names_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let consoles = dir.path().join("consoles");
        let owner = prepare_consoles_dir(&consoles).unwrap();
        let metadata = std::fs::metadata(&consoles).unwrap();
        assert_eq!(owner, format!("+{}:+{}", metadata.uid(), metadata.gid()));
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777,
            0o700
        );
        let too_long = dir.path().join("x".repeat(80));
        let error = prepare_consoles_dir(&too_long).unwrap_err();
        assert!(error.message.contains("107"), "{error}");
    }
}
