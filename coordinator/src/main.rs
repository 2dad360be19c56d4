//! The `coordinator` binary: reads its configuration (flags, environment, `--config` file,
//! secret files), sets up logging, and runs.
#![forbid(unsafe_code)]

use tracing_subscriber::EnvFilter;
use vmm_coordinator::Config;
use vmm_coordinator::config::LogFormat;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::load_or_exit();
    if config.check_config {
        println!("coordinator: the configuration is valid");
        return std::process::ExitCode::SUCCESS;
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init(),
    }
    match vmm_coordinator::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "coordinator stopped");
            eprintln!("coordinator: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
