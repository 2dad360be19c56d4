//! `key add|list|remove`: the caller's SSH public keys.

use std::io::Read;

use vmm_shared::api::keys::{AddKeyRequest, SshKeyView};

use super::Context;
use crate::cli::KeyCommand;
use crate::exit::{Failure, Result};
use crate::output::{self, Table};

pub async fn run(context: &Context, command: KeyCommand) -> Result<()> {
    let client = &context.client;
    match command {
        KeyCommand::Add { name, file } => {
            let public_key = if file.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|err| {
                    Failure::usage(format!("cannot read {}: {err}", file.display()))
                })?
            };
            let key: SshKeyView = client
                .post(
                    "/api/keys",
                    &AddKeyRequest {
                        name,
                        public_key: public_key.trim().to_owned(),
                    },
                )
                .await?;
            output::print_item(context.format, &key, |key| {
                vec![
                    ("id", key.id.to_string()),
                    ("name", key.name.clone()),
                    ("type", key.key_type.clone()),
                    ("fingerprint", key.fingerprint.clone()),
                ]
            })
        }
        KeyCommand::List => {
            let keys: Vec<SshKeyView> = client.list("/api/keys").await?;
            output::print(context.format, &keys, |keys| {
                let mut table = Table::new(&["ID", "NAME", "TYPE", "FINGERPRINT", "CREATED"]);
                for key in keys {
                    table.row(vec![
                        key.id.to_string(),
                        key.name.clone(),
                        key.key_type.clone(),
                        key.fingerprint.clone(),
                        key.created_at.clone(),
                    ]);
                }
                table
            })
        }
        KeyCommand::Remove { key } => {
            let key = client.key(&key).await?;
            client.delete(&format!("/api/keys/{}", key.id)).await?;
            output::done(context.format, format!("removed key {}", key.name));
            Ok(())
        }
    }
}
