//! `token create|list|revoke`: API tokens for scripts. A new token is printed once (on
//! stdout, the only place it ever appears); lists never show tokens.

use vmm_shared::api::tokens::{ApiTokenView, CreateTokenRequest, CreatedTokenView, TokenScope};

use super::{Context, segment};
use crate::cli::{ScopeArg, TokenCommand};
use crate::client::is_uuid;
use crate::exit::Result;
use crate::output::{self, Format, Table};

pub async fn run(context: &Context, command: TokenCommand) -> Result<()> {
    let client = &context.client;
    match command {
        TokenCommand::Create {
            name,
            scope,
            expires_in,
        } => {
            let scope = match scope {
                ScopeArg::Read => TokenScope::Read,
                ScopeArg::Write => TokenScope::Write,
            };
            let created: CreatedTokenView = client
                .post(
                    "/api/tokens",
                    &CreateTokenRequest {
                        name,
                        scope,
                        expires_in,
                    },
                )
                .await?;
            match context.format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&created)?),
                Format::Table => {
                    eprintln!(
                        "API token {} ({} scope, expires {}). It is shown this once; keep it \
                         secret, e.g. export VMM_TOKEN=<token>:",
                        created.record.name,
                        created.record.scope,
                        created.record.expires_at.as_deref().unwrap_or("never"),
                    );
                    println!("{}", created.token);
                }
            }
            Ok(())
        }
        TokenCommand::List { user, all } => {
            let path = match (user, all) {
                (_, true) => "/api/tokens?all=true".to_owned(),
                (Some(user), false) => format!("/api/tokens?user={}", segment(&user)),
                (None, false) => "/api/tokens".to_owned(),
            };
            let tokens: Vec<ApiTokenView> = client.list(&path).await?;
            output::print(context.format, &tokens, |tokens| {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "OWNER",
                    "SCOPE",
                    "PREFIX",
                    "CREATED",
                    "EXPIRES",
                    "LAST USED",
                ]);
                for token in tokens {
                    table.row(vec![
                        token.id.to_string(),
                        token.name.clone(),
                        token.owner.clone(),
                        token.scope.to_string(),
                        format!("{}…", token.prefix),
                        token.created_at.clone(),
                        token.expires_at.clone().unwrap_or_else(|| "never".into()),
                        output::opt(token.last_used_at.clone()),
                    ]);
                }
                table
            })
        }
        TokenCommand::Revoke { token } => {
            let (id, name) = if is_uuid(&token) {
                (token.clone(), token)
            } else {
                let found = client.token(&token).await?;
                (found.id.to_string(), found.name)
            };
            client.delete(&format!("/api/tokens/{id}")).await?;
            output::done(context.format, format!("revoked API token {name}"));
            Ok(())
        }
    }
}
