//! Where the API is and which token to send. `vmmctl login` stores both in
//! `$XDG_CONFIG_HOME/vmmctl/credentials.json` (else `~/.config/vmmctl/credentials.json`),
//! the file mode 0600 and its directory 0700. `--url`/`VMM_URL` and `VMM_TOKEN` win over
//! the file, so scripts need no file at all.
//!
//! Never printed: the stored token.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::exit::{Failure, Result};

/// The API when nothing says otherwise: the coordinator's default `HTTP_ADDR`.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";
const FILE_NAME: &str = "credentials.json";

/// What `login` stores.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stored {
    pub url: Option<String>,
    pub token: Option<String>,
    pub username: Option<String>,
    /// When the stored token expires (RFC 3339); `None` for an API token without expiry.
    pub expires_at: Option<String>,
}

/// The directory of the credentials file.
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(PathBuf::from(dir).join("vmmctl"));
    }
    let home = std::env::var_os("HOME")
        .filter(|home| !home.is_empty())
        .ok_or_else(|| {
            Failure::general("neither XDG_CONFIG_HOME nor HOME is set: nowhere to keep the token")
        })?;
    Ok(PathBuf::from(home).join(".config").join("vmmctl"))
}

pub fn path() -> Result<PathBuf> {
    Ok(dir()?.join(FILE_NAME))
}

/// The stored credentials; empty when there are none.
pub fn load() -> Result<Stored> {
    let path = path()?;
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Stored::default()),
        Err(err) => {
            return Err(Failure::general(format!(
                "cannot read {}: {err}",
                path.display()
            )));
        }
    };
    serde_json::from_str(&text).map_err(|err| {
        Failure::general(format!(
            "{} is not what `vmmctl login` writes ({err}); delete it and log in again",
            path.display()
        ))
    })
}

/// Replaces the stored credentials, readable by the user alone.
pub fn save(stored: &Stored) -> Result<PathBuf> {
    let dir = dir()?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|err| Failure::general(format!("cannot create {}: {err}", dir.display())))?;
    let path = dir.join(FILE_NAME);
    let temporary = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        // The mode of `open` only applies to a new file.
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(serde_json::to_string_pretty(stored)?.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, &path)
    };
    write().map_err(|err| {
        let _ = fs::remove_file(&temporary);
        Failure::general(format!("cannot write {}: {err}", path.display()))
    })?;
    Ok(path)
}

/// Forgets the stored credentials; true when there were some.
pub fn remove() -> Result<bool> {
    let path = path()?;
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(Failure::general(format!(
            "cannot remove {}: {err}",
            path.display()
        ))),
    }
}

/// The API's base URL: the flag or `VMM_URL`, else the stored one, else [`DEFAULT_URL`].
pub fn resolve_url(flag: Option<&str>, stored: &Stored) -> String {
    flag.map(str::to_owned)
        .or_else(|| stored.url.clone())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}

/// The token to send: `VMM_TOKEN`, else the stored one.
pub fn resolve_token(stored: &Stored) -> Option<String> {
    std::env::var("VMM_TOKEN")
        .ok()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
        .or_else(|| stored.token.clone())
}
