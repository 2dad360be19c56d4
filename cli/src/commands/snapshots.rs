//! `snapshot list|create|restore|delete`: a VM's snapshots, named by name or ID.

use vmm_shared::api::snapshots::{CreateSnapshotRequest, SnapshotView};
use vmm_shared::api::vms::VmView;

use super::Context;
use crate::cli::SnapshotCommand;
use crate::exit::Result;
use crate::output::{self, Table};

pub async fn run(context: &Context, command: SnapshotCommand) -> Result<()> {
    let client = &context.client;
    match command {
        SnapshotCommand::List { vm } => {
            let vm = client.vm(&vm).await?;
            let snapshots: Vec<SnapshotView> = client
                .list(&format!("/api/vms/{}/snapshots", vm.id))
                .await?;
            output::print(context.format, &snapshots, |snapshots| {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "STATUS",
                    "VM STATUS",
                    "CREATED",
                    "DESCRIPTION",
                ]);
                for snapshot in snapshots {
                    table.row(vec![
                        snapshot.id.to_string(),
                        snapshot.name.clone(),
                        snapshot.status.to_string(),
                        snapshot.vm_status.to_string(),
                        snapshot.created_at.clone(),
                        snapshot.description.clone(),
                    ]);
                }
                table
            })
        }
        SnapshotCommand::Create {
            vm,
            name,
            description,
        } => {
            let vm = client.vm(&vm).await?;
            let snapshot: SnapshotView = client
                .post(
                    &format!("/api/vms/{}/snapshots", vm.id),
                    &CreateSnapshotRequest { name, description },
                )
                .await?;
            output::print_item(context.format, &snapshot, |snapshot| {
                vec![
                    ("id", snapshot.id.to_string()),
                    ("name", snapshot.name.clone()),
                    ("vm", vm.name.clone()),
                    ("status", snapshot.status.to_string()),
                    ("vm status", snapshot.vm_status.to_string()),
                    ("created", snapshot.created_at.clone()),
                ]
            })
        }
        SnapshotCommand::Restore { vm, snapshot } => {
            let vm = client.vm(&vm).await?;
            let snapshot = client.snapshot(&vm, &snapshot).await?;
            let vm: VmView = client
                .post_empty(&format!("/api/snapshots/{}/restore", snapshot.id))
                .await?;
            output::done(
                context.format,
                format!("VM {} is back to snapshot {}", vm.name, snapshot.name),
            );
            output::print_item(context.format, &vm, |vm| {
                vec![
                    ("id", vm.id.to_string()),
                    ("name", vm.name.clone()),
                    ("status", vm.status.to_string()),
                ]
            })
        }
        SnapshotCommand::Delete { vm, snapshot } => {
            let vm = client.vm(&vm).await?;
            let snapshot = client.snapshot(&vm, &snapshot).await?;
            client
                .delete(&format!("/api/snapshots/{}", snapshot.id))
                .await?;
            output::done(
                context.format,
                format!("deleted snapshot {} of VM {}", snapshot.name, vm.name),
            );
            Ok(())
        }
    }
}
