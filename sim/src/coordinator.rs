//! The real coordinator, as a child process of the simulator: started on loopback ports
//! with a data directory of the simulator's, stopped with SIGTERM (as systemd stops it),
//! started again on the same data, and measured (CPU time and resident memory from
//! `/proc/<pid>`).
//!
//! Its settings: rate limiting off (the simulator and `wrk` are faster than people), bcrypt
//! cost 4, quotas and connection caps large enough for the fleet. Everything else is the
//! coordinator's default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How the coordinator is started.
#[derive(Clone, Debug)]
pub struct CoordinatorOptions {
    pub binary: PathBuf,
    pub hosts: usize,
    pub host_dead_after: Duration,
}

/// A running coordinator.
#[derive(Debug)]
pub struct Coordinator {
    options: CoordinatorOptions,
    child: Option<Child>,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub agent_token: String,
    pub admin_password: String,
    data_dir: PathBuf,
}

fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

fn random_text(length: usize) -> String {
    use rand::Rng;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

impl Coordinator {
    /// Starts a coordinator on a fresh database in `data_dir` and waits until it answers.
    pub async fn start(options: CoordinatorOptions, data_dir: &Path) -> Result<Coordinator> {
        let mut coordinator = Coordinator {
            options,
            child: None,
            http: free_port()?,
            grpc: free_port()?,
            agent_token: random_text(32),
            admin_password: random_text(24),
            data_dir: data_dir.to_path_buf(),
        };
        coordinator.spawn().await?;
        Ok(coordinator)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process (again, on the same data) and waits until its API answers.
    pub async fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("coordinator.log"))
            .context("cannot open the coordinator's log")?;
        let connections = (self.options.hosts + 256).to_string();
        let child = Command::new(&self.options.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATA_DIR", self.data_dir.join("data"))
            .env("HTTP_ADDR", self.http.to_string())
            .env("GRPC_ADDR", self.grpc.to_string())
            .env("AGENT_TOKEN", &self.agent_token)
            .env("ADMIN_USER", "admin")
            .env("ADMIN_PASSWORD", &self.admin_password)
            .env("BCRYPT_COST", "4")
            .env("RATE_LIMIT_ENABLED", "false")
            .env(
                "HOST_DEAD_AFTER",
                format!("{}ms", self.options.host_dead_after.as_millis()),
            )
            .env("GRPC_MAX_CONNECTIONS", &connections)
            .env("HTTP_MAX_CONNECTIONS", "1024")
            .env("HTTP_MAX_CONNECTIONS_PER_CLIENT", "1024")
            .env("DEFAULT_QUOTA_VMS", "1000000")
            .env("DEFAULT_QUOTA_CPU", "1000000")
            .env("DEFAULT_QUOTA_MEMORY_MIB", "1000000000")
            .env("DEFAULT_QUOTA_DISK_GB", "1000000000")
            // The database to run on (e.g. a postgres:// URL for scripts/bench-database.sh);
            // SQLite in the data directory when unset.
            .envs(std::env::var("DATABASE_URL").map(|url| ("DATABASE_URL", url)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.options.binary.display()))?;
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "the coordinator exited at start ({status}); see {}",
                    self.data_dir.join("coordinator.log").display()
                );
            }
            let health = client
                .get(format!("{}/api/health", self.base_url()))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if health.is_ok_and(|answer| answer.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the coordinator did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the process with SIGTERM and waits for it to exit (SIGKILL after 30 s).
    pub async fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the coordinator did not stop within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The coordinator's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("coordinator.log")).unwrap_or_default()
    }

    /// CPU seconds (user + system) the process has used, and its resident memory in bytes.
    pub fn usage(&self) -> Result<(f64, u64)> {
        let pid = self.pid().context("the coordinator is not running")?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which is in parentheses and may hold spaces).
        let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
        let cpu = (ticks(11) + ticks(12)) / clock_ticks_per_second();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| {
                value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        Ok((cpu, rss_kib * 1024))
    }
}

fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
