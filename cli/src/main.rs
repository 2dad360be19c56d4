//! `vmmctl`: the command-line client of the coordinator's REST API, for people (tables) and
//! scripts (`--output json`, exit codes). It speaks the API through the request and response
//! types of `vmm_shared::api`, the ones the coordinator serves, so the two cannot drift.
//!
//! - [`cli`]: the commands and their flags (clap)
//! - [`config`]: where the API is and the token (`login`, `VMM_URL`, `VMM_TOKEN`)
//! - [`client`]: HTTP, errors with the API's message, pagination, names → IDs
//! - [`output`]: tables and JSON
//! - [`commands`]: one module per group of commands
//! - [`exit`]: the exit codes
//!
//! It never prints a password, and prints a token only where the user asked for a new one.
#![forbid(unsafe_code)]

mod cli;
mod client;
mod commands;
mod config;
mod exit;
mod output;

use clap::Parser;

use crate::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("vmmctl: cannot start: {err}");
            return exit::Failure::GENERAL.into();
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("vmmctl: {}", failure.message);
            failure.into()
        }
    }
}
