//! Benchmark: how long the test image takes from QEMU's start to SSH, over several boots.
//!
//! ```text
//! cargo run -p vmm-e2e --example test-image-boot -- [--runs N] [--accel tcg|kvm]
//! ```
//!
//! Builds the image first (or takes it from the cache; the time that took is printed),
//! then boots it N times (default 5) under `qemu-system-x86_64` with a fresh overlay and
//! seed each time (TCG unless `--accel kvm`), and prints, per run and as min/median/max:
//! the time to the console's "ssh ready" line, and to the first `ssh … hostname` that
//! prints the seed's hostname (the guest's SSH port is forwarded to 127.0.0.1 only).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use vmm_cloud_init::{Seed, write_volume_file};
use vmm_e2e::guest::{Accel, QemuBoot, QemuGuest, SshKey, ssh};
use vmm_e2e::test_image;

#[tokio::main]
async fn main() {
    let mut runs = 5;
    let mut accel = Accel::Tcg;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N"),
            "--accel" => {
                accel = match args.next().as_deref() {
                    Some("tcg") => Accel::Tcg,
                    Some("kvm") => Accel::Kvm,
                    _ => panic!("--accel tcg|kvm"),
                }
            }
            other => panic!("unknown argument {other}; see the example's doc"),
        }
    }

    let started = Instant::now();
    let image = test_image::image().await.unwrap();
    println!(
        "image: {} ({} bytes), ready in {:.2}s",
        image.display(),
        std::fs::metadata(image).unwrap().len(),
        started.elapsed().as_secs_f64()
    );

    let dir = tempfile::tempdir().unwrap();
    let key = SshKey::generate(dir.path(), "bench-key").await.unwrap();
    let mut to_marker = Vec::new();
    let mut to_ssh = Vec::new();
    for run in 1..=runs {
        let run_dir = dir.path().join(format!("run-{run}"));
        std::fs::create_dir(&run_dir).unwrap();
        let hostname = format!("bench-{run}");
        let seed = run_dir.join("seed.img");
        let seed_data = Seed {
            instance_id: format!("bench-instance-{run}"),
            hostname: hostname.clone(),
            ssh_authorized_keys: vec![key.public_key.clone()],
            user_data: None,
            network_config: None,
        };
        write_volume_file(&seed, &seed_data).unwrap();
        let mut guest = QemuGuest::boot(&QemuBoot {
            image: image.to_path_buf(),
            seed: Some(seed),
            dir: run_dir,
            memory_mib: 256,
            accel: Some(accel),
        })
        .await
        .unwrap();
        let marker = guest.wait_for_ssh(Duration::from_secs(600)).await.unwrap();
        let first_ssh = loop {
            let out = ssh(guest.ssh_port, &key, "hostname").await.unwrap();
            if out.success && out.stdout.trim() == hostname {
                break guest.started.elapsed();
            }
            assert!(
                guest.started.elapsed() < Duration::from_secs(600),
                "{out:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        println!(
            "run {run}: {:?}: console 'ssh ready' {:.2}s, first ssh {:.2}s",
            guest.accel,
            marker.as_secs_f64(),
            first_ssh.as_secs_f64()
        );
        to_marker.push(marker);
        to_ssh.push(first_ssh);
        guest.kill().await;
    }
    summary("boot to 'ssh ready' on the console", &mut to_marker);
    summary("boot to the first successful ssh", &mut to_ssh);
}

fn summary(what: &str, times: &mut [Duration]) {
    times.sort();
    let median = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        (times[times.len() / 2 - 1] + times[times.len() / 2]) / 2
    };
    println!(
        "{what}: min {:.2}s, median {:.2}s, max {:.2}s ({} runs)",
        times[0].as_secs_f64(),
        median.as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        times.len()
    );
}
