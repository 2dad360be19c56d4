//! `login`, `logout`, `whoami`: getting a token and keeping it (see `crate::config`).

use std::io::{BufRead, Write};
use std::os::fd::AsFd;

use serde_json::json;
use vmm_shared::api::quotas::QuotaView;
use vmm_shared::api::users::{Credentials, LoginResponse};

use super::Context;
use crate::cli::LoginArgs;
use crate::client::{Client, read_json};
use crate::config::{self, Stored};
use crate::exit::{Failure, Result};
use crate::output::{self, Format};

pub async fn login(url_flag: Option<&str>, format: Format, args: LoginArgs) -> Result<()> {
    let previous = config::load().unwrap_or_default();
    let url = config::resolve_url(url_flag, &previous);
    if args.with_token {
        let token = read_line("")?;
        if token.is_empty() {
            return Err(Failure::usage("no token on stdin"));
        }
        // Check that the token works before keeping it.
        let client = Client::new(url.clone(), Some(token.clone()))?;
        let _: QuotaView = client.get("/api/quota").await?;
        let path = config::save(&Stored {
            url: Some(url.clone()),
            token: Some(token),
            username: None,
            expires_at: None,
        })?;
        output::print_item(format, &json!({"url": url, "path": path}), |_| {
            vec![
                ("url", url.clone()),
                ("token kept in", path.display().to_string()),
            ]
        })?;
        return Ok(());
    }

    let username = match args.username {
        Some(username) => username,
        None => prompt("Username: ", true)?,
    };
    let password = if args.password_stdin {
        read_line("")?
    } else {
        prompt("Password: ", false)?
    };
    if username.is_empty() || password.is_empty() {
        return Err(Failure::usage(
            "a username and a password are needed to log in",
        ));
    }
    let client = Client::new(url.clone(), None)?;
    let response = client
        .send(
            client
                .request(reqwest::Method::POST, "/api/auth/login")
                .json(&Credentials { username, password }),
        )
        .await?;
    let login: LoginResponse = read_json(response).await?;
    let path = config::save(&Stored {
        url: Some(url.clone()),
        token: Some(login.token),
        username: Some(login.user.username.clone()),
        expires_at: Some(login.expires_at.clone()),
    })?;
    let shown = json!({
        "url": url,
        "user": &login.user,
        "expires_at": login.expires_at,
        "path": path,
    });
    output::print_item(format, &shown, |_| {
        vec![
            ("url", url.clone()),
            ("user", login.user.username.clone()),
            ("role", login.user.role.to_string()),
            ("expires at", login.expires_at.clone()),
            ("token kept in", path.display().to_string()),
        ]
    })
}

pub fn logout(format: Format) -> Result<()> {
    if config::remove()? {
        output::done(format, "logged out: the stored token is forgotten");
    } else {
        output::done(format, "not logged in");
    }
    Ok(())
}

pub async fn whoami(context: &Context) -> Result<()> {
    let stored = config::load()?;
    let quota: QuotaView = context.client.get("/api/quota").await?;
    let from_env = std::env::var_os("VMM_TOKEN").is_some_and(|token| !token.is_empty());
    let shown = json!({
        "url": context.client.base(),
        "username": if from_env { None } else { stored.username.clone() },
        "token_from": if from_env { "VMM_TOKEN" } else { "login" },
        "expires_at": if from_env { None } else { stored.expires_at.clone() },
        "quota": &quota,
    });
    output::print_item(context.format, &shown, |_| {
        vec![
            ("url", context.client.base().to_owned()),
            (
                "user",
                if from_env {
                    "(VMM_TOKEN)".to_owned()
                } else {
                    output::opt(stored.username.clone())
                },
            ),
            ("expires at", output::opt(stored.expires_at.clone())),
            (
                "usage",
                format!(
                    "{}/{} VMs, {}/{} vCPUs, {}/{} MiB",
                    quota.usage.vms,
                    quota.quota.max_vms,
                    quota.usage.cpu,
                    quota.quota.max_cpu,
                    quota.usage.memory,
                    quota.quota.max_memory
                ),
            ),
        ]
    })
}

/// One line of stdin, without its line ending.
fn read_line(prompt_text: &str) -> Result<String> {
    if !prompt_text.is_empty() {
        eprint!("{prompt_text}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// Asks on the terminal; without `echo`, what is typed is not shown.
fn prompt(text: &str, echo: bool) -> Result<String> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    if echo || !rustix::termios::isatty(fd) {
        return read_line(text);
    }
    let saved = rustix::termios::tcgetattr(fd).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &quiet)
        .map_err(std::io::Error::from)?;
    let line = read_line(text);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &saved);
    eprintln!();
    line
}
