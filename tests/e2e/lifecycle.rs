//! The whole VM lifecycle through the REST API, on libvirt's test driver.

use anyhow::{Context, Result, ensure};
use vmm_e2e::{ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread")]
async fn health_needs_no_token_and_counts_agents() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    let response = cluster.api().get("/api/health").await.unwrap();
    assert_eq!(response.status, 200, "body: {}", response.body);
    assert_eq!(response.body["status"], "ok", "body: {}", response.body);
    assert_eq!(response.body["database"], "ok", "body: {}", response.body);
    assert_eq!(
        response.body["agents_connected"], 1,
        "body: {}",
        response.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_lifecycle_on_test_driver() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    lifecycle(&cluster).await.unwrap();
}

async fn lifecycle(cluster: &TestCluster) -> Result<()> {
    let api = cluster.api();
    let registered = api.register("alice", "alice-password-1").await?;
    ensure!(
        registered.username == "alice",
        "register echoed {registered:?}"
    );
    let alice = api.login("alice", "alice-password-1").await?;
    ensure!(
        alice.user().id == registered.id,
        "login and register disagree on alice's id"
    );
    ensure!(
        alice.user().role == "user",
        "a registered user is a plain user, got {:?}",
        alice.user()
    );

    // Create: the answer comes once the agent has the VM running.
    let response = alice
        .try_create_vm(&serde_json::json!({"name": "web-1", "cpu": 2, "memory": 256, "disk_gb": 2}))
        .await?
        .expect_status(201)?;
    ensure!(
        response
            .header("operation-id")
            .is_some_and(|id| !id.is_empty()),
        "create must return an Operation-Id header; headers: {:?}",
        response.headers
    );
    let vm: vmm_e2e::Vm = response.json()?;
    ensure!(
        vm.status == "running",
        "a created VM is running, got {vm:?}"
    );
    ensure!(
        vm.name == "web-1" && vm.cpu == 2 && vm.memory == 256 && vm.disk_gb == 2,
        "{vm:?}"
    );
    ensure!(
        vm.host.as_deref() == Some("host-a"),
        "the only host is host-a, got {vm:?}"
    );
    ensure!(
        vm.owner_id == registered.id,
        "owner_id is alice's id, got {vm:?}"
    );
    ensure!(
        uuid::Uuid::parse_str(&vm.id).is_ok(),
        "VM ids are UUIDs, got {:?}",
        vm.id
    );
    ensure!(!vm.created_at.is_empty(), "created_at is set");

    // disk_gb is optional and defaults to 10.
    let defaulted = alice.create_vm("web-2", 1, 64, None).await?;
    ensure!(
        defaulted.disk_gb == 10,
        "disk_gb defaults to 10 GB, got {defaulted:?}"
    );
    alice.delete_vm(&defaulted.id).await?;

    let listed = alice.list_vms().await?;
    ensure!(
        listed.len() == 1 && listed[0].id == vm.id,
        "alice's list is just web-1: {listed:?}"
    );
    let fetched = alice.get_vm(&vm.id).await?;
    ensure!(
        fetched.id == vm.id && fetched.status == "running",
        "{fetched:?}"
    );

    step(&alice, &vm.id, "stop", "stopped").await?;
    let refused = alice.try_action(&vm.id, "stop").await?;
    refused
        .expect_error(409)
        .context("stopping a stopped VM is a conflict")?;
    step(&alice, &vm.id, "start", "running").await?;
    let refused = alice.try_action(&vm.id, "start").await?;
    refused
        .expect_error(409)
        .context("starting a running VM is a conflict")?;
    step(&alice, &vm.id, "reboot", "running").await?;
    step(&alice, &vm.id, "force_stop", "stopped").await?;
    step(&alice, &vm.id, "start", "running").await?;

    alice.delete_vm(&vm.id).await?;
    let gone = alice.get(&format!("/api/vms/{}", vm.id)).await?;
    gone.expect_error(404).context("a deleted VM answers 404")?;
    ensure!(
        alice.list_vms().await?.is_empty(),
        "a deleted VM is no longer listed"
    );
    let again = alice.try_delete_vm(&vm.id).await?;
    again
        .expect_error(404)
        .context("deleting a deleted VM answers 404")?;

    // The host's capacity is free again.
    let admin = cluster.admin().await?;
    let hosts = admin.hosts().await?;
    ensure!(hosts.len() == 1, "one host: {hosts:?}");
    ensure!(hosts[0].vms == 0, "no VM left on the host: {hosts:?}");
    ensure!(
        hosts[0].allocated
            == vmm_e2e::api::Allocated {
                cpu: 0,
                memory_mib: 0,
                disk_gb: 0
            },
        "nothing allocated after delete: {hosts:?}"
    );
    Ok(())
}

/// Runs `action` and checks that both its answer and a fresh GET show `expected`.
async fn step(api: &vmm_e2e::Api, id: &str, action: &str, expected: &str) -> Result<()> {
    let vm = api.action(id, action).await?;
    ensure!(
        vm.status == expected,
        "after {action} the VM is {expected}, got {vm:?}"
    );
    let fetched = api.get_vm(id).await?;
    ensure!(
        fetched.status == expected,
        "GET after {action} shows {expected}, got {fetched:?}"
    );
    Ok(())
}
