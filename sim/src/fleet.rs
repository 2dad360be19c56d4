//! The simulated hosts: each is a whole agent of the agent library (its command executor
//! with an in-memory journal, its state poller following the host's hints with a 30 s poll
//! as the safety net, its coordinator link with its own gRPC stream) on an in-memory host
//! of its own ([`MemoryHost`]) with its own host ID and capacity, dialling the coordinator
//! through a [`Link`] the simulator can cut or freeze.
//!
//! [`Fleet::truth`] is what the hosts really run, read from the in-memory hosts behind the
//! agents' backs; the audit compares the API with it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use vmm_agent::commands::CommandExecutor;
use vmm_agent::config::AgentToken;
use vmm_agent::enrol::Credentials;
use vmm_agent::hypervisor::memory::MemoryHost;
use vmm_agent::hypervisor::{HostFacts, Hypervisor, PowerState, hints};
use vmm_agent::images::{ImageCache, NoImageSource};
use vmm_agent::journal::Journal;
use vmm_agent::poller::StatePoller;
use vmm_agent::state::StateTracker;
use vmm_agent::stream::{CoordinatorLink, SessionSettings};

use crate::link::Link;

/// How often each agent polls its host (the production default): hints carry changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(30);

/// One simulated host and its agent.
#[derive(Debug)]
pub struct SimHost {
    pub id: String,
    /// The host itself, behind the agent's back.
    pub host: MemoryHost,
    pub link: Link,
}

/// Every simulated host.
#[derive(Debug)]
pub struct Fleet {
    pub hosts: Vec<SimHost>,
    /// The hosts' image caches (simulated VMs are blank, so they stay empty).
    _image_caches: tempfile::TempDir,
}

/// A VM as its host really has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truth {
    pub host: String,
    pub status: &'static str,
}

/// The status the API must show for a domain in `state`.
pub fn api_status(state: PowerState) -> &'static str {
    match state {
        PowerState::Running => "running",
        PowerState::Paused => "paused",
        PowerState::Stopped => "stopped",
        PowerState::Crashed | PowerState::Unknown => "error",
    }
}

impl Fleet {
    /// Starts `count` agents named `sim-0000`… against the coordinator's gRPC address, each
    /// host with 64 CPUs, 16 GiB and 10 TB.
    pub async fn start(count: usize, coordinator: SocketAddr, agent_token: &str) -> Result<Fleet> {
        let token = AgentToken::new(agent_token)?;
        let mut hosts = Vec::with_capacity(count);
        let image_caches = tempfile::tempdir()?;
        for n in 0..count {
            let id = format!("sim-{n:04}");
            let host = MemoryHost::with_facts(HostFacts {
                cpus: 64,
                memory_mib: 16 * 1024,
                disk_gb: 10_000,
                libvirt_version: "0.0.0".into(),
                hypervisor: "memory 0.0.0".into(),
                kvm_usable: false,
            });
            let link = Link::start(coordinator).await?;
            let hypervisor = host.spawn_handle().await?;
            let tracker = Arc::new(StateTracker::new());
            let poller = Arc::new(StatePoller::new(hypervisor.clone(), Arc::clone(&tracker)));
            let (outlet, streams) = hints::outlet();
            hypervisor.call(|hv| hv.send_hints_to(outlet)).await?;
            poller.poll_once().await?;
            let images = Arc::new(ImageCache::new(
                hypervisor.clone(),
                Arc::new(NoImageSource),
                image_caches.path().join(&id),
            ));
            let executor = Arc::new(CommandExecutor::new(
                hypervisor.clone(),
                tracker,
                Duration::from_secs(5),
                Journal::in_memory()?,
                Arc::clone(&images),
            ));
            let agent = CoordinatorLink::new(
                SessionSettings {
                    coordinator_url: link.url(),
                    other_coordinator_urls: Vec::new(),
                    host_id: id.parse()?,
                    credentials: Credentials::SharedToken(token.clone()),
                    heartbeat_interval: Duration::from_secs(5),
                },
                hypervisor,
                Arc::clone(&poller),
                executor,
                images,
            );
            tokio::spawn(async move { poller.run(POLL_INTERVAL, streams).await });
            tokio::spawn(async move { agent.run().await });
            hosts.push(SimHost { id, host, link });
        }
        Ok(Fleet {
            hosts,
            _image_caches: image_caches,
        })
    }

    /// Every product VM on every host, by VM ID, as the hosts really have them.
    pub fn truth(&self) -> HashMap<String, Truth> {
        let mut truth = HashMap::new();
        for sim in &self.hosts {
            let mut host = sim.host.clone();
            let Ok(domains) = Hypervisor::list_domains(&mut host) else {
                continue;
            };
            for domain in domains {
                if let Some(vm_id) = domain.vm_id {
                    truth.insert(
                        vm_id.to_string(),
                        Truth {
                            host: sim.id.clone(),
                            status: api_status(domain.state),
                        },
                    );
                }
            }
        }
        truth
    }

    pub fn host(&self, id: &str) -> Option<&SimHost> {
        self.hosts.iter().find(|sim| sim.id == id)
    }
}
