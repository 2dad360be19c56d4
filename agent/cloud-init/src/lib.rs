//! cloud-init NoCloud seeds: the small read-only volume that tells a guest its identity, its
//! SSH keys and its user data on first boot.
//!
//! A seed is a VFAT volume labelled `CIDATA` holding:
//! - `meta-data`: `instance-id` (the VM ID) and `local-hostname` (the VM name);
//! - `user-data`: the user's data with the SSH keys merged in (see [`user_data`] for the
//!   rules, which follow cloud-init's);
//! - `network-config` (version 2), only when one is asked for: without it cloud-init's
//!   fallback brings up DHCP on one NIC, which is what a single-NIC VM needs.
//!
//! [`build_volume`] returns the volume's bytes; [`write_volume_file`] writes them to a file.
//! Both are pure: the same [`Seed`] always gives the same bytes (fixed timestamps, a volume
//! serial derived from the instance ID), and nothing is written anywhere else.
//!
//! Why VFAT, not ISO 9660: cloud-init reads both (label `cidata` or `CIDATA`, file system
//! `vfat` or `iso9660`). The `fatfs` crate writes FAT with long file names and is widely
//! used; no maintained crate writes ISO 9660 with the Rock Ridge or Joliet names the
//! seed's file names need (a release candidate is the best there is). A VFAT seed is
//! attached as a read-only virtio disk, which every machine type has and Debian's cloud
//! kernel (no AHCI driver, so no SATA CD-ROM on `q35`) reads.
//!
//! What this crate must never do: talk to libvirt, touch the host beyond the one file
//! [`write_volume_file`] is asked to write, or let a value break out of its place (an SSH
//! key or a hostname with a line break is refused, not written).
#![forbid(unsafe_code)]

pub mod user_data;
mod volume;

use std::io;
use std::path::Path;

pub use crate::volume::{SEED_LABEL, VolumeContents, read_volume};

/// Everything a seed says about one VM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// `instance-id` in meta-data: cloud-init runs its once-per-instance steps again when it
    /// changes. The VM ID.
    pub instance_id: String,
    /// `local-hostname` in meta-data. The VM name.
    pub hostname: String,
    /// Public keys in OpenSSH's one-line form, merged into the user data's
    /// `ssh_authorized_keys`.
    pub ssh_authorized_keys: Vec<String>,
    /// The user's own user data (cloud-config, a script, MIME multi-part...), if any.
    pub user_data: Option<String>,
    /// Whether to write a `network-config`, and which.
    pub network_config: Option<NetworkConfig>,
}

/// The network configurations the seed can carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkConfig {
    /// DHCP (IPv4) on each of these NICs, matched by MAC address. Matching by MAC works
    /// with every cloud-init network renderer (netplan, ENI, sysconfig, networkd); name
    /// globs work with netplan only.
    Dhcp { macs: Vec<String> },
}

/// The text of each file of a seed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedFiles {
    pub meta_data: String,
    pub user_data: String,
    pub network_config: Option<String>,
}

/// Why a seed cannot be made. Every message names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("the instance ID {0:?} is empty or has whitespace or control characters")]
    InvalidInstanceId(String),
    #[error("the hostname {0:?} is empty or has whitespace or control characters")]
    InvalidHostname(String),
    #[error(
        "SSH key #{index} is empty or spans several lines (one key per line, as in authorized_keys)"
    )]
    InvalidSshKey { index: usize },
    #[error("the MAC address {0:?} is not six colon-separated hex bytes")]
    InvalidMac(String),
    #[error("user data: {0}")]
    UserData(String),
    #[error("cannot write the seed volume: {0}")]
    Io(#[from] io::Error),
}

impl Seed {
    /// The files of the seed, checked. The user data is merged as [`user_data::merge`]
    /// describes.
    pub fn files(&self) -> Result<SeedFiles, SeedError> {
        if !is_single_word(&self.instance_id) {
            return Err(SeedError::InvalidInstanceId(self.instance_id.clone()));
        }
        if !is_single_word(&self.hostname) {
            return Err(SeedError::InvalidHostname(self.hostname.clone()));
        }
        let keys = checked_keys(&self.ssh_authorized_keys)?;
        let meta_data = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            yaml_string(&self.instance_id),
            yaml_string(&self.hostname)
        );
        let user_data = user_data::merge(self.user_data.as_deref(), &keys)?;
        let network_config = self
            .network_config
            .as_ref()
            .map(NetworkConfig::to_yaml)
            .transpose()?;
        Ok(SeedFiles {
            meta_data,
            user_data,
            network_config,
        })
    }
}

impl NetworkConfig {
    /// The `network-config` file (network configuration version 2).
    pub fn to_yaml(&self) -> Result<String, SeedError> {
        let NetworkConfig::Dhcp { macs } = self;
        if macs.is_empty() {
            return Ok("version: 2\nethernets: {}\n".to_owned());
        }
        let mut yaml = String::from("version: 2\nethernets:\n");
        for (index, mac) in macs.iter().enumerate() {
            let mac = checked_mac(mac)?;
            yaml.push_str(&format!(
                "  nic{index}:\n    match:\n      macaddress: {}\n    dhcp4: true\n",
                yaml_string(&mac)
            ));
        }
        Ok(yaml)
    }
}

/// The seed as the bytes of a VFAT volume labelled `CIDATA`.
pub fn build_volume(seed: &Seed) -> Result<Vec<u8>, SeedError> {
    let files = seed.files()?;
    let mut entries = vec![
        ("meta-data", files.meta_data.as_bytes()),
        ("user-data", files.user_data.as_bytes()),
    ];
    if let Some(network_config) = &files.network_config {
        entries.push(("network-config", network_config.as_bytes()));
    }
    Ok(volume::build(&entries, volume_serial(&seed.instance_id))?)
}

/// Writes the seed volume to `path` (mode 0600 on Unix: user data may hold secrets), through
/// a temporary file in the same directory renamed into place, so that a reader never sees
/// half a volume.
pub fn write_volume_file(path: &Path, seed: &Seed) -> Result<(), SeedError> {
    let bytes = build_volume(seed)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let temporary = dir
        .unwrap_or(Path::new("."))
        .join(format!(".{}.partial", file_name.to_string_lossy()));
    let result = write_private(&temporary, &bytes).and_then(|()| std::fs::rename(&temporary, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    Ok(result?)
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// A string as a double-quoted YAML scalar (JSON's string syntax, which YAML shares).
///
/// Always quoted, never left to a YAML emitter's judgement: emitters follow YAML 1.2, while
/// cloud-init reads YAML 1.1, where plain `yes` is a boolean and a plain MAC address such as
/// `52:54:00:12:34:56` a base-60 integer.
pub(crate) fn yaml_string(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

fn is_single_word(value: &str) -> bool {
    !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The keys trimmed; a key that is empty or holds a control character (a line break would
/// turn one key into two lines of authorized_keys) is refused.
fn checked_keys(keys: &[String]) -> Result<Vec<String>, SeedError> {
    keys.iter()
        .enumerate()
        .map(|(index, key)| {
            let key = key.trim();
            if key.is_empty() || key.chars().any(char::is_control) {
                Err(SeedError::InvalidSshKey { index })
            } else {
                Ok(key.to_owned())
            }
        })
        .collect()
}

/// `aa:bb:cc:dd:ee:ff`, lower case.
fn checked_mac(mac: &str) -> Result<String, SeedError> {
    let parts: Vec<&str> = mac.split(':').collect();
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.chars().all(|c| c.is_ascii_hexdigit()));
    if well_formed {
        Ok(mac.to_ascii_lowercase())
    } else {
        Err(SeedError::InvalidMac(mac.to_owned()))
    }
}

/// The FAT volume serial: FNV-1a of the instance ID, so that seeds of different VMs differ
/// (`blkid` shows it as the UUID) and one VM's seed is always the same.
fn volume_serial(instance_id: &str) -> u32 {
    instance_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests;
