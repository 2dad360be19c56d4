//! `quota show|set`.

use vmm_shared::api::quotas::{LimitOverrides, QuotaLimits, QuotaView};

use super::Context;
use crate::cli::QuotaCommand;
use crate::exit::{Failure, Result};
use crate::output::{self, Table};

pub async fn run(context: &Context, command: QuotaCommand) -> Result<()> {
    let client = &context.client;
    match command {
        QuotaCommand::Show { user } => {
            let quota: QuotaView = match user {
                None => client.get("/api/quota").await?,
                Some(user) => {
                    let user = client.user(&user).await?;
                    client.get(&format!("/api/quota/{}", user.id)).await?
                }
            };
            show(context, &quota)
        }
        QuotaCommand::Set {
            user,
            vms,
            cpu,
            memory,
            disk_gb,
            snapshots,
        } => {
            let overrides = LimitOverrides {
                max_vms: vms,
                max_cpu: cpu,
                max_memory: memory,
                max_disk_gb: disk_gb,
                max_snapshots: snapshots,
            };
            if overrides == LimitOverrides::default() {
                return Err(Failure::usage(
                    "give at least one limit: --vms, --cpu, --memory, --disk-gb or --snapshots",
                ));
            }
            let user = client.user(&user).await?;
            let _: QuotaLimits = client
                .put(&format!("/api/quota/{}", user.id), &overrides)
                .await?;
            let quota: QuotaView = client.get(&format!("/api/quota/{}", user.id)).await?;
            show(context, &quota)
        }
    }
}

fn show(context: &Context, quota: &QuotaView) -> Result<()> {
    output::print(context.format, quota, |quota| {
        let mut table = Table::new(&["RESOURCE", "USED", "LIMIT"]);
        let (used, limit) = (&quota.usage, &quota.quota);
        for (name, used, limit) in [
            ("vms", used.vms, limit.max_vms),
            ("cpu", used.cpu, limit.max_cpu),
            ("memory (MiB)", used.memory, limit.max_memory),
            ("disk (GB)", used.disk_gb, limit.max_disk_gb),
            ("snapshots", used.snapshots, limit.max_snapshots),
        ] {
            table.row(vec![name.to_owned(), used.to_string(), limit.to_string()]);
        }
        table
    })
}
