//! The agent's settings: parsed from flags, environment variables and the TOML file given
//! with `--config`, in that order of precedence ([`Args`], the one definition; see
//! `vmm_shared::settings`), then checked and turned into typed values ([`AgentConfig`]) in a
//! separate step whose errors name the setting that is wrong. That step reads the secret
//! file `AGENT_TOKEN_FILE` if there is one (`JOIN_TOKEN_FILE` is read only when the agent is
//! not enrolled yet, see `enrol`); nothing here touches libvirt or the network.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tonic::metadata::{Ascii, MetadataValue};
use vmm_shared::HostId;
use vmm_shared::identity::JoinToken;

use crate::hypervisor::libvirt::GuestAccel;
use crate::hypervisor::network::parse_network_kind;
use crate::hypervisor::{NetworkMode, PortRange};

/// Per-host agent of the VM manager: owns this host's libvirt connection, carries out the
/// coordinator's commands and reports every domain's state.
#[derive(Debug, Parser)]
#[command(name = "agent", version, after_help = vmm_shared::settings::PRECEDENCE_HELP)]
pub struct Args {
    /// TOML file of settings; keys are the long flags' names with `_` for `-` (e.g.
    /// `libvirt_uri = "qemu:///system"`). Flags and environment variables override it
    /// [default: none].
    #[arg(long, env = "CONFIG_FILE", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Check the settings (and read the secret file), print the outcome and exit, without
    /// starting. Command line only.
    #[arg(long)]
    pub check_config: bool,

    /// URL of the coordinator's agent endpoint: https:// (mutual TLS), or http:// with
    /// AGENT_TOKEN [default: https://127.0.0.1:50051, or http://127.0.0.1:50051 with
    /// AGENT_TOKEN]. Several coordinators (sharing one database) as a comma-separated list,
    /// tried in turn whenever a session ends.
    #[arg(long, env = "COORDINATOR_URL")]
    pub coordinator: Option<String>,

    /// libvirt connection URI.
    #[arg(long, env = "LIBVIRT_URI", default_value = "test:///default")]
    pub libvirt_uri: String,

    /// This host's ID as the coordinator knows it (case-insensitive); once enrolled, the ID
    /// its certificate names [default: the certificate's host, else the machine's hostname].
    #[arg(long, env = "HOST_ID")]
    pub host_id: Option<String>,

    /// Directory for the agent's own files; the storage pool's images live in `images/`.
    #[arg(long, env = "AGENT_DATA_DIR", default_value = "./agent-data")]
    pub data_dir: PathBuf,

    /// Single-use join token from an admin (POST /api/hosts/join-tokens), for the first
    /// start: the agent makes its key pair, gets its certificate with it and keeps both in
    /// AGENT_DATA_DIR/identity; ignored once enrolled [default: none].
    #[arg(long, env = "JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// File holding JOIN_TOKEN (under systemd, a credential); read only while the agent is
    /// not enrolled, so it may be emptied or removed afterwards [default: none].
    #[arg(long, env = "JOIN_TOKEN_FILE", value_name = "PATH")]
    pub join_token_file: Option<PathBuf>,

    /// For development and tests only: the coordinator's shared AGENT_TOKEN instead of a
    /// certificate, over plain http:// [default: none: the agent uses its certificate].
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// File holding AGENT_TOKEN (a trailing line break is ignored); instead of AGENT_TOKEN
    /// [default: none].
    #[arg(long, env = "AGENT_TOKEN_FILE", value_name = "PATH")]
    pub agent_token_file: Option<PathBuf>,

    /// Name of the libvirt storage pool the agent owns (defined if missing).
    #[arg(long, env = "STORAGE_POOL", default_value = "vmm")]
    pub storage_pool: String,

    /// How new VMs are networked: `user` (passt, with a TCP forward from
    /// SSH_FORWARD_ADDRESS to the guest's port 22), `network:NAME` (a libvirt network) or
    /// `bridge:NAME` (an existing host bridge).
    #[arg(long, env = "NETWORK", default_value = "user")]
    pub network: String,

    /// In `user` mode: the host address the SSH port forwards listen on. Loopback by
    /// default: give an address others reach only where they should reach the VMs.
    #[arg(long, env = "SSH_FORWARD_ADDRESS", default_value = "127.0.0.1")]
    pub ssh_forward_address: std::net::IpAddr,

    /// In `user` mode: the host ports SSH forwards are allocated from, `FIRST-LAST`.
    #[arg(long, env = "SSH_FORWARD_PORTS", default_value = "22000-22999")]
    pub ssh_forward_ports: String,

    /// How guests' CPUs run: `auto` (KVM when a probe domain really runs under it, else
    /// TCG), `kvm` (refuse to start without KVM) or `tcg` (software emulation always: for
    /// hosts whose KVM starts a guest's firmware but fails in its boot loader).
    #[arg(long, env = "GUEST_ACCEL", value_enum, default_value_t = GuestAccel::Auto)]
    pub guest_accel: GuestAccel,

    /// How long `stop` waits for the guest to power off before destroying it: seconds, or a
    /// duration such as `1m`.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value = "60s",
          value_parser = vmm_shared::duration::seconds)]
    pub shutdown_timeout_secs: Duration,

    /// How often every domain's state is polled: the safety net behind libvirt's lifecycle
    /// events (which show changes within milliseconds); every reconnect polls at once too.
    /// Milliseconds, or a duration such as `30s`.
    #[arg(long, env = "POLL_INTERVAL_MS", default_value = "30s",
          value_parser = vmm_shared::duration::milliseconds)]
    pub poll_interval_ms: Duration,

    /// How often a heartbeat is sent (more often if the coordinator asks for it):
    /// milliseconds, or a duration such as `2s`.
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value = "2s",
          value_parser = vmm_shared::duration::milliseconds)]
    pub heartbeat_interval_ms: Duration,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Address of the Prometheus endpoint (`GET /metrics`). Loopback by default: bind a
    /// reachable address only where the network is trusted.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9177")]
    pub metrics_addr: SocketAddr,

    /// How often libvirt statistics are collected for `/metrics` while someone scrapes
    /// (milliseconds, or a duration such as `5s`); 0 collects during every scrape instead.
    #[arg(long, env = "METRICS_SAMPLE_INTERVAL_MS", default_value = "5s",
          value_parser = vmm_shared::duration::milliseconds)]
    pub metrics_sample_interval_ms: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The agent token. Its `Debug` never shows the secret, so it cannot leak into logs.
#[derive(Clone)]
pub struct AgentToken(String);

impl AgentToken {
    /// A token as the coordinator issued it: not blank, and printable ASCII without spaces
    /// (it travels in a header).
    pub fn new(token: &str) -> Result<Self, ConfigError> {
        if token.trim().is_empty() {
            return Err(ConfigError::MissingToken);
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::UnusableToken);
        }
        Ok(Self(token.to_owned()))
    }

    /// The value of the `authorization` metadata sent when opening the session.
    pub fn bearer_header(&self) -> MetadataValue<Ascii> {
        // Checked to be a valid header value when the config was built.
        MetadataValue::try_from(format!("Bearer {}", self.0))
            .unwrap_or_else(|_| MetadataValue::from_static(""))
    }
}

impl fmt::Debug for AgentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentToken(<redacted>)")
    }
}

/// Where the join token comes from, if the agent needs one.
#[derive(Debug, Clone)]
pub enum JoinTokenSource {
    None,
    Given(JoinToken),
    /// Read when needed: a file that is gone or empty once the agent is enrolled is fine.
    File(PathBuf),
}

/// How the agent proves who it is.
#[derive(Debug, Clone)]
pub enum AgentAuth {
    /// Its certificate (`identity`), or first the join token that gets it one.
    Certificate { join_token: JoinTokenSource },
    /// The shared development token.
    SharedToken(AgentToken),
}

/// The coordinator's agent port when COORDINATOR_URL is not set.
pub const DEFAULT_COORDINATOR: &str = "127.0.0.1:50051";

/// Arguments a config file may not set.
pub const COMMAND_LINE_ONLY: &[&str] = &["check_config"];

/// A setting that cannot be used, named by its environment variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("AGENT_TOKEN (--agent-token) is empty: unset it (the agent then uses its certificate)")]
    MissingToken,
    #[error(
        "AGENT_TOKEN (development only) and a join token cannot be used together: a host enrolled \
         with a join token connects with its certificate"
    )]
    TokenAndJoinToken,
    #[error(
        "AGENT_TOKEN is for development only and is refused with TLS (COORDINATOR_URL {0:?}): \
         unset it and enrol this host with a join token (JOIN_TOKEN_FILE)"
    )]
    TokenWithTls(String),
    #[error(
        "COORDINATOR_URL (--coordinator) {0:?} must be https://: agents connect with mutual TLS \
         (plain http:// only with the development AGENT_TOKEN)"
    )]
    PlainUrlWithoutToken(String),
    #[error("JOIN_TOKEN (--join-token) is invalid: {0}")]
    InvalidJoinToken(vmm_shared::identity::InvalidJoinToken),
    #[error("JOIN_TOKEN and JOIN_TOKEN_FILE are both set: set only one of them")]
    BothJoinTokens,
    /// `AGENT_TOKEN_FILE` is unreadable or empty, or set together with `AGENT_TOKEN`.
    #[error(transparent)]
    TokenFile(#[from] vmm_shared::settings::SecretError),
    #[error("AGENT_TOKEN (--agent-token) must be printable ASCII without spaces")]
    UnusableToken,
    #[error("HOST_ID (--host-id) {value:?} is invalid: {reason}")]
    InvalidHostId { value: String, reason: String },
    #[error("HOST_ID (--host-id) is not set and the machine's hostname cannot be read")]
    NoHostname(#[source] std::io::Error),
    #[error("COORDINATOR_URL (--coordinator) {0:?} must be an http:// or https:// URL")]
    InvalidCoordinatorUrl(String),
    #[error("{setting} must be greater than zero")]
    ZeroDuration { setting: &'static str },
    #[error(
        "STORAGE_POOL (--storage-pool) {0:?} is invalid: use letters, digits, '-', '_' and '.'"
    )]
    InvalidStoragePool(String),
    #[error("NETWORK (--network): {0}")]
    InvalidNetwork(String),
    #[error("SSH_FORWARD_PORTS (--ssh-forward-ports): {0}")]
    InvalidSshForwardPorts(String),
    #[error("AGENT_DATA_DIR (--data-dir) {path} cannot be prepared")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Checked settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The first of [`AgentConfig::coordinator_urls`].
    pub coordinator_url: String,
    /// Every coordinator the agent may hold its session with, in the order it tries them.
    pub coordinator_urls: Vec<String>,
    pub libvirt_uri: String,
    pub host_id: HostId,
    /// Whether HOST_ID was set (not taken from the hostname).
    pub host_id_set: bool,
    pub data_dir: PathBuf,
    pub auth: AgentAuth,
    pub storage_pool: String,
    pub network: NetworkMode,
    pub guest_accel: GuestAccel,
    pub shutdown_timeout: Duration,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub log_format: LogFormat,
    pub metrics: crate::metrics::MetricsSettings,
}

impl AgentConfig {
    /// Checks the parsed arguments. Reads `AGENT_TOKEN_FILE` when it is set, and touches
    /// nothing else.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let agent_token = vmm_shared::settings::resolve_secret(
            "AGENT_TOKEN",
            args.agent_token,
            "AGENT_TOKEN_FILE",
            args.agent_token_file.as_deref(),
        )?;
        let join_token = match (args.join_token, args.join_token_file) {
            (Some(_), Some(_)) => return Err(ConfigError::BothJoinTokens),
            (Some(text), None) => {
                JoinTokenSource::Given(text.parse().map_err(ConfigError::InvalidJoinToken)?)
            }
            (None, Some(path)) => JoinTokenSource::File(path),
            (None, None) => JoinTokenSource::None,
        };
        let auth = match agent_token {
            Some(token) => {
                if !matches!(join_token, JoinTokenSource::None) {
                    return Err(ConfigError::TokenAndJoinToken);
                }
                AgentAuth::SharedToken(AgentToken::new(&token)?)
            }
            None => AgentAuth::Certificate { join_token },
        };

        let host_id_set = args.host_id.is_some();
        let host_id_text = match args.host_id {
            Some(host_id) => host_id,
            None => hostname::get()
                .map_err(ConfigError::NoHostname)?
                .to_string_lossy()
                .into_owned(),
        };
        let host_id =
            host_id_text
                .parse::<HostId>()
                .map_err(|error| ConfigError::InvalidHostId {
                    value: host_id_text.clone(),
                    reason: error.to_string(),
                })?;

        let list = match &args.coordinator {
            Some(list) => list.clone(),
            None => match auth {
                AgentAuth::SharedToken(_) => format!("http://{DEFAULT_COORDINATOR}"),
                AgentAuth::Certificate { .. } => format!("https://{DEFAULT_COORDINATOR}"),
            },
        };
        let mut urls = Vec::new();
        for url in list.split(',').map(str::trim) {
            let url = url.to_owned();
            if !(url.starts_with("http://") || url.starts_with("https://"))
                || tonic::transport::Endpoint::from_shared(url.clone()).is_err()
            {
                return Err(ConfigError::InvalidCoordinatorUrl(url));
            }
            match (&auth, url.starts_with("https://")) {
                (AgentAuth::SharedToken(_), true) => return Err(ConfigError::TokenWithTls(url)),
                (AgentAuth::Certificate { .. }, false) => {
                    return Err(ConfigError::PlainUrlWithoutToken(url));
                }
                _ => {}
            }
            urls.push(url);
        }
        let url = urls[0].clone();

        if args.storage_pool.parse::<HostId>().is_err() {
            return Err(ConfigError::InvalidStoragePool(args.storage_pool));
        }

        let ports: PortRange = args.ssh_forward_ports.parse().map_err(
            |error: crate::hypervisor::network::InvalidNetworkMode| {
                ConfigError::InvalidSshForwardPorts(error.to_string())
            },
        )?;
        let network = match parse_network_kind(&args.network)
            .map_err(|error| ConfigError::InvalidNetwork(error.to_string()))?
        {
            NetworkMode::User { .. } => NetworkMode::User {
                forward_address: args.ssh_forward_address,
                ports,
            },
            other => other,
        };

        Ok(Self {
            coordinator_url: url,
            coordinator_urls: urls,
            libvirt_uri: args.libvirt_uri,
            host_id,
            host_id_set,
            data_dir: args.data_dir,
            auth,
            storage_pool: args.storage_pool,
            network,
            guest_accel: args.guest_accel,
            shutdown_timeout: args.shutdown_timeout_secs,
            poll_interval: positive(
                args.poll_interval_ms,
                "POLL_INTERVAL_MS (--poll-interval-ms)",
            )?,
            heartbeat_interval: positive(
                args.heartbeat_interval_ms,
                "HEARTBEAT_INTERVAL_MS (--heartbeat-interval-ms)",
            )?,
            log_format: args.log_format,
            metrics: crate::metrics::MetricsSettings {
                addr: args.metrics_addr,
                sample_interval: args.metrics_sample_interval_ms,
            },
        })
    }

    /// Where the VMs' serial console sockets are (`<data dir>/consoles`; the libvirt host
    /// makes it, private to the agent).
    pub fn consoles_dir(&self) -> PathBuf {
        fs::canonicalize(&self.data_dir)
            .unwrap_or_else(|_| self.data_dir.clone())
            .join("consoles")
    }

    /// The shared development token, if the agent uses one.
    pub fn shared_token(&self) -> Option<&AgentToken> {
        match &self.auth {
            AgentAuth::SharedToken(token) => Some(token),
            AgentAuth::Certificate { .. } => None,
        }
    }

    /// Creates the data directory and its `images/` subdirectory (the storage pool's target)
    /// and returns the absolute path of `images/`.
    ///
    /// QEMU runs as another user and must reach the disks, so the data directory is made
    /// traversable by others and `images/` readable.
    pub fn prepare_data_dir(&self) -> Result<PathBuf, ConfigError> {
        let data_dir_error = |source| ConfigError::DataDir {
            path: self.data_dir.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&self.data_dir)
            .map_err(data_dir_error)?;
        let data_dir = fs::canonicalize(&self.data_dir).map_err(data_dir_error)?;
        add_permissions(&data_dir, 0o711).map_err(data_dir_error)?;
        let images_dir = data_dir.join("images");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&images_dir)
            .map_err(data_dir_error)?;
        add_permissions(&images_dir, 0o755).map_err(data_dir_error)?;
        Ok(images_dir)
    }
}

/// Adds `bits` to a directory's mode, keeping any it already has.
fn add_permissions(path: &Path, bits: u32) -> std::io::Result<()> {
    let mut permissions = fs::metadata(path)?.permissions();
    let mode = permissions.mode();
    if mode & bits != bits {
        permissions.set_mode(mode | bits);
        fs::set_permissions(path, permissions)?;
    }
    Ok(())
}

fn positive(duration: Duration, setting: &'static str) -> Result<Duration, ConfigError> {
    if duration.is_zero() {
        Err(ConfigError::ZeroDuration { setting })
    } else {
        Ok(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["agent"];
        if !extra.contains(&"--host-id") {
            argv.extend(["--host-id", "host-1"]);
        }
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).expect("arguments parse")
    }

    /// Settings without any token from the environment of whoever runs the tests.
    fn certificate_args(extra: &[&str]) -> Args {
        let mut args = args(extra);
        if !extra.contains(&"--agent-token") {
            args.agent_token = None;
            args.agent_token_file = None;
        }
        if !extra.contains(&"--join-token") {
            args.join_token = None;
        }
        if !extra.contains(&"--join-token-file") {
            args.join_token_file = None;
        }
        if !extra.contains(&"--coordinator") {
            args.coordinator = None;
        }
        args
    }

    const JOIN_TOKEN: &str = "vmmj1.0000000000000000000000000000000000000000000000000000000000000001.\
                              00000000000000000000000000000000000000000000000000000000000000ff";

    #[test]
    fn without_a_token_the_agent_uses_its_certificate_over_https() {
        let config = AgentConfig::from_args(certificate_args(&[])).unwrap();
        assert!(matches!(
            config.auth,
            AgentAuth::Certificate {
                join_token: JoinTokenSource::None
            }
        ));
        assert_eq!(config.coordinator_url, "https://127.0.0.1:50051");
        let config =
            AgentConfig::from_args(certificate_args(&["--join-token", JOIN_TOKEN])).unwrap();
        let AgentAuth::Certificate {
            join_token: JoinTokenSource::Given(token),
        } = &config.auth
        else {
            panic!("{:?}", config.auth);
        };
        assert_eq!(token.ca_sha256(), format!("{}ff", "0".repeat(62)));
        assert!(
            !format!("{config:?}").contains(&"0".repeat(63)),
            "the secret stays out of logs"
        );

        let error = AgentConfig::from_args(certificate_args(&["--agent-token", "  "])).unwrap_err();
        assert!(error.to_string().contains("AGENT_TOKEN"));
    }

    #[test]
    fn several_coordinators_are_a_comma_separated_list_each_checked() {
        let config = AgentConfig::from_args(args(&[
            "--agent-token",
            "a-long-enough-agent-token",
            "--host-id",
            "host-1",
            "--coordinator",
            "http://127.0.0.1:50051, http://127.0.0.2:50051",
        ]))
        .unwrap();
        assert_eq!(config.coordinator_url, "http://127.0.0.1:50051");
        assert_eq!(
            config.coordinator_urls,
            ["http://127.0.0.1:50051", "http://127.0.0.2:50051"]
        );
        let error = AgentConfig::from_args(args(&[
            "--agent-token",
            "a-long-enough-agent-token",
            "--coordinator",
            "http://127.0.0.1:50051,nope",
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("\"nope\""), "{error}");
    }

    #[test]
    fn the_shared_token_is_refused_with_tls_or_a_join_token() {
        let url = |url: &str| {
            AgentConfig::from_args(certificate_args(&["--coordinator", url]))
                .unwrap_err()
                .to_string()
        };
        assert!(url("http://10.0.0.1:50051").contains("must be https://"));
        let error = AgentConfig::from_args(certificate_args(&[
            "--agent-token",
            "t",
            "--coordinator",
            "https://coordinator:50051",
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("refused with TLS"), "{error}");
        let error = AgentConfig::from_args(certificate_args(&[
            "--agent-token",
            "t",
            "--join-token",
            JOIN_TOKEN,
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("cannot be used together"), "{error}");
        let error = AgentConfig::from_args(certificate_args(&["--join-token", "vmmj1.nope"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("JOIN_TOKEN"), "{error}");
        let error = AgentConfig::from_args(certificate_args(&[
            "--join-token",
            JOIN_TOKEN,
            "--join-token-file",
            "/x",
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("both set"), "{error}");
    }

    #[test]
    fn bad_settings_are_named() {
        let error =
            AgentConfig::from_args(args(&["--agent-token", "t", "--host-id", "a b"])).unwrap_err();
        assert!(error.to_string().contains("HOST_ID"));
        let error = AgentConfig::from_args(args(&["--agent-token", "t", "--coordinator", "nope"]))
            .unwrap_err();
        assert!(error.to_string().contains("COORDINATOR_URL"));
        let error =
            AgentConfig::from_args(args(&["--agent-token", "t", "--poll-interval-ms", "0"]))
                .unwrap_err();
        assert!(error.to_string().contains("POLL_INTERVAL_MS"));
    }

    #[test]
    fn network_settings_are_checked_and_combined() {
        let config = AgentConfig::from_args(args(&["--agent-token", "t"])).unwrap();
        assert_eq!(config.network, NetworkMode::default());
        assert_eq!(config.guest_accel, GuestAccel::Auto);
        let config = AgentConfig::from_args(args(&[
            "--agent-token",
            "t",
            "--ssh-forward-address",
            "::1",
            "--ssh-forward-ports",
            "2200-2299",
            "--guest-accel",
            "tcg",
        ]))
        .unwrap();
        assert_eq!(
            config.network,
            NetworkMode::User {
                forward_address: "::1".parse().unwrap(),
                ports: PortRange::new(2200, 2299).unwrap(),
            }
        );
        assert_eq!(config.guest_accel, GuestAccel::Tcg);
        let config =
            AgentConfig::from_args(args(&["--agent-token", "t", "--network", "bridge:br0"]))
                .unwrap();
        assert_eq!(config.network, NetworkMode::Bridge("br0".into()));
        for (flag, value, named) in [
            ("--network", "nat", "NETWORK"),
            ("--network", "network:a b", "NETWORK"),
            ("--ssh-forward-ports", "9-1", "SSH_FORWARD_PORTS"),
        ] {
            let error = AgentConfig::from_args(args(&["--agent-token", "t", flag, value]))
                .unwrap_err()
                .to_string();
            assert!(error.contains(named), "{error}");
        }
        let refused = Args::try_parse_from(["agent", "--guest-accel", "xen"]).unwrap_err();
        assert!(refused.to_string().contains("--guest-accel"), "{refused}");
    }

    #[test]
    fn durations_take_units_and_bare_numbers_keep_their_unit() {
        let config = AgentConfig::from_args(args(&[
            "--agent-token",
            "t",
            "--poll-interval-ms",
            "1500",
            "--heartbeat-interval-ms",
            "1s",
            "--shutdown-timeout-secs",
            "90",
            "--metrics-sample-interval-ms",
            "1m",
        ]))
        .unwrap();
        assert_eq!(config.poll_interval, Duration::from_millis(1500));
        assert_eq!(config.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(90));
        assert_eq!(config.metrics.sample_interval, Duration::from_secs(60));
        assert!(Args::try_parse_from(["agent", "--poll-interval-ms", "2 s"]).is_err());
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let config = AgentConfig::from_args(args(&["--agent-token", "s3cret-value"])).unwrap();
        assert!(!format!("{config:?}").contains("s3cret-value"));
        assert_eq!(
            config
                .shared_token()
                .unwrap()
                .bearer_header()
                .to_str()
                .unwrap(),
            "Bearer s3cret-value"
        );
    }

    #[test]
    fn metrics_listen_on_loopback_unless_told_otherwise() {
        let config = AgentConfig::from_args(args(&["--agent-token", "t"])).unwrap();
        assert_eq!(config.metrics.addr, "127.0.0.1:9177".parse().unwrap());
        assert_eq!(config.metrics.sample_interval, Duration::from_secs(5));
        let config = AgentConfig::from_args(args(&[
            "--agent-token",
            "t",
            "--metrics-addr",
            "[::1]:9999",
            "--metrics-sample-interval-ms",
            "0",
        ]))
        .unwrap();
        assert_eq!(config.metrics.addr, "[::1]:9999".parse().unwrap());
        assert!(config.metrics.sample_interval.is_zero());
        let refused = Args::try_parse_from(["agent", "--metrics-addr", "nowhere"]).unwrap_err();
        assert!(refused.to_string().contains("--metrics-addr"), "{refused}");
    }

    #[test]
    fn the_token_can_come_from_a_file_but_not_from_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent-token");
        fs::write(&file, "from-the-file\n").unwrap();
        // Set the fields directly: the environment of whoever runs the tests may hold some.
        let mut from_file = args(&[]);
        from_file.agent_token = None;
        from_file.agent_token_file = Some(file.clone());
        let config = AgentConfig::from_args(from_file).unwrap();
        assert_eq!(
            config
                .shared_token()
                .unwrap()
                .bearer_header()
                .to_str()
                .unwrap(),
            "Bearer from-the-file"
        );

        let mut both = args(&[]);
        both.agent_token = Some("t".into());
        both.agent_token_file = Some(file);
        let error = AgentConfig::from_args(both).unwrap_err().to_string();
        assert!(
            error.contains("AGENT_TOKEN and AGENT_TOKEN_FILE"),
            "{error}"
        );

        let mut missing = args(&[]);
        missing.agent_token = None;
        missing.agent_token_file = Some(dir.path().join("absent"));
        let error = AgentConfig::from_args(missing).unwrap_err();
        let text = vmm_shared::settings::error_chain(&error);
        assert!(
            text.contains("AGENT_TOKEN_FILE") && text.contains("absent"),
            "{text}"
        );
    }

    const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/config/agent.toml");

    #[test]
    fn the_example_config_loads_and_documents_every_setting() {
        let loaded: Args = vmm_shared::settings::parse_from(
            ["agent", "--config", EXAMPLE, "--host-id", "kvm-1"],
            COMMAND_LINE_ONLY,
        )
        .unwrap();
        if std::env::var_os("LIBVIRT_URI").is_none() {
            assert_eq!(loaded.libvirt_uri, "qemu:///system");
        }
        AgentConfig::from_args(loaded).unwrap();

        // Every `#key = value` line made a setting: each example value is valid too.
        let everything =
            vmm_shared::settings::example_with_every_setting(&fs::read_to_string(EXAMPLE).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        fs::write(&path, &everything).unwrap();
        let loaded: Result<Args, _> = vmm_shared::settings::parse_from(
            ["agent".into(), "--config".into(), path.into_os_string()],
            COMMAND_LINE_ONLY,
        );
        loaded.unwrap();

        use clap::CommandFactory;
        let problems = vmm_shared::settings::undocumented_settings(
            &Args::command(),
            &everything,
            COMMAND_LINE_ONLY,
        );
        assert!(
            problems.is_empty(),
            "deploy/config/agent.toml and --help: {problems:#?}"
        );
    }
}
