//! Booting real guests and reaching them: SSH key pairs, SSH to a guest through a port
//! forward on the host's loopback, and the test image booted by `qemu-system-x86_64`
//! directly (without libvirt) with user-mode networking.
//!
//! Network rule: everything here connects to 127.0.0.1 only. [`ssh`] takes a port, never
//! an address, so no test can reach a guest's private address through it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cluster::free_port;
use crate::test_image::SSH_READY;

/// The console line the test image prints first, as soon as its init runs.
const INIT_STARTED: &str = "vmm-test-image: init started";

/// An ed25519 key pair made by `ssh-keygen` for one test.
#[derive(Debug)]
pub struct SshKey {
    pub private_key: PathBuf,
    /// The public key, one line (`ssh-ed25519 AAAA… comment`).
    pub public_key: String,
}

impl SshKey {
    /// A new key pair without passphrase, stored in `dir` as `name` and `name.pub`.
    pub async fn generate(dir: &Path, name: &str) -> Result<SshKey> {
        let private_key = dir.join(name);
        let output = tokio::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("vmm-e2e-{name}"))
            .arg("-f")
            .arg(&private_key)
            .output()
            .await
            .context("cannot run ssh-keygen (openssh-client; run scripts/setup-host.sh)")?;
        if !output.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let public_key = std::fs::read_to_string(private_key.with_extension("pub"))?
            .trim()
            .to_owned();
        Ok(SshKey {
            private_key,
            public_key,
        })
    }
}

/// What a command run over SSH printed, and how it ended.
#[derive(Debug)]
pub struct SshOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` as root on the guest whose SSH port is forwarded to `127.0.0.1:port`,
/// authenticating with `key` only (no password, no agent, no known-hosts file: every boot
/// of a test guest has new host keys).
pub async fn ssh(port: u16, key: &SshKey, command: &str) -> Result<SshOutput> {
    let output = tokio::process::Command::new("ssh")
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "-F",
            "/dev/null",
            "-i",
        ])
        .arg(&key.private_key)
        .args(["-p", &port.to_string(), "root@127.0.0.1", command])
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run ssh (openssh-client; run scripts/setup-host.sh)")?;
    Ok(SshOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// How a guest's CPU is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// Software emulation.
    Tcg,
}

impl Accel {
    fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// Which accelerator to use: `VMM_TEST_ACCEL=tcg` or `kvm` forces one; unset or `auto`
/// tries KVM when `/dev/kvm` exists and falls back to TCG when the guest does not start
/// under it (on some machines KVM starts a guest but cannot run its boot loader).
pub fn requested_accel() -> Result<Option<Accel>> {
    match std::env::var("VMM_TEST_ACCEL").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(None),
        Ok("tcg") => Ok(Some(Accel::Tcg)),
        Ok("kvm") => Ok(Some(Accel::Kvm)),
        Ok(other) => bail!("VMM_TEST_ACCEL={other:?}: use tcg, kvm or auto"),
    }
}

/// How to boot the test image.
#[derive(Clone, Debug)]
pub struct QemuBoot {
    /// The image; the guest runs on a fresh qcow2 overlay of it in `dir`.
    pub image: PathBuf,
    /// A seed volume, attached as a read-only virtio disk.
    pub seed: Option<PathBuf>,
    /// Where the overlay, the console log and QEMU's own log go.
    pub dir: PathBuf,
    pub memory_mib: u32,
    /// `None`: [`requested_accel`].
    pub accel: Option<Accel>,
}

/// The test image running under `qemu-system-x86_64`, with its SSH port forwarded to a free
/// port on 127.0.0.1. Killed on drop.
#[derive(Debug)]
pub struct QemuGuest {
    child: tokio::process::Child,
    console_log: PathBuf,
    qemu_log: PathBuf,
    pub ssh_port: u16,
    pub accel: Accel,
    /// When QEMU was started (for the attempt that is running).
    pub started: Instant,
}

/// How long the test image may take to print its first line under KVM before KVM counts
/// as unusable for it.
const KVM_INIT_DEADLINE: Duration = Duration::from_secs(30);

impl QemuGuest {
    pub async fn boot(boot: &QemuBoot) -> Result<QemuGuest> {
        let accel = match boot.accel {
            Some(accel) => accel,
            None => requested_accel()?.unwrap_or(if Path::new("/dev/kvm").exists() {
                Accel::Kvm
            } else {
                Accel::Tcg
            }),
        };
        let forced = boot.accel.is_some() || requested_accel()?.is_some();
        if accel == Accel::Kvm && !forced {
            let mut guest = Self::start(boot, Accel::Kvm).await?;
            match guest
                .wait_for_console(INIT_STARTED, KVM_INIT_DEADLINE)
                .await
            {
                Ok(()) => return Ok(guest),
                Err(error) => {
                    eprintln!(
                        "the test image does not boot under KVM here; using TCG: {}",
                        error.to_string().lines().next().unwrap_or_default()
                    );
                    guest.kill().await;
                }
            }
            return Self::start(boot, Accel::Tcg).await;
        }
        Self::start(boot, accel).await
    }

    async fn start(boot: &QemuBoot, accel: Accel) -> Result<QemuGuest> {
        let overlay = boot.dir.join("overlay.qcow2");
        let _ = std::fs::remove_file(&overlay);
        let output = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&boot.image)
            .arg(&overlay)
            .output()
            .await
            .context("cannot run qemu-img (qemu-utils; run scripts/setup-host.sh)")?;
        if !output.status.success() {
            bail!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // The port is free when chosen; another process may take it before QEMU binds it,
        // which QEMU reports at once: try again with another.
        let mut last_error = None;
        for _ in 0..3 {
            match Self::spawn(boot, accel, &overlay).await {
                Ok(guest) => return Ok(guest),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("QEMU was not started")))
    }

    async fn spawn(boot: &QemuBoot, accel: Accel, overlay: &Path) -> Result<QemuGuest> {
        let ssh_port = free_port()?.port();
        let console_log = boot.dir.join("console.log");
        let qemu_log = boot.dir.join("qemu.log");
        std::fs::write(&console_log, b"")?;
        let mut command = tokio::process::Command::new("qemu-system-x86_64");
        command
            .args(["-machine", "pc", "-accel", accel.qemu_name()])
            .args(["-m", &boot.memory_mib.to_string(), "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none", "-no-reboot"])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()));
        if let Some(seed) = &boot.seed {
            command.arg("-drive").arg(format!(
                "file={},if=virtio,format=raw,readonly=on",
                seed.display()
            ));
        }
        command
            .arg("-netdev")
            .arg(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=net0"])
            .arg("-serial")
            .arg(format!("file:{}", console_log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&qemu_log)?)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .context("cannot run qemu-system-x86_64 (run scripts/setup-host.sh)")?;
        let mut guest = QemuGuest {
            child,
            console_log,
            qemu_log,
            ssh_port,
            accel,
            started: Instant::now(),
        };
        // A bad option or a port taken shows within moments.
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(status) = guest.child.try_wait()? {
            bail!("QEMU exited at once ({status}): {}", guest.qemu_log_text());
        }
        Ok(guest)
    }

    /// Everything the guest wrote on its serial console so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    fn qemu_log_text(&self) -> String {
        std::fs::read_to_string(&self.qemu_log)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Waits until a console line contains `text`. Fails at once when QEMU has exited or
    /// KVM stopped the guest, and after `timeout` otherwise, with the end of the console.
    pub async fn wait_for_console(&mut self, text: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.console().lines().any(|line| line.contains(text)) {
                return Ok(());
            }
            let qemu_log = self.qemu_log_text();
            if qemu_log.contains("KVM internal error") {
                let detail = qemu_log
                    .lines()
                    .find(|line| line.contains("emulation failure"))
                    .unwrap_or("");
                bail!("KVM stopped the guest: KVM internal error {detail}");
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "QEMU exited ({status}) before the console showed {text:?}: {qemu_log}\n\
                     console:\n{}",
                    tail(&self.console(), 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "the console did not show {text:?} within {:.0}s ({:?}); console:\n{}",
                    timeout.as_secs_f64(),
                    self.accel,
                    tail(&self.console(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for [`SSH_READY`] and returns the time from QEMU's start.
    pub async fn wait_for_ssh(&mut self, timeout: Duration) -> Result<Duration> {
        self.wait_for_console(SSH_READY, timeout).await?;
        Ok(self.started.elapsed())
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
