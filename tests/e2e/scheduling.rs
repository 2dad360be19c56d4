//! Placement across two agents on the test driver. Each test-driver connection is its own
//! in-memory host with 16 CPUs and 3072 MiB, so with 2048-MiB VMs each host has room for
//! exactly one, and the memory rule alone decides where they go.

use std::collections::HashMap;

use anyhow::{Result, ensure};
use vmm_e2e::api::Allocated;
use vmm_e2e::{AgentOptions, Api, ClusterOptions, Host, TestCluster};

fn two_hosts() -> ClusterOptions {
    ClusterOptions::with_agents(vec![
        AgentOptions::test_driver("host-a"),
        AgentOptions::test_driver("host-b"),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn spread_uses_the_host_with_most_free_memory_and_refuses_when_full() {
    let cluster = TestCluster::start(two_hosts()).await.unwrap();
    spread(&cluster).await.unwrap();
}

async fn spread(cluster: &TestCluster) -> Result<()> {
    let admin = cluster.admin().await?;
    let hosts = hosts_by_id(&admin).await?;
    for id in ["host-a", "host-b"] {
        let host = &hosts[id];
        ensure!(host.status == "connected", "{host:?}");
        ensure!(
            host.cpus == 16 && host.memory_mib == 3072,
            "test-driver capacity: {host:?}"
        );
        ensure!(
            host.vms == 0,
            "the unmanaged `test` domain is not a product VM: {host:?}"
        );
    }

    let user = cluster.user("spreader").await?;
    // Equal free memory and no VMs on either host: the tie goes to the lower host ID.
    let first = user.create_vm("big-1", 1, 2048, Some(1)).await?;
    ensure!(
        first.host.as_deref() == Some("host-a"),
        "first VM on host-a: {first:?}"
    );
    let second = user.create_vm("big-2", 1, 2048, Some(1)).await?;
    ensure!(
        second.host.as_deref() == Some("host-b"),
        "spread puts the second elsewhere: {second:?}"
    );

    // 1024 MiB free on each host: no room for another 2048.
    let refused = user
        .try_create_vm(
            &serde_json::json!({"name": "big-3", "cpu": 1, "memory": 2048, "disk_gb": 1}),
        )
        .await?;
    let message = refused.expect_error(503)?;
    eprintln!("503 message: {message}");
    ensure!(
        user.list_vms().await?.len() == 2,
        "the refused VM was not recorded"
    );

    let hosts = hosts_by_id(&admin).await?;
    for id in ["host-a", "host-b"] {
        let host = &hosts[id];
        ensure!(host.vms == 1, "one VM on {id}: {host:?}");
        ensure!(
            host.allocated
                == Allocated {
                    cpu: 1,
                    memory_mib: 2048,
                    disk_gb: 1
                },
            "{id} has one 2048-MiB VM allocated: {host:?}"
        );
    }

    // What still fits is accepted: 1024 MiB fills one host exactly (tie → host-a again) …
    let fits = user.create_vm("fits-1", 1, 1024, Some(1)).await?;
    ensure!(fits.host.as_deref() == Some("host-a"), "{fits:?}");
    let fits = user.create_vm("fits-2", 1, 1024, Some(1)).await?;
    ensure!(fits.host.as_deref() == Some("host-b"), "{fits:?}");
    // … and then no host has room for even the smallest VM.
    let refused = user
        .try_create_vm(&serde_json::json!({"name": "tiny", "cpu": 1, "memory": 64, "disk_gb": 1}))
        .await?;
    refused.expect_error(503)?;

    // Deleting frees the room again.
    user.delete_vm(&first.id).await?;
    let again = user.create_vm("big-again", 1, 2048, Some(1)).await?;
    ensure!(
        again.host.as_deref() == Some("host-a"),
        "the freed room is used: {again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pack_fills_one_host_before_using_the_next() {
    let cluster = TestCluster::start(two_hosts().placement("pack"))
        .await
        .unwrap();
    pack(&cluster).await.unwrap();
}

async fn pack(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("packer").await?;
    let mut placed = Vec::new();
    for i in 1..=4 {
        let vm = user
            .create_vm(&format!("packed-{i}"), 1, 1024, Some(1))
            .await?;
        placed.push(vm.host.unwrap_or_default());
    }
    // Three 1024-MiB VMs fill a 3072-MiB host; only the fourth goes to the other one.
    ensure!(
        placed[0] == placed[1] && placed[1] == placed[2] && placed[3] != placed[0],
        "pack fills one host first, got {placed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cpu_capacity_is_four_vcpus_per_host_cpu() {
    // The default per-user quota (8 vCPUs) would refuse first; this test is about the host.
    let options = ClusterOptions::default().coordinator_env("DEFAULT_QUOTA_CPU", "128");
    let cluster = TestCluster::start(options).await.unwrap();
    cpu_capacity(&cluster).await.unwrap();
}

async fn cpu_capacity(cluster: &TestCluster) -> Result<()> {
    let user = cluster.user("cpu-hungry").await?;
    // 16 host CPUs × 4 = 64 vCPUs: one 64-vCPU VM fills the host.
    user.create_vm("wide", 64, 64, Some(1)).await?;
    let refused = user
        .try_create_vm(
            &serde_json::json!({"name": "one-more", "cpu": 1, "memory": 64, "disk_gb": 1}),
        )
        .await?;
    refused.expect_error(503)?;
    Ok(())
}

async fn hosts_by_id(admin: &Api) -> Result<HashMap<String, Host>> {
    let hosts = admin.hosts().await?;
    ensure!(hosts.len() == 2, "two hosts: {hosts:?}");
    Ok(hosts
        .into_iter()
        .map(|host| (host.id.clone(), host))
        .collect())
}
