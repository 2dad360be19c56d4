//! One module per group of commands. Each reads what it needs through [`Context`] and prints
//! through `crate::output`; failures come back as `exit::Failure` for `main` to report.

mod console;
mod hosts;
mod images;
mod keys;
mod quotas;
mod session;
mod snapshots;
mod tokens;
mod users;
mod vms;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::config;
use crate::exit::Result;
use crate::output::Format;

/// What every command works with.
pub struct Context {
    pub client: Client,
    pub format: Format,
}

pub async fn run(cli: Cli) -> Result<()> {
    let format = cli.output;
    let command = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "vmmctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Login(args) => return session::login(cli.url.as_deref(), format, args).await,
        Command::Logout => return session::logout(format),
        command => command,
    };
    let stored = config::load()?;
    let url = config::resolve_url(cli.url.as_deref(), &stored);
    let token = config::resolve_token(&stored);
    let context = Context {
        client: Client::new(url, token)?,
        format,
    };
    match command {
        Command::Whoami => session::whoami(&context).await,
        Command::Vm(command) => vms::run(&context, command).await,
        Command::Snapshot(command) => snapshots::run(&context, command).await,
        Command::Image(command) => images::run(&context, command).await,
        Command::Key(command) => keys::run(&context, command).await,
        Command::Quota(command) => quotas::run(&context, command).await,
        Command::User(command) => users::run(&context, command).await,
        Command::Host(command) => hosts::run(&context, command).await,
        Command::Token(command) => tokens::run(&context, command).await,
        Command::Console(args) => console::run(&context, args).await,
        Command::Completions { .. } | Command::Login(_) | Command::Logout => Ok(()),
    }
}

/// A path segment as the API expects it (IDs and host names need no escaping, but a name
/// typed by a user might).
pub fn segment(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
