//! Running under systemd, without systemd: the units in deploy/systemd/ pass
//! `systemd-analyze verify`, take their secrets as credentials and never restart on a
//! configuration error (the exit code the binaries use for one), the sysusers.d and
//! tmpfiles.d files create the users and directories the units name, and each binary,
//! given a `NOTIFY_SOCKET` this test listens on and a `WATCHDOG_USEC`, says `READY=1` only
//! once it answers on its ports, then pings `WATCHDOG=1`, then says `STOPPING=1` on SIGTERM
//! and exits 0.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tokio::net::UnixDatagram;
use vmm_e2e::cluster::{TEST_DRIVER_URI, random_secret};
use vmm_e2e::process::{ChildProcess, binary_path};

use crate::config::{free_addrs, start, wait_for_exit};

/// How long a binary may take from start to READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The watchdog interval the test asks for: pings come every half of it.
const WATCHDOG_USEC: &str = "1000000";

/// `systemd-analyze verify` checks a unit's syntax, every directive and that `ExecStart=`'s
/// binary exists and is executable. The units name the installed path
/// (`/usr/local/bin/vmm-…`), which does not exist here, so a copy pointing at the binary
/// built in target/ is verified instead; nothing else is changed. Unknown or misspelled
/// directives are only warnings to `systemd-analyze` (exit code 0), so any output fails the
/// test too.
#[test]
fn both_units_pass_systemd_analyze_verify() {
    for (unit, installed, binary) in [
        (
            "coordinator.service",
            "/usr/local/bin/vmm-coordinator",
            "coordinator",
        ),
        ("agent.service", "/usr/local/bin/vmm-agent", "agent"),
    ] {
        verify_unit(unit, installed, binary).unwrap();
    }
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

fn verify_unit(unit: &str, installed: &str, binary: &str) -> Result<()> {
    let text = std::fs::read_to_string(deploy_dir().join(unit))?;
    ensure!(
        text.contains(&format!("ExecStart={installed} ")),
        "{unit} starts {installed}"
    );
    // Secrets arrive as credentials, not in the environment: the admin's password, and the
    // agent's join token (read on its first start only).
    let credentials: &[&str] = if binary == "agent" {
        &[
            "LoadCredential=join-token:/etc/vmm/credentials/join-token\n",
            "Environment=JOIN_TOKEN_FILE=%d/join-token\n",
        ]
    } else {
        &[
            "LoadCredential=admin-password:/etc/vmm/credentials/admin-password\n",
            "Environment=ADMIN_PASSWORD_FILE=%d/admin-password\n",
        ]
    };
    // What the operator relies on, whatever else changes.
    for directive in [
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "EnvironmentFile=-/etc/vmm/",
        "StateDirectory=vmm-",
        "User=vmm-",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=\n",
        // Issue 13: a bad setting (exit code 2) is not restarted every 5 s for ever.
        "RestartPreventExitStatus=2\n",
    ]
    .into_iter()
    .chain(credentials.iter().copied())
    {
        ensure!(
            text.contains(directive),
            "{unit} has no `{}`",
            directive.trim()
        );
    }
    // Issue 14: no shared agent token in production; the agent's join token arrives as a
    // credential.
    for forbidden in [
        "useradd",
        "AGENT_TOKEN=",
        "AGENT_TOKEN_FILE",
        "ADMIN_PASSWORD=",
        "JWT_SECRET=",
    ] {
        ensure!(
            !text.contains(forbidden),
            "{unit} mentions `{forbidden}`: users come from sysusers.d, secrets from credentials"
        );
    }

    let built = binary_path(binary)?;
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join(format!("vmm-{unit}"));
    std::fs::write(&copy, text.replace(installed, &built.display().to_string()))?;
    let tool = which("systemd-analyze").context(
        "systemd-analyze is not installed: it comes with Debian's `systemd` package, which \
         scripts/setup-host.sh installs",
    )?;
    let output = std::process::Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {unit} ({}): {said}",
        output.status
    );
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .chain(["/usr/bin", "/bin"].map(|dir| Path::new(dir).join(program)))
        .find(|path| path.is_file())
}

/// The socket systemd would listen on.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Result<Self> {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path)?;
        Ok(Self { socket, path })
    }

    fn path(&self) -> String {
        self.path.display().to_string()
    }

    /// The next notification, one `KEY=value` per line.
    async fn next(&self, timeout: Duration) -> Result<String> {
        let mut buffer = vec![0u8; 4096];
        let length = tokio::time::timeout(timeout, self.socket.recv(&mut buffer))
            .await
            .with_context(|| format!("no notification within {timeout:?}"))??;
        Ok(String::from_utf8_lossy(&buffer[..length]).into_owned())
    }

    /// Waits for a notification with the line `line`, failing on one with `forbidden`.
    async fn wait_for(
        &self,
        line: &str,
        forbidden: Option<&str>,
        timeout: Duration,
        process: &mut ChildProcess,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let message = match self.next(left.min(Duration::from_secs(1))).await {
                Ok(message) => message,
                Err(_) if !left.is_zero() => {
                    process.ensure_running()?;
                    continue;
                }
                Err(error) => {
                    return Err(error.context(format!(
                        "waiting for {line}; log:\n{}",
                        process.log_tail(30)
                    )));
                }
            };
            let mut lines = message.lines();
            if let Some(forbidden) = forbidden {
                ensure!(
                    !message.lines().any(|l| l == forbidden),
                    "{forbidden} came before {line}: {message:?}"
                );
            }
            if lines.any(|l| l == line) {
                return Ok(());
            }
        }
    }
}

/// Connects to `addr` once, without retrying: the port must already be bound.
fn answers_now(addr: SocketAddr) -> Result<()> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("nothing answers on {addr} although READY=1 was sent"))?;
    Ok(())
}

async fn sigterm(process: &ChildProcess) -> Result<()> {
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &process.pid().to_string()])
        .status()
        .await?;
    ensure!(status.success(), "kill -TERM {} failed", process.pid());
    Ok(())
}

/// After READY=1: at least two watchdog pings in two intervals, then SIGTERM, STOPPING=1 and
/// exit code 0.
async fn pings_then_stops(notify: &NotifySocket, process: &mut ChildProcess) -> Result<()> {
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while pings < 2 {
        if Instant::now() > deadline {
            bail!("{pings} WATCHDOG=1 ping(s) in 3 s with WATCHDOG_USEC={WATCHDOG_USEC}");
        }
        let message = notify.next(Duration::from_secs(3)).await?;
        if message.lines().any(|line| line == "WATCHDOG=1") {
            pings += 1;
        }
    }
    sigterm(process).await?;
    notify
        .wait_for("STOPPING=1", None, Duration::from_secs(10), process)
        .await?;
    let status = wait_for_exit(process, Duration::from_secs(30)).await?;
    ensure!(
        status.code() == Some(0),
        "{} exits 0 on SIGTERM, not {status}; log:\n{}",
        process.name(),
        process.log_tail(30)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_coordinator_notifies_ready_when_it_serves_then_pings_and_stops() {
    coordinator_notifies().await.unwrap();
}

async fn coordinator_notifies() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-systemd-")
        .tempdir()?;
    let notify = NotifySocket::bind(dir.path())?;
    let [http, grpc]: [SocketAddr; 2] = free_addrs(2)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two ports"))?;
    let data_dir = dir.path().join("data").display().to_string();
    let (http_addr, grpc_addr, token) = (http.to_string(), grpc.to_string(), random_secret());
    let socket = notify.path();
    let mut coordinator = start(
        "coordinator",
        dir.path(),
        "coordinator",
        &[],
        &[
            ("HTTP_ADDR", &http_addr),
            ("GRPC_ADDR", &grpc_addr),
            ("DATA_DIR", &data_dir),
            ("AGENT_TOKEN", &token),
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ],
    )?;
    notify
        .wait_for(
            "READY=1",
            Some("WATCHDOG=1"),
            READY_TIMEOUT,
            &mut coordinator,
        )
        .await?;
    // At once, no retry: both listeners were bound before READY=1, and the API answers.
    answers_now(http)?;
    answers_now(grpc)?;
    let health = vmm_e2e::Api::new(&format!("http://{http}"))
        .health()
        .await?;
    ensure!(
        health.status == "ok" && health.database == "ok",
        "{health:?}"
    );
    pings_then_stops(&notify, &mut coordinator).await
}

/// The agent is ready with libvirt connected and its coordinator link started, even while
/// the coordinator is away (it retries with backoff): here nothing listens at its URL.
#[tokio::test(flavor = "multi_thread")]
async fn the_agent_notifies_ready_while_its_coordinator_is_away_then_pings_and_stops() {
    agent_notifies().await.unwrap();
}

async fn agent_notifies() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-systemd-")
        .tempdir()?;
    let notify = NotifySocket::bind(dir.path())?;
    let [metrics, nobody]: [SocketAddr; 2] = free_addrs(2)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("two ports"))?;
    let data_dir = dir.path().join("agent").display().to_string();
    let (metrics_addr, coordinator_url) = (metrics.to_string(), format!("http://{nobody}"));
    let (token, socket) = (random_secret(), notify.path());
    let mut agent = start(
        "agent",
        dir.path(),
        "agent",
        &[],
        &[
            ("COORDINATOR_URL", &coordinator_url),
            ("LIBVIRT_URI", TEST_DRIVER_URI),
            ("HOST_ID", "kvm-notify"),
            ("AGENT_DATA_DIR", &data_dir),
            ("AGENT_TOKEN", &token),
            ("METRICS_ADDR", &metrics_addr),
            ("NOTIFY_SOCKET", &socket),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ],
    )?;
    notify
        .wait_for("READY=1", Some("WATCHDOG=1"), READY_TIMEOUT, &mut agent)
        .await?;
    answers_now(metrics)?;
    let scrape = reqwest::get(format!("http://{metrics}/metrics")).await?;
    ensure!(scrape.status() == 200, "GET /metrics: {}", scrape.status());
    pings_then_stops(&notify, &mut agent).await
}

/// The exit code the units do not restart on (`RestartPreventExitStatus=`).
fn prevented_exit_status(unit: &str) -> Result<i32> {
    let text = std::fs::read_to_string(deploy_dir().join(unit))?;
    let value = text
        .lines()
        .find_map(|line| line.strip_prefix("RestartPreventExitStatus="))
        .with_context(|| format!("{unit} has RestartPreventExitStatus="))?;
    value
        .trim()
        .parse()
        .with_context(|| format!("{unit}: RestartPreventExitStatus={value}"))
}

/// Issue 13: a configuration error used to restart the service every 5 s for ever. The
/// units do not restart on the exit code the binaries use for one, and every kind of
/// configuration error exits with it: a bad setting, an unreadable credential, connection
/// caps the open-file limit cannot hold.
#[tokio::test(flavor = "multi_thread")]
async fn configuration_errors_exit_with_the_code_the_units_do_not_restart_on() {
    config_error_exit_codes().await.unwrap();
}

async fn config_error_exit_codes() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-systemd-")
        .tempdir()?;
    let token = random_secret();
    let data_dir = dir.path().join("data").display().to_string();
    let missing = dir
        .path()
        .join("credentials/agent-token")
        .display()
        .to_string();
    /// The unit, the binary, and the settings that make the configuration wrong.
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);
    let cases: [Case; 5] = [
        (
            "coordinator.service",
            "coordinator",
            vec![("AGENT_TOKEN", &token), ("HOST_DEAD_AFTER", "soon")],
        ),
        (
            "coordinator.service",
            "coordinator",
            vec![("AGENT_TOKEN_FILE", &missing)],
        ),
        (
            "coordinator.service",
            "coordinator",
            vec![
                ("AGENT_TOKEN", &token),
                ("HTTP_MAX_CONNECTIONS", "4000000000"),
            ],
        ),
        (
            "agent.service",
            "agent",
            vec![("AGENT_TOKEN", &token), ("POLL_INTERVAL_MS", "2 s")],
        ),
        (
            "agent.service",
            "agent",
            vec![("AGENT_TOKEN_FILE", &missing)],
        ),
    ];
    for (index, (unit, binary, settings)) in cases.into_iter().enumerate() {
        let prevented = prevented_exit_status(unit)?;
        let mut env = vec![
            ("DATA_DIR", data_dir.as_str()),
            ("AGENT_DATA_DIR", data_dir.as_str()),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HOST_ID", "kvm-1"),
            ("LIBVIRT_URI", TEST_DRIVER_URI),
        ];
        env.extend(settings.iter().copied());
        let mut process = start(binary, dir.path(), &format!("{binary}-{index}"), &[], &env)?;
        let status = wait_for_exit(&mut process, Duration::from_secs(30)).await?;
        ensure!(
            status.code() == Some(prevented),
            "{binary} with {settings:?} exits {prevented} (RestartPreventExitStatus= of \
             {unit}), not {status}: {}",
            process.log_tail(10)
        );
    }
    Ok(())
}

/// The sysusers.d files create the users the units run as, with the state directory as
/// home and no login; the tmpfiles.d file creates /etc/vmm and the root-only
/// /etc/vmm/credentials the units load credentials from. Both run for real, into a
/// temporary root.
#[test]
fn sysusers_and_tmpfiles_create_what_the_units_need() {
    users_and_directories().unwrap();
}

fn users_and_directories() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir()?;
    let deploy = deploy_dir().join("..");
    for (unit, conf, user) in [
        (
            "coordinator.service",
            "vmm-coordinator.conf",
            "vmm-coordinator",
        ),
        ("agent.service", "vmm-agent.conf", "vmm-agent"),
    ] {
        let text = std::fs::read_to_string(deploy_dir().join(unit))?;
        ensure!(
            text.contains(&format!("User={user}\n")),
            "{unit} runs as {user}"
        );
        ensure!(
            text.contains(&format!("StateDirectory={user}\n")),
            "{unit}'s state directory is /var/lib/{user}"
        );
        run_tool(
            "systemd-sysusers",
            &[
                &format!("--root={}", root.path().display()),
                &deploy.join("sysusers.d").join(conf).display().to_string(),
            ],
        )?;
        let passwd = std::fs::read_to_string(root.path().join("etc/passwd"))?;
        let entry = passwd
            .lines()
            .find(|line| line.starts_with(&format!("{user}:")))
            .with_context(|| format!("{conf} creates {user}: {passwd}"))?;
        let fields: Vec<&str> = entry.split(':').collect();
        ensure!(
            fields.get(5) == Some(&format!("/var/lib/{user}").as_str())
                && fields.get(6) == Some(&"/usr/sbin/nologin"),
            "{user}: home /var/lib/{user}, no login: {entry}"
        );
        let uid: u32 = fields.get(2).context("a UID")?.parse()?;
        ensure!(uid > 0 && uid < 1000, "{user} is a system user: {entry}");
        let group = std::fs::read_to_string(root.path().join("etc/group"))?;
        ensure!(
            group
                .lines()
                .any(|line| line.starts_with(&format!("{user}:"))),
            "{user} has a group of its own: {group}"
        );
    }
    run_tool(
        "systemd-tmpfiles",
        &[
            &format!("--root={}", root.path().display()),
            "--create",
            &deploy.join("tmpfiles.d/vmm.conf").display().to_string(),
        ],
    )?;
    for (dir, mode) in [("etc/vmm", 0o755), ("etc/vmm/credentials", 0o700)] {
        let meta = std::fs::metadata(root.path().join(dir))
            .with_context(|| format!("tmpfiles.d/vmm.conf creates /{dir}"))?;
        ensure!(
            meta.is_dir() && meta.permissions().mode() & 0o7777 == mode,
            "/{dir} has mode {:o}, expected {mode:o}",
            meta.permissions().mode() & 0o7777
        );
    }
    Ok(())
}

fn run_tool(program: &str, args: &[&str]) -> Result<()> {
    let tool = which(program).with_context(|| {
        format!("{program} is not installed: it comes with Debian's `systemd` package")
    })?;
    let output = std::process::Command::new(tool).args(args).output()?;
    ensure!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
