//! The VM lifecycle on real QEMU under libvirtd (`qemu:///system`; TCG where KVM does not
//! work), checked on the host with `virsh` at every step, plus a change made behind the
//! product's back; and out-of-band changes followed with the agent's poll an hour away,
//! through libvirt's lifecycle events alone. Needs root and libvirtd: `scripts/setup-host.sh` provides both. When
//! libvirtd does not answer the test fails and says so; it is never skipped.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vmm_e2e::cluster::domain_name;
use vmm_e2e::virsh::{self, QemuLeftovers};
use vmm_e2e::{AgentOptions, ClusterOptions, TestCluster, wait_until};

/// How long an out-of-band change on the host may take to show in the API: lifecycle
/// events bring it within a second; the agent polls every 300 ms in tests (the events
/// test: every hour).
const OUT_OF_BAND_DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn vm_lifecycle_on_real_qemu() {
    // Held to the end: the libvirtd restart test must not run meanwhile.
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let started = Instant::now();
    let agent = AgentOptions::qemu("qemu-host");
    // Declared before the cluster, so it is dropped after the agent has been killed.
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    qemu_lifecycle(&cluster, &mut leftovers).await.unwrap();
    eprintln!(
        "real-QEMU lifecycle test took {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

async fn qemu_lifecycle(cluster: &TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let user = cluster.user("qemu-user").await?;
    let agent = cluster.agent("qemu-host");

    let step_started = Instant::now();
    let vm = user.create_vm("tcg-guest", 1, 128, Some(1)).await?;
    let domain = domain_name(&vm.id);
    leftovers.add_domain(&domain);
    eprintln!("create took {:.2}s", step_started.elapsed().as_secs_f64());
    ensure!(
        vm.status == "running",
        "a created VM is running, got {vm:?}"
    );
    ensure!(vm.host.as_deref() == Some("qemu-host"), "{vm:?}");
    ensure!(
        virsh::domstate(&domain).await? == "running",
        "virsh must show {domain} running"
    );
    let disk = agent.disk_path(&vm.id);
    ensure!(
        disk.is_file(),
        "the VM's disk must exist at {}",
        disk.display()
    );

    // The domain is what the product says it is.
    let xml = virsh::dumpxml(&domain).await?;
    ensure!(
        xml.contains(&format!("<uuid>{}</uuid>", vm.id)),
        "domain UUID is the VM id:\n{xml}"
    );
    ensure!(
        xml.contains(&vm.id),
        "the VM id is in the domain's metadata:\n{xml}"
    );
    let admin = cluster.admin().await?;
    let host = admin
        .hosts()
        .await?
        .into_iter()
        .find(|h| h.id == "qemu-host")
        .context("host")?;
    let expected_type = if host.kvm_usable {
        "type='kvm'"
    } else {
        "type='qemu'"
    };
    ensure!(
        xml.contains(&format!("<domain {expected_type}")),
        "kvm_usable is {} so the domain must be {expected_type}:\n{xml}",
        host.kvm_usable
    );
    // Consoles are never on the network: the screen listens nowhere (the agent hands QEMU
    // a socket per console session) and the serial port is a UNIX socket.
    for graphics in xml.lines().filter(|line| line.contains("<graphics")) {
        ensure!(
            !graphics.contains("listen='") || graphics.contains("listen='127.0.0.1'"),
            "consoles listen on loopback at most: {graphics}"
        );
    }
    ensure!(
        xml.contains("<listen type='none'/>"),
        "the VNC server listens nowhere:\n{xml}"
    );
    ensure!(
        xml.contains("<serial type='unix'>"),
        "the serial port is a UNIX socket:\n{xml}"
    );

    // Stop: the BIOS-only guest ignores ACPI, so the agent destroys it after its timeout.
    let stopped = user.action(&vm.id, "stop").await?;
    ensure!(stopped.status == "stopped", "{stopped:?}");
    ensure!(
        virsh::domstate(&domain).await? == "shut off",
        "virsh must show {domain} shut off"
    );

    let running = user.action(&vm.id, "start").await?;
    ensure!(running.status == "running", "{running:?}");
    ensure!(
        virsh::domstate(&domain).await? == "running",
        "virsh must show {domain} running"
    );

    // Behind the product's back: the API must notice without being asked to act.
    virsh::destroy(&domain).await?;
    let noticed = Instant::now();
    wait_until(
        "the out-of-band destroy to show as stopped",
        OUT_OF_BAND_DEADLINE,
        || async {
            let vm = user.get_vm(&vm.id).await?;
            Ok((vm.status == "stopped").then_some(()))
        },
    )
    .await?;
    eprintln!(
        "out-of-band destroy showed in the API after {:.2}s",
        noticed.elapsed().as_secs_f64()
    );

    let running = user.action(&vm.id, "start").await?;
    ensure!(running.status == "running", "{running:?}");
    ensure!(
        virsh::domstate(&domain).await? == "running",
        "virsh must show {domain} running"
    );

    user.delete_vm(&vm.id).await?;
    user.get(&format!("/api/vms/{}", vm.id))
        .await?
        .expect_error(404)?;
    ensure!(
        !virsh::domain_exists(&domain).await?,
        "{domain} must be gone from libvirt"
    );
    ensure!(!disk.exists(), "the disk {} must be gone", disk.display());
    Ok(())
}

/// With the agent's poll an hour away, out-of-band changes still reach the API: only the
/// libvirt lifecycle events can have carried them. The agent's metrics count the events.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_band_changes_reach_the_api_through_lifecycle_events_alone() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let mut agent = AgentOptions::qemu("qemu-events");
    agent.poll_interval_ms = 3_600_000;
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    events_alone(&cluster, &mut leftovers).await.unwrap();
}

async fn events_alone(cluster: &TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let user = cluster.user("events-user").await?;
    let vm = user.create_vm("evented", 1, 64, Some(1)).await?;
    let domain = domain_name(&vm.id);
    leftovers.add_domain(&domain);
    ensure!(vm.status == "running", "{vm:?}");

    for (command, status) in [
        ("suspend", "paused"),
        ("resume", "running"),
        ("destroy", "stopped"),
        ("start", "running"),
    ] {
        virsh::virsh_ok(&[command, &domain]).await?;
        let changed = Instant::now();
        wait_until(
            &format!("virsh {command} to show as {status}"),
            OUT_OF_BAND_DEADLINE,
            || async {
                let vm = user.get_vm(&vm.id).await?;
                Ok((vm.status == status).then_some(()))
            },
        )
        .await?;
        eprintln!(
            "virsh {command} → {status} in the API {:.3}s after virsh returned",
            changed.elapsed().as_secs_f64()
        );
    }

    let metrics = reqwest::get(cluster.agent("qemu-events").metrics_url())
        .await?
        .text()
        .await?;
    let events = metrics
        .lines()
        .find_map(|line| line.strip_prefix("agent_domain_events_total "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .context("agent_domain_events_total in the agent's metrics")?;
    ensure!(events >= 4.0, "the agent counted {events} lifecycle events");

    user.delete_vm(&vm.id).await?;
    Ok(())
}
