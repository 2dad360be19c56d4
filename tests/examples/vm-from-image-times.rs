//! Benchmark: VMs from images through the product, on real QEMU under libvirtd.
//!
//! ```text
//! cargo build --bins && cargo run -p vmm-e2e --example vm-from-image-times -- \
//!     [--runs N] [--accel tcg|kvm|auto]
//! ```
//!
//! Starts a coordinator and one agent on `qemu:///system` (`GUEST_ACCEL` tcg unless told
//! otherwise), uploads the test image through the API, then prints, per run and as
//! min/median/max over N runs (default 5):
//! - the time from `POST /api/vms` with the image and a fresh key to the VM running (the
//!   API's answer), and to the first `ssh … hostname` through the VM's `ssh` forward on
//!   127.0.0.1 that prints the VM's name (boot-to-SSH);
//! - the time from `POST /api/vms` to running for a VM from the cached image, and for a VM
//!   with a blank disk (both 1 vCPU, 128 MiB, 1 GB), alternating.
//!
//! The first VM also pays for the host's fetch of the image (printed apart). Each VM is
//! deleted before the next. Needs root, libvirtd, passt and the image build tools
//! (`scripts/setup-host.sh`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmm_e2e::guest::{SshKey, ssh};
use vmm_e2e::virsh::QemuLeftovers;
use vmm_e2e::{AgentOptions, Api, ClusterOptions, TestCluster, test_image};

fn stats(label: &str, samples: &[Duration]) {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let seconds: Vec<String> = samples
        .iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect();
    println!(
        "{label}: min {:.2}s, median {:.2}s, max {:.2}s (runs: {})",
        sorted[0].as_secs_f64(),
        sorted[sorted.len() / 2].as_secs_f64(),
        sorted[sorted.len() - 1].as_secs_f64(),
        seconds.join(" ")
    );
}

async fn create(user: &Api, body: Value) -> (String, Value, Duration) {
    let started = Instant::now();
    let response = user.try_create_vm(&body).await.unwrap();
    let elapsed = started.elapsed();
    let vm = response.expect_status(201).unwrap().body;
    (vm["id"].as_str().unwrap().to_owned(), vm, elapsed)
}

#[tokio::main]
async fn main() {
    let mut runs = 5;
    let mut accel = "tcg".to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--accel" => accel = args.next().expect("--accel tcg|kvm|auto"),
            other => panic!("unknown argument {other}; see the example's doc"),
        }
    }
    assert!(runs > 0, "--runs must be at least 1");
    let image = test_image::image().await.unwrap();
    let agent = AgentOptions::qemu("bench-images").env("GUEST_ACCEL", &accel);
    // Dropped after the cluster, also on a panic: removes the pool (and any VM named).
    let mut leftovers = QemuLeftovers::new(&agent.storage_pool);
    let cluster = TestCluster::start(ClusterOptions::with_agents(vec![agent]))
        .await
        .unwrap();
    let admin = cluster.admin().await.unwrap();
    let created = admin
        .create_image(&json!({"name": "bench-image", "default_user": "root"}))
        .await
        .unwrap();
    admin
        .upload_image(&created.id, std::fs::read(image).unwrap())
        .await
        .unwrap();
    let user = cluster.user("bench-user").await.unwrap();
    let keys = tempfile::tempdir().unwrap();
    let key = SshKey::generate(keys.path(), "bench-key").await.unwrap();
    user.add_key("bench", &key.public_key).await.unwrap();
    println!("accel {accel}, {runs} runs, test image {}", image.display());

    let mut to_running = Vec::new();
    let mut to_ssh = Vec::new();
    for run in 0..runs {
        let name = format!("boot-{run}");
        let started = Instant::now();
        let (id, vm, elapsed) = create(
            &user,
            json!({"name": name, "cpu": 1, "memory": 256, "image": "bench-image"}),
        )
        .await;
        leftovers.add_domain(&vmm_e2e::cluster::domain_name(&id));
        assert_eq!(vm["ssh"]["host"], "127.0.0.1", "{vm}");
        let port = u16::try_from(vm["ssh"]["port"].as_u64().unwrap()).unwrap();
        loop {
            let out = ssh(port, &key, "hostname").await.unwrap();
            if out.success && out.stdout.trim() == name {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "no SSH after 600 s: {}",
                out.stderr
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if run == 0 {
            println!(
                "first VM on the host (image fetched from the coordinator and verified): \
                 running after {:.2}s",
                elapsed.as_secs_f64()
            );
        } else {
            to_running.push(elapsed);
        }
        to_ssh.push(started.elapsed());
        user.delete_vm(&id).await.unwrap();
    }
    if !to_running.is_empty() {
        stats(
            "create from the cached image to running (256 MiB)",
            &to_running,
        );
    }
    stats("create to first SSH `hostname` (boot-to-SSH)", &to_ssh);

    let mut cached = Vec::new();
    let mut blank = Vec::new();
    for run in 0..runs {
        for from_image in [true, false] {
            let mut body = json!({"name": format!("create-{run}-{from_image}"), "cpu": 1,
                "memory": 128, "disk_gb": 1});
            if from_image {
                body["image"] = json!("bench-image");
            }
            let (id, _, elapsed) = create(&user, body).await;
            leftovers.add_domain(&vmm_e2e::cluster::domain_name(&id));
            if from_image {
                cached.push(elapsed);
            } else {
                blank.push(elapsed);
            }
            user.delete_vm(&id).await.unwrap();
        }
    }
    stats("create to running, from the cached image", &cached);
    stats("create to running, blank disk", &blank);
    drop(cluster);
}
