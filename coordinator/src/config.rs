//! The coordinator's configuration: every setting is a flag, an environment variable and a
//! key of the TOML file given with `--config` (precedence in that order, then the default;
//! see `vmm_shared::settings`). `Config` is the one definition clap parses;
//! `Config::resolve_secret_files` reads `*_FILE` secrets and `Config::validate` checks what
//! clap cannot, both naming the setting that is wrong.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// How the scheduler chooses among hosts with room for a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// The host with the most free memory: spreads VMs, limits the blast radius of a host.
    Spread,
    /// The host with the least free memory that still fits: fills hosts one at a time.
    Pack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Who may create accounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Registration {
    /// Anyone, with `POST /api/auth/register`.
    Open,
    /// Only administrators, with `POST /api/admin/users`; registration answers 403.
    Closed,
}

/// Open files the coordinator needs besides its connections: the database and its
/// journal, the listening sockets, log and standard streams, the connections each listener
/// is closing to make room (`crate::connections::MAX_PENDING_EVICTIONS`), with room to spare.
pub const RESERVED_FILES: u64 = 128;
/// How much longer than `OPERATION_TIMEOUT_SECS` a whole request must be allowed: a handler
/// waits for an operation's outcome up to 5 s past the operation timeout before answering.
pub const REQUEST_TIMEOUT_MARGIN: Duration = Duration::from_secs(5);
/// Connections the metrics listener (`METRICS_ADDR`) accepts at once.
pub const METRICS_MAX_CONNECTIONS: usize = 16;

/// What to do instead of running, if anything.
#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The certificate authority of the agents' port, in <DATA_DIR>/pki.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaAction {
    /// Create the CA unless one exists (the coordinator also does at its first start without
    /// AGENT_TOKEN), and print its SHA-256 fingerprint, which join tokens carry.
    Init,
}

/// Control plane for KVM hosts: users, quotas and the REST API; schedules VMs onto agents.
#[derive(Parser, Debug, Clone)]
#[command(name = "coordinator", version, about, after_help = vmm_shared::settings::PRECEDENCE_HELP)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML file of settings; keys are the long flags' names with `_` for `-` (e.g.
    /// `http_addr = "0.0.0.0:8080"`). Flags and environment variables override it
    /// [default: none].
    #[arg(long, env = "CONFIG_FILE", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Check the settings (and read the secret files), print the outcome and exit, without
    /// starting. Command line only.
    #[arg(long)]
    pub check_config: bool,

    /// Address of the REST API.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address agents connect to (gRPC).
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// With several coordinators: the URL clients reach this coordinator at directly
    /// (`http(s)://host[:port]`, not the load balancer's). A console asked for at another
    /// coordinator is pointed here when this one holds its host's session [default: none:
    /// consoles open only through this coordinator].
    #[arg(long, env = "PUBLIC_URL", value_parser = public_url)]
    pub public_url: Option<String>,

    /// Directory for the database and the generated JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = "./coordinator-data")]
    pub data_dir: PathBuf,

    /// Database URL [default: sqlite://<data-dir>/coordinator.db].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Secret for signing login tokens, at least 32 bytes [default: generated once into
    /// <data-dir>/jwt-secret with mode 0600].
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding JWT_SECRET (a trailing line break is ignored); instead of JWT_SECRET
    /// [default: none].
    #[arg(long, env = "JWT_SECRET_FILE", value_name = "PATH")]
    pub jwt_secret_file: Option<PathBuf>,

    /// Lifetime of a login token: seconds, or a duration such as `1h`.
    #[arg(long, env = "JWT_TTL_SECS", default_value = "1h",
          value_parser = vmm_shared::duration::seconds)]
    pub jwt_ttl_secs: Duration,

    /// Name of an admin account to create (or promote) at start; needs ADMIN_PASSWORD
    /// [default: none].
    #[arg(long, env = "ADMIN_USER")]
    pub admin_user: Option<String>,

    /// Password of the ADMIN_USER account [default: none: there is no default password].
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// File holding ADMIN_PASSWORD (a trailing line break is ignored); instead of
    /// ADMIN_PASSWORD [default: none].
    #[arg(long, env = "ADMIN_PASSWORD_FILE", value_name = "PATH")]
    pub admin_password_file: Option<PathBuf>,

    /// For development and tests only: one credential every agent presents instead of a
    /// certificate (at least 16 characters). Agents then connect over plain HTTP/2 and a host
    /// is whoever it says it is; the coordinator warns at start. Refused with TLS_CERT
    /// [default: none: agents enrol with join tokens and connect with certificates].
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// File holding AGENT_TOKEN (a trailing line break is ignored); instead of AGENT_TOKEN
    /// [default: none].
    #[arg(long, env = "AGENT_TOKEN_FILE", value_name = "PATH")]
    pub agent_token_file: Option<PathBuf>,

    /// How long a certificate issued to a host is valid; its agent renews it once two thirds
    /// of it have passed (at least 10s; e.g. `90d`, `720h`).
    #[arg(long, env = "AGENT_CERT_LIFETIME", default_value = "90d",
          value_parser = vmm_shared::duration::seconds)]
    pub agent_cert_lifetime: Duration,

    /// PEM file with the REST API's certificate chain (leaf first), to serve HTTPS; needs
    /// TLS_KEY. Under systemd, a credential: `%d/tls.crt` [default: none: plain HTTP].
    #[arg(long, env = "TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM file with the private key of TLS_CERT [default: none].
    #[arg(long, env = "TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// bcrypt work factor for password hashes (4-31).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How long a request waits for a host's answer before answering 504: seconds, or a
    /// duration such as `2m`.
    #[arg(long, env = "OPERATION_TIMEOUT_SECS", default_value = "2m",
          value_parser = vmm_shared::duration::seconds)]
    pub operation_timeout_secs: Duration,

    /// A host whose agent is silent this long is marked unreachable, its VMs unknown:
    /// seconds, or a duration such as `10s`.
    #[arg(long, env = "HOST_DEAD_AFTER", default_value = "10s",
          value_parser = vmm_shared::duration::seconds)]
    pub host_dead_after_secs: Duration,

    /// How the scheduler picks a host for a new VM.
    #[arg(long, env = "PLACEMENT", value_enum, default_value_t = Placement::Spread)]
    pub placement: Placement,

    /// vCPUs that may be allocated per physical CPU of a host.
    #[arg(long, env = "CPU_ALLOCATION_RATIO", default_value_t = 4.0)]
    pub cpu_allocation_ratio: f64,

    /// Default quota for each user: VMs.
    #[arg(long, env = "DEFAULT_QUOTA_VMS", default_value_t = 10)]
    pub default_quota_vms: u64,

    /// Default quota for each user: vCPUs.
    #[arg(long, env = "DEFAULT_QUOTA_CPU", default_value_t = 8)]
    pub default_quota_cpu: u64,

    /// Default quota for each user: memory in MiB.
    #[arg(long, env = "DEFAULT_QUOTA_MEMORY_MIB", default_value_t = 16384)]
    pub default_quota_memory_mib: u64,

    /// Default quota for each user: disk in GB.
    #[arg(long, env = "DEFAULT_QUOTA_DISK_GB", default_value_t = 200)]
    pub default_quota_disk_gb: u64,

    /// Default quota for each user: snapshots.
    #[arg(long, env = "DEFAULT_QUOTA_SNAPSHOTS", default_value_t = 20)]
    pub default_quota_snapshots: u64,

    /// Limit request rates (per client address and per user).
    #[arg(long, env = "RATE_LIMIT_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub rate_limit_enabled: bool,

    /// Sustained requests per second allowed per client and per user.
    #[arg(long, env = "RATE_LIMIT_RPS", default_value_t = NonZeroU32::new(10).unwrap())]
    pub rate_limit_rps: NonZeroU32,

    /// Requests a client or user may send at once before the sustained rate applies.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(20).unwrap())]
    pub rate_limit_burst: NonZeroU32,

    /// Login and register attempts per minute allowed per client and per username.
    #[arg(long, env = "LOGIN_RATE_LIMIT_PER_MINUTE", default_value_t = NonZeroU32::new(10).unwrap())]
    pub login_rate_limit_per_minute: NonZeroU32,

    /// Login and register attempts allowed at once per client and per username.
    #[arg(long, env = "LOGIN_RATE_LIMIT_BURST", default_value_t = NonZeroU32::new(5).unwrap())]
    pub login_rate_limit_burst: NonZeroU32,

    /// Comma-separated CIDRs or addresses of reverse proxies whose forwarding header
    /// (FORWARDED_HEADER) is believed [default: none].
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::ratelimit::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// The header the trusted proxies put the client's address in; any other is ignored.
    #[arg(long, env = "FORWARDED_HEADER", value_enum,
          default_value_t = crate::http::forwarded::ForwardedHeader::XForwardedFor)]
    pub forwarded_header: crate::http::forwarded::ForwardedHeader,

    /// Who may create accounts: `open` (anyone may register) or `closed` (administrators
    /// create them with POST /api/admin/users).
    #[arg(long, env = "REGISTRATION", value_enum, default_value_t = Registration::Open)]
    pub registration: Registration,

    /// Most connections the REST API keeps open at once; when all are busy with requests,
    /// new ones get 503 (idle ones are closed to make room first).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = NonZeroU32::new(512).unwrap())]
    pub http_max_connections: NonZeroU32,

    /// Most connections to the REST API from one client address (trusted proxies exempt).
    #[arg(long, env = "HTTP_MAX_CONNECTIONS_PER_CLIENT", default_value_t = NonZeroU32::new(64).unwrap())]
    pub http_max_connections_per_client: NonZeroU32,

    /// How long a client may take to send a request's headers, from connecting (or from the
    /// first byte of a later request on the connection).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s",
          value_parser = vmm_shared::duration::seconds)]
    pub http_header_timeout: Duration,

    /// How long a connection may wait for its next request, or leave an answer unread.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT", default_value = "60s",
          value_parser = vmm_shared::duration::seconds)]
    pub http_idle_timeout: Duration,

    /// How long a whole request may take, from its headers to the answer (408 after); at
    /// least 5s longer than OPERATION_TIMEOUT_SECS [default: OPERATION_TIMEOUT_SECS + 30s].
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", value_parser = vmm_shared::duration::seconds)]
    pub http_request_timeout: Option<Duration>,

    /// Most connections the agents' gRPC listener keeps open at once (one per agent);
    /// connections that have not started talking are closed to make room.
    #[arg(long, env = "GRPC_MAX_CONNECTIONS", default_value_t = NonZeroU32::new(256).unwrap())]
    pub grpc_max_connections: NonZeroU32,

    /// Address of a separate Prometheus endpoint (`GET /metrics`), to keep metrics off the
    /// public port [default: none].
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Also serve the metrics at `GET /api/metrics` on the REST API port, without a token.
    #[arg(long, env = "API_METRICS", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_metrics: bool,

    /// Largest image file accepted, uploaded or downloaded, in bytes (at least 1 MiB).
    #[arg(long, env = "IMAGE_MAX_BYTES", default_value_t = 20 * 1024 * 1024 * 1024)]
    pub image_max_bytes: u64,

    /// How long a console ticket may wait to be used: seconds, or a duration such as `30s`.
    #[arg(long, env = "CONSOLE_TICKET_TTL", default_value = "30s",
          value_parser = vmm_shared::duration::seconds)]
    pub console_ticket_ttl: Duration,

    /// A console session in which nothing moved either way for this long is closed.
    #[arg(long, env = "CONSOLE_IDLE_TIMEOUT", default_value = "15m",
          value_parser = vmm_shared::duration::seconds)]
    pub console_idle_timeout: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A setting that is present but unusable, named so the operator knows what to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {setting}: {reason}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub reason: String,
}

/// `PUBLIC_URL`: an http(s) URL of a host and optional port, without a trailing slash.
fn public_url(value: &str) -> Result<String, String> {
    let trimmed = value.trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .ok_or("must start with http:// or https://")?;
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ', '@']) {
        return Err("must be a scheme, a host and an optional port (e.g. \
                    https://coordinator-1.example.net:8443), with no path"
            .to_owned());
    }
    Ok(trimmed.to_owned())
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        reason: reason.into(),
    }
}

/// The admin account to ensure at start.
#[derive(Clone, Debug)]
pub struct AdminBootstrap {
    pub username: String,
    pub password: String,
}

/// The shortest `AGENT_CERT_LIFETIME` accepted.
pub const MIN_AGENT_CERT_LIFETIME: Duration = Duration::from_secs(10);

/// The smallest `IMAGE_MAX_BYTES` accepted.
pub const MIN_IMAGE_MAX_BYTES: u64 = 1 << 20;

/// Arguments a config file may not set.
pub const COMMAND_LINE_ONLY: &[&str] = &["check_config"];

impl Config {
    /// Reads the settings from the process's flags, environment and config file, then the
    /// secret files, and validates them. Prints what is wrong and exits (code 2) when they
    /// cannot be used; `--help` and `--version` print and exit too.
    pub fn load_or_exit() -> Self {
        let mut config: Self =
            vmm_shared::settings::parse_or_exit("coordinator", COMMAND_LINE_ONLY);
        if let Err(error) = config
            .resolve_secret_files()
            .and_then(|()| config.validate())
            .and_then(|()| config.check_open_file_limit(crate::connections::open_file_limit().0))
            .and_then(|()| config.rest_tls().map(drop))
        {
            eprintln!("coordinator: {error}");
            std::process::exit(2);
        }
        config
    }

    /// Replaces each secret given as a file (`*_FILE`) by the file's content. Setting both a
    /// secret and its file is an error naming both.
    pub fn resolve_secret_files(&mut self) -> Result<(), ConfigError> {
        use vmm_shared::settings::{error_chain, resolve_secret};
        let secret_error = |error: vmm_shared::settings::SecretError| {
            let setting = error.setting();
            let chain = error_chain(&error);
            let reason = chain
                .strip_prefix(&format!("{setting}: "))
                .unwrap_or(&chain)
                .to_owned();
            invalid(setting, reason)
        };
        self.jwt_secret = resolve_secret(
            "JWT_SECRET",
            self.jwt_secret.take(),
            "JWT_SECRET_FILE",
            self.jwt_secret_file.as_deref(),
        )
        .map_err(secret_error)?;
        self.admin_password = resolve_secret(
            "ADMIN_PASSWORD",
            self.admin_password.take(),
            "ADMIN_PASSWORD_FILE",
            self.admin_password_file.as_deref(),
        )
        .map_err(secret_error)?;
        self.agent_token = resolve_secret(
            "AGENT_TOKEN",
            self.agent_token.take(),
            "AGENT_TOKEN_FILE",
            self.agent_token_file.as_deref(),
        )
        .map_err(secret_error)?;
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.agent_token.as_deref() {
            None => {}
            Some(token) if token.len() < 16 => {
                return Err(invalid(
                    "AGENT_TOKEN",
                    "must be at least 16 characters long",
                ));
            }
            Some(_) if self.tls_cert.is_some() => {
                return Err(invalid(
                    "AGENT_TOKEN",
                    "the shared agent token is for development only and is refused when TLS is \
                     configured (TLS_CERT): unset it and enrol each host with a join token \
                     (POST /api/hosts/join-tokens, deploy/README.md)",
                ));
            }
            Some(_) => {}
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "TLS_KEY",
                    "TLS_CERT is set, so TLS_KEY must be too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "TLS_CERT",
                    "TLS_KEY is set, so TLS_CERT must be too",
                ));
            }
            _ => {}
        }
        if self.agent_cert_lifetime < MIN_AGENT_CERT_LIFETIME {
            return Err(invalid(
                "AGENT_CERT_LIFETIME",
                format!(
                    "must be at least {}",
                    vmm_shared::duration::display(MIN_AGENT_CERT_LIFETIME)
                ),
            ));
        }
        if self
            .jwt_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 32)
        {
            return Err(invalid("JWT_SECRET", "must be at least 32 bytes long"));
        }
        match (&self.admin_user, &self.admin_password) {
            (Some(_), None) => {
                return Err(invalid(
                    "ADMIN_PASSWORD",
                    "ADMIN_USER is set, so ADMIN_PASSWORD must be too",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "ADMIN_USER",
                    "ADMIN_PASSWORD is set, so ADMIN_USER must be too",
                ));
            }
            (Some(user), Some(password)) => {
                crate::users::validate_username(user)
                    .map_err(|reason| invalid("ADMIN_USER", reason))?;
                crate::users::validate_password(password)
                    .map_err(|reason| invalid("ADMIN_PASSWORD", reason))?;
            }
            (None, None) => {}
        }
        if self.jwt_ttl_secs < Duration::from_secs(1) {
            return Err(invalid("JWT_TTL_SECS", "must be at least 1 second"));
        }
        if self.operation_timeout_secs.is_zero() {
            return Err(invalid("OPERATION_TIMEOUT_SECS", "must be more than 0"));
        }
        if self.host_dead_after_secs.is_zero() {
            return Err(invalid("HOST_DEAD_AFTER", "must be more than 0"));
        }
        if self.http_header_timeout.is_zero() {
            return Err(invalid("HTTP_HEADER_TIMEOUT", "must be more than 0"));
        }
        if self.http_idle_timeout.is_zero() {
            return Err(invalid("HTTP_IDLE_TIMEOUT", "must be more than 0"));
        }
        if self.http_request_timeout() < self.operation_timeout() + REQUEST_TIMEOUT_MARGIN {
            return Err(invalid(
                "HTTP_REQUEST_TIMEOUT",
                format!(
                    "must be longer than OPERATION_TIMEOUT_SECS ({}) by at least {}, or requests \
                     waiting for a host would be cut off before they can answer",
                    vmm_shared::duration::display(self.operation_timeout()),
                    vmm_shared::duration::display(REQUEST_TIMEOUT_MARGIN)
                ),
            ));
        }

        if !(self.cpu_allocation_ratio.is_finite() && self.cpu_allocation_ratio > 0.0) {
            return Err(invalid("CPU_ALLOCATION_RATIO", "must be a positive number"));
        }
        if self.console_ticket_ttl.is_zero() {
            return Err(invalid("CONSOLE_TICKET_TTL", "must be more than 0"));
        }
        if self.console_idle_timeout.is_zero() {
            return Err(invalid("CONSOLE_IDLE_TIMEOUT", "must be more than 0"));
        }
        if self.image_max_bytes < MIN_IMAGE_MAX_BYTES {
            return Err(invalid(
                "IMAGE_MAX_BYTES",
                format!("must be at least {MIN_IMAGE_MAX_BYTES} (1 MiB)"),
            ));
        }
        Ok(())
    }

    /// Refuses connection caps the process's open-file limit cannot hold: past it, accepting
    /// fails and nothing, health checks and agents included, gets through.
    pub fn check_open_file_limit(&self, soft_limit: Option<u64>) -> Result<(), ConfigError> {
        let Some(limit) = soft_limit else {
            return Ok(());
        };
        let metrics = if self.metrics_addr.is_some() {
            METRICS_MAX_CONNECTIONS as u64
        } else {
            0
        };
        let needed = u64::from(self.http_max_connections.get())
            + u64::from(self.grpc_max_connections.get())
            + metrics
            + RESERVED_FILES;
        if needed > limit {
            return Err(invalid(
                "HTTP_MAX_CONNECTIONS",
                format!(
                    "HTTP_MAX_CONNECTIONS ({}) + GRPC_MAX_CONNECTIONS ({}){} + {RESERVED_FILES} \
                     files for the database and logs need {needed} open files, but the \
                     process may open only {limit}: lower them, or raise the limit \
                     (LimitNOFILE= in the systemd unit, `ulimit -n`)",
                    self.http_max_connections,
                    self.grpc_max_connections,
                    if metrics > 0 {
                        format!(" + {metrics} for METRICS_ADDR")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok(())
    }

    /// The REST API's TLS configuration from TLS_CERT and TLS_KEY, or `None` for plain HTTP.
    pub fn rest_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ConfigError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        crate::pki::tls::rest_server_config(cert, key)
            .map(Some)
            .map_err(|error| {
                let setting = match &error {
                    crate::pki::tls::TlsError::Read { setting, .. }
                    | crate::pki::tls::TlsError::Empty { setting, .. } => setting,
                    _ => "TLS_CERT",
                };
                invalid(setting, vmm_shared::settings::error_chain(&error))
            })
    }

    /// Whether agents use the shared development token instead of certificates.
    pub fn agents_share_a_token(&self) -> bool {
        self.agent_token.is_some()
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| crate::db::default_url(&self.data_dir))
    }

    pub fn admin_bootstrap(&self) -> Option<AdminBootstrap> {
        Some(AdminBootstrap {
            username: self.admin_user.clone()?,
            password: self.admin_password.clone()?,
        })
    }

    pub fn default_quota(&self) -> crate::quotas::QuotaLimits {
        crate::quotas::QuotaLimits {
            max_vms: self.default_quota_vms,
            max_cpu: self.default_quota_cpu,
            max_memory: self.default_quota_memory_mib,
            max_disk_gb: self.default_quota_disk_gb,
            max_snapshots: self.default_quota_snapshots,
        }
    }

    pub fn rate_limits(&self) -> crate::ratelimit::RateLimitSettings {
        crate::ratelimit::RateLimitSettings {
            enabled: self.rate_limit_enabled,
            requests_per_second: self.rate_limit_rps,
            burst: self.rate_limit_burst,
            login_per_minute: self.login_rate_limit_per_minute,
            login_burst: self.login_rate_limit_burst,
            trusted_proxies: self.trusted_proxies.clone(),
            forwarded_header: self.forwarded_header,
        }
    }

    pub fn operation_timeout(&self) -> Duration {
        self.operation_timeout_secs
    }

    /// The consoles' settings.
    pub fn console_settings(&self) -> crate::console::ConsoleSettings {
        crate::console::ConsoleSettings {
            ticket_ttl: self.console_ticket_ttl,
            idle_timeout: self.console_idle_timeout,
            ..crate::console::ConsoleSettings::default()
        }
    }

    /// Where image files are kept: `<data-dir>/images`.
    pub fn images_dir(&self) -> PathBuf {
        self.data_dir.join("images")
    }

    pub fn host_dead_after(&self) -> Duration {
        self.host_dead_after_secs
    }

    /// `HTTP_REQUEST_TIMEOUT`, or 30 s more than the operation timeout.
    pub fn http_request_timeout(&self) -> Duration {
        self.http_request_timeout
            .unwrap_or(self.operation_timeout() + Duration::from_secs(30))
    }

    /// The REST API's connection limits.
    pub fn http_connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            listener: "http",
            protocol: crate::connections::Protocol::Http1,
            max_connections: self.http_max_connections.get() as usize,
            max_per_client: Some(self.http_max_connections_per_client.get() as usize),
            exempt_from_per_client: self.trusted_proxies.clone(),
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
        }
    }

    /// The metrics listener's connection limits: few, for a scraper or two.
    pub fn metrics_connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            listener: "metrics",
            max_connections: METRICS_MAX_CONNECTIONS,
            max_per_client: None,
            exempt_from_per_client: Vec::new(),
            ..self.http_connection_limits()
        }
    }

    /// The agents' gRPC listener's connection limits. An agent's stream lives for days: after
    /// its first bytes only HTTP/2 keep-alive watches it.
    pub fn grpc_connection_limits(&self) -> crate::connections::ConnectionLimits {
        crate::connections::ConnectionLimits {
            listener: "grpc",
            protocol: crate::connections::Protocol::Grpc,
            max_connections: self.grpc_max_connections.get() as usize,
            max_per_client: None,
            exempt_from_per_client: Vec::new(),
            header_timeout: self.http_header_timeout,
            idle_timeout: self.http_idle_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["coordinator"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[test]
    fn the_agent_token_is_optional_and_refused_short_or_with_tls() {
        // The variables may be set in the environment of whoever runs the tests.
        let mut config = parse(&[]);
        config.agent_token = None;
        config.tls_cert = None;
        config.tls_key = None;
        config.validate().unwrap();
        assert!(!config.agents_share_a_token());
        let err = parse(&["--agent-token", "short"]).validate().unwrap_err();
        assert_eq!(err.setting, "AGENT_TOKEN");
        let err = parse(&[
            "--agent-token",
            "0123456789abcdef0123",
            "--tls-cert",
            "/etc/tls.crt",
            "--tls-key",
            "/etc/tls.key",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "AGENT_TOKEN");
        assert!(err.reason.contains("join token"), "{err}");
        let mut half = parse(&["--tls-cert", "/etc/tls.crt"]);
        half.agent_token = None;
        half.tls_key = None;
        assert_eq!(half.validate().unwrap_err().setting, "TLS_KEY");
        let mut short = parse(&["--agent-cert-lifetime", "5s"]);
        short.agent_token = None;
        assert_eq!(short.validate().unwrap_err().setting, "AGENT_CERT_LIFETIME");
    }

    #[test]
    fn the_ca_is_made_by_a_subcommand() {
        let config = parse(&["--data-dir", "/tmp/x", "ca", "init"]);
        assert_eq!(
            config.command,
            Some(Command::Ca {
                action: CaAction::Init
            })
        );
        assert_eq!(parse(&[]).command, None);
    }

    #[test]
    fn rest_tls_files_are_read_and_named_when_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        let mut config = parse(&[]);
        config.tls_cert = Some(cert_path.clone());
        config.tls_key = Some(key_path.clone());
        assert!(config.rest_tls().unwrap().is_some());

        config.tls_key = Some(dir.path().join("absent.key"));
        let err = config.rest_tls().unwrap_err();
        assert_eq!(err.setting, "TLS_KEY");
        assert!(err.reason.contains("absent.key"), "{err}");
        std::fs::write(&key_path, "not a key").unwrap();
        config.tls_key = Some(key_path);
        assert_eq!(config.rest_tls().unwrap_err().setting, "TLS_KEY");
        std::fs::write(&cert_path, "").unwrap();
        config.tls_key = Some(cert_path);
        assert!(config.rest_tls().is_err());
    }

    #[test]
    fn weak_jwt_secret_and_half_admin_are_refused() {
        let token = "0123456789abcdef0123";
        let err = parse(&["--agent-token", token, "--jwt-secret", "tooshort"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "JWT_SECRET");
        let err = parse(&["--agent-token", token, "--admin-user", "root"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "ADMIN_PASSWORD");
        assert!(parse(&["--agent-token", token]).validate().is_ok());
        let err = parse(&["--agent-token", token, "--image-max-bytes", "1000"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "IMAGE_MAX_BYTES");
    }

    #[test]
    fn durations_take_units_and_the_request_timeout_outlasts_operations() {
        let token = "0123456789abcdef0123";
        let config = parse(&[
            "--agent-token",
            token,
            "--operation-timeout-secs",
            "2m",
            "--host-dead-after-secs",
            "1500ms",
            "--jwt-ttl-secs",
            "7200",
        ]);
        config.validate().unwrap();
        assert_eq!(config.operation_timeout(), Duration::from_secs(120));
        assert_eq!(config.host_dead_after(), Duration::from_millis(1500));
        assert_eq!(config.jwt_ttl_secs, Duration::from_secs(7200));
        assert_eq!(config.http_request_timeout(), Duration::from_secs(150));

        let err = parse(&[
            "--agent-token",
            token,
            "--operation-timeout-secs",
            "60",
            "--http-request-timeout",
            "64s",
        ])
        .validate()
        .unwrap_err();
        assert_eq!(err.setting, "HTTP_REQUEST_TIMEOUT");
        let err = parse(&["--agent-token", token, "--jwt-ttl-secs", "500ms"])
            .validate()
            .unwrap_err();
        assert_eq!(err.setting, "JWT_TTL_SECS");
        assert!(Config::try_parse_from(["coordinator", "--http-idle-timeout", "soon"]).is_err());
    }

    #[test]
    fn connection_caps_must_fit_the_open_file_limit() {
        let config = parse(&["--agent-token", "0123456789abcdef0123"]);
        // 512 + 256 + 128 reserved.
        config.check_open_file_limit(Some(896)).unwrap();
        config.check_open_file_limit(None).unwrap();
        let err = config.check_open_file_limit(Some(895)).unwrap_err();
        assert_eq!(err.setting, "HTTP_MAX_CONNECTIONS");
        assert!(err.reason.contains("LimitNOFILE"), "{err}");
        let with_metrics = parse(&[
            "--agent-token",
            "0123456789abcdef0123",
            "--metrics-addr",
            "127.0.0.1:9178",
        ]);
        assert!(with_metrics.check_open_file_limit(Some(896)).is_err());
    }

    #[test]
    fn secrets_are_read_from_files_and_named_when_they_cannot_be() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("agent-token");
        std::fs::write(&token_file, "0123456789abcdef0123\n").unwrap();
        let secret_file = dir.path().join("jwt-secret");
        std::fs::write(&secret_file, format!("{}\n", "s".repeat(40))).unwrap();
        // Set the fields directly: the environment of whoever runs the tests may hold some.
        let mut config = parse(&[]);
        config.agent_token = None;
        config.agent_token_file = Some(token_file.clone());
        config.jwt_secret = None;
        config.jwt_secret_file = Some(secret_file);
        config.admin_password = None;
        config.admin_password_file = None;
        config.resolve_secret_files().unwrap();
        assert_eq!(config.agent_token.as_deref(), Some("0123456789abcdef0123"));
        assert_eq!(config.jwt_secret.as_deref(), Some("s".repeat(40).as_str()));

        let mut both = parse(&[]);
        both.agent_token = Some("0123456789abcdef0123".into());
        both.agent_token_file = Some(token_file);
        let err = both.resolve_secret_files().unwrap_err();
        assert_eq!(err.setting, "AGENT_TOKEN_FILE");
        assert!(
            err.reason.contains("AGENT_TOKEN and AGENT_TOKEN_FILE"),
            "{err}"
        );

        let mut missing = parse(&[]);
        missing.admin_password = None;
        missing.admin_password_file = Some(dir.path().join("absent"));
        let err = missing.resolve_secret_files().unwrap_err();
        assert_eq!(err.setting, "ADMIN_PASSWORD_FILE");
        assert!(err.to_string().contains("absent"), "{err}");
    }

    const EXAMPLE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/config/coordinator.toml"
    );

    /// The example with every `#key = value` line made a setting.
    fn example_with_everything_set() -> String {
        vmm_shared::settings::example_with_every_setting(&std::fs::read_to_string(EXAMPLE).unwrap())
    }

    #[test]
    fn the_example_config_loads_and_documents_every_setting() {
        let config: Config = vmm_shared::settings::parse_from(
            ["coordinator", "--config", EXAMPLE],
            COMMAND_LINE_ONLY,
        )
        .unwrap();
        if std::env::var_os("GRPC_ADDR").is_none() {
            assert_eq!(config.grpc_addr, "0.0.0.0:50051".parse().unwrap());
        }

        let everything = example_with_everything_set();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, &everything).unwrap();
        let loaded: Result<Config, _> = vmm_shared::settings::parse_from(
            [
                "coordinator".into(),
                "--config".into(),
                path.into_os_string(),
            ],
            COMMAND_LINE_ONLY,
        );
        let config = loaded.unwrap();
        if std::env::var_os("TRUSTED_PROXIES").is_none() {
            assert_eq!(config.trusted_proxies.len(), 2);
        }

        use clap::CommandFactory;
        let problems = vmm_shared::settings::undocumented_settings(
            &Config::command(),
            &everything,
            COMMAND_LINE_ONLY,
        );
        assert!(
            problems.is_empty(),
            "deploy/config/coordinator.toml and --help: {problems:#?}"
        );
    }
}
