//! A PostgreSQL database for the tests that run coordinators on one: a fresh database on the
//! server `VMM_TEST_POSTGRES_URL` names (as `scripts/test.sh` sets it), or else on a server
//! this harness starts with `scripts/start-postgres.sh` under the workspace's `target/`
//! (loopback only; left running for the next test, reused).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// The URL of a new, empty database.
pub fn test_database() -> Result<String> {
    let server = match std::env::var("VMM_TEST_POSTGRES_URL") {
        Ok(url) => url,
        Err(_) => start_server()?,
    };
    let name = format!("vmm_e2e_{}", uuid::Uuid::new_v4().simple());
    let status = Command::new("psql")
        .arg(&server)
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .status()
        .context("cannot run psql (Debian package postgresql-client)")?;
    ensure!(
        status.success(),
        "psql could not create database {name} on {server}"
    );
    let mut url = url_without_path(&server);
    url.push('/');
    url.push_str(&name);
    Ok(url)
}

fn url_without_path(server: &str) -> String {
    let scheme_end = server.find("://").map_or(0, |i| i + 3);
    match server[scheme_end..].find('/') {
        Some(slash) => server[..scheme_end + slash].to_owned(),
        None => server.to_owned(),
    }
}

fn start_server() -> Result<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace")?
        .to_path_buf();
    let output = Command::new(root.join("scripts/start-postgres.sh"))
        .arg(root.join("target/e2e-postgres"))
        .output()
        .context("cannot run scripts/start-postgres.sh")?;
    ensure!(
        output.status.success(),
        "scripts/start-postgres.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
