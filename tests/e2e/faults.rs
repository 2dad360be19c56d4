//! Fault tests on real QEMU under libvirtd, with real processes: an agent killed in the
//! middle of a create, a coordinator killed in the middle of creates and snapshots,
//! libvirtd restarted (or the agent's libvirt connection cut) under a running agent,
//! changes made on the host behind the product's back, and a graceful agent shutdown.
//!
//! Every test ends with the same audit (`vmm_e2e::audit`): every VM the API shows exists on its host with
//! the same state (or is reported as gone); no product domain exists on a host that the
//! API does not know; every user's quota usage equals the resources recorded for them.
//! Each prints how long the system took to converge.
//!
//! Every test holds [`virsh::qemu_guard`] (the libvirtd restart holds the exclusive one)
//! and removes whatever it left on the host when it ends, failed or not: domains whose disk
//! lies in its agents' data directories, hand-made domains, and its storage pools.

use std::path::Path;
use std::process::Command as StdCommand;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use vmm_e2e::audit::{audit, converge};
use vmm_e2e::cluster::{QEMU_SYSTEM_URI, domain_name};
use vmm_e2e::virsh;
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster, wait_until};

// ---- fixture and clean-up -----------------------------------------------------------------

/// A cluster of QEMU agents plus what removes their traces from the host. Fields drop in
/// order: the processes first, then the host clean-up, then the libvirtd guard.
struct QemuFixture<G> {
    cluster: TestCluster,
    cleanup: HostCleanup,
    _guard: G,
}

async fn start_qemu_cluster<G>(guard: G, host_ids: &[&str]) -> QemuFixture<G> {
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agents: Vec<AgentOptions> = host_ids.iter().map(|id| AgentOptions::qemu(id)).collect();
    let mut cleanup = HostCleanup::new(&agents);
    let cluster = TestCluster::start(ClusterOptions::with_agents(agents))
        .await
        .unwrap();
    // Now that the data directories are known, match exactly them.
    cleanup.disk_markers = cluster
        .agents()
        .iter()
        .map(|agent| format!("{}/images/", agent.data_dir.display()))
        .collect();
    QemuFixture {
        cluster,
        cleanup,
        _guard: guard,
    }
}

/// Removes, on drop, every domain whose disk lies in one of this test's agents' data
/// directories (`…/agent-<host>/images/`), every domain registered with
/// [`HostCleanup::add_domain`], and the agents' storage pools.
struct HostCleanup {
    pools: Vec<String>,
    disk_markers: Vec<String>,
    domains: std::sync::Mutex<Vec<String>>,
}

impl HostCleanup {
    fn new(agents: &[AgentOptions]) -> Self {
        Self {
            pools: agents.iter().map(|a| a.storage_pool.clone()).collect(),
            disk_markers: agents
                .iter()
                .map(|a| format!("/agent-{}/images/", a.host_id))
                .collect(),
            domains: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn virsh_sync(args: &[&str]) -> Option<String> {
    let output = StdCommand::new("virsh")
        .arg("-c")
        .arg(QEMU_SYSTEM_URI)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Drop for HostCleanup {
    fn drop(&mut self) {
        let mut doomed = self.domains.lock().map(|d| d.clone()).unwrap_or_default();
        let names = virsh_sync(&["list", "--all", "--name"]).unwrap_or_default();
        for name in names
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with("vmm-"))
        {
            let xml = virsh_sync(&["dumpxml", name]).unwrap_or_default();
            if self
                .disk_markers
                .iter()
                .any(|marker| xml.contains(marker.as_str()))
            {
                doomed.push(name.to_owned());
            }
        }
        for name in &doomed {
            let _ = virsh_sync(&["destroy", name]);
            if virsh_sync(&["undefine", name, "--snapshots-metadata", "--nvram"]).is_none() {
                let _ = virsh_sync(&["undefine", name, "--snapshots-metadata"]);
            }
        }
        for pool in &self.pools {
            let _ = virsh_sync(&["pool-destroy", pool]);
            let _ = virsh_sync(&["pool-undefine", pool]);
        }
    }
}

/// Lines of the agent's current log that contain every one of `needles`.
fn count_log_lines(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .count()
}

/// Product disk files in an agent's images directory.
fn disk_files(data_dir: &Path) -> Vec<String> {
    std::fs::read_dir(data_dir.join("images"))
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("vmm-") && name.ends_with(".qcow2"))
                .collect()
        })
        .unwrap_or_default()
}

async fn ids_by_name(admin: &Api) -> Result<Vec<(String, String, String)>> {
    let vms: Vec<Value> = admin.get("/api/vms").await?.expect_status(200)?.json()?;
    Ok(vms
        .iter()
        .map(|vm| {
            (
                vm["name"].as_str().unwrap_or_default().to_owned(),
                vm["id"].as_str().unwrap_or_default().to_owned(),
                vm["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

// ---- 1. kill -9 the agent in the middle of a create ---------------------------------------

/// When the agent is killed during a create.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once the VM's disk file exists.
    DiskAppears,
    /// This many milliseconds after the agent logged that it accepted the create.
    AfterAccept(u64),
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_mid_create_never_makes_two_domains() {
    let guard = virsh::qemu_guard().await;
    let mut fixture = start_qemu_cluster(guard, &["fault-agent-kill"]).await;
    agent_killed_mid_create(&mut fixture.cluster).await.unwrap();
}

async fn agent_killed_mid_create(cluster: &mut TestCluster) -> Result<()> {
    const HOST: &str = "fault-agent-kill";
    let user = cluster.user("kill-agent-user").await?;
    let steady = user.create_vm("steady", 1, 64, Some(1)).await?;
    ensure!(steady.status == "running", "{steady:?}");

    // The kill lands at different points of the create: as soon as its disk exists (before
    // the domain is defined), then at fixed delays after the agent accepted it (around the
    // define, during the start).
    for (round, kill_at) in [
        KillAt::DiskAppears,
        KillAt::AfterAccept(0),
        KillAt::AfterAccept(120),
        KillAt::AfterAccept(350),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("mid-create-{round}");
        let disks_before = disk_files(&cluster.agent(HOST).data_dir);
        let executing_before =
            count_log_lines(&cluster.agent(HOST).log(), &["executing command", "create"]);
        let request = {
            let user = user.clone();
            let body = json!({"name": name, "cpu": 1, "memory": 64, "disk_gb": 1});
            tokio::spawn(async move { user.try_create_vm(&body).await })
        };
        let log_of = |cluster: &TestCluster| cluster.agent(HOST).log();
        wait_until(
            "the agent to accept the create",
            Duration::from_secs(30),
            || {
                let log = log_of(cluster);
                async move {
                    Ok(
                        (count_log_lines(&log, &["executing command", "create"])
                            > executing_before)
                            .then_some(()),
                    )
                }
            },
        )
        .await?;
        match kill_at {
            KillAt::AfterAccept(delay_ms) => {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            KillAt::DiskAppears => {
                let images = cluster.agent(HOST).data_dir.clone();
                let deadline = Instant::now() + Duration::from_secs(30);
                while disk_files(&images).len() <= disks_before.len() {
                    ensure!(
                        Instant::now() < deadline,
                        "the create's disk never appeared"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        cluster.kill_agent(HOST);
        let killed = Instant::now();
        let answer = request.await??;
        eprintln!(
            "round {round}: agent killed {kill_at:?} into the create; the client got HTTP {}",
            answer.status
        );
        if answer.status != 201 {
            answer.expect_error_in(&[500, 502, 503, 504])?;
        }

        cluster.restart_agent(HOST)?;
        cluster.wait_for_connected_agents(1).await?;
        converge(
            &format!("killing the agent {kill_at:?} into a create"),
            cluster,
            &[&user],
            killed,
        )
        .await?;

        let admin = cluster.admin().await?;
        let named: Vec<_> = ids_by_name(&admin)
            .await?
            .into_iter()
            .filter(|(n, _, _)| *n == name)
            .collect();
        ensure!(named.len() <= 1, "one VM at most: {named:?}");
        match named.first() {
            Some((_, id, status)) => {
                eprintln!("round {round}: the create completed: VM {id} is {status}");
                let copies = virsh::domain_names()
                    .await?
                    .into_iter()
                    .filter(|domain| *domain == domain_name(id))
                    .count();
                ensure!(
                    copies == 1,
                    "exactly one domain for VM {id}, found {copies}"
                );
            }
            None => eprintln!("round {round}: the create failed cleanly: no VM, no domain"),
        }
        // No disk without a VM: the start-up sweep removed what the killed create left.
        let agent = cluster.agent(HOST);
        let known: Vec<String> = ids_by_name(&admin)
            .await?
            .into_iter()
            .map(|(_, id, _)| format!("vmm-{id}.qcow2"))
            .collect();
        for file in disk_files(&agent.data_dir) {
            ensure!(known.contains(&file), "disk {file} has no VM");
        }
        let log = agent.log();
        for line in log
            .lines()
            .filter(|line| line.contains("interrupted") || line.contains("without a domain"))
        {
            eprintln!("round {round}: agent after restart: {line}");
        }
    }
    ensure!(
        user.get_vm(&steady.id).await?.status == "running",
        "the untouched VM kept running"
    );

    // A create killed between making the disk and defining the domain leaves a disk
    // without a domain (the rounds above rarely hit that window: libvirtd finishes what it
    // was asked even when its client dies). Leave one as such a kill would, then restart.
    cluster.kill_agent(HOST);
    let orphan = format!("vmm-{}.qcow2", uuid::Uuid::new_v4());
    let pool = cluster.agent(HOST).options.storage_pool.clone();
    virsh::virsh_ok(&["vol-create-as", &pool, &orphan, "1G", "--format", "qcow2"]).await?;
    ensure!(disk_files(&cluster.agent(HOST).data_dir).contains(&orphan));
    cluster.restart_agent(HOST)?;
    let restarted = Instant::now();
    cluster.wait_for_connected_agents(1).await?;
    ensure!(
        !disk_files(&cluster.agent(HOST).data_dir).contains(&orphan),
        "the start-up sweep removed the orphaned disk {orphan}"
    );
    ensure!(
        count_log_lines(&cluster.agent(HOST).log(), &["without a domain", &orphan]) == 1,
        "the sweep logged it"
    );
    converge("sweeping an orphaned disk", cluster, &[&user], restarted).await?;
    Ok(())
}

// ---- 2. kill -9 the coordinator in the middle of creates and snapshots --------------------

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_mid_creates_and_snapshots_keeps_the_record_true() {
    let guard = virsh::qemu_guard().await;
    let mut fixture = start_qemu_cluster(guard, &["fault-coord-kill"]).await;
    coordinator_killed(&mut fixture.cluster).await.unwrap();
}

async fn coordinator_killed(cluster: &mut TestCluster) -> Result<()> {
    const HOST: &str = "fault-coord-kill";
    let alice = cluster.user("coord-alice").await?;
    let bob = cluster.user("coord-bob").await?;
    let a_running = alice.create_vm("a-running", 1, 64, Some(1)).await?;
    let a_stopped = alice.create_vm("a-stopped", 1, 64, Some(1)).await?;
    alice.action(&a_stopped.id, "force_stop").await?;
    let b_running = bob.create_vm("b-running", 1, 64, Some(1)).await?;

    let executing_before = count_log_lines(&cluster.agent(HOST).log(), &["executing command"]);
    let mut requests = Vec::new();
    for (user, name) in [(&alice, "a-new-1"), (&alice, "a-new-2"), (&bob, "b-new-1")] {
        let (user, body) = (
            user.clone(),
            json!({"name": name, "cpu": 1, "memory": 64, "disk_gb": 1}),
        );
        requests.push(tokio::spawn(async move {
            user.send(reqwest::Method::POST, "/api/vms", Some(&body))
                .await
        }));
    }
    for (user, vm, name) in [
        (&alice, &a_running, "snap-running"),
        (&alice, &a_stopped, "snap-stopped"),
        (&bob, &b_running, "snap-bob"),
    ] {
        let (user, path) = (user.clone(), format!("/api/vms/{}/snapshots", vm.id));
        let body = json!({"name": name});
        requests.push(tokio::spawn(async move {
            user.send(reqwest::Method::POST, &path, Some(&body)).await
        }));
    }
    // Kill once the agent is busy with some of them.
    let log_of = |cluster: &TestCluster| cluster.agent(HOST).log();
    wait_until(
        "the agent to start on the commands",
        Duration::from_secs(30),
        || {
            let log = log_of(cluster);
            async move {
                Ok(
                    (count_log_lines(&log, &["executing command"]) >= executing_before + 2)
                        .then_some(()),
                )
            }
        },
    )
    .await?;
    cluster.restart_coordinator().await?;
    let killed = Instant::now();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(match request.await? {
            Ok(response) => response.status.to_string(),
            Err(_) => "connection cut".to_owned(),
        });
    }
    eprintln!("answers to the requests in flight when the coordinator died: {answers:?}");
    cluster.wait_for_connected_agents(1).await?;
    let summary = converge(
        "killing the coordinator mid creates and snapshots",
        cluster,
        &[&alice, &bob],
        killed,
    )
    .await?;
    eprintln!("after the coordinator restart: {summary:?}");

    // The VMs that were settled before stay as they were.
    ensure!(alice.get_vm(&a_running.id).await?.status == "running");
    ensure!(alice.get_vm(&a_stopped.id).await?.status == "stopped");
    ensure!(bob.get_vm(&b_running.id).await?.status == "running");
    // And the system works: a new VM can be made and deleted.
    let after = alice.create_vm("after-restart", 1, 64, Some(1)).await?;
    ensure!(after.status == "running", "{after:?}");
    alice.delete_vm(&after.id).await?;
    audit(cluster, &[&alice, &bob]).await?;
    Ok(())
}

// ---- 4. libvirtd restarted under a running agent ------------------------------------------

/// The libvirtd process (from its pid file), checked to really be libvirtd.
fn libvirtd_pid() -> Result<u32> {
    let pid: u32 = std::fs::read_to_string("/run/libvirtd.pid")
        .context("reading /run/libvirtd.pid")?
        .trim()
        .parse()
        .context("parsing /run/libvirtd.pid")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    ensure!(
        comm.trim() == "libvirtd",
        "process {pid} from /run/libvirtd.pid is {comm:?}, not libvirtd"
    );
    Ok(pid)
}

/// Starts libvirtd again on drop if it does not answer, whatever happened to the test, the
/// way `scripts/setup-host.sh` starts it (under a subreaper).
struct LibvirtdBack;

impl Drop for LibvirtdBack {
    fn drop(&mut self) {
        if virsh_sync(&["version"]).is_none()
            && let Err(error) = virsh::start_libvirtd()
        {
            eprintln!("cannot start libvirtd again: {error:#}");
        }
    }
}

/// `libvirt_connection_status{host="<host>"}` from the coordinator's metrics.
async fn libvirt_connection_status(cluster: &TestCluster, host: &str) -> Result<Option<f64>> {
    let text = cluster.api().get_text("/api/metrics").await?;
    let prefix = format!("libvirt_connection_status{{host=\"{host}\"}} ");
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok()))
}

/// Restarts the host's libvirtd (SIGTERM to its pid, then `scripts/start-libvirtd.sh`, as
/// the host was set up), which every other QEMU test must not see: this test holds the
/// exclusive guard.
#[tokio::test(flavor = "multi_thread")]
async fn libvirtd_restart_under_a_running_agent_is_survived() {
    let guard = virsh::qemu_exclusive_guard().await;
    let mut fixture = start_qemu_cluster(guard, &["fault-libvirtd"]).await;
    let _back = LibvirtdBack;
    libvirtd_restart(&mut fixture.cluster).await.unwrap();
}

async fn libvirtd_restart(cluster: &mut TestCluster) -> Result<()> {
    const HOST: &str = "fault-libvirtd";
    let user = cluster.user("libvirtd-user").await?;
    let running = user.create_vm("keeps-running", 1, 64, Some(1)).await?;
    let stopped = user.create_vm("stays-stopped", 1, 64, Some(1)).await?;
    user.action(&stopped.id, "force_stop").await?;
    let agent_pid = cluster.agent(HOST).pid();
    ensure!(libvirt_connection_status(cluster, HOST).await? == Some(1.0));

    let pid = libvirtd_pid()?;
    let status = tokio::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM {pid}");
    let stopped_at = Instant::now();
    wait_until("libvirtd to exit", Duration::from_secs(30), || async move {
        Ok((!Path::new(&format!("/proc/{pid}")).exists()).then_some(()))
    })
    .await?;

    // While libvirtd is away: the stream stays, the host says libvirt is down.
    wait_until(
        "libvirt_connection_status 0",
        Duration::from_secs(30),
        || async {
            Ok((libvirt_connection_status(cluster, HOST).await? == Some(0.0)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "libvirtd stopped → libvirt_connection_status 0 after {:.2}s",
        stopped_at.elapsed().as_secs_f64()
    );
    let health = cluster.api().health().await?;
    ensure!(health.agents_connected == 1, "the stream stays: {health:?}");
    let hosts = cluster.admin().await?.hosts().await?;
    ensure!(hosts[0].status == "connected", "{hosts:?}");
    // The VMs are not claimed stopped or gone meanwhile.
    ensure!(user.get_vm(&running.id).await?.status == "running");
    ensure!(user.get_vm(&stopped.id).await?.status == "stopped");

    let restarted = Instant::now();
    tokio::task::spawn_blocking(virsh::start_libvirtd).await??;
    wait_until("libvirtd to answer", Duration::from_secs(30), || async {
        Ok(virsh::virsh(&["version"])
            .await?
            .status
            .success()
            .then_some(()))
    })
    .await?;
    wait_until(
        "libvirt_connection_status 1",
        Duration::from_secs(60),
        || async {
            Ok((libvirt_connection_status(cluster, HOST).await? == Some(1.0)).then_some(()))
        },
    )
    .await?;
    eprintln!(
        "libvirtd started → libvirt_connection_status 1 after {:.2}s",
        restarted.elapsed().as_secs_f64()
    );
    converge("a libvirtd restart", cluster, &[&user], restarted).await?;
    ensure!(
        cluster.agent(HOST).pid() == agent_pid,
        "the agent recovered without a restart"
    );
    // Commands work again.
    ensure!(user.action(&running.id, "force_stop").await?.status == "stopped");
    ensure!(user.action(&stopped.id, "start").await?.status == "running");
    audit(cluster, &[&user]).await?;
    Ok(())
}

/// The agent's libvirt connection cut by libvirtd (`virt-admin client-disconnect`, no
/// daemon restart, so other tests are undisturbed): the agent notices, reconnects, and
/// carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_cut_libvirt_connection_is_reopened() {
    let guard = virsh::qemu_guard().await;
    let mut fixture = start_qemu_cluster(guard, &["fault-libvirt-cut"]).await;
    libvirt_connection_cut(&mut fixture.cluster).await.unwrap();
}

/// The IDs of libvirtd's clients that belong to process `pid`.
async fn libvirtd_clients_of(pid: u32) -> Result<Vec<String>> {
    let list = tokio::process::Command::new("virt-admin")
        .args(["srv-clients-list", "libvirtd"])
        .output()
        .await
        .context("virt-admin (libvirt-clients) is needed")?;
    let mut ids = Vec::new();
    for line in String::from_utf8_lossy(&list.stdout).lines().skip(2) {
        let Some(id) = line.split_whitespace().next() else {
            continue;
        };
        let info = tokio::process::Command::new("virt-admin")
            .args(["client-info", "libvirtd", id])
            .output()
            .await?;
        let info = String::from_utf8_lossy(&info.stdout);
        let owner = info
            .lines()
            .find(|line| line.trim_start().starts_with("unix_process_id"))
            .and_then(|line| line.split(':').nth(1))
            .and_then(|value| value.trim().parse::<u32>().ok());
        if owner == Some(pid) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

async fn libvirt_connection_cut(cluster: &mut TestCluster) -> Result<()> {
    const HOST: &str = "fault-libvirt-cut";
    let user = cluster.user("cut-user").await?;
    let vm = user.create_vm("survivor", 1, 64, Some(1)).await?;
    let agent_pid = cluster.agent(HOST).pid();
    let clients = libvirtd_clients_of(agent_pid).await?;
    ensure!(!clients.is_empty(), "the agent has a libvirt connection");
    for id in &clients {
        let status = tokio::process::Command::new("virt-admin")
            .args(["client-disconnect", "libvirtd", id])
            .status()
            .await?;
        ensure!(status.success(), "virt-admin client-disconnect {id}");
    }
    let cut = Instant::now();
    wait_until(
        "the agent to reconnect to libvirt",
        Duration::from_secs(30),
        || {
            let log = cluster.agent(HOST).log();
            async move { Ok(log.contains("reconnected to libvirt").then_some(())) }
        },
    )
    .await?;
    eprintln!(
        "libvirt connection cut → agent reconnected after {:.2}s",
        cut.elapsed().as_secs_f64()
    );
    // Out-of-band change after the reconnect: the new connection sees it.
    virsh::destroy(&domain_name(&vm.id)).await?;
    wait_until("the destroy to show", Duration::from_secs(30), || async {
        Ok((user.get_vm(&vm.id).await?.status == "stopped").then_some(()))
    })
    .await?;
    ensure!(user.action(&vm.id, "start").await?.status == "running");
    ensure!(cluster.agent(HOST).pid() == agent_pid, "no agent restart");
    // The coordinator learns the connection state from heartbeats: the next one after the
    // reconnect says so.
    wait_until(
        "libvirt_connection_status 1",
        Duration::from_secs(30),
        || async {
            Ok((libvirt_connection_status(cluster, HOST).await? == Some(1.0)).then_some(()))
        },
    )
    .await?;
    converge("a cut libvirt connection", cluster, &[&user], cut).await?;
    Ok(())
}

// ---- 5. out-of-band changes on the host -----------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn out_of_band_changes_are_followed_and_hand_made_domains_never_adopted() {
    let guard = virsh::qemu_guard().await;
    let fixture = start_qemu_cluster(guard, &["fault-oob"]).await;
    let handmade = format!("vmm-{}", uuid::Uuid::new_v4());
    fixture
        .cleanup
        .domains
        .lock()
        .unwrap()
        .push(handmade.clone());
    out_of_band(&fixture.cluster, &handmade).await.unwrap();
}

async fn out_of_band(cluster: &TestCluster, handmade: &str) -> Result<()> {
    const HOST: &str = "fault-oob";
    let user = cluster.user("oob-user").await?;
    let destroyed = user.create_vm("destroyed", 1, 64, Some(1)).await?;
    let undefined = user.create_vm("undefined", 1, 64, Some(1)).await?;
    let quota_before = user.quota().await?;

    // virsh destroy → stopped.
    virsh::destroy(&domain_name(&destroyed.id)).await?;
    let changed = Instant::now();
    wait_until("destroy → stopped", Duration::from_secs(30), || async {
        Ok((user.get_vm(&destroyed.id).await?.status == "stopped").then_some(()))
    })
    .await?;
    eprintln!(
        "virsh destroy → stopped in the API after {:.2}s",
        changed.elapsed().as_secs_f64()
    );

    // virsh destroy + undefine → error with a reason, never silently gone.
    let domain = domain_name(&undefined.id);
    virsh::destroy(&domain).await?;
    virsh::undefine(&domain).await?;
    let changed = Instant::now();
    let reason =
        wait_until("undefine → error", Duration::from_secs(30), || async {
            let vm = user.get(&format!("/api/vms/{}", undefined.id)).await?;
            let vm = vm.expect_status(200)?.body;
            Ok((vm["status"] == "error")
                .then(|| vm["status_reason"].as_str().unwrap_or("").to_owned()))
        })
        .await?;
    eprintln!(
        "virsh undefine → error ({reason:?}) in the API after {:.2}s",
        changed.elapsed().as_secs_f64()
    );
    ensure!(!reason.is_empty(), "the error carries a reason");
    ensure!(
        user.quota().await?.usage == quota_before.usage,
        "the vanished VM still counts until its owner deletes it"
    );

    // A domain defined by hand, named like a product domain but without its metadata.
    let uuid = handmade.trim_start_matches("vmm-");
    let xml = format!(
        "<domain type='qemu'><name>{handmade}</name><uuid>{uuid}</uuid>\
         <memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64'>hvm</type></os></domain>"
    );
    let file = std::env::temp_dir().join(format!("{handmade}.xml"));
    std::fs::write(&file, xml)?;
    let defined = virsh::virsh_ok(&["define", file.to_str().context("path")?]).await;
    let _ = std::fs::remove_file(&file);
    defined?;
    // The agent has seen it once its metrics list it.
    let metrics_url = cluster.agent(HOST).metrics_url();
    let seen = Instant::now();
    wait_until(
        "the agent to see the hand-made domain",
        Duration::from_secs(30),
        || {
            let url = metrics_url.clone();
            let name = handmade.to_owned();
            async move {
                let text = reqwest::get(&url).await?.text().await?;
                Ok(text.contains(&format!("domain=\"{name}\"")).then_some(()))
            }
        },
    )
    .await?;
    eprintln!(
        "hand-made domain seen by the agent after {:.2}s",
        seen.elapsed().as_secs_f64()
    );
    let admin = cluster.admin().await?;
    for vm in ids_by_name(&admin).await? {
        ensure!(vm.1 != uuid, "the hand-made domain was adopted: {vm:?}");
    }
    ensure!(
        user.list_vms().await?.len() == 2,
        "only the user's own two VMs"
    );
    ensure!(
        user.quota().await?.usage == quota_before.usage,
        "quota unaffected"
    );
    let hosts = admin.hosts().await?;
    ensure!(
        hosts[0].vms == 2,
        "the host counts two product VMs: {hosts:?}"
    );

    converge("out-of-band changes", cluster, &[&user], changed).await?;

    // The owner deletes the vanished VM: its quota comes back and its disk goes.
    user.delete_vm(&undefined.id).await?;
    ensure!(
        !cluster.agent(HOST).disk_path(&undefined.id).exists(),
        "the vanished VM's disk was removed with it"
    );
    ensure!(user.quota().await?.usage.vms == 1);
    audit(cluster, &[&user]).await?;
    Ok(())
}

// ---- graceful shutdown ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_agent_cleanly_and_vms_keep_running() {
    let guard = virsh::qemu_guard().await;
    let mut fixture = start_qemu_cluster(guard, &["fault-sigterm"]).await;
    sigterm(&mut fixture.cluster).await.unwrap();
}

async fn sigterm(cluster: &mut TestCluster) -> Result<()> {
    const HOST: &str = "fault-sigterm";
    let user = cluster.user("sigterm-user").await?;
    let vm = user.create_vm("lives-on", 1, 64, Some(1)).await?;
    cluster.agent(HOST).signal("TERM").await?;
    let status = cluster
        .wait_for_agent_exit(HOST, Duration::from_secs(20))
        .await?;
    ensure!(status.success(), "the agent exits 0 on SIGTERM: {status}");
    ensure!(
        virsh::domstate(&domain_name(&vm.id)).await? == "running",
        "the VM keeps running without its agent"
    );
    cluster.restart_agent(HOST)?;
    let restarted = Instant::now();
    cluster.wait_for_connected_agents(1).await?;
    converge("an agent stop and start", cluster, &[&user], restarted).await?;
    ensure!(user.get_vm(&vm.id).await?.status == "running");
    Ok(())
}
