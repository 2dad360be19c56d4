//! Child processes of a test: finding the built binaries, starting them with a clean
//! environment and their output in a log file, and killing them when the test is done.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// Environment variables passed through from the test's own environment; everything else
/// is cleared so that a developer's `DATABASE_URL` or `JWT_SECRET` can never leak into a test.
const PASSED_THROUGH_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "RUST_BACKTRACE"];

/// The path of a binary of this workspace (`coordinator` or `agent`).
///
/// Cargo does not build other packages' binaries for an integration test, so they are looked
/// up next to the test executable (`target/<profile>/deps/e2e-…` → `target/<profile>/<name>`),
/// or in `$VMM_E2E_BIN_DIR` when that is set.
pub fn binary_path(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("VMM_E2E_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().context("cannot find the test executable")?;
            let deps = exe
                .parent()
                .context("test executable has no parent directory")?;
            let profile_dir = deps
                .parent()
                .context("test executable is not under target/")?;
            profile_dir.to_path_buf()
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "the `{name}` binary is not at {}: run `cargo build --bins` first \
             (scripts/test.sh does it for you)",
            path.display()
        );
    }
    Ok(path)
}

/// A running child process whose stdout and stderr go to a log file. Killed (and reaped)
/// on drop.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
}

impl ChildProcess {
    /// Starts `program` with only the given environment (plus [`PASSED_THROUGH_ENV`]).
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[OsString],
        env: &[(String, OsString)],
        log_path: PathBuf,
    ) -> Result<Self> {
        let log = File::create(&log_path)
            .with_context(|| format!("cannot create log file {}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .context("cannot duplicate the log file handle")?;
        let mut command = Command::new(program);
        command.args(args).env_clear();
        for key in PASSED_THROUGH_ENV {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.env(
            "RUST_LOG",
            std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into()),
        );
        // Logs go to a file, not a terminal: no colour escapes.
        command.env("NO_COLOR", "1");
        command.envs(env.iter().map(|(k, v)| (k, v)));
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path,
        })
    }

    /// The process ID (for sending signals in fault tests).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The exit status, if the process has already exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Fails with the end of the log when the process is no longer running.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(status) => bail!(
                "{} exited early ({status}); last lines of its log {}:\n{}",
                self.name,
                self.log_path.display(),
                self.log_tail(40)
            ),
        }
    }

    /// The last `lines` lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        match std::fs::read_to_string(&self.log_path) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(err) => format!("(cannot read {}: {err})", self.log_path.display()),
        }
    }

    /// Kills the process (SIGKILL) and reaps it. Safe to call more than once.
    pub fn kill(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
