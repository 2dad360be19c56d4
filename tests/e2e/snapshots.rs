//! VM snapshots through the REST API: the full cycle on the test driver, owner-only access,
//! name rules; and on real QEMU the proof that a restore brings the old disk contents back
//! and that a deleted snapshot's data is gone from the disk image.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::json;
use tokio::process::Command;
use vmm_e2e::cluster::domain_name;
use vmm_e2e::virsh::{self, QemuLeftovers};
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster};

#[derive(Debug, Deserialize)]
struct Snapshot {
    id: String,
    vm_id: String,
    name: String,
    description: String,
    vm_status: String,
    created_at: String,
}

async fn create_snapshot(api: &Api, vm_id: &str, name: &str) -> Result<Snapshot> {
    api.post(
        &format!("/api/vms/{vm_id}/snapshots"),
        &json!({"name": name, "description": format!("{name} <&> notes")}),
    )
    .await?
    .expect_status(201)
    .with_context(|| format!("snapshot {name}"))?
    .json()
}

async fn list_snapshots(api: &Api, vm_id: &str) -> Result<Vec<Snapshot>> {
    api.get(&format!("/api/vms/{vm_id}/snapshots"))
        .await?
        .expect_status(200)?
        .json()
}

async fn restore(api: &Api, snapshot_id: &str) -> Result<vmm_e2e::Vm> {
    api.post(&format!("/api/snapshots/{snapshot_id}/restore"), &json!({}))
        .await?
        .expect_status(200)
        .context("restore")?
        .json()
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_cycle_on_test_driver() {
    let cluster = TestCluster::start(ClusterOptions::default()).await.unwrap();
    snapshot_cycle(&cluster).await.unwrap();
}

async fn snapshot_cycle(cluster: &TestCluster) -> Result<()> {
    let alice = cluster.user("alice").await?;
    let bob = cluster.user("bob").await?;
    let vm = alice.create_vm("db-1", 1, 128, Some(1)).await?;

    let first = create_snapshot(&alice, &vm.id, "before-upgrade").await?;
    ensure!(
        first.vm_id == vm.id && first.name == "before-upgrade",
        "{first:?}"
    );
    ensure!(
        first.description == "before-upgrade <&> notes",
        "description kept as given: {first:?}"
    );
    ensure!(
        first.vm_status == "running",
        "taken of a running VM: {first:?}"
    );
    ensure!(!first.created_at.is_empty(), "{first:?}");

    // Names: unique per VM, and from the documented alphabet.
    let duplicate = alice
        .post(
            &format!("/api/vms/{}/snapshots", vm.id),
            &json!({"name": "before-upgrade"}),
        )
        .await?;
    duplicate.expect_error(409)?;
    for bad in [
        json!(""),
        json!("a b"),
        json!("<x/>"),
        json!("x".repeat(65)),
        json!(7),
    ] {
        let response = alice
            .post(
                &format!("/api/vms/{}/snapshots", vm.id),
                &json!({"name": bad}),
            )
            .await?;
        response
            .expect_error_in(&[400, 422])
            .with_context(|| format!("name {bad}"))?;
    }

    // Another user sees none of it: 404, exactly as for what does not exist.
    bob.get(&format!("/api/vms/{}/snapshots", vm.id))
        .await?
        .expect_error(404)?;
    bob.post(
        &format!("/api/vms/{}/snapshots", vm.id),
        &json!({"name": "mine"}),
    )
    .await?
    .expect_error(404)?;
    bob.post(&format!("/api/snapshots/{}/restore", first.id), &json!({}))
        .await?
        .expect_error(404)?;
    bob.delete(&format!("/api/snapshots/{}", first.id))
        .await?
        .expect_error(404)?;
    let absent = uuid::Uuid::new_v4();
    alice
        .post(&format!("/api/snapshots/{absent}/restore"), &json!({}))
        .await?
        .expect_error(404)?;

    // A snapshot of the stopped VM, then restores in both directions.
    ensure!(alice.action(&vm.id, "force_stop").await?.status == "stopped");
    let second = create_snapshot(&alice, &vm.id, "stopped-state").await?;
    ensure!(second.vm_status == "stopped", "{second:?}");
    ensure!(alice.action(&vm.id, "start").await?.status == "running");

    let names: Vec<String> = list_snapshots(&alice, &vm.id)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    ensure!(
        names == ["before-upgrade", "stopped-state"],
        "oldest first: {names:?}"
    );
    let quota = alice.get("/api/quota").await?.expect_status(200)?.body;
    ensure!(
        quota["usage"]["snapshots"] == 2,
        "snapshots count against the quota: {quota}"
    );

    let restored = restore(&alice, &second.id).await?;
    ensure!(
        restored.status == "stopped",
        "restoring a stopped-state snapshot stops the VM: {restored:?}"
    );
    let restored = restore(&alice, &first.id).await?;
    ensure!(
        restored.status == "running",
        "restoring a running-state snapshot runs the VM: {restored:?}"
    );

    // Delete one snapshot, then the VM: its snapshots go with it.
    alice
        .delete(&format!("/api/snapshots/{}", second.id))
        .await?
        .expect_status(204)?;
    let left: Vec<String> = list_snapshots(&alice, &vm.id)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    ensure!(left == [first.id.clone()], "{left:?}");
    alice
        .delete(&format!("/api/snapshots/{}", second.id))
        .await?
        .expect_error(404)?;
    alice.delete_vm(&vm.id).await?;
    alice
        .post(&format!("/api/snapshots/{}/restore", first.id), &json!({}))
        .await?
        .expect_error(404)?;
    let quota = alice.get("/api/quota").await?.expect_status(200)?.body;
    ensure!(
        quota["usage"]["snapshots"] == 0,
        "deleting the VM released its snapshots: {quota}"
    );
    Ok(())
}

/// Runs `qemu-io` on a stopped VM's disk image; `Err` when the command fails (e.g. a read
/// whose pattern does not match).
async fn qemu_io(disk: &Path, command: &str) -> Result<()> {
    let output = Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", command])
        .arg(disk)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    // qemu-io reports a pattern mismatch on stdout and still exits 0 on some versions.
    if !output.status.success()
        || stdout.contains("Pattern verification failed")
        || stdout.contains("failed")
    {
        bail!(
            "qemu-io {command:?} failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

async fn qcow2_snapshot_names(disk: &Path) -> Result<String> {
    let output = Command::new("qemu-img")
        .args(["snapshot", "-U", "-l"])
        .arg(disk)
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "qemu-img snapshot -l: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_restore_data_on_real_qemu() {
    // Held to the end: the libvirtd restart test must not run meanwhile.
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agent = AgentOptions::qemu("qemu-snap-host");
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    qemu_snapshots(&cluster, &mut leftovers).await.unwrap();
}

async fn qemu_snapshots(cluster: &TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let user = cluster.user("snap-user").await?;
    let vm = user.create_vm("snap-guest", 1, 64, Some(1)).await?;
    leftovers.add_domain(&domain_name(&vm.id));
    let disk = cluster.agent("qemu-snap-host").disk_path(&vm.id);

    // Stopped VM: pattern A, snapshot, pattern B, restore, pattern A is back.
    ensure!(user.action(&vm.id, "force_stop").await?.status == "stopped");
    qemu_io(&disk, "write -P 0xaa 0 4k").await?;
    let started = Instant::now();
    let offline = create_snapshot(&user, &vm.id, "pattern-aa").await?;
    eprintln!(
        "snapshot of a stopped VM took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(offline.vm_status == "stopped", "{offline:?}");
    ensure!(
        qcow2_snapshot_names(&disk).await?.contains(&offline.id),
        "the disk image holds the snapshot"
    );
    qemu_io(&disk, "write -P 0xbb 0 4k").await?;
    qemu_io(&disk, "read -P 0xbb 0 4k").await?;
    ensure!(
        qemu_io(&disk, "read -P 0xaa 0 4k").await.is_err(),
        "the check must be able to fail"
    );

    let started = Instant::now();
    let restored = restore(&user, &offline.id).await?;
    eprintln!(
        "restore of a stopped-state snapshot took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(restored.status == "stopped", "{restored:?}");
    qemu_io(&disk, "read -P 0xaa 0 4k")
        .await
        .context("restore must bring pattern 0xaa back")?;

    // Delete: the data leaves the disk image, not only the record.
    user.delete(&format!("/api/snapshots/{}", offline.id))
        .await?
        .expect_status(204)?;
    let listed = qcow2_snapshot_names(&disk).await?;
    ensure!(
        !listed.contains(&offline.id),
        "qemu-img still lists the deleted snapshot:\n{listed}"
    );

    // Running VM: snapshot, stop, restore → running again.
    ensure!(user.action(&vm.id, "start").await?.status == "running");
    let started = Instant::now();
    let live = create_snapshot(&user, &vm.id, "live").await?;
    eprintln!(
        "snapshot of a running VM took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(live.vm_status == "running", "{live:?}");
    ensure!(user.action(&vm.id, "force_stop").await?.status == "stopped");
    let started = Instant::now();
    let restored = restore(&user, &live.id).await?;
    eprintln!(
        "restore of a running-state snapshot took {:.2}s",
        started.elapsed().as_secs_f64()
    );
    ensure!(restored.status == "running", "{restored:?}");
    ensure!(
        virsh::domstate(&domain_name(&vm.id)).await? == "running",
        "libvirt agrees it runs"
    );

    user.delete_vm(&vm.id).await?;
    ensure!(
        !disk.exists(),
        "deleting the VM removed its disk and the snapshots in it"
    );
    Ok(())
}

/// Operations on one VM are serialised: a snapshot requested while a stop is under way (on
/// real QEMU a BIOS-only guest ignores ACPI, so the stop waits out the agent's timeout)
/// answers 409 and leaves no record behind; the stop then completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_during_a_stop_answers_409_and_records_nothing() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    virsh::require_storage_driver().await;
    let agent = AgentOptions::qemu("qemu-busy-host");
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    snapshot_during_stop(&cluster, &mut leftovers)
        .await
        .unwrap();
}

async fn snapshot_during_stop(cluster: &TestCluster, leftovers: &mut QemuLeftovers) -> Result<()> {
    let user = cluster.user("busy-user").await?;
    let vm = user.create_vm("busy-guest", 1, 64, Some(1)).await?;
    leftovers.add_domain(&domain_name(&vm.id));

    let stopping = {
        let (user, id) = (user.clone(), vm.id.clone());
        tokio::spawn(async move { user.action(&id, "stop").await })
    };
    // Let the stop reach the agent; it then waits for the guest (2 s in tests).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let refused = user
        .post(
            &format!("/api/vms/{}/snapshots", vm.id),
            &json!({"name": "mid-stop"}),
        )
        .await?;
    let message = refused.expect_error(409)?;
    ensure!(
        message.contains("in progress"),
        "the refusal says why: {message}"
    );

    let stopped = stopping.await??;
    ensure!(stopped.status == "stopped", "{stopped:?}");
    ensure!(
        list_snapshots(&user, &vm.id).await?.is_empty(),
        "the refused snapshot left no record"
    );
    let quota = user.get("/api/quota").await?.expect_status(200)?.body;
    ensure!(
        quota["usage"]["snapshots"] == 0,
        "nor any quota claim: {quota}"
    );
    // Once the VM is free, the same snapshot is taken.
    let taken = create_snapshot(&user, &vm.id, "mid-stop").await?;
    ensure!(taken.vm_status == "stopped", "{taken:?}");
    user.delete_vm(&vm.id).await?;
    Ok(())
}
