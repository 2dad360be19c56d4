//! The `coordinator` binary: reads its configuration (flags, environment, `--config` file,
//! secret files), sets up logging (`vmm_shared::logging`), and runs. `coordinator
//! copy-database --from <url> --to <url>` copies the stored data between databases instead.
#![forbid(unsafe_code)]

use clap::Parser;
use vmm_coordinator::Config;
use vmm_coordinator::config::{CaAction, Command, LogFormat};

/// mimalloc rather than the C library's allocator: the coordinator's bursts (a reconnect
/// storm's registrations, thousands of creates) free what they allocated, but glibc kept it
/// from the system, scattered between live allocations (measured with the fleet simulator:
/// 653 MiB resident at rest after 100,000 creates; at 20,000, 140 MiB, of which
/// `malloc_trim` gave back 88). mimalloc gives freed pages back.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Copies every user, VM, snapshot, quota, operation, image record, SSH key and host
/// record from one database to another, empty one (e.g. SQLite to PostgreSQL). Stop the
/// coordinator using the source first.
#[derive(Parser)]
#[command(name = "coordinator copy-database")]
struct CopyDatabase {
    /// The database to copy from, e.g. sqlite:///var/lib/vmm-coordinator/coordinator.db
    #[arg(long)]
    from: String,
    /// The empty database to copy into, e.g. postgres://vmm@db.example/vmm
    #[arg(long)]
    to: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("copy-database") {
        let args = CopyDatabase::parse_from(std::env::args().skip(1));
        return match vmm_coordinator::copy_database::copy_database(&args.from, &args.to).await {
            Ok(copied) => {
                println!("coordinator: copied {copied}");
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("coordinator: copy-database: {err:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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
