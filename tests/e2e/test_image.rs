//! The test image boots from its disk and reads a NoCloud seed written by
//! `vmm-cloud-init`: under `qemu-system-x86_64` directly (user-mode networking), and under
//! libvirt (`qemu:///system`) with a passt NIC, the way the product will run it. Each test
//! SSHes to the guest through a port forward on 127.0.0.1, with a freshly generated key, and
//! checks the hostname and that the user-data script ran.
//!
//! Needs root, QEMU, libvirtd, passt, ssh and the image build tools: scripts/setup-host.sh
//! provides them. The first run builds the image (about a minute); later runs take it from
//! target/test-image/.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use vmm_cloud_init::{Seed, write_volume_file};
use vmm_e2e::cluster::free_port;
use vmm_e2e::guest::{Accel, QemuBoot, QemuGuest, SshKey, requested_accel, ssh, tail};
use vmm_e2e::test_image::{self, SSH_READY, script_finished};
use vmm_e2e::virsh;
use vmm_e2e::wait_until;

/// Boot to SSH under TCG took 15-25 s here; several guests and builds share two cores in CI.
const BOOT_DEADLINE: Duration = Duration::from_secs(300);
const SCRIPT_DEADLINE: Duration = Duration::from_secs(60);
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(60);

const USER_SCRIPT: &str =
    "#!/bin/sh\necho \"user-data ran on $(hostname) as $(id -u)\" > /run/user-data-marker\n";

fn seed_for(name: &str, key: &SshKey) -> Seed {
    Seed {
        instance_id: uuid::Uuid::new_v4().to_string(),
        hostname: name.to_owned(),
        ssh_authorized_keys: vec![key.public_key.clone()],
        user_data: Some(USER_SCRIPT.to_owned()),
        network_config: None,
    }
}

/// A directory QEMU can use when libvirt runs it as `libvirt-qemu` (a fresh temporary
/// directory is 0700).
fn guest_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Checks, over SSH, that the guest is the one the seed describes: its hostname, the
/// user-data script's work, and that a key the seed did not name is refused.
async fn check_guest(port: u16, name: &str, key: &SshKey, stranger: &SshKey) -> Result<()> {
    let hostname = ssh(port, key, "hostname").await?;
    ensure!(hostname.success, "ssh hostname failed: {}", hostname.stderr);
    ensure!(
        hostname.stdout.trim() == name,
        "hostname printed {:?}, the seed says {name:?}",
        hostname.stdout
    );
    let marker = wait_until("the user-data script's marker", SCRIPT_DEADLINE, || async {
        let out = ssh(port, key, "cat /run/user-data-marker").await?;
        Ok(out.success.then_some(out.stdout))
    })
    .await?;
    ensure!(
        marker.trim() == format!("user-data ran on {name} as 0"),
        "the script wrote {marker:?}"
    );
    let refused = ssh(port, stranger, "hostname").await?;
    ensure!(
        !refused.success,
        "a key the seed does not name must be refused, but ssh printed {:?}",
        refused.stdout
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn test_image_boots_from_its_disk_and_reads_the_seed() {
    let dir = guest_dir("vmm-e2e-image-qemu-");
    let image = test_image::image().await.unwrap();
    let key = SshKey::generate(dir.path(), "guest-key").await.unwrap();
    let stranger = SshKey::generate(dir.path(), "stranger-key").await.unwrap();
    let name = "seeded-guest";
    let seed_path = dir.path().join("seed.img");
    write_volume_file(&seed_path, &seed_for(name, &key)).unwrap();

    let mut guest = QemuGuest::boot(&QemuBoot {
        image: image.to_path_buf(),
        seed: Some(seed_path),
        dir: dir.path().to_path_buf(),
        memory_mib: 256,
        accel: None,
    })
    .await
    .unwrap();
    let boot_time = guest.wait_for_ssh(BOOT_DEADLINE).await.unwrap();
    eprintln!(
        "test image: boot to SSH under {:?} took {:.1}s",
        guest.accel,
        boot_time.as_secs_f64()
    );
    let console = guest.console();
    assert!(
        console.contains("vmm-test-image: installed 1 SSH authorized key(s) for root"),
        "{}",
        tail(&console, 30)
    );
    guest
        .wait_for_console(&script_finished(1, 0), SCRIPT_DEADLINE)
        .await
        .unwrap();
    if let Err(error) = check_guest(guest.ssh_port, name, &key, &stranger).await {
        panic!("{error:#}\nconsole:\n{}", tail(&guest.console(), 40));
    }
}

/// A transient libvirt domain, destroyed on drop (also when the test fails half-way).
struct TransientDomain(String);

impl Drop for TransientDomain {
    fn drop(&mut self) {
        let _ = std::process::Command::new("virsh")
            .args(["-c", "qemu:///system", "destroy", &self.0])
            .output();
    }
}

/// The domain XML the product needs for this image: the overlay on a virtio disk with its
/// backing file left alone (`relabel='no'`: libvirt would otherwise chown a shared base to
/// libvirt-qemu for good), the seed as a read-only virtio disk (Debian's cloud kernel has no
/// AHCI, so a SATA CD-ROM would be invisible on q35), and a passt NIC whose port forward
/// listens on the host's loopback only.
fn domain_xml(name: &str, domain_type: &str, dir: &Path, ssh_port: u16) -> String {
    let dir = dir.display();
    format!(
        "<domain type='{domain_type}'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{dir}/overlay.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='{dir}/base.qcow2'><seclabel model='dac' relabel='no'/></source>
      </backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='{dir}/seed.img'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <backend type='passt'/>
      <model type='virtio'/>
      <portForward proto='tcp' address='127.0.0.1'>
        <range start='{ssh_port}' to='22'/>
      </portForward>
    </interface>
    <serial type='file'><source path='{dir}/console.log'/><target port='0'/></serial>
  </devices>
</domain>
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn test_image_boots_under_libvirt_with_a_passt_nic() {
    let _libvirtd = virsh::qemu_guard().await;
    virsh::require_qemu_system().await;
    let dir = guest_dir("vmm-e2e-image-libvirt-");
    let image = test_image::image().await.unwrap();
    let key = SshKey::generate(dir.path(), "guest-key").await.unwrap();
    let stranger = SshKey::generate(dir.path(), "stranger-key").await.unwrap();
    let name = "libvirt-guest";
    write_volume_file(&dir.path().join("seed.img"), &seed_for(name, &key)).unwrap();
    let base = dir.path().join("base.qcow2");
    std::fs::copy(image, &base).unwrap();
    let overlay = dir.path().join("overlay.qcow2");
    let created = tokio::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay)
        .arg("1G")
        .status()
        .await
        .unwrap();
    assert!(created.success(), "qemu-img create failed");

    // KVM can start a guest on some machines yet not run this image's boot loader; the
    // product probes for itself. TCG unless asked otherwise.
    let domain_type = match requested_accel().unwrap() {
        Some(Accel::Kvm) => "kvm",
        _ => "qemu",
    };
    let ssh_port = free_port().unwrap().port();
    let domain = format!(
        "vmm-e2e-test-image-{}",
        &uuid::Uuid::new_v4().to_string()[..8]
    );
    let xml_path = dir.path().join("domain.xml");
    std::fs::write(
        &xml_path,
        domain_xml(&domain, domain_type, dir.path(), ssh_port),
    )
    .unwrap();
    let started = Instant::now();
    virsh::virsh_ok(&["create", &xml_path.to_string_lossy()])
        .await
        .unwrap();
    let _domain = TransientDomain(domain.clone());

    let console_log = dir.path().join("console.log");
    let console = || std::fs::read_to_string(&console_log).unwrap_or_default();
    let result: Result<()> = async {
        let dumped = virsh::dumpxml(&domain).await?;
        ensure!(
            dumped.contains("<backend type='passt'/>"),
            "libvirt dropped the passt backend:\n{dumped}"
        );
        wait_until("the guest's SSH server", BOOT_DEADLINE, || async {
            Ok(console().contains(SSH_READY).then_some(()))
        })
        .await?;
        eprintln!(
            "test image under libvirt ({domain_type}, passt): boot to SSH took {:.1}s",
            started.elapsed().as_secs_f64()
        );
        wait_until("the user-data script", SCRIPT_DEADLINE, || async {
            Ok(console().contains(&script_finished(1, 0)).then_some(()))
        })
        .await?;
        check_guest(ssh_port, name, &key, &stranger).await?;

        // The ACPI power button (the agent's graceful stop) powers the guest off.
        virsh::virsh_ok(&["shutdown", &domain]).await?;
        wait_until("the guest to power off", SHUTDOWN_DEADLINE, || async {
            Ok((!virsh::domain_exists(&domain).await?).then_some(()))
        })
        .await?;
        let base_owner =
            std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&base).context("base image")?);
        ensure!(
            base_owner == 0,
            "libvirt changed the owner of the backing file to uid {base_owner}"
        );
        Ok(())
    }
    .await;
    if let Err(error) = result {
        panic!("{error:#}\nconsole:\n{}", tail(&console(), 40));
    }
}
