//! Configuration as an operator meets it: a TOML file given with `--config`, environment
//! variables over it and flags over both, secrets read from files, and a bad file refused at
//! start with a message naming the setting. Everything is observed from outside the real
//! binaries: which port answers, whether an agent connects, the exit code and the output.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use vmm_e2e::cluster::{TEST_DRIVER_URI, random_secret};
use vmm_e2e::process::{ChildProcess, binary_path};
use vmm_e2e::{Api, wait_until};

/// How long a process may take to come up, or to exit on a bad configuration.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// `n` distinct free loopback addresses: all are held until all are chosen.
pub(crate) fn free_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?))
        .collect()
}

/// Starts `binary` (`coordinator` or `agent`) with `args` and only `env`, logging to
/// `<dir>/<log_name>.log`.
pub(crate) fn start(
    binary: &str,
    dir: &Path,
    log_name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<ChildProcess> {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let env: Vec<(String, OsString)> = env
        .iter()
        .map(|(key, value)| ((*key).to_owned(), OsString::from(value)))
        .collect();
    ChildProcess::spawn(
        log_name,
        &binary_path(binary)?,
        &args,
        &env,
        dir.join(format!("{log_name}.log")),
    )
}

/// Waits for the process to exit and returns its status.
pub(crate) async fn wait_for_exit(
    process: &mut ChildProcess,
    timeout: Duration,
) -> Result<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = process.exited() {
            return Ok(status);
        }
        if started.elapsed() > timeout {
            bail!(
                "{} did not exit within {timeout:?}; its log:\n{}",
                process.name(),
                process.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole output of the process so far.
pub(crate) fn output(process: &ChildProcess) -> String {
    std::fs::read_to_string(process.log_path()).unwrap_or_default()
}

/// Waits until the coordinator answers its health check at `addr`, failing at once when it
/// exits.
async fn wait_for_health(process: &mut ChildProcess, addr: SocketAddr) -> Result<()> {
    let api = Api::new(&format!("http://{addr}"));
    wait_until(
        &format!("the coordinator's health check at {addr}"),
        START_TIMEOUT,
        || {
            let api = api.clone();
            let running = process.ensure_running();
            async move {
                if let Err(error) = running {
                    return Ok(Some(Err(error)));
                }
                Ok((api.health().await?.status == "ok").then_some(Ok(())))
            }
        },
    )
    .await?
}

fn refuses(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err()
}

fn write(path: &Path, text: &str) -> Result<PathBuf> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.to_owned())
}

/// A TOML string literal.
fn quoted(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn http_addr_comes_from_the_flag_over_the_environment_over_the_file() {
    precedence().await.unwrap();
}

async fn precedence() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-config-")
        .tempdir()?;
    let [from_file, from_env, from_flag, grpc]: [SocketAddr; 4] = free_addrs(4)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("four ports"))?;
    let token_file = write(
        &dir.path().join("agent-token"),
        &format!("{}\n", random_secret()),
    )?;
    let config = write(
        &dir.path().join("coordinator.toml"),
        &format!(
            "http_addr = \"{from_file}\"\ngrpc_addr = \"{grpc}\"\ndata_dir = {}\n\
             agent_token_file = {}\n",
            quoted(&dir.path().join("data")),
            quoted(&token_file),
        ),
    )?;
    let config = config.display().to_string();
    let env_addr = from_env.to_string();
    let flag_addr = from_flag.to_string();

    // The file alone.
    let mut coordinator = start(
        "coordinator",
        dir.path(),
        "file",
        &["--config", &config],
        &[],
    )?;
    wait_for_health(&mut coordinator, from_file).await?;
    ensure!(
        refuses(from_env) && refuses(from_flag),
        "only the file's address is bound"
    );
    coordinator.kill();

    // The environment over the file (named by CONFIG_FILE this time).
    let mut coordinator = start(
        "coordinator",
        dir.path(),
        "env",
        &[],
        &[("CONFIG_FILE", &config), ("HTTP_ADDR", &env_addr)],
    )?;
    wait_for_health(&mut coordinator, from_env).await?;
    ensure!(
        refuses(from_file),
        "HTTP_ADDR wins over the file's http_addr"
    );
    coordinator.kill();

    // The flag over both.
    let mut coordinator = start(
        "coordinator",
        dir.path(),
        "flag",
        &["--config", &config, "--http-addr", &flag_addr],
        &[("HTTP_ADDR", &env_addr)],
    )?;
    wait_for_health(&mut coordinator, from_flag).await?;
    ensure!(
        refuses(from_file) && refuses(from_env),
        "--http-addr wins over HTTP_ADDR and the file"
    );
    coordinator.kill();
    Ok(())
}

/// Both binaries configured by files only (settings and token), as the systemd units run
/// them: the agent connects, and the token shows in no log.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_connects_with_settings_and_token_from_files() {
    from_files().await.unwrap();
}

async fn from_files() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-config-")
        .tempdir()?;
    let [http, grpc, metrics]: [SocketAddr; 3] = free_addrs(3)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("three ports"))?;
    let token = random_secret();
    // Written the way `echo "$token" > file` does: with a line break, which is not part of
    // the token.
    let token_file = write(&dir.path().join("agent-token"), &format!("{token}\n"))?;
    let coordinator_config = write(
        &dir.path().join("coordinator.toml"),
        &format!(
            "http_addr = \"{http}\"\ngrpc_addr = \"{grpc}\"\ndata_dir = {}\n\
             agent_token_file = {}\nbcrypt_cost = 4\n",
            quoted(&dir.path().join("coordinator")),
            quoted(&token_file),
        ),
    )?;
    let agent_config = write(
        &dir.path().join("agent.toml"),
        &format!(
            "coordinator = \"http://{grpc}\"\nlibvirt_uri = \"{TEST_DRIVER_URI}\"\n\
             host_id = \"kvm-files\"\ndata_dir = {}\nmetrics_addr = \"{metrics}\"\n\
             poll_interval_ms = 300\n",
            quoted(&dir.path().join("agent")),
        ),
    )?;
    let mut coordinator = start(
        "coordinator",
        dir.path(),
        "coordinator",
        &["--config", &coordinator_config.display().to_string()],
        &[],
    )?;
    wait_for_health(&mut coordinator, http).await?;
    let token_path = token_file.display().to_string();
    let mut agent = start(
        "agent",
        dir.path(),
        "agent",
        &["--config", &agent_config.display().to_string()],
        &[("AGENT_TOKEN_FILE", &token_path)],
    )?;
    let api = Api::new(&format!("http://{http}"));
    wait_until("the agent connected", START_TIMEOUT, || {
        let api = api.clone();
        let running = agent.ensure_running();
        async move {
            if let Err(error) = running {
                return Ok(Some(Err(error)));
            }
            Ok((api.health().await?.agents_connected == 1).then_some(Ok(())))
        }
    })
    .await
    .with_context(|| format!("agent log:\n{}", agent.log_tail(30)))??;
    for process in [&coordinator, &agent] {
        ensure!(
            !output(process).contains(&token),
            "{} logged the agent token",
            process.name()
        );
    }
    Ok(())
}

/// One bad configuration: the binary, its config file, extra environment, and what the
/// message must say.
struct BadConfig {
    binary: &'static str,
    file: String,
    env: Vec<(&'static str, String)>,
    expected: Vec<String>,
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_files_stop_the_binaries_at_start_naming_the_setting() {
    bad_configs().await.unwrap();
}

async fn bad_configs() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-config-")
        .tempdir()?;
    let absent = dir.path().join("no-such-token-file");
    let token_file = write(&dir.path().join("agent-token"), &random_secret())?;
    let token = || ("AGENT_TOKEN", random_secret());
    let agent_env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            ("HOST_ID", "kvm-bad".to_owned()),
            ("LIBVIRT_URI", TEST_DRIVER_URI.to_owned()),
            (
                "AGENT_DATA_DIR",
                dir.path().join("agent").display().to_string(),
            ),
            ("METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra);
        env
    };
    let coordinator_env = |extra: Vec<(&'static str, String)>| {
        let mut env = vec![
            (
                "DATA_DIR",
                dir.path().join("coordinator").display().to_string(),
            ),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("GRPC_ADDR", "127.0.0.1:0".to_owned()),
        ];
        env.extend(extra);
        env
    };
    let strings = |items: &[&str]| items.iter().map(|item| (*item).to_owned()).collect();
    let cases = vec![
        BadConfig {
            binary: "coordinator",
            file: "bcrypt_cost = \"12\"\n".into(),
            env: coordinator_env(vec![token()]),
            expected: strings(&[
                "`bcrypt_cost`",
                "BCRYPT_COST",
                "must be an integer, not a string",
            ]),
        },
        BadConfig {
            binary: "coordinator",
            file: "http_adress = \"127.0.0.1:8080\"\n".into(),
            env: coordinator_env(vec![token()]),
            expected: strings(&["unknown setting `http_adress`", "http_addr"]),
        },
        BadConfig {
            binary: "coordinator",
            file: format!("agent_token_file = {}\n", quoted(&absent)),
            env: coordinator_env(vec![]),
            expected: vec!["AGENT_TOKEN_FILE".into(), absent.display().to_string()],
        },
        BadConfig {
            binary: "coordinator",
            file: "placement = \"random\"\n".into(),
            env: coordinator_env(vec![token()]),
            expected: strings(&["`placement`", "'random'", "spread, pack"]),
        },
        BadConfig {
            binary: "agent",
            // A duration is a number or a string with a unit ("2s"), never a boolean.
            file: "poll_interval_ms = true\n".into(),
            env: agent_env(vec![token()]),
            expected: strings(&[
                "`poll_interval_ms`",
                "POLL_INTERVAL_MS",
                "must be a duration",
            ]),
        },
        BadConfig {
            binary: "agent",
            file: "heartbeat_interval_ms = \"2 seconds\"\n".into(),
            env: agent_env(vec![token()]),
            expected: strings(&["`heartbeat_interval_ms`", "is not a duration", "\"10s\""]),
        },
        BadConfig {
            binary: "agent",
            file: "coordinator_url = \"http://127.0.0.1:1\"\n".into(),
            env: agent_env(vec![token()]),
            expected: strings(&["unknown setting `coordinator_url`", "`coordinator`"]),
        },
        BadConfig {
            binary: "agent",
            file: format!("agent_token_file = {}\n", quoted(&absent)),
            env: agent_env(vec![]),
            expected: vec!["AGENT_TOKEN_FILE".into(), absent.display().to_string()],
        },
        BadConfig {
            binary: "agent",
            file: format!("agent_token_file = {}\n", quoted(&token_file)),
            env: agent_env(vec![token()]),
            expected: strings(&["AGENT_TOKEN and AGENT_TOKEN_FILE are both set"]),
        },
    ];
    for (index, case) in cases.into_iter().enumerate() {
        let config = write(&dir.path().join(format!("bad-{index}.toml")), &case.file)?;
        let env: Vec<(&str, &str)> = case
            .env
            .iter()
            .map(|(key, value)| (*key, value.as_str()))
            .collect();
        let mut process = start(
            case.binary,
            dir.path(),
            &format!("bad-{index}-{}", case.binary),
            &["--config", &config.display().to_string()],
            &env,
        )?;
        let status = wait_for_exit(&mut process, START_TIMEOUT).await?;
        let said = output(&process);
        ensure!(
            status.code() == Some(2),
            "{} with {:?} exits with code 2, not {status}: {said}",
            case.binary,
            case.file
        );
        for expected in &case.expected {
            ensure!(
                said.contains(expected.as_str()),
                "{} with {:?} names {expected:?}: {said}",
                case.binary,
                case.file
            );
        }
    }
    Ok(())
}

/// The example files of deploy/config/ load with the real binaries (`--check-config`), given
/// the secret the examples leave to the environment.
#[tokio::test(flavor = "multi_thread")]
async fn the_example_configs_pass_check_config() {
    examples().await.unwrap();
}

async fn examples() -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("vmm-e2e-config-")
        .tempdir()?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config");
    // As deployed: no shared agent token; the agent has the join token an admin made (only
    // read when it enrols, so any file will do here).
    let join_token_path = dir.path().join("join-token").display().to_string();
    for (binary, file, env) in [
        ("coordinator", "coordinator.toml", vec![]),
        (
            "agent",
            "agent.toml",
            vec![
                ("JOIN_TOKEN_FILE", join_token_path.as_str()),
                ("HOST_ID", "kvm-1"),
            ],
        ),
    ] {
        let config = deploy.join(file).display().to_string();
        let mut process = start(
            binary,
            dir.path(),
            &format!("check-{binary}"),
            &["--config", &config, "--check-config"],
            &env,
        )?;
        let status = wait_for_exit(&mut process, START_TIMEOUT).await?;
        let said = output(&process);
        ensure!(
            status.success(),
            "{binary} --check-config {config}: {status}: {said}"
        );
        ensure!(said.contains("the configuration is valid"), "{said}");
    }
    Ok(())
}
