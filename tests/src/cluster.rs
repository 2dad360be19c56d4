//! A test cluster: one coordinator and N agents, each a real process of the built binaries,
//! on ephemeral loopback ports, with every file under one temporary directory.
//!
//! Agents prove who they are the way they do in production ([`AgentAuthMode::Certificates`],
//! the default): the coordinator runs without `AGENT_TOKEN`, the harness asks it (as the
//! admin, over the REST API) for a join token per host, and each agent enrols with its token
//! (`JOIN_TOKEN_FILE`) on its first start and connects over mutual TLS from then on.
//! [`AgentAuthMode::SharedToken`] starts the development mode instead (`AGENT_TOKEN`, plain
//! HTTP/2).
//!
//! Dropping the cluster kills every process; when the drop happens during a panic (a failed
//! assertion), the end of each process's log is printed first, so the failure explains
//! itself. Set `VMM_E2E_KEEP=1` to keep the temporary directory (logs, databases, disks).

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use crate::api::Api;
use crate::process::{ChildProcess, binary_path};
use crate::wait::wait_until;

/// How long the coordinator may take to answer its health check after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Test passwords are short-lived; a low bcrypt cost keeps registration and login fast.
const BCRYPT_COST: &str = "4";
/// The password [`TestCluster::user`] gives every user it creates.
pub const USER_PASSWORD: &str = "correct-horse-battery";

/// libvirt's built-in test driver: every connection is a fresh in-memory host with 16 CPUs,
/// 3072 MiB of memory and one unmanaged running domain called `test`.
pub const TEST_DRIVER_URI: &str = "test:///default";
/// The system QEMU driver under libvirtd.
pub const QEMU_SYSTEM_URI: &str = "qemu:///system";

/// How the cluster's agents prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAuthMode {
    /// Join tokens, then client certificates over mutual TLS (production's way).
    Certificates,
    /// The development mode: one `AGENT_TOKEN` shared by all, over plain HTTP/2.
    SharedToken,
}

/// Where the harness's own requests to the REST API come from (enrolling agents): not the
/// tests' 127.0.0.1, whose rate-limit budgets they would use up.
pub const HARNESS_ADDRESS: std::net::IpAddr =
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 254));

/// How long the join tokens the harness makes last.
const JOIN_TOKEN_TTL_SECS: u64 = 600;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub agents: Vec<AgentOptions>,
    /// Certificates by default.
    pub agent_auth: AgentAuthMode,
    /// `spread` or `pack`; `None` leaves the coordinator's default.
    pub placement: Option<String>,
    pub jwt_ttl_secs: Option<u64>,
    pub host_dead_after_secs: Option<u64>,
    pub operation_timeout_secs: Option<u64>,
    /// Off by default: a test sends requests faster than a person would, and only a test of
    /// rate limiting itself wants the coordinator to slow it down.
    pub rate_limit: bool,
    /// Further coordinator settings, as environment variables (e.g. `DEFAULT_QUOTA_CPU`).
    pub coordinator_env: Vec<(String, String)>,
}

impl Default for ClusterOptions {
    /// One agent, `host-a`, on the test driver.
    fn default() -> Self {
        Self::with_agents(vec![AgentOptions::test_driver("host-a")])
    }
}

impl ClusterOptions {
    pub fn with_agents(agents: Vec<AgentOptions>) -> Self {
        Self {
            agents,
            agent_auth: AgentAuthMode::Certificates,
            placement: None,
            jwt_ttl_secs: None,
            host_dead_after_secs: None,
            operation_timeout_secs: None,
            rate_limit: false,
            coordinator_env: Vec::new(),
        }
    }

    /// The development mode: a shared `AGENT_TOKEN` instead of certificates.
    pub fn shared_token(mut self) -> Self {
        self.agent_auth = AgentAuthMode::SharedToken;
        self
    }

    pub fn placement(mut self, placement: &str) -> Self {
        self.placement = Some(placement.to_owned());
        self
    }

    /// Sets one more coordinator environment variable.
    pub fn coordinator_env(mut self, key: &str, value: &str) -> Self {
        self.coordinator_env
            .push((key.to_owned(), value.to_owned()));
        self
    }
}

/// One agent process.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub host_id: String,
    pub libvirt_uri: String,
    /// The libvirt storage pool the agent creates. Pool names are global on
    /// `qemu:///system`, so every agent there needs its own.
    pub storage_pool: String,
    /// A BIOS-only test guest ignores ACPI; a short wait keeps `stop` fast.
    pub shutdown_timeout_secs: u64,
    pub poll_interval_ms: u64,
    /// Further agent settings, as environment variables (e.g. `NETWORK`, `GUEST_ACCEL`).
    pub env: Vec<(String, String)>,
}

impl AgentOptions {
    /// An agent on libvirt's in-memory test driver.
    pub fn test_driver(host_id: &str) -> Self {
        Self {
            host_id: host_id.to_owned(),
            libvirt_uri: TEST_DRIVER_URI.to_owned(),
            storage_pool: "vmm".to_owned(),
            shutdown_timeout_secs: 2,
            poll_interval_ms: 300,
            env: Vec::new(),
        }
    }

    /// Sets one more agent environment variable.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An agent on real QEMU under libvirtd, with a storage pool name of its own.
    pub fn qemu(host_id: &str) -> Self {
        Self {
            libvirt_uri: QEMU_SYSTEM_URI.to_owned(),
            storage_pool: format!(
                "vmm-e2e-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            ..Self::test_driver(host_id)
        }
    }
}

/// A running agent.
#[derive(Debug)]
pub struct AgentHandle {
    pub options: AgentOptions,
    pub data_dir: PathBuf,
    /// Where the agent serves Prometheus metrics (`METRICS_ADDR`): a free loopback port of
    /// its own, so agents of tests running side by side never compete for the default 9177.
    pub metrics_addr: SocketAddr,
    process: ChildProcess,
    /// How often [`TestCluster::restart_agent`] restarted it.
    restarts: u32,
}

impl AgentHandle {
    pub fn host_id(&self) -> &str {
        &self.options.host_id
    }

    /// `http://<metrics_addr>/metrics`.
    pub fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.metrics_addr)
    }

    /// Where the agent keeps a VM's disk: `<data-dir>/images/vmm-<vm_id>.qcow2`.
    pub fn disk_path(&self, vm_id: &str) -> PathBuf {
        self.pool_dir().join(format!("vmm-{vm_id}.qcow2"))
    }

    /// The directory of the agent's storage pool: `<data-dir>/images`.
    pub fn pool_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    /// The names of the files in the agent's storage pool, sorted.
    pub fn pool_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pool_dir())
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok())
                    .map(|entry| entry.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Where the running process of this agent logs.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// The whole log of the current process.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }

    /// The agent's process ID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `signal` (e.g. `"STOP"`, `"CONT"`, `"KILL"`) to the agent process.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.process.pid();
        let status = tokio::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }
}

/// The libvirt domain name of a VM on its host.
pub fn domain_name(vm_id: &str) -> String {
    format!("vmm-{vm_id}")
}

/// A coordinator plus agents. Fields drop in order: processes first, the directory last.
#[derive(Debug)]
pub struct TestCluster {
    agents: Vec<AgentHandle>,
    coordinator: ChildProcess,
    /// What the coordinator was started with, to start it again on the same data.
    coordinator_bin: PathBuf,
    coordinator_env: Vec<(String, OsString)>,
    coordinator_restarts: u32,
    http_url: String,
    grpc_url: String,
    admin_user: String,
    admin_password: String,
    jwt_secret: String,
    /// `Some` in the shared-token mode only.
    agent_token: Option<String>,
    dir: Option<TempDir>,
}

impl TestCluster {
    /// Starts the coordinator, waits for its health check, starts every agent and waits until
    /// the coordinator counts them all as connected.
    pub async fn start(options: ClusterOptions) -> Result<Self> {
        let coordinator_bin = binary_path("coordinator")?;
        let agent_bin = binary_path("agent")?;

        let dir = tempfile::Builder::new().prefix("vmm-e2e-").tempdir()?;
        // The qemu user of libvirtd must be able to reach disks under agents' data dirs.
        make_traversable(dir.path())?;

        let (http_addr, grpc_addr) = free_port_pair()?;
        let http_url = format!("http://{http_addr}");
        let admin_user = "admin".to_owned();
        let admin_password = random_secret();
        let jwt_secret = random_secret();
        let (grpc_url, agent_token) = match options.agent_auth {
            AgentAuthMode::Certificates => (format!("https://{grpc_addr}"), None),
            AgentAuthMode::SharedToken => (format!("http://{grpc_addr}"), Some(random_secret())),
        };

        let data_dir = dir.path().join("coordinator");
        std::fs::create_dir(&data_dir)?;
        let mut env: Vec<(String, OsString)> = vec![
            ("HTTP_ADDR".into(), http_addr.to_string().into()),
            ("PUBLIC_URL".into(), format!("http://{http_addr}").into()),
            ("GRPC_ADDR".into(), grpc_addr.to_string().into()),
            ("DATA_DIR".into(), data_dir.clone().into()),
            ("JWT_SECRET".into(), jwt_secret.clone().into()),
            ("ADMIN_USER".into(), admin_user.clone().into()),
            ("ADMIN_PASSWORD".into(), admin_password.clone().into()),
            ("BCRYPT_COST".into(), BCRYPT_COST.into()),
        ];
        if let Some(token) = &agent_token {
            env.push(("AGENT_TOKEN".into(), token.into()));
        }
        let optional = [
            ("PLACEMENT", options.placement.clone()),
            ("JWT_TTL_SECS", options.jwt_ttl_secs.map(|v| v.to_string())),
            (
                "HOST_DEAD_AFTER",
                options.host_dead_after_secs.map(|v| v.to_string()),
            ),
            (
                "OPERATION_TIMEOUT_SECS",
                options.operation_timeout_secs.map(|v| v.to_string()),
            ),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                env.push((key.into(), value.into()));
            }
        }
        if !options.rate_limit {
            env.push(("RATE_LIMIT_ENABLED".into(), "false".into()));
        }
        env.extend(
            options
                .coordinator_env
                .iter()
                .map(|(k, v)| (k.clone(), v.into())),
        );
        let mut coordinator = ChildProcess::spawn(
            "coordinator",
            &coordinator_bin,
            &[],
            &env,
            dir.path().join("coordinator.log"),
        )?;

        wait_for_health(&mut coordinator, &Api::new(&http_url)).await?;

        let mut cluster = Self {
            agents: Vec::new(),
            coordinator,
            coordinator_bin,
            coordinator_env: env,
            coordinator_restarts: 0,
            http_url,
            grpc_url,
            admin_user,
            admin_password,
            jwt_secret,
            agent_token,
            dir: Some(dir),
        };
        for agent in options.agents {
            cluster.start_agent_process(&agent_bin, agent).await?;
        }
        cluster
            .wait_for_connected_agents(cluster.agents.len())
            .await?;
        Ok(cluster)
    }

    /// Starts one more agent (enrolled with a join token of its own in the certificate
    /// mode) and returns at once; see [`TestCluster::wait_for_connected_agents`].
    pub async fn add_agent(&mut self, options: AgentOptions) -> Result<()> {
        let agent_bin = binary_path("agent")?;
        self.start_agent_process(&agent_bin, options).await
    }

    async fn start_agent_process(&mut self, agent_bin: &Path, options: AgentOptions) -> Result<()> {
        let root = self
            .dir
            .as_ref()
            .context("cluster directory already gone")?
            .path()
            .to_path_buf();
        let data_dir = root.join(format!("agent-{}", options.host_id));
        std::fs::create_dir(&data_dir)?;
        make_traversable(&data_dir)?;
        if self.agent_token.is_none() {
            let token = self.join_token(&options.host_id).await?;
            write_private(&self.join_token_path(&options.host_id)?, &token)?;
        }
        let metrics_addr = free_port()?;
        let process = self.spawn_agent(
            agent_bin,
            &options,
            &data_dir,
            metrics_addr,
            root.join(format!("agent-{}.log", options.host_id)),
        )?;
        self.agents.push(AgentHandle {
            options,
            data_dir,
            metrics_addr,
            process,
            restarts: 0,
        });
        Ok(())
    }

    /// Starts one agent process with the cluster's settings.
    fn spawn_agent(
        &self,
        agent_bin: &Path,
        options: &AgentOptions,
        data_dir: &Path,
        metrics_addr: SocketAddr,
        log_path: PathBuf,
    ) -> Result<ChildProcess> {
        let credential = match &self.agent_token {
            Some(token) => ("AGENT_TOKEN".into(), token.into()),
            // Read only until the agent has its certificate: restarts use the certificate.
            None => (
                "JOIN_TOKEN_FILE".into(),
                self.join_token_path(&options.host_id)?.into(),
            ),
        };
        let mut env: Vec<(String, OsString)> = vec![
            ("METRICS_ADDR".into(), metrics_addr.to_string().into()),
            ("COORDINATOR_URL".into(), self.grpc_url.clone().into()),
            ("LIBVIRT_URI".into(), options.libvirt_uri.clone().into()),
            ("HOST_ID".into(), options.host_id.clone().into()),
            ("AGENT_DATA_DIR".into(), data_dir.to_path_buf().into()),
            credential,
            ("STORAGE_POOL".into(), options.storage_pool.clone().into()),
            (
                "SHUTDOWN_TIMEOUT_SECS".into(),
                options.shutdown_timeout_secs.to_string().into(),
            ),
            (
                "POLL_INTERVAL_MS".into(),
                options.poll_interval_ms.to_string().into(),
            ),
        ];
        env.extend(options.env.iter().map(|(k, v)| (k.clone(), v.into())));
        ChildProcess::spawn(
            &format!("agent {}", options.host_id),
            agent_bin,
            &[],
            &env,
            log_path,
        )
    }

    /// Where the join token of `host_id` is kept for its agent (`JOIN_TOKEN_FILE`).
    pub fn join_token_path(&self, host_id: &str) -> Result<PathBuf> {
        Ok(self
            .dir
            .as_ref()
            .context("cluster directory already gone")?
            .path()
            .join(format!("join-token-{host_id}")))
    }

    /// A new join token for `host_id`, made by the admin through the REST API. The harness
    /// logs in from a loopback address of its own ([`HARNESS_ADDRESS`]), so that it takes
    /// nothing from the rate-limit budgets of the tests' clients (127.0.0.1).
    pub async fn join_token(&self, host_id: &str) -> Result<String> {
        let answer: serde_json::Value = Api::from_address(&self.http_url, HARNESS_ADDRESS)
            .login(&self.admin_user, &self.admin_password)
            .await
            .context("logging in as the admin to make a join token")?
            .post(
                "/api/hosts/join-tokens",
                &serde_json::json!({"host_id": host_id, "ttl": JOIN_TOKEN_TTL_SECS}),
            )
            .await?
            .expect_status(201)
            .with_context(|| format!("making a join token for {host_id}"))?
            .json()?;
        answer["token"]
            .as_str()
            .map(str::to_owned)
            .context("the join token answer has no token")
    }

    /// How agents prove who they are in this cluster.
    pub fn agent_auth(&self) -> AgentAuthMode {
        if self.agent_token.is_some() {
            AgentAuthMode::SharedToken
        } else {
            AgentAuthMode::Certificates
        }
    }

    /// Kills the agent of `host_id` with SIGKILL (nothing is flushed, nothing said goodbye
    /// to) and reaps it. Its VMs keep running: the agent is not in their data path.
    pub fn kill_agent(&mut self, host_id: &str) {
        self.agent_mut(host_id).process.kill();
    }

    /// Kills the agent of `host_id` if it still runs (SIGKILL) and starts it again with the
    /// same settings, data directory (journal included), storage pool and metrics address.
    /// Returns at once; see [`TestCluster::wait_for_connected_agents`]. The new process logs
    /// to `agent-<host>.restart-<n>.log`.
    pub fn restart_agent(&mut self, host_id: &str) -> Result<()> {
        let agent_bin = binary_path("agent")?;
        let root = self
            .dir
            .as_ref()
            .context("cluster directory already gone")?
            .path()
            .to_path_buf();
        let agent = self.agent_mut(host_id);
        agent.process.kill();
        agent.restarts += 1;
        let log_path = root.join(format!("agent-{host_id}.restart-{}.log", agent.restarts));
        let (options, data_dir, metrics_addr) = (
            agent.options.clone(),
            agent.data_dir.clone(),
            agent.metrics_addr,
        );
        let process = self.spawn_agent(&agent_bin, &options, &data_dir, metrics_addr, log_path)?;
        self.agent_mut(host_id).process = process;
        Ok(())
    }

    /// Waits up to `timeout` for the agent of `host_id` to exit on its own and returns its
    /// exit status.
    pub async fn wait_for_agent_exit(
        &mut self,
        host_id: &str,
        timeout: Duration,
    ) -> Result<std::process::ExitStatus> {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.agent_mut(host_id).process.exited() {
                return Ok(status);
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "agent {host_id} did not exit within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn agent_mut(&mut self, host_id: &str) -> &mut AgentHandle {
        self.agents
            .iter_mut()
            .find(|agent| agent.host_id() == host_id)
            .unwrap_or_else(|| panic!("no agent with host ID {host_id:?} in this cluster"))
    }

    /// The coordinator's process ID.
    pub fn coordinator_pid(&self) -> u32 {
        self.coordinator.pid()
    }

    /// Everything the current coordinator process has logged so far.
    pub fn coordinator_log(&self) -> String {
        std::fs::read_to_string(self.coordinator.log_path()).unwrap_or_default()
    }

    /// The URL agents connect to: `https://<GRPC_ADDR>` (or `http://` with the shared
    /// token).
    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// The agents' listening address (`GRPC_ADDR`).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_url
            .rsplit("://")
            .next()
            .and_then(|addr| addr.parse().ok())
            .expect("the cluster made the gRPC URL from an address")
    }

    /// The admin account's name and password.
    pub fn admin_credentials(&self) -> (&str, &str) {
        (&self.admin_user, &self.admin_password)
    }

    /// Kills the coordinator (SIGKILL: nothing is flushed or said goodbye to) and starts it
    /// again with the same settings, addresses and data directory, then waits for its health
    /// check only: the agents reconnect on their own, see
    /// [`TestCluster::wait_for_connected_agents`]. The new process logs to
    /// `coordinator.restart-<n>.log`.
    pub async fn restart_coordinator(&mut self) -> Result<()> {
        self.coordinator.kill();
        self.coordinator_restarts += 1;
        let log_path = self
            .dir
            .as_ref()
            .context("cluster directory already gone")?
            .path()
            .join(format!(
                "coordinator.restart-{}.log",
                self.coordinator_restarts
            ));
        self.coordinator = ChildProcess::spawn(
            "coordinator",
            &self.coordinator_bin,
            &[],
            &self.coordinator_env,
            log_path,
        )?;
        let api = self.api();
        wait_for_health(&mut self.coordinator, &api).await
    }

    /// Waits until `/api/health` reports `count` connected agents, failing early with the
    /// log of any process that died.
    pub async fn wait_for_connected_agents(&mut self, count: usize) -> Result<()> {
        let api = self.api();
        let result = wait_until(
            &format!("{count} agent(s) connected"),
            START_TIMEOUT,
            || {
                let api = api.clone();
                let died = self.first_dead_process();
                async move {
                    if let Some(err) = died {
                        return Ok(Some(Err(err)));
                    }
                    let health = api.health().await?;
                    Ok((health.agents_connected == count as u64).then_some(Ok(())))
                }
            },
        )
        .await;
        match result {
            Ok(inner) => inner,
            Err(err) => Err(err.context(self.all_log_tails(40))),
        }
    }

    fn first_dead_process(&mut self) -> Option<anyhow::Error> {
        if let Err(err) = self.coordinator.ensure_running() {
            return Some(err);
        }
        self.agents
            .iter_mut()
            .find_map(|agent| agent.process.ensure_running().err())
    }

    /// The coordinator's `DATA_DIR` (database, JWT secret, `images/`), to observe only.
    pub fn coordinator_data_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .expect("the cluster's directory exists while it runs")
            .path()
            .join("coordinator")
    }

    /// An API client without a token.
    pub fn api(&self) -> Api {
        Api::new(&self.http_url)
    }

    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    /// The coordinator's JWT secret, for tests that craft tokens.
    pub fn jwt_secret(&self) -> &str {
        &self.jwt_secret
    }

    /// An API client logged in as the admin account created from `ADMIN_USER`/`ADMIN_PASSWORD`.
    pub async fn admin(&self) -> Result<Api> {
        self.api()
            .login(&self.admin_user, &self.admin_password)
            .await
            .context("logging in as the admin from ADMIN_USER/ADMIN_PASSWORD")
    }

    /// Registers `username` with [`USER_PASSWORD`] and returns a client logged in as it.
    pub async fn user(&self, username: &str) -> Result<Api> {
        let api = self.api();
        api.register(username, USER_PASSWORD).await?;
        api.login(username, USER_PASSWORD).await
    }

    /// The agent with this host ID.
    pub fn agent(&self, host_id: &str) -> &AgentHandle {
        self.agents
            .iter()
            .find(|agent| agent.host_id() == host_id)
            .unwrap_or_else(|| panic!("no agent with host ID {host_id:?} in this cluster"))
    }

    pub fn agents(&self) -> &[AgentHandle] {
        &self.agents
    }

    /// The last `lines` lines of every process's log, labelled.
    pub fn all_log_tails(&self, lines: usize) -> String {
        let mut out = format!(
            "---- {} ({}) ----\n{}\n",
            self.coordinator.name(),
            self.coordinator.log_path().display(),
            self.coordinator.log_tail(lines)
        );
        for agent in &self.agents {
            out.push_str(&format!(
                "---- {} ({}) ----\n{}\n",
                agent.process.name(),
                agent.process.log_path().display(),
                agent.log_tail(lines)
            ));
        }
        out
    }
}

/// A further coordinator on the cluster's database (PostgreSQL), with its own HTTP and gRPC
/// addresses and data directory, and the cluster's secrets. Killed when dropped.
pub struct PeerCoordinator {
    process: ChildProcess,
    http_url: String,
    grpc_url: String,
}

impl PeerCoordinator {
    pub fn api(&self) -> Api {
        Api::new(&self.http_url)
    }

    pub fn http_url(&self) -> &str {
        &self.http_url
    }

    pub fn grpc_url(&self) -> &str {
        &self.grpc_url
    }

    /// SIGKILL: nothing is flushed, no lease given back.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.process.log_path()).unwrap_or_default()
    }
}

impl TestCluster {
    /// Starts another coordinator with the cluster's settings (its `DATABASE_URL` must be a
    /// PostgreSQL database, e.g. from [`crate::postgres::test_database`]) and waits for its
    /// health check.
    pub async fn start_peer_coordinator(&mut self, name: &str) -> Result<PeerCoordinator> {
        let root = self
            .dir
            .as_ref()
            .context("cluster directory already gone")?
            .path();
        let data_dir = root.join(format!("coordinator-{name}"));
        std::fs::create_dir(&data_dir)?;
        let (http_addr, grpc_addr) = free_port_pair()?;
        let mut env: Vec<(String, OsString)> = self
            .coordinator_env
            .iter()
            .filter(|(key, _)| {
                !matches!(
                    key.as_str(),
                    "HTTP_ADDR" | "PUBLIC_URL" | "GRPC_ADDR" | "DATA_DIR"
                )
            })
            .cloned()
            .collect();
        env.push(("HTTP_ADDR".into(), http_addr.to_string().into()));
        env.push(("PUBLIC_URL".into(), format!("http://{http_addr}").into()));
        env.push(("GRPC_ADDR".into(), grpc_addr.to_string().into()));
        // Every coordinator of the cluster shows agents certificates of one CA, and checks
        // theirs against it: the peer gets the first coordinator's (as an operator copies
        // DATA_DIR/pki to each coordinator).
        let ca_dir = root.join("coordinator").join("pki");
        if ca_dir.is_dir() {
            let peer_ca_dir = data_dir.join("pki");
            std::fs::create_dir(&peer_ca_dir)?;
            std::fs::set_permissions(&peer_ca_dir, std::fs::Permissions::from_mode(0o700))?;
            for entry in std::fs::read_dir(&ca_dir)? {
                let entry = entry?;
                std::fs::copy(entry.path(), peer_ca_dir.join(entry.file_name()))?;
            }
        }
        env.push(("DATA_DIR".into(), data_dir.into()));
        let mut process = ChildProcess::spawn(
            &format!("coordinator {name}"),
            &self.coordinator_bin,
            &[],
            &env,
            root.join(format!("coordinator-{name}.log")),
        )?;
        let http_url = format!("http://{http_addr}");
        wait_for_health(&mut process, &Api::new(&http_url)).await?;
        let scheme = if self.grpc_url.starts_with("https://") {
            "https"
        } else {
            "http"
        };
        Ok(PeerCoordinator {
            process,
            http_url,
            grpc_url: format!("{scheme}://{grpc_addr}"),
        })
    }

    /// Kills the coordinator with SIGKILL, and leaves it dead.
    pub fn kill_coordinator(&mut self) {
        self.coordinator.kill();
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "\n==== end of the cluster's logs ====\n{}",
                self.all_log_tails(60)
            );
        }
        for agent in &mut self.agents {
            agent.process.kill();
        }
        self.coordinator.kill();
        if std::env::var_os("VMM_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("VMM_E2E_KEEP is set: keeping {}", dir.keep().display());
        }
    }
}

/// Waits until the coordinator's health check says `ok`, failing at once (with the end of its
/// log) when the process exits.
async fn wait_for_health(coordinator: &mut ChildProcess, api: &Api) -> Result<()> {
    wait_until("the coordinator's health check", START_TIMEOUT, || {
        let api = api.clone();
        let exited = coordinator.ensure_running();
        async move {
            if let Err(err) = exited {
                // Not retryable: surface it at once instead of after the timeout.
                return Ok(Some(Err(err)));
            }
            let health = api.health().await?;
            Ok((health.status == "ok").then_some(Ok(())))
        }
    })
    .await
    .map_err(|err| err.context(format!("log tail:\n{}", coordinator.log_tail(40))))?
}

/// A free loopback address (`127.0.0.1:<port>`) for a process the test starts moments later.
pub fn free_port() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Two distinct free loopback ports. Both listeners are held until both ports are chosen, so
/// the two cannot be the same; the coordinator binds them moments later.
fn free_port_pair() -> Result<(SocketAddr, SocketAddr)> {
    let first = TcpListener::bind("127.0.0.1:0")?;
    let second = TcpListener::bind("127.0.0.1:0")?;
    Ok((first.local_addr()?, second.local_addr()?))
}

/// A random alphanumeric secret (two v4 UUIDs: 244 random bits).
pub fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes a secret to a new file only its owner can read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn make_traversable(path: &Path) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("cannot chmod 0755 {}", path.display()))
}
