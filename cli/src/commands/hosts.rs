//! `host list|drain|undrain|delete` (administrators). Drain, undrain and delete call
//! `POST /api/hosts/{id}/drain`, `POST /api/hosts/{id}/undrain` and `DELETE /api/hosts/{id}`
//! as documented for host maintenance; a coordinator without them answers 404 or 405, which
//! is reported as such.

use reqwest::Method;
use vmm_shared::api::hosts::HostView;

use super::{Context, segment};
use crate::cli::HostCommand;
use crate::exit::Result;
use crate::output::{self, Table};

pub async fn run(context: &Context, command: HostCommand) -> Result<()> {
    let client = &context.client;
    match command {
        HostCommand::List => {
            let hosts: Vec<HostView> = client.list("/api/hosts").await?;
            output::print(context.format, &hosts, |hosts| {
                let mut table = Table::new(&[
                    "ID",
                    "STATUS",
                    "CPUS",
                    "MEMORY",
                    "DISK",
                    "ALLOCATED",
                    "VMS",
                    "HYPERVISOR",
                ]);
                for host in hosts {
                    table.row(vec![
                        host.id.to_string(),
                        host.status.to_string(),
                        host.cpus.to_string(),
                        format!("{} MiB", host.memory_mib),
                        format!("{} GB", host.disk_gb),
                        format!(
                            "{} cpu, {} MiB, {} GB",
                            host.allocated.cpu, host.allocated.memory_mib, host.allocated.disk_gb
                        ),
                        host.vms.to_string(),
                        host.hypervisor.clone(),
                    ]);
                }
                table
            })
        }
        HostCommand::Drain { host } => {
            change(context, Method::POST, &host, "/drain", "draining").await
        }
        HostCommand::Undrain { host } => {
            change(context, Method::POST, &host, "/undrain", "taking VMs again").await
        }
        HostCommand::Delete { host } => change(context, Method::DELETE, &host, "", "deleted").await,
    }
}

async fn change(
    context: &Context,
    method: Method,
    host: &str,
    suffix: &str,
    done: &str,
) -> Result<()> {
    let client = &context.client;
    client.require_token()?;
    let response = client
        .send(client.request(method, &format!("/api/hosts/{}{suffix}", segment(host))))
        .await?;
    let body = response.text().await.unwrap_or_default();
    if context.format == output::Format::Json && !body.trim().is_empty() {
        let value: serde_json::Value = serde_json::from_str(&body)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        output::done(context.format, format!("host {host}: {done}"));
    }
    Ok(())
}
