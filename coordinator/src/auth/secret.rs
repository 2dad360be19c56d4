//! The token signing secret: `JWT_SECRET` when set, otherwise a random secret generated
//! once into `<data-dir>/jwt-secret` (mode 0600) and reused on every later start, so tokens
//! survive restarts. There is never a built-in secret.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};

const SECRET_FILE: &str = "jwt-secret";

pub fn load_or_create_jwt_secret(
    configured: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = configured {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = data_dir.join(SECRET_FILE);
    let secret: String = {
        use rand::Rng;
        rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(64)
            .map(char::from)
            .collect()
    };
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(mut file) => {
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write the JWT secret to {}", path.display()))?;
            tracing::info!(path = %path.display(), "generated a new JWT signing secret");
            Ok(secret.into_bytes())
        }
        Err(err) if err.kind() == ErrorKind::AlreadyExists => read_existing(&path),
        Err(err) => Err(err).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn read_existing(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    let secret = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if secret.len() < 32 {
        bail!(
            "{} holds fewer than 32 bytes; delete it to generate a new secret",
            path.display()
        );
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_jwt_secret(None, dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(SECRET_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_create_jwt_secret(None, dir.path()).unwrap();
        assert_eq!(first, second);
        assert!(first.len() >= 32);
        let configured =
            load_or_create_jwt_secret(Some("x".repeat(40).as_str()), dir.path()).unwrap();
        assert_ne!(configured, first);
    }
}
