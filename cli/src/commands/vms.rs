//! `vm list|show|create|start|stop|force-stop|reboot|delete|wait`.

use std::time::{Duration, Instant};

use vmm_shared::api::vms::{ActionRequest, CreateVmRequest, VmAction, VmView};

use super::{Context, segment};
use crate::cli::{CreateVm, VmCommand};
use crate::exit::{Failure, Result};
use crate::output::{self, Table};

pub async fn run(context: &Context, command: VmCommand) -> Result<()> {
    let client = &context.client;
    match command {
        VmCommand::List { status } => {
            let path = match status {
                Some(status) => format!("/api/vms?status={}", segment(&status)),
                None => "/api/vms".to_owned(),
            };
            let vms: Vec<VmView> = client.list(&path).await?;
            output::print(context.format, &vms, |vms| table(vms))
        }
        VmCommand::Show { vm } => {
            let vm = client.vm(&vm).await?;
            show(context, &vm)
        }
        VmCommand::Create(args) => {
            let request = create_request(context, args).await?;
            let vm: VmView = client.post("/api/vms", &request).await?;
            show(context, &vm)
        }
        VmCommand::Start { vm } => action(context, &vm, VmAction::Start).await,
        VmCommand::Stop { vm } => action(context, &vm, VmAction::Stop).await,
        VmCommand::ForceStop { vm } => action(context, &vm, VmAction::ForceStop).await,
        VmCommand::Reboot { vm } => action(context, &vm, VmAction::Reboot).await,
        VmCommand::Delete { vm } => {
            let vm = client.vm(&vm).await?;
            client.delete(&format!("/api/vms/{}", vm.id)).await?;
            output::done(
                context.format,
                format!("deleted VM {} ({})", vm.name, vm.id),
            );
            Ok(())
        }
        VmCommand::Wait {
            vm,
            status,
            timeout,
        } => wait(context, &vm, &status, timeout).await,
    }
}

async fn create_request(context: &Context, args: CreateVm) -> Result<CreateVmRequest> {
    let mut keys = Vec::new();
    for key in &args.keys {
        keys.push(context.client.key(key).await?.id.to_string());
    }
    let user_data = match &args.user_data {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|err| {
            Failure::usage(format!(
                "cannot read the user data {}: {err}",
                path.display()
            ))
        })?),
        None => None,
    };
    Ok(CreateVmRequest {
        name: args.name,
        cpu: args.cpu,
        memory: args.memory,
        disk_gb: args.disk_gb,
        image: args.image,
        ssh_keys: (!keys.is_empty()).then_some(keys),
        ssh_authorized_keys: None,
        user_data,
    })
}

async fn action(context: &Context, vm: &str, action: VmAction) -> Result<()> {
    let vm = context.client.vm(vm).await?;
    let vm: VmView = context
        .client
        .post(
            &format!("/api/vms/{}/action", vm.id),
            &ActionRequest { action },
        )
        .await?;
    show(context, &vm)
}

/// Polls the VM until its status is `status`; gives up after `timeout` (exit code 6), or at
/// once when the VM ends up in `error`.
async fn wait(context: &Context, vm: &str, status: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let id = context.client.vm(vm).await?.id;
    loop {
        let vm: VmView = context.client.get(&format!("/api/vms/{id}")).await?;
        let now = vm.status.to_string();
        if now == status {
            return show(context, &vm);
        }
        if now == "error" {
            return Err(Failure::general(format!(
                "VM {} is in error{}",
                vm.name,
                vm.status_reason
                    .as_deref()
                    .map(|why| format!(": {why}"))
                    .unwrap_or_default()
            )));
        }
        if started.elapsed() >= timeout {
            return Err(Failure::new(
                Failure::TIMEOUT,
                format!(
                    "VM {} is still {now} after {} s, not {status}",
                    vm.name,
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn show(context: &Context, vm: &VmView) -> Result<()> {
    output::print_item(context.format, vm, |vm| {
        vec![
            ("id", vm.id.to_string()),
            ("name", vm.name.clone()),
            ("status", vm.status.to_string()),
            ("cpu", vm.cpu.to_string()),
            ("memory", format!("{} MiB", vm.memory)),
            ("disk", format!("{} GB", vm.disk_gb)),
            ("host", vm.host.to_string()),
            ("image", output::opt(vm.image)),
            (
                "addresses",
                if vm.addresses.is_empty() {
                    "-".to_owned()
                } else {
                    vm.addresses.join(", ")
                },
            ),
            (
                "ssh",
                vm.ssh.as_ref().map_or_else(
                    || "-".to_owned(),
                    |ssh| match &ssh.user {
                        Some(user) => format!("ssh -p {} {user}@{}", ssh.port, ssh.host),
                        None => format!("{}:{}", ssh.host, ssh.port),
                    },
                ),
            ),
            ("created", vm.created_at.clone()),
        ]
    })
}

fn table(vms: &[VmView]) -> Table {
    let mut table = Table::new(&["ID", "NAME", "STATUS", "CPU", "MEMORY", "DISK", "HOST"]);
    for vm in vms {
        table.row(vec![
            vm.id.to_string(),
            vm.name.clone(),
            vm.status.to_string(),
            vm.cpu.to_string(),
            format!("{} MiB", vm.memory),
            format!("{} GB", vm.disk_gb),
            vm.host.to_string(),
        ]);
    }
    table
}
