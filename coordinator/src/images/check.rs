//! Whether a received file may become an image: `qemu-img info --output=json` detects its
//! format from the content (never from a name or a claim), and [`judge`] decides.
//!
//! Accepted: `qcow2` without a backing file (a backing file names a path the host would
//! read), without an external data file (the same) and without encryption (no host has the
//! key), not marked corrupt or dirty; and `raw` that starts with a partition table (an MBR,
//! or GPT's protective MBR: the boot signature 0x55AA at byte 510), so that a file that is
//! not a disk at all is not taken for one. Everything else is refused with a message saying
//! what was found and what to do.
//!
//! `qemu-img info` never opens a backing file (it reads the image's own header only) and is
//! given a bounded time; only administrators can make the coordinator inspect a file.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use vmm_shared::VmSize;

/// How long `qemu-img info` may take before the file is given up on.
const QEMU_IMG_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest virtual size an image may declare: a VM's disk is never smaller than its
/// image, and no VM's disk may be larger than this.
pub const MAX_VIRTUAL_SIZE_BYTES: u64 = VmSize::DISK_GB_RANGE.1 * super::BYTES_PER_GIB;

/// The on-disk formats accepted.
pub use vmm_shared::api::images::DiskFormat;

/// What the check found in an acceptable file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inspected {
    pub format: DiskFormat,
    pub virtual_size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The file is not an acceptable image; the message says why.
    #[error("{0}")]
    Refused(String),
    /// The file could not be checked (qemu-img missing, hung or crashed).
    #[error("cannot check the image file: {0}")]
    Unavailable(String),
}

/// Inspects the file at `path` and judges it.
pub async fn inspect(path: &Path) -> Result<Inspected, CheckError> {
    let run = tokio::process::Command::new("qemu-img")
        .arg("info")
        .arg("--output=json")
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(QEMU_IMG_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) if err.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckError::Unavailable(
                "qemu-img is not installed on the coordinator's machine (Debian package \
                 qemu-utils)"
                    .into(),
            ));
        }
        Ok(Err(err)) => {
            return Err(CheckError::Unavailable(format!(
                "cannot run qemu-img: {err}"
            )));
        }
        Err(_) => {
            return Err(CheckError::Refused(format!(
                "qemu-img could not read the file within {} s",
                QEMU_IMG_TIMEOUT.as_secs()
            )));
        }
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let reason = stderr
            .trim()
            .lines()
            .last()
            .unwrap_or("no message")
            .replace(&path.display().to_string(), "the file");
        return Err(CheckError::Refused(format!(
            "not a disk image qemu-img can read: {reason}"
        )));
    }
    let info: Value = serde_json::from_slice(&output.stdout).map_err(|err| {
        CheckError::Unavailable(format!(
            "qemu-img printed something that is not JSON: {err}"
        ))
    })?;
    let boot_signature = has_boot_signature(path)
        .await
        .map_err(|err| CheckError::Unavailable(format!("cannot read the file: {err}")))?;
    judge(&info, boot_signature).map_err(CheckError::Refused)
}

/// At start: says in the log when images cannot be checked here, so an operator learns it
/// before the first import fails.
pub async fn warn_if_unavailable() {
    let version = tokio::process::Command::new("qemu-img")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(QEMU_IMG_TIMEOUT, version).await {
        Ok(Ok(output)) if output.status.success() => {}
        _ => tracing::warn!(
            "qemu-img (Debian package qemu-utils) does not run on this machine: image uploads \
             and downloads will fail until it is installed"
        ),
    }
}

/// Whether the file's first sector ends with the boot signature 0x55AA (bytes 510-511), as
/// every MBR and every GPT disk's protective MBR does.
async fn has_boot_signature(path: &Path) -> std::io::Result<bool> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut sector = [0u8; 512];
    let mut filled = 0;
    while filled < sector.len() {
        let read = file.read(&mut sector[filled..]).await?;
        if read == 0 {
            return Ok(false);
        }
        filled += read;
    }
    Ok(sector[510..] == [0x55, 0xAA])
}

/// Decides from `qemu-img info`'s JSON (and, for raw files, whether the first sector carries
/// a boot signature) whether the file is an acceptable image.
pub fn judge(info: &Value, boot_signature: bool) -> Result<Inspected, String> {
    let format = info["format"].as_str().unwrap_or("unknown");
    let virtual_size_bytes = info["virtual-size"]
        .as_u64()
        .ok_or("qemu-img reports no virtual size for the file")?;
    let format = match format {
        "qcow2" => {
            judge_qcow2(info)?;
            DiskFormat::Qcow2
        }
        "raw" => {
            if !boot_signature {
                return Err(
                    "not a disk image: the file is neither qcow2 nor a raw disk with a \
                            partition table (no MBR or GPT boot signature 0x55AA at byte 510)"
                        .into(),
                );
            }
            DiskFormat::Raw
        }
        other => {
            return Err(format!(
                "the file is a {other} image; only qcow2 and raw images are accepted \
                 (convert it with `qemu-img convert -O qcow2`)"
            ));
        }
    };
    if virtual_size_bytes == 0 {
        return Err("the image's virtual size is 0 bytes".into());
    }
    if virtual_size_bytes > MAX_VIRTUAL_SIZE_BYTES {
        return Err(format!(
            "the image's virtual size is {virtual_size_bytes} bytes, larger than the largest VM \
             disk ({} GiB)",
            VmSize::DISK_GB_RANGE.1
        ));
    }
    Ok(Inspected {
        format,
        virtual_size_bytes,
    })
}

fn judge_qcow2(info: &Value) -> Result<(), String> {
    if let Some(backing) = info
        .get("backing-filename")
        .or_else(|| info.get("full-backing-filename"))
    {
        return Err(format!(
            "the qcow2 image has a backing file ({}); a host would read that path. Upload a \
             standalone image (`qemu-img convert -O qcow2 overlay.qcow2 standalone.qcow2`)",
            backing.as_str().unwrap_or("?")
        ));
    }
    let specific = &info["format-specific"]["data"];
    if let Some(data_file) = specific.get("data-file") {
        return Err(format!(
            "the qcow2 image keeps its data in an external file ({}); a host would read that \
             path. Upload a standalone image (`qemu-img convert -O qcow2`)",
            data_file.as_str().unwrap_or("?")
        ));
    }
    if info["encrypted"].as_bool() == Some(true) || specific.get("encrypt").is_some() {
        return Err(
            "the qcow2 image is encrypted; hosts have no key for it. Upload an unencrypted image"
                .into(),
        );
    }
    if specific["corrupt"].as_bool() == Some(true) {
        return Err(
            "the qcow2 image is marked corrupt; repair it with `qemu-img check -r all`".into(),
        );
    }
    if info["dirty-flag"].as_bool() == Some(true) {
        return Err(
            "the qcow2 image was not closed cleanly (dirty flag set); repair it with \
             `qemu-img check -r all`"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::process::Command;

    use super::*;

    /// Runs `qemu-img create` (the real tool) in `dir` and returns the path made.
    fn qemu_img_create(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
        let path = dir.join(name);
        let status = Command::new("qemu-img")
            .current_dir(dir)
            .arg("create")
            .args(args)
            .arg(&path)
            .arg("1M")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("qemu-img (qemu-utils) must be installed; see scripts/setup-host.sh");
        assert!(status.success(), "qemu-img create {args:?} failed");
        path
    }

    fn refusal(result: Result<Inspected, CheckError>) -> String {
        match result {
            Err(CheckError::Refused(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_standalone_qcow2_is_accepted_with_its_virtual_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = qemu_img_create(dir.path(), "disk.qcow2", &["-f", "qcow2"]);
        // The name says nothing: the same file called .img is still qcow2.
        let renamed = dir.path().join("disk.img");
        std::fs::rename(&path, &renamed).unwrap();
        let inspected = inspect(&renamed).await.unwrap();
        assert_eq!(
            inspected,
            Inspected {
                format: DiskFormat::Qcow2,
                virtual_size_bytes: 1 << 20
            }
        );
    }

    #[tokio::test]
    async fn a_qcow2_with_a_backing_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        qemu_img_create(dir.path(), "base.qcow2", &["-f", "qcow2"]);
        let overlay = qemu_img_create(
            dir.path(),
            "overlay.qcow2",
            &["-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2"],
        );
        let message = refusal(inspect(&overlay).await);
        assert!(message.contains("backing file (base.qcow2)"), "{message}");
    }

    #[tokio::test]
    async fn a_qcow2_with_an_external_data_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = qemu_img_create(
            dir.path(),
            "split.qcow2",
            &["-f", "qcow2", "-o", "data_file=split.raw"],
        );
        let message = refusal(inspect(&path).await);
        assert!(message.contains("external file (split.raw)"), "{message}");
    }

    #[tokio::test]
    async fn an_encrypted_qcow2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = qemu_img_create(
            dir.path(),
            "secret.qcow2",
            &[
                "-f",
                "qcow2",
                "--object",
                "secret,id=sec0,data=not-a-real-secret",
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            ],
        );
        let message = refusal(inspect(&path).await);
        assert!(message.contains("encrypted"), "{message}");
    }

    #[tokio::test]
    async fn other_formats_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = qemu_img_create(dir.path(), "disk.qcow2", &["-f", "vmdk"]);
        let message = refusal(inspect(&path).await);
        assert!(message.contains("vmdk image"), "{message}");
    }

    #[tokio::test]
    async fn raw_needs_a_partition_table() {
        let dir = tempfile::tempdir().unwrap();
        let blank = dir.path().join("blank.raw");
        std::fs::write(&blank, vec![0u8; 1 << 20]).unwrap();
        let message = refusal(inspect(&blank).await);
        assert!(message.contains("not a disk image"), "{message}");

        let text = dir.path().join("notes.qcow2");
        std::fs::write(&text, b"these are not the bytes of a disk\n").unwrap();
        let message = refusal(inspect(&text).await);
        assert!(message.contains("not a disk image"), "{message}");

        let mut disk = vec![0u8; 1 << 20];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        let partitioned = dir.path().join("disk.raw");
        std::fs::write(&partitioned, disk).unwrap();
        assert_eq!(
            inspect(&partitioned).await.unwrap(),
            Inspected {
                format: DiskFormat::Raw,
                virtual_size_bytes: 1 << 20
            }
        );
    }

    #[test]
    fn corrupt_dirty_and_oversized_images_are_refused() {
        let qcow2 = |extra: Value| {
            let mut info = serde_json::json!({
                "format": "qcow2",
                "virtual-size": 1u64 << 30,
                "format-specific": {"type": "qcow2", "data": {"compat": "1.1", "corrupt": false}},
                "dirty-flag": false
            });
            if let (Some(info), Some(extra)) = (info.as_object_mut(), extra.as_object()) {
                for (key, value) in extra {
                    info.insert(key.clone(), value.clone());
                }
            }
            info
        };
        assert!(judge(&qcow2(Value::Null), false).is_ok());
        let corrupt = qcow2(serde_json::json!({
            "format-specific": {"type": "qcow2", "data": {"corrupt": true}}
        }));
        assert!(judge(&corrupt, false).unwrap_err().contains("corrupt"));
        let dirty = qcow2(serde_json::json!({"dirty-flag": true}));
        assert!(judge(&dirty, false).unwrap_err().contains("dirty"));
        let huge = qcow2(serde_json::json!({"virtual-size": MAX_VIRTUAL_SIZE_BYTES + 1}));
        assert!(judge(&huge, false).unwrap_err().contains("largest VM disk"));
        let empty = qcow2(serde_json::json!({"virtual-size": 0}));
        assert!(judge(&empty, false).is_err());
    }
}
