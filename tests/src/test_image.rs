//! The test image (`tests/image/`): a small bootable disk built from Debian packages, whose
//! init reads a cloud-init NoCloud seed, brings up DHCP and SSH, and prints
//! [`SSH_READY`] on the serial console. Built by `tests/image/build.sh` on first use and
//! cached under `target/test-image/`; see `tests/image/README.md`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

/// The console line the image prints once dropbear listens on port 22.
pub const SSH_READY: &str = "vmm-test-image: ssh ready";

/// The console line the image prints when a user-data script has finished.
pub fn script_finished(part: usize, status: i32) -> String {
    format!("vmm-test-image: user-data script part-{part} exited with status {status}")
}

/// The path of the compressed qcow2 test image, built (or found in the cache) once per
/// test process. Fails with the build script's own explanation (missing tools, no apt
/// sources) when it cannot be built.
pub async fn image() -> Result<&'static Path> {
    static IMAGE: OnceCell<PathBuf> = OnceCell::const_new();
    IMAGE.get_or_try_init(build).await.map(PathBuf::as_path)
}

async fn build() -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("image/build.sh");
    let output = tokio::process::Command::new(&script)
        .output()
        .await
        .with_context(|| format!("cannot run {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "{} failed ({}); run scripts/setup-host.sh as root if build tools are missing:\n{}",
            script.display(),
            output.status,
            stderr.trim()
        );
    }
    let stdout = String::from_utf8(output.stdout).context("build.sh printed no UTF-8 path")?;
    let path = PathBuf::from(stdout.trim());
    if !path.is_file() {
        bail!(
            "{} printed {:?}, which is not a file:\n{}",
            script.display(),
            path,
            stderr.trim()
        );
    }
    eprintln!("test image: {}", stderr.trim());
    Ok(path)
}
