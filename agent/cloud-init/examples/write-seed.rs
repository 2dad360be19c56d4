//! Writes a NoCloud seed volume, for trying a guest by hand:
//!
//! ```text
//! cargo run -p vmm-cloud-init --example write-seed -- \
//!     --instance-id ID --hostname NAME [--key-file FILE]... [--user-data FILE] \
//!     [--dhcp-mac MAC]... [--print] OUTPUT
//! ```
//!
//! Each `--key-file` holds public keys, one per line (an OpenSSH `.pub` file or an
//! `authorized_keys` file). `--print` also prints every file of the seed.

use std::path::PathBuf;
use std::process::ExitCode;

use vmm_cloud_init::{NetworkConfig, Seed, write_volume_file};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("write-seed: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut seed = Seed::default();
    let mut macs = Vec::new();
    let mut output = None;
    let mut print = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--instance-id" => seed.instance_id = value()?,
            "--hostname" => seed.hostname = value()?,
            "--key-file" => {
                let path = value()?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|error| format!("cannot read {path}: {error}"))?;
                seed.ssh_authorized_keys.extend(
                    text.lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty() && !line.starts_with('#'))
                        .map(str::to_owned),
                );
            }
            "--user-data" => {
                let path = value()?;
                seed.user_data = Some(
                    std::fs::read_to_string(&path)
                        .map_err(|error| format!("cannot read {path}: {error}"))?,
                );
            }
            "--dhcp-mac" => macs.push(value()?),
            "--print" => print = true,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => output = Some(PathBuf::from(arg)),
        }
    }
    if !macs.is_empty() {
        seed.network_config = Some(NetworkConfig::Dhcp { macs });
    }
    let output = output.ok_or("name the output file")?;
    let files = seed.files().map_err(|error| error.to_string())?;
    write_volume_file(&output, &seed).map_err(|error| error.to_string())?;
    if print {
        println!("--- meta-data\n{}", files.meta_data);
        println!("--- user-data\n{}", files.user_data);
        if let Some(network_config) = files.network_config {
            println!("--- network-config\n{network_config}");
        }
    }
    eprintln!("write-seed: wrote {}", output.display());
    Ok(())
}
