//! Seeds read by cloud-init's own code: Debian's cloud-init package, unpacked (never
//! installed) by `tests/cloud-init/fetch.sh`, runs `tests/cloud-init/read-seed.py` on the
//! files of each volume, and what cloud-init makes of them is checked: the meta-data, the
//! network configuration, and the user data after MIME processing and cloud-config merging
//! (the merged `ssh_authorized_keys`, the scripts it would run).
//!
//! Needs apt (Debian's sources), `/usr/bin/python3` and the Python packages
//! `scripts/setup-host.sh` installs; fails, naming the fix, without them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::{Value, json};
use vmm_cloud_init::{NetworkConfig, Seed, build_volume, read_volume};

const KEY_A: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0Xl+rGlYGF8bk+9huCNdXmoY/C5yqmDAkzkTb+dIBW alice@laptop";
const KEY_B: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm1O2Gd8mKBbXhv0QzqF9m0Qm1c2wF5g3zS4lW8Yv3Q bob@desk";
const KEY_C: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc5P0m3yJrR2l0z9tqJx5WkqH7sQb8Xc1pYc0aXn2fT carol@home";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory holding cloud-init's Python package (fetched once per test run).
fn cloud_init_python_path() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| {
        let script = workspace().join("tests/cloud-init/fetch.sh");
        let output = Command::new(&script).output().unwrap();
        assert!(
            output.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    })
}

/// What cloud-init makes of the seed.
fn read_by_cloud_init(seed: &Seed) -> Value {
    let volume = read_volume(&build_volume(seed).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in &volume.files {
        std::fs::write(dir.path().join(name), data).unwrap();
    }
    let output = Command::new("/usr/bin/python3")
        .arg(workspace().join("tests/cloud-init/read-seed.py"))
        .arg(dir.path())
        .env("PYTHONPATH", cloud_init_python_path())
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run /usr/bin/python3 ({error}): run scripts/setup-host.sh")
        });
    assert!(
        output.status.success(),
        "cloud-init's code failed on the seed (missing Python packages? run \
         scripts/setup-host.sh):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn seed(user_data: Option<&str>, keys: &[&str]) -> Seed {
    Seed {
        instance_id: "3f0c6a52-8f3e-4b4e-9d7a-1c2b3d4e5f60".into(),
        hostname: "web-1".into(),
        ssh_authorized_keys: keys.iter().map(|key| (*key).to_owned()).collect(),
        user_data: user_data.map(str::to_owned),
        network_config: None,
    }
}

#[test]
fn identity_and_keys_without_user_data() {
    let read = read_by_cloud_init(&seed(None, &[KEY_A, KEY_B]));
    assert_eq!(
        read["meta_data"],
        json!({"instance-id": "3f0c6a52-8f3e-4b4e-9d7a-1c2b3d4e5f60", "local-hostname": "web-1"})
    );
    assert_eq!(
        read["cloud_config"],
        json!({"ssh_authorized_keys": [KEY_A, KEY_B]})
    );
    assert_eq!(read["scripts"], json!([]));
    assert_eq!(read["network_config"], Value::Null);
}

#[test]
fn values_stay_strings_in_yaml_1_1() {
    let mut seed = seed(None, &[KEY_A]);
    seed.instance_id = "1:20".into();
    seed.hostname = "yes".into();
    seed.network_config = Some(NetworkConfig::Dhcp {
        macs: vec!["52:54:00:12:34:56".into(), "52:54:00:AB:CD:EF".into()],
    });
    let read = read_by_cloud_init(&seed);
    assert_eq!(
        read["meta_data"],
        json!({"instance-id": "1:20", "local-hostname": "yes"})
    );
    let macs: Vec<&Value> = read["network_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|nic| &nic["mac_address"])
        .collect();
    assert_eq!(
        macs,
        [&json!("52:54:00:12:34:56"), &json!("52:54:00:ab:cd:ef")]
    );
    for nic in read["network_state"].as_array().unwrap() {
        assert_eq!(nic["subnets"], json!(["dhcp4"]));
    }
}

#[test]
fn cloud_config_keeps_its_meaning_and_gains_the_keys() {
    // YAML 1.1: 0644 is octal (420), yes is true. A round trip through a YAML 1.2 library
    // would have changed both.
    let user = "#cloud-config\nwrite_files:\n  - path: /etc/motd\n    permissions: 0644\n    content: hi\npackage_upgrade: yes\n";
    let read = read_by_cloud_init(&seed(Some(user), &[KEY_A]));
    assert_eq!(
        read["cloud_config"],
        json!({
            "write_files": [{"path": "/etc/motd", "permissions": 420, "content": "hi"}],
            "package_upgrade": true,
            "ssh_authorized_keys": [KEY_A],
        })
    );
}

#[test]
fn the_users_own_keys_come_first_then_the_missing_ones() {
    let user = format!("#cloud-config\nssh_authorized_keys:\n  - {KEY_B}\nruncmd: [date]\n");
    let read = read_by_cloud_init(&seed(Some(&user), &[KEY_A, KEY_B]));
    assert_eq!(
        read["cloud_config"],
        json!({"ssh_authorized_keys": [KEY_B, KEY_A], "runcmd": ["date"]})
    );
}

#[test]
fn scripts_run_as_given() {
    for script in [
        "#!/bin/sh\necho hello > /run/marker\n",
        "#!/bin/sh\necho 'grüße, 世界' > /run/marker",
    ] {
        let read = read_by_cloud_init(&seed(Some(script), &[KEY_A]));
        assert_eq!(read["scripts"], json!([script]));
        assert_eq!(
            read["cloud_config"],
            json!({"ssh_authorized_keys": [KEY_A]})
        );
    }
}

#[test]
fn a_users_mime_message_is_read_whole() {
    let message = format!(
        "Content-Type: multipart/mixed; boundary=\"user\"\nMIME-Version: 1.0\n\n\
         --user\nContent-Type: text/x-shellscript\n\n#!/bin/sh\ntrue\n\
         --user\nContent-Type: text/cloud-config\n\n#cloud-config\nssh_authorized_keys:\n  - {KEY_C}\n\
         --user--\n"
    );
    let read = read_by_cloud_init(&seed(Some(&message), &[KEY_A]));
    assert_eq!(read["scripts"], json!(["#!/bin/sh\ntrue"]));
    assert_eq!(
        read["cloud_config"],
        json!({"ssh_authorized_keys": [KEY_C, KEY_A]})
    );
}

#[test]
fn other_content_keeps_its_type() {
    let read = read_by_cloud_init(&seed(Some("#cloud-boothook\n#!/bin/sh\ntrue\n"), &[KEY_A]));
    assert_eq!(read["other_parts"], json!(["text/cloud-boothook"]));
    assert_eq!(
        read["cloud_config"],
        json!({"ssh_authorized_keys": [KEY_A]})
    );
}
