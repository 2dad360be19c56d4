//! Running under systemd, without systemd: the units in deploy/systemd/ pass
//! `systemd-analyze verify`, and each binary, given a `NOTIFY_SOCKET` this test listens on
//! and a `WATCHDOG_USEC`, says `READY=1` only once it answers on its ports, then pings
//! `WATCHDOG=1`, then says `STOPPING=1` on SIGTERM and exits 0.

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
    ] {
        ensure!(
            text.contains(directive),
            "{unit} has no `{}`",
            directive.trim()
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
