//! The coordinator's configuration: every setting is a flag and an environment variable.
//! `Config` is what clap parses; `Config::validate` checks what clap cannot and names the
//! setting that is wrong.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

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

/// Control plane for KVM hosts: users, quotas and the REST API; schedules VMs onto agents.
#[derive(Parser, Debug, Clone)]
#[command(name = "coordinator", version, about)]
pub struct Config {
    /// Address of the REST API.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,

    /// Address agents connect to (gRPC).
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

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

    /// Lifetime of a login token, in seconds.
    #[arg(long, env = "JWT_TTL_SECS", default_value_t = 3600)]
    pub jwt_ttl_secs: u64,

    /// Name of an admin account to create (or promote) at start; needs ADMIN_PASSWORD.
    #[arg(long, env = "ADMIN_USER")]
    pub admin_user: Option<String>,

    /// Password of the ADMIN_USER account. There is no default password.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,

    /// Shared credential every agent must present (at least 16 characters). Required.
    #[arg(long, env = "AGENT_TOKEN", hide_env_values = true)]
    pub agent_token: Option<String>,

    /// bcrypt work factor for password hashes (4-31).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How long a request waits for a host's answer before answering 504.
    #[arg(long, env = "OPERATION_TIMEOUT_SECS", default_value_t = 120)]
    pub operation_timeout_secs: u64,

    /// A host whose agent is silent this long is marked unreachable, its VMs unknown.
    #[arg(long, env = "HOST_DEAD_AFTER", default_value_t = 10)]
    pub host_dead_after_secs: u64,

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

    /// Comma-separated CIDRs or addresses of reverse proxies whose X-Forwarded-For and
    /// X-Real-IP headers are believed [default: none].
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', value_parser = crate::ratelimit::parse_proxy)]
    pub trusted_proxies: Vec<ipnet::IpNet>,

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

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.agent_token.as_deref() {
            None | Some("") => {
                return Err(invalid(
                    "AGENT_TOKEN",
                    "required: set the shared credential agents must present \
                     (e.g. `head -c 32 /dev/urandom | base64`)",
                ));
            }
            Some(token) if token.len() < 16 => {
                return Err(invalid(
                    "AGENT_TOKEN",
                    "must be at least 16 characters long",
                ));
            }
            Some(_) => {}
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
        if self.jwt_ttl_secs == 0 {
            return Err(invalid("JWT_TTL_SECS", "must be at least 1"));
        }
        if self.operation_timeout_secs == 0 {
            return Err(invalid("OPERATION_TIMEOUT_SECS", "must be at least 1"));
        }
        if self.host_dead_after_secs == 0 {
            return Err(invalid("HOST_DEAD_AFTER", "must be at least 1"));
        }
        if !(self.cpu_allocation_ratio.is_finite() && self.cpu_allocation_ratio > 0.0) {
            return Err(invalid("CPU_ALLOCATION_RATIO", "must be a positive number"));
        }
        Ok(())
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
        }
    }

    pub fn operation_timeout(&self) -> Duration {
        Duration::from_secs(self.operation_timeout_secs)
    }

    pub fn host_dead_after(&self) -> Duration {
        Duration::from_secs(self.host_dead_after_secs)
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
    fn agent_token_is_required_and_named() {
        let err = parse(&[]).validate().unwrap_err();
        // The variable may be set in the environment of whoever runs the tests.
        if std::env::var_os("AGENT_TOKEN").is_none() {
            assert_eq!(err.setting, "AGENT_TOKEN");
        }
        let err = parse(&["--agent-token", "short"]).validate().unwrap_err();
        assert_eq!(err.setting, "AGENT_TOKEN");
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
    }
}
