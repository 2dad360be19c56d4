//! `user list|role|delete` (administrators).

use vmm_shared::api::users::{AdminUserView, Role, RoleChange};

use super::Context;
use crate::cli::{RoleArg, UserCommand};
use crate::exit::Result;
use crate::output::{self, Table};

pub async fn run(context: &Context, command: UserCommand) -> Result<()> {
    let client = &context.client;
    match command {
        UserCommand::List => {
            let users: Vec<AdminUserView> = client.list("/api/admin/users").await?;
            output::print(context.format, &users, |users| {
                let mut table =
                    Table::new(&["ID", "USERNAME", "ROLE", "VMS", "CPU", "MEMORY", "CREATED"]);
                for user in users {
                    table.row(vec![
                        user.id.to_string(),
                        user.username.clone(),
                        user.role.to_string(),
                        user.usage.vms.to_string(),
                        user.usage.cpu.to_string(),
                        format!("{} MiB", user.usage.memory),
                        user.created_at.clone(),
                    ]);
                }
                table
            })
        }
        UserCommand::Role { user, role } => {
            let user = client.user(&user).await?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::User => Role::User,
            };
            let changed: serde_json::Value = client
                .put(
                    &format!("/api/admin/users/{}/role", user.id),
                    &RoleChange { role },
                )
                .await?;
            if context.format == output::Format::Json {
                println!("{}", serde_json::to_string_pretty(&changed)?);
            } else {
                output::done(context.format, format!("{} is now {role}", user.username));
            }
            Ok(())
        }
        UserCommand::Delete { user } => {
            let user = client.user(&user).await?;
            client
                .delete(&format!("/api/admin/users/{}", user.id))
                .await?;
            output::done(context.format, format!("deleted user {}", user.username));
            Ok(())
        }
    }
}
