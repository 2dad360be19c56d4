//! Benchmark: what in-memory hosts cost, as a fleet simulator would use them. Starts N
//! hosts, each with its hypervisor thread, a command executor and an in-memory journal,
//! creates D VMs on each through the executor (one call per command), polls every host
//! once, and prints the time taken and the process's resident memory before and after.
//!
//!     cargo run --release -p vmm-agent --example memory_hosts -- [N=200] [D=10]

use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_agent::commands::CommandExecutor;
use vmm_agent::hypervisor::memory::MemoryHost;
use vmm_agent::images::{ImageCache, NoImageSource};
use vmm_agent::journal::Journal;
use vmm_agent::poller::StatePoller;
use vmm_agent::state::StateTracker;
use vmm_proto::command::Action;
use vmm_proto::{Command, CreateVm, command_result};
use vmm_shared::VmId;

fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(200);
    let domains: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let rss_before = resident_kib();

    let started = Instant::now();
    let mut agents = Vec::with_capacity(hosts);
    for _ in 0..hosts {
        let host = MemoryHost::new();
        let hypervisor = host.spawn_handle().await?;
        let tracker = Arc::new(StateTracker::new());
        let executor = Arc::new(CommandExecutor::new(
            hypervisor.clone(),
            Arc::clone(&tracker),
            Duration::from_secs(5),
            Journal::in_memory()?,
            // Simulated hosts have no coordinator to fetch images from.
            Arc::new(ImageCache::new(
                hypervisor.clone(),
                Arc::new(NoImageSource),
                std::env::temp_dir().join("vmm-memory-hosts-images"),
            )),
        ));
        let poller = StatePoller::new(hypervisor, tracker);
        agents.push((host, executor, poller));
    }
    let spawned = started.elapsed();

    let started = Instant::now();
    let mut creates = Vec::new();
    for (n, (_, executor, _)) in agents.iter().enumerate() {
        for d in 0..domains {
            let executor = Arc::clone(executor);
            creates.push(tokio::spawn(async move {
                executor
                    .execute(Command {
                        operation_id: format!("op-{n}-{d}"),
                        vm_id: VmId::new_random().to_string(),
                        action: Some(Action::Create(CreateVm {
                            name: format!("vm-{d}"),
                            cpu: 1,
                            memory_mib: 512,
                            disk_gb: 10,
                            start: true,
                            ..Default::default()
                        })),
                    })
                    .await
            }));
        }
    }
    let mut failed = 0;
    for create in creates {
        if !matches!(
            create.await?.outcome,
            Some(command_result::Outcome::Domain(_))
        ) {
            failed += 1;
        }
    }
    let created = started.elapsed();

    let started = Instant::now();
    for (_, _, poller) in &agents {
        poller.poll_once().await?;
    }
    let polled = started.elapsed();
    let calls: u64 = agents.iter().map(|(host, _, _)| host.total_calls()).sum();
    let rss_after = resident_kib();

    println!("hosts: {hosts}, VMs per host: {domains}, failed creates: {failed}");
    println!("start {hosts} hosts (thread, executor, journal): {spawned:.2?}");
    println!(
        "{} creates through the executor: {created:.2?} ({:.1?} each), {calls} hypervisor calls in all",
        hosts * domains,
        created / u32::try_from((hosts * domains).max(1))?
    );
    println!("poll every host once: {polled:.2?}");
    println!(
        "resident memory: {rss_before} KiB before, {rss_after} KiB after ({} KiB per host)",
        rss_after.saturating_sub(rss_before) / hosts.max(1) as u64
    );
    Ok(())
}
