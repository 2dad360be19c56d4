//! Two coordinators on one PostgreSQL database (issue 15), agents split across them, each
//! agent given both coordinators' URLs: the quota holds under 50 creates split across both,
//! a VM created through one is stopped through the other (the command routed through the
//! database to the coordinator holding its host), and a coordinator killed with SIGKILL
//! while creates are in flight loses no acknowledged create, leaves no VM on two hosts, and
//! its agents reconnect to the other within the liveness bound without their hosts ever
//! being shown down.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use tokio::task::JoinSet;
use vmm_e2e::{AgentOptions, Api, ClusterOptions, PeerCoordinator, TestCluster, wait_until};

/// How long a silent host stays connected (the liveness bound of these tests).
const HOST_DEAD_AFTER_SECS: u64 = 8;

/// Coordinator A (the cluster's) and B (a peer) on a fresh PostgreSQL database, `host-a`
/// preferring A and `host-b` preferring B, both connected.
async fn two_coordinators(options: ClusterOptions) -> Result<(TestCluster, PeerCoordinator)> {
    let url = vmm_e2e::postgres::test_database()?;
    let mut options = options
        .coordinator_env("DATABASE_URL", &url)
        .coordinator_env("HOST_DEAD_AFTER", &HOST_DEAD_AFTER_SECS.to_string());
    options.agents = Vec::new();
    let mut cluster = TestCluster::start(options).await?;
    let peer = cluster.start_peer_coordinator("b").await?;
    let a = cluster.grpc_url().to_owned();
    let b = peer.grpc_url().to_owned();
    cluster
        .add_agent(AgentOptions::test_driver("host-a").env("COORDINATOR_URL", &format!("{a},{b}")))
        .await?;
    cluster
        .add_agent(AgentOptions::test_driver("host-b").env("COORDINATOR_URL", &format!("{b},{a}")))
        .await?;
    let api = cluster.admin().await?;
    wait_until("both hosts connected", Duration::from_secs(60), || {
        let api = api.clone();
        async move {
            let hosts = api.hosts().await?;
            Ok((hosts.len() == 2 && hosts.iter().all(|h| h.status == "connected")).then_some(()))
        }
    })
    .await?;
    Ok((cluster, peer))
}

/// The same logged-in user on another coordinator (they share the JWT secret).
fn same_user_on(user: &Api, http_url: &str) -> Api {
    Api::new(http_url).with_token(user.token().expect("a logged-in user"))
}

#[tokio::test(flavor = "multi_thread")]
async fn fifty_creates_split_across_two_coordinators_admit_exactly_the_quota() {
    let options = ClusterOptions::default()
        .placement("spread")
        .coordinator_env("DEFAULT_QUOTA_VMS", "10")
        .coordinator_env("DEFAULT_QUOTA_CPU", "100");
    let (cluster, peer) = two_coordinators(options).await.unwrap();
    run_quota_race(&cluster, &peer).await.unwrap();
}

async fn run_quota_race(cluster: &TestCluster, peer: &PeerCoordinator) -> Result<()> {
    let on_a = cluster.user("racer").await?;
    let on_b = same_user_on(&on_a, peer.http_url());
    let mut creates = JoinSet::new();
    for i in 0..50 {
        let user = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        let body = json!({"name": format!("race-{i}"), "cpu": 1, "memory": 64, "disk_gb": 1});
        creates.spawn(async move { user.try_create_vm(&body).await });
    }
    let mut created = Vec::new();
    let mut refused = 0;
    while let Some(joined) = creates.join_next().await {
        let response = joined.context("a create task panicked")??;
        match response.status {
            201 => created.push(response.json::<vmm_e2e::Vm>()?),
            400 => refused += 1,
            other => anyhow::bail!(
                "a create is admitted (201) or refused by the quota (400); got {other}: {}",
                response.body
            ),
        }
    }
    ensure!(
        created.len() == 10 && refused == 40,
        "a limit of 10 VMs admits exactly 10 of 50 creates split across two coordinators; \
         admitted {}, refused {refused}",
        created.len()
    );
    let hosts: HashSet<Option<&str>> = created.iter().map(|vm| vm.host.as_deref()).collect();
    ensure!(
        hosts.len() == 2,
        "spread placement used both hosts: {hosts:?}"
    );
    for vm in &created {
        ensure!(vm.status == "running", "an admitted VM runs: {vm:?}");
    }
    // Both coordinators see the same ten.
    for api in [&on_a, &on_b] {
        let listed: HashSet<String> = api.list_vms().await?.into_iter().map(|vm| vm.id).collect();
        let admitted: HashSet<String> = created.iter().map(|vm| vm.id.clone()).collect();
        ensure!(
            listed == admitted,
            "each coordinator lists exactly the admitted VMs"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_created_through_one_coordinator_is_stopped_through_the_other() {
    let (cluster, peer) = two_coordinators(ClusterOptions::default().placement("spread"))
        .await
        .unwrap();
    stop_through_the_other(&cluster, &peer).await.unwrap();
}

async fn stop_through_the_other(cluster: &TestCluster, peer: &PeerCoordinator) -> Result<()> {
    let on_a = cluster.user("alice").await?;
    let on_b = same_user_on(&on_a, peer.http_url());
    // Spread placement puts the two on different hosts: one held by A, one by B, so both
    // the create and the stop are routed between the coordinators at least once each way.
    let first = on_a.create_vm("one", 1, 128, Some(1)).await?;
    let second = on_a.create_vm("two", 1, 128, Some(1)).await?;
    ensure!(
        first.host != second.host,
        "spread used both hosts: {first:?} {second:?}"
    );
    for vm in [&first, &second] {
        ensure!(vm.status == "running", "{vm:?}");
        // A console relays through the coordinator holding the host's session: asked for at
        // the other one, the ticket points at the holder (its PUBLIC_URL), and is redeemed
        // there once.
        consoles_through_either(cluster, peer, &on_a, &on_b, &vm.id).await?;
        let stopped = on_b.action(&vm.id, "stop").await?;
        ensure!(
            stopped.status == "stopped",
            "stopped through B: {stopped:?}"
        );
        let seen = on_a.get_vm(&vm.id).await?;
        ensure!(seen.status == "stopped", "A sees the stop: {seen:?}");
        let started = on_a.action(&vm.id, "start").await?;
        ensure!(
            started.status == "running",
            "started through A: {started:?}"
        );
        on_b.delete_vm(&vm.id).await?;
    }
    ensure!(on_a.list_vms().await?.is_empty(), "both deleted through B");
    Ok(())
}

async fn consoles_through_either(
    cluster: &TestCluster,
    peer: &PeerCoordinator,
    on_a: &Api,
    on_b: &Api,
    vm: &str,
) -> Result<()> {
    let mut urls = Vec::new();
    for (api, own_url) in [(on_a, cluster.http_url()), (on_b, peer.http_url())] {
        let ticket = vmm_e2e::console::try_ticket(api, vm, "serial", false).await?;
        ensure!(ticket.status == 200, "{ticket:?}");
        let url = ticket.body["url"].as_str().unwrap_or_default().to_owned();
        urls.push((own_url.to_owned(), url));
    }
    let relative = urls.iter().filter(|(_, url)| url.starts_with('/')).count();
    let (holder, _) = urls
        .iter()
        .find(|(_, url)| url.starts_with('/'))
        .context("the holder of the host's session answers a path")?
        .clone();
    let routed = urls
        .iter()
        .find(|(_, url)| !url.starts_with('/'))
        .map(|(_, url)| url.clone())
        .context("the other coordinator answers an absolute URL")?;
    ensure!(relative == 1, "{urls:?}");
    ensure!(
        routed.starts_with(&format!("{holder}/api/console/")),
        "the routed ticket points at the holder {holder}: {routed}"
    );
    // Redeemed at the holder: the host is asked to attach (the test driver has no serial
    // device to attach, so the host refuses, which is not a ticket refusal), then never again.
    let first = vmm_e2e::console::connect(&holder, &routed, None, None).await?;
    let refused = first
        .err()
        .context("the test driver's console cannot attach: an HTTP refusal was expected")?;
    ensure!(
        refused.status != 401,
        "the routed ticket is accepted by its holder: {refused:?}"
    );
    println!(
        "a console ticket routed to its holder: accepted, the host asked to attach ({} {})",
        refused.status, refused.body
    );
    let again = vmm_e2e::console::connect(&holder, &routed, None, None).await?;
    ensure!(
        again.as_ref().err().is_some_and(|r| r.status == 401),
        "a routed ticket is used once"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_mid_creates_loses_no_acknowledged_create() {
    let options = ClusterOptions::default()
        .placement("spread")
        .coordinator_env("DEFAULT_QUOTA_VMS", "1000")
        .coordinator_env("DEFAULT_QUOTA_CPU", "1000")
        .coordinator_env("DEFAULT_QUOTA_MEMORY_MIB", "1000000");
    let (cluster, peer) = two_coordinators(options).await.unwrap();
    kill_mid_creates(cluster, peer).await.unwrap();
}

async fn kill_mid_creates(mut cluster: TestCluster, peer: PeerCoordinator) -> Result<()> {
    let on_a = cluster.user("survivor").await?;
    let on_b = same_user_on(&on_a, peer.http_url());
    let admin_b = same_user_on(&cluster.admin().await?, peer.http_url());
    let before: HashMap<String, u64> = admin_b
        .hosts()
        .await?
        .into_iter()
        .map(|host| (host.id, host.session))
        .collect();

    // Creates through both coordinators, in flight when A dies.
    let mut creates = JoinSet::new();
    for i in 0..40 {
        let user = if i % 2 == 0 {
            on_a.clone()
        } else {
            on_b.clone()
        };
        creates.spawn(async move {
            tokio::time::sleep(Duration::from_millis(25 * i)).await;
            let body = json!({"name": format!("vm-{i}"), "cpu": 1, "memory": 64, "disk_gb": 1});
            user.try_create_vm(&body).await
        });
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    cluster.kill_coordinator();
    let killed_at = Instant::now();

    // Watch the hosts through B until host-a has re-registered (with B): never shown down.
    let mut down_seen = Vec::new();
    let failover = loop {
        let hosts = admin_b.hosts().await?;
        for host in &hosts {
            if host.status != "connected" {
                down_seen.push(format!("{} at {:?}", host.id, killed_at.elapsed()));
            }
        }
        let moved = hosts
            .iter()
            .find(|h| h.id == "host-a")
            .is_some_and(|h| h.session > before["host-a"] && h.status == "connected");
        if moved {
            break killed_at.elapsed();
        }
        ensure!(
            killed_at.elapsed() < Duration::from_secs(HOST_DEAD_AFTER_SECS),
            "host-a did not reconnect to B within the liveness bound ({HOST_DEAD_AFTER_SECS} s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut acknowledged = Vec::new();
    let mut failed = Vec::new();
    while let Some(joined) = creates.join_next().await {
        match joined.context("a create task panicked")? {
            Ok(response) if response.status == 201 => {
                acknowledged.push(response.json::<vmm_e2e::Vm>()?)
            }
            Ok(response) => failed.push(format!("{}: {}", response.status, response.body)),
            Err(err) => failed.push(format!("{err:#}")),
        }
    }
    // Keep watching for a lease's length after the failover and the settling of what A left.
    let watch_until = Instant::now() + Duration::from_secs(HOST_DEAD_AFTER_SECS);
    while Instant::now() < watch_until {
        for host in admin_b.hosts().await? {
            if host.status != "connected" {
                down_seen.push(format!("{} at {:?}", host.id, killed_at.elapsed()));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        down_seen.is_empty(),
        "no host is shown down while its agent lives: {down_seen:?}"
    );

    // Every acknowledged create exists, running, on one host, as its host reports it.
    let listed = on_b.list_vms().await?;
    let ids: Vec<&str> = listed.iter().map(|vm| vm.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    ensure!(unique.len() == ids.len(), "no VM is listed twice");
    let mut lost = Vec::new();
    for vm in &acknowledged {
        match listed.iter().find(|listed| listed.id == vm.id) {
            Some(now) if now.status == "running" && now.host == vm.host => {}
            other => lost.push(format!(
                "{} ({:?})",
                vm.id,
                other.map(|v| (&v.status, &v.host))
            )),
        }
    }
    println!(
        "two coordinators, one SIGKILLed: failover of its host in {failover:?} (liveness bound \
         {HOST_DEAD_AFTER_SECS} s); {} creates acknowledged, {} not, {} acknowledged \
         creates lost",
        acknowledged.len(),
        failed.len(),
        lost.len()
    );
    ensure!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    ensure!(
        !acknowledged.is_empty(),
        "some creates were acknowledged; failures: {failed:?}"
    );
    // The survivor still works, on both hosts.
    let after = on_b.create_vm("after-failover", 1, 64, Some(1)).await?;
    ensure!(after.status == "running", "{after:?}");
    drop(peer);
    Ok(())
}
