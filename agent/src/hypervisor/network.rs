//! How a host's VMs are networked (the agent's `NETWORK` setting), in the agent's terms:
//! user-mode networking with an SSH port forward on the host, a libvirt network, or an
//! existing host bridge. Parsing and the port range; nothing here talks to libvirt.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// The NIC every new VM of this host gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// User-mode networking (passt): the guest reaches out through the host's own stack,
    /// and a TCP port forward from `forward_address:<port>` on the host, the port taken from
    /// `ports`, reaches the guest's port 22.
    User {
        forward_address: IpAddr,
        ports: PortRange,
    },
    /// A libvirt network (`virsh net-list`), e.g. libvirt's `default` NAT network.
    Network(String),
    /// An existing bridge of the host.
    Bridge(String),
}

impl Default for NetworkMode {
    /// User-mode networking, forwarding from 127.0.0.1, ports 22000-22999.
    fn default() -> Self {
        Self::User {
            forward_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: PortRange::default(),
        }
    }
}

/// Why a `NETWORK` value cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidNetworkMode(String);

/// The mode a `NETWORK` value names: `user`, `network:NAME` or `bridge:NAME`. The user
/// mode's forward address and ports are the defaults; [`NetworkMode::User`] is built with
/// other values by whoever reads those settings.
pub fn parse_network_kind(value: &str) -> Result<NetworkMode, InvalidNetworkMode> {
    let value = value.trim();
    if value == "user" {
        return Ok(NetworkMode::default());
    }
    let (kind, name) = value.split_once(':').ok_or_else(|| {
        InvalidNetworkMode(format!(
            "{value:?} is not a network mode: use `user`, `network:NAME` or `bridge:NAME`"
        ))
    })?;
    if !is_interface_like_name(name) {
        return Err(InvalidNetworkMode(format!(
            "{name:?} is not a usable name: use letters, digits, '-', '_' and '.' (at most 64)"
        )));
    }
    match kind {
        "network" => Ok(NetworkMode::Network(name.to_owned())),
        "bridge" => Ok(NetworkMode::Bridge(name.to_owned())),
        other => Err(InvalidNetworkMode(format!(
            "{other:?} is not a network mode: use `user`, `network:NAME` or `bridge:NAME`"
        ))),
    }
}

fn is_interface_like_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User {
                forward_address,
                ports,
            } => write!(
                f,
                "user (SSH forwarded from {forward_address}, ports {ports})"
            ),
            Self::Network(name) => write!(f, "network:{name}"),
            Self::Bridge(name) => write!(f, "bridge:{name}"),
        }
    }
}

/// An inclusive range of TCP ports, never empty, never port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    pub fn new(first: u16, last: u16) -> Result<Self, InvalidNetworkMode> {
        if first == 0 || first > last {
            return Err(InvalidNetworkMode(format!(
                "{first}-{last} is not a port range: give FIRST-LAST with 1 <= FIRST <= LAST"
            )));
        }
        Ok(Self { first, last })
    }

    pub fn first(self) -> u16 {
        self.first
    }

    pub fn last(self) -> u16 {
        self.last
    }

    pub fn contains(self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }

    /// Every port of the range, starting at `offset` from the first and wrapping around,
    /// so that allocations spread over the range instead of all trying the same port.
    pub fn ports_from(self, offset: u32) -> impl Iterator<Item = u16> {
        let size = u32::from(self.last - self.first) + 1;
        let first = u32::from(self.first);
        let start = offset % size;
        (0..size).filter_map(move |n| u16::try_from(first + (start + n) % size).ok())
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self {
            first: 22000,
            last: 22999,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = InvalidNetworkMode;

    /// `FIRST-LAST`, or a single port.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        let (first, last) = value.split_once('-').unwrap_or((value, value));
        let port = |text: &str| {
            text.trim().parse::<u16>().map_err(|_| {
                InvalidNetworkMode(format!(
                    "{value:?} is not a port range: give FIRST-LAST, e.g. 22000-22999"
                ))
            })
        };
        Self::new(port(first)?, port(last)?)
    }
}

/// Where SSH reaches a guest: a TCP port forward on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshForward {
    pub address: String,
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_modes_parse() {
        assert_eq!(parse_network_kind("user"), Ok(NetworkMode::default()));
        assert_eq!(
            parse_network_kind("network:default"),
            Ok(NetworkMode::Network("default".into()))
        );
        assert_eq!(
            parse_network_kind(" bridge:br0 "),
            Ok(NetworkMode::Bridge("br0".into()))
        );
        for bad in [
            "",
            "nat",
            "network:",
            "bridge:a b",
            "bridge:x'y",
            "tap:x",
            "user:x",
        ] {
            assert!(parse_network_kind(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_parse_and_wrap() {
        let range: PortRange = "22000-22002".parse().unwrap();
        assert_eq!((range.first(), range.last()), (22000, 22002));
        assert_eq!(
            range.ports_from(1).collect::<Vec<_>>(),
            [22001, 22002, 22000]
        );
        assert_eq!(
            "2222".parse::<PortRange>().unwrap().ports_from(7).count(),
            1
        );
        assert!(range.contains(22002) && !range.contains(22003));
        for bad in ["0-10", "10-9", "a-b", "", "70000", "1-2-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
        let whole = PortRange::new(1, u16::MAX).unwrap();
        assert_eq!(whole.ports_from(u32::MAX).count(), usize::from(u16::MAX));
    }
}
