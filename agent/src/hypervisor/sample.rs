//! Statistics of every domain and of the host, as one collection for the metrics endpoint
//! ([`super::Hypervisor::stats_sample`]). Plain data in the agent's terms; how a
//! collection is made is each implementation's business (libvirt: one bulk-stats call, see
//! [`super::libvirt`]).

use vmm_shared::VmId;

use super::PowerState;

/// State codes as `libvirt_domain_state_code` exports them: libvirt's `virDomainState`
/// numbering, which dashboards made for `prometheus-libvirt-exporter` know.
pub mod state_code {
    use super::PowerState;

    pub const NO_STATE: u32 = 0;
    pub const RUNNING: u32 = 1;
    pub const PAUSED: u32 = 3;
    pub const SHUTOFF: u32 = 5;
    pub const CRASHED: u32 = 6;

    /// The code of a power state, for implementations that have no codes of their own.
    pub fn of(state: PowerState) -> u32 {
        match state {
            PowerState::Running => RUNNING,
            PowerState::Paused => PAUSED,
            PowerState::Stopped => SHUTOFF,
            PowerState::Crashed => CRASHED,
            PowerState::Unknown => NO_STATE,
        }
    }
}

/// One collection: every domain the host knows, and the host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSample {
    pub domains: Vec<DomainSample>,
    pub host: HostSample,
}

/// One domain's figures. Counters and usage are only filled for active domains; a
/// shut-off domain carries its state and identity only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DomainSample {
    pub name: String,
    pub uuid: String,
    /// From the product's metadata; `None` for domains the product did not create.
    pub vm_id: Option<VmId>,
    /// See [`state_code`] (1 running, 3 paused, 5 shut off, ...).
    pub state: u32,
    pub cpu_time_ns: Option<u64>,
    pub virtual_cpus: Option<u64>,
    pub maximum_memory_kib: Option<u64>,
    pub memory_kib: Option<u64>,
    pub blocks: Vec<BlockSample>,
    pub interfaces: Vec<InterfaceSample>,
}

impl DomainSample {
    pub fn is_active(&self) -> bool {
        self.state != state_code::SHUTOFF
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockSample {
    /// `vda`, ...
    pub target_device: String,
    /// The image path; empty for disks without a local file (e.g. an empty CD-ROM).
    pub source_file: String,
    pub read_bytes: Option<u64>,
    pub read_requests: Option<u64>,
    pub write_bytes: Option<u64>,
    pub write_requests: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceSample {
    /// The host-side device, e.g. `vnet3`.
    pub target_device: String,
    /// The bridge it is plugged into; empty if none.
    pub source_bridge: String,
    pub receive_bytes: Option<u64>,
    pub receive_packets: Option<u64>,
    pub receive_errors: Option<u64>,
    pub receive_drops: Option<u64>,
    pub transmit_bytes: Option<u64>,
    pub transmit_packets: Option<u64>,
    pub transmit_errors: Option<u64>,
    pub transmit_drops: Option<u64>,
}

/// The host's capacity; each part is missing if the hypervisor would not tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSample {
    pub cpus: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub pool: Option<PoolSample>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSample {
    pub name: String,
    pub capacity_bytes: u64,
    pub allocation_bytes: u64,
    pub available_bytes: u64,
}
