//! The `coordinator` binary: reads its configuration (flags, environment, `--config` file,
//! secret files), sets up logging (`vmm_shared::logging`), and runs.
#![forbid(unsafe_code)]

use vmm_coordinator::Config;
use vmm_coordinator::config::{CaAction, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::load_or_exit();
    if config.check_config {
        println!("coordinator: the configuration is valid");
        return std::process::ExitCode::SUCCESS;
    }
    if let Some(Command::Ca {
        action: CaAction::Init,
    }) = &config.command
    {
        return match vmm_coordinator::app::init_ca(&config) {
            Ok(said) => {
                println!("{said}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("coordinator: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    vmm_shared::logging::init(config.log_format == LogFormat::Json);
    match vmm_coordinator::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "coordinator stopped");
            eprintln!("coordinator: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
