//! Looking at the real host through `virsh -c qemu:///system`, the way an operator would:
//! to check that what the API says is true on the host, and to change the host behind the
//! product's back (`virsh destroy`). Also cleans up what a failed QEMU test left behind.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::cluster::QEMU_SYSTEM_URI;

/// Runs `virsh -c qemu:///system <args>` and returns its output, whatever its exit status.
pub async fn virsh(args: &[&str]) -> Result<Output> {
    tokio::process::Command::new("virsh")
        .arg("-c")
        .arg(QEMU_SYSTEM_URI)
        .args(args)
        .output()
        .await
        .context("cannot run virsh (is libvirt-clients installed? run scripts/setup-host.sh)")
}

/// Runs virsh and returns its stdout, failing (with stderr) when it fails.
pub async fn virsh_ok(args: &[&str]) -> Result<String> {
    let output = virsh(args).await?;
    if !output.status.success() {
        bail!(
            "virsh {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Panics, naming the fix, unless libvirtd with the QEMU driver answers. Real-QEMU tests
/// are never silently skipped.
pub async fn require_qemu_system() {
    let answer = virsh(&["version"]).await;
    match answer {
        Ok(output) if output.status.success() => {}
        Ok(output) => panic!(
            "`virsh -c {QEMU_SYSTEM_URI} version` failed: {}\n\
             libvirtd with the QEMU driver is required for this test: run scripts/setup-host.sh \
             as root (it installs libvirt and QEMU and starts libvirtd)",
            String::from_utf8_lossy(&output.stderr).trim()
        ),
        Err(err) => panic!(
            "{err:#}\nlibvirtd with the QEMU driver is required for this test: run \
             scripts/setup-host.sh as root"
        ),
    }
}

/// Panics, naming the fix, unless libvirtd has its storage driver: the agent keeps VM disks
/// in a libvirt storage pool.
pub async fn require_storage_driver() {
    let output = virsh(&["pool-list", "--all"]).await.expect("virsh runs");
    assert!(
        output.status.success(),
        "`virsh -c {QEMU_SYSTEM_URI} pool-list` failed: {}\n\
         libvirtd needs its storage driver (Debian package libvirt-daemon-driver-storage), \
         loaded: run scripts/setup-host.sh as root, and restart libvirtd if it was already running",
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

/// `virsh domstate <domain>`, e.g. `running` or `shut off`.
pub async fn domstate(domain: &str) -> Result<String> {
    Ok(virsh_ok(&["domstate", domain]).await?.trim().to_owned())
}

/// Whether libvirt knows a domain of this name (`virsh dominfo` succeeds).
pub async fn domain_exists(domain: &str) -> Result<bool> {
    Ok(virsh(&["dominfo", domain]).await?.status.success())
}

/// `virsh dumpxml <domain>`.
pub async fn dumpxml(domain: &str) -> Result<String> {
    virsh_ok(&["dumpxml", domain]).await
}

/// `virsh destroy <domain>`: a hard power-off that the product did not ask for.
pub async fn destroy(domain: &str) -> Result<()> {
    virsh_ok(&["destroy", domain]).await.map(drop)
}

/// Removes, on drop, the domains and the storage pool a QEMU test may have left on the host
/// when it failed half-way, or that it never deleted: the domains added by name, and every
/// domain with a disk in the pool's directory. Each step is allowed to fail (usually: the
/// thing is already gone).
#[derive(Debug)]
pub struct QemuLeftovers {
    pool: String,
    domains: Vec<String>,
}

impl QemuLeftovers {
    pub fn new(pool: &str) -> Self {
        Self {
            pool: pool.to_owned(),
            domains: Vec::new(),
        }
    }

    pub fn add_domain(&mut self, domain: &str) {
        self.domains.push(domain.to_owned());
    }
}

impl Drop for QemuLeftovers {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            let _ = Command::new("virsh")
                .arg("-c")
                .arg(QEMU_SYSTEM_URI)
                .args(args)
                .output();
        };
        let output = |args: &[&str]| {
            Command::new("virsh")
                .arg("-c")
                .arg(QEMU_SYSTEM_URI)
                .args(args)
                .output()
                .ok()
                .filter(|output| output.status.success())
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let mut domains = self.domains.clone();
        let pool_dir = output(&["pool-dumpxml", &self.pool]).and_then(|xml| {
            let target = &xml[xml.find("<target>")?..];
            let path = &target[target.find("<path>")? + "<path>".len()..];
            Some(path[..path.find("</path>")?].trim().to_owned() + "/")
        });
        if let Some(pool_dir) = pool_dir {
            let all = output(&["list", "--all", "--name"]).unwrap_or_default();
            for domain in all.lines().map(str::trim).filter(|name| !name.is_empty()) {
                let disks = output(&["domblklist", domain, "--details"]).unwrap_or_default();
                if disks.contains(&pool_dir) && !domains.iter().any(|known| known == domain) {
                    domains.push(domain.to_owned());
                }
            }
        }
        for domain in &domains {
            run(&["destroy", domain]);
            run(&[
                "undefine",
                domain,
                "--remove-all-storage",
                "--snapshots-metadata",
            ]);
        }
        run(&["pool-destroy", &self.pool]);
        run(&["pool-undefine", &self.pool]);
    }
}

/// `scripts/start-libvirtd.sh`: starts libvirtd the way `scripts/setup-host.sh` does (under
/// a subreaper that reaps QEMU's zombies at once), unless it already runs so. Returns once
/// libvirtd answers, or fails with the script's message.
pub fn start_libvirtd() -> Result<()> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("start-libvirtd.sh");
    let output = Command::new(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}): {}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Serialises QEMU tests against the one test that restarts libvirtd: every test that uses
/// `qemu:///system` holds [`qemu_guard`] for its whole duration, and the libvirtd restart
/// holds [`qemu_exclusive_guard`], so no other test in this binary talks to libvirtd while
/// it is down. (Tests in other processes are not covered: run the suite once at a time.)
static QEMU_LOCK: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Shared access to libvirtd for an ordinary QEMU test; hold it until the test ends.
pub async fn qemu_guard() -> tokio::sync::RwLockReadGuard<'static, ()> {
    QEMU_LOCK.read().await
}

/// Exclusive access to libvirtd, for a test that restarts it.
pub async fn qemu_exclusive_guard() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    QEMU_LOCK.write().await
}

/// Names of every domain libvirt knows (`virsh list --all --name`).
pub async fn domain_names() -> Result<Vec<String>> {
    Ok(virsh_ok(&["list", "--all", "--name"])
        .await?
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Names of a domain's snapshots (`virsh snapshot-list --name`).
pub async fn snapshot_names(domain: &str) -> Result<Vec<String>> {
    Ok(virsh_ok(&["snapshot-list", domain, "--name"])
        .await?
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `virsh undefine <domain>` (keeping its disk): the product VM vanishes behind the
/// product's back. A running domain becomes transient and goes once destroyed.
pub async fn undefine(domain: &str) -> Result<()> {
    virsh_ok(&["undefine", domain, "--snapshots-metadata"])
        .await
        .map(drop)
}
