//! The network side of product VMs on libvirt: checking the `NETWORK` setting at open,
//! choosing a new VM's NIC (with an SSH port forward in user mode), and reading back a
//! domain's SSH forward and its guest's addresses.
//!
//! - SSH ports (user mode) come from `SSH_FORWARD_PORTS`, starting at a random point of the
//!   range: a port that any domain on the host already forwards (running or not: a stopped
//!   VM keeps its port) is skipped, and so is one that cannot be bound on the forward
//!   address right now (another program has it). The port lives in the domain's XML
//!   (`<portForward>`), so it survives restarts of the agent, of libvirtd and of the VM.
//! - Addresses: a NIC on a libvirt network is looked up in that network's DHCP leases;
//!   otherwise the QEMU guest agent is asked, only when libvirt shows it connected (asking
//!   a guest without one fails in libvirtd's log on every poll). Loopback and link-local
//!   addresses are left out; the list is sorted so it only changes when the addresses do.
//!
//! Never connects to a guest.

use std::collections::HashSet;
use std::net::{IpAddr, TcpListener};
use std::path::Path;

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use vmm_libvirt_stats::addresses::{AddressSource, interface_addresses};

use super::domain_xml::{self, NicDefinition};
use super::{LibvirtSettings, failed, has_code};
use crate::hypervisor::{FailureKind, HypervisorError, NetworkMode, PowerState, SshForward};

/// Checks at open that the network mode can work here: a libvirt network must exist (a
/// missing one, or a missing network driver, stops the agent with the fix); an inactive
/// network or a missing bridge is only warned about, as they may come up later.
pub(super) fn check_network_mode(
    connection: &Connect,
    settings: &LibvirtSettings,
) -> Result<(), HypervisorError> {
    match &settings.network {
        NetworkMode::User { .. } => Ok(()),
        NetworkMode::Network(name) => match connection.lookup_network_by_name(name) {
            Ok(network) => {
                if !network.is_active().unwrap_or(false) {
                    tracing::warn!(network = %name, "the libvirt network is not active: VMs cannot start until it is (virsh net-start {name})");
                }
                Ok(())
            }
            Err(error) if has_code(&error, ErrorNumber::NoNetwork) => Err(HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "NETWORK is network:{name}, but libvirt at {} has no network {name} \
                     (virsh net-list --all; deploy/README.md says how to define one)",
                    settings.uri
                ),
            )),
            Err(error) if has_code(&error, ErrorNumber::NoSupport) => Err(HypervisorError::new(
                FailureKind::Unavailable,
                format!(
                    "NETWORK is network:{name}, but libvirt at {} has no network driver \
                     (install libvirt-daemon-driver-network and dnsmasq-base, then restart \
                     libvirtd): {}",
                    settings.uri,
                    error.message()
                ),
            )),
            Err(error) => Err(failed(format!("looking up libvirt network {name}"))(error)),
        },
        NetworkMode::Bridge(name) => {
            let local = settings.uri.starts_with("qemu:///");
            if local
                && !Path::new("/sys/class/net")
                    .join(name)
                    .join("bridge")
                    .exists()
            {
                tracing::warn!(bridge = %name, "there is no bridge of that name on this host: VMs cannot start until there is (deploy/README.md)");
            }
            Ok(())
        }
    }
}

/// A new VM's NIC, chosen.
#[derive(Debug)]
pub(super) enum NicChoice {
    User { forward_address: String, port: u16 },
    Network(String),
    Bridge(String),
}

impl NicChoice {
    /// The NIC the network mode gives a new VM; `others` is the XML of every domain on the
    /// host (their forwarded ports are taken).
    pub(super) fn for_new_vm(
        mode: &NetworkMode,
        others: &[String],
    ) -> Result<Self, HypervisorError> {
        match mode {
            NetworkMode::User {
                forward_address,
                ports,
            } => {
                let taken: HashSet<u16> = others
                    .iter()
                    .flat_map(|xml| domain_xml::domain_networking(xml).forwarded_ports)
                    .collect();
                let port = ports
                    .ports_from(rand::random())
                    .find(|port| !taken.contains(port) && can_bind(*forward_address, *port))
                    .ok_or_else(|| {
                        HypervisorError::new(
                            FailureKind::Unavailable,
                            format!(
                                "no free port in SSH_FORWARD_PORTS {ports} on {forward_address}: \
                                 {} are forwarded to VMs, the others are in use; widen the range",
                                taken.iter().filter(|port| ports.contains(**port)).count()
                            ),
                        )
                    })?;
                Ok(Self::User {
                    forward_address: forward_address.to_string(),
                    port,
                })
            }
            NetworkMode::Network(name) => Ok(Self::Network(name.clone())),
            NetworkMode::Bridge(name) => Ok(Self::Bridge(name.clone())),
        }
    }

    pub(super) fn definition(&self) -> NicDefinition<'_> {
        match self {
            Self::User {
                forward_address,
                port,
            } => NicDefinition::User {
                forward_address,
                port: *port,
            },
            Self::Network(name) => NicDefinition::Network(name),
            Self::Bridge(name) => NicDefinition::Bridge(name),
        }
    }
}

/// Whether a listener could bind `address:port` now (passt binds it when the VM starts).
fn can_bind(address: IpAddr, port: u16) -> bool {
    TcpListener::bind((address, port)).is_ok()
}

/// A `52:54:00:…` MAC that no domain of `others` uses.
pub(super) fn unused_mac_address(others: &[String]) -> Result<String, HypervisorError> {
    let in_use: HashSet<String> = others
        .iter()
        .flat_map(|xml| domain_xml::mac_addresses(xml))
        .collect();
    std::iter::repeat_with(|| domain_xml::qemu_mac_address(rand::random()))
        .take(64)
        .find(|mac| !in_use.contains(mac))
        .ok_or_else(|| {
            HypervisorError::new(FailureKind::Unavailable, "no unused MAC address found")
        })
}

/// What the host knows of a product VM's network.
#[derive(Debug, Default)]
pub(super) struct NetworkView {
    pub addresses: Vec<String>,
    pub ssh: Option<SshForward>,
}

/// Reads the domain's SSH forward from its XML and, while it runs, its guest's addresses.
/// Failures only leave things out: a domain is still observed without them.
pub(super) fn observe(domain: &Domain, state: PowerState) -> NetworkView {
    let Ok(xml) = domain.xml_desc(0) else {
        return NetworkView::default();
    };
    let networking = domain_xml::domain_networking(&xml);
    let source = if state != PowerState::Running {
        None
    } else if networking.on_libvirt_network {
        Some(AddressSource::Lease)
    } else if networking.guest_agent_connected {
        Some(AddressSource::Agent)
    } else {
        None
    };
    let addresses = source
        .and_then(|source| interface_addresses(domain, source).ok())
        .map(|interfaces| {
            let mut addresses: Vec<String> = interfaces
                .into_iter()
                .flat_map(|interface| interface.addresses)
                .filter_map(|address| address.address.parse::<IpAddr>().ok())
                .filter(|address| is_reportable(*address))
                .map(|address| address.to_string())
                .collect();
            addresses.sort();
            addresses.dedup();
            addresses
        })
        .unwrap_or_default();
    NetworkView {
        addresses,
        ssh: networking.ssh,
    }
}

/// Loopback, link-local and unspecified addresses say nothing about where a guest is.
fn is_reportable(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()),
        IpAddr::V6(v6) => {
            !(v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::PortRange;

    #[test]
    fn only_addresses_that_locate_a_guest_are_reported() {
        for shown in ["192.0.2.10", "10.0.0.5", "2001:db8::10"] {
            assert!(is_reportable(shown.parse().unwrap()), "{shown}");
        }
        for hidden in [
            "127.0.0.1",
            "169.254.1.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "::",
        ] {
            assert!(!is_reportable(hidden.parse().unwrap()), "{hidden}");
        }
    }

    #[test]
    fn ssh_ports_skip_forwarded_and_bound_ports() {
        // A port some program holds, and a domain forwarding another one.
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let held_port = held.local_addr().unwrap().port();
        let range = PortRange::new(held_port, held_port.saturating_add(2)).unwrap();
        let mode = NetworkMode::User {
            forward_address: "127.0.0.1".parse().unwrap(),
            ports: range,
        };
        let forwarded = held_port + 1;
        let other = format!(
            "<domain><devices><interface type='user'><portForward proto='tcp' \
             address='127.0.0.1'><range start='{forwarded}' to='22'/></portForward>\
             </interface></devices></domain>"
        );
        for _ in 0..10 {
            match NicChoice::for_new_vm(&mode, std::slice::from_ref(&other)) {
                Ok(NicChoice::User { port, .. }) => assert_eq!(port, held_port + 2),
                // Another test process holds the last port just now.
                Err(error) => assert_eq!(error.kind, FailureKind::Unavailable, "{error}"),
                Ok(_) => panic!("user mode gives a user NIC"),
            }
        }
        let full = format!(
            "<domain><devices><interface type='user'><portForward proto='tcp'>\
             <range start='{}' end='{}' to='22'/></portForward></interface></devices></domain>",
            held_port,
            held_port + 2
        );
        let error = NicChoice::for_new_vm(&mode, &[full]).unwrap_err();
        assert_eq!(error.kind, FailureKind::Unavailable);
        assert!(error.message.contains("SSH_FORWARD_PORTS"), "{error}");
        drop(held);
    }
}
