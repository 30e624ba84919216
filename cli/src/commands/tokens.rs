//! `devctl tokens create|ls|revoke`: API tokens for scripts and generated
//! clients.

use std::time::Duration;

use anyhow::Result;
use devctl_proto::pb;

use crate::{client::Client, output};

/// Flags of `tokens`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: TokensCommand,
}

/// `tokens` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// Token name (a DNS label), e.g. ci.
        #[arg(long)]
        name: String,
        /// Role the token carries.
        #[arg(long, default_value = "developer", value_parser = ["admin", "developer", "viewer"])]
        role: String,
        /// Lifetime (at most 365d).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Admins: the identity the token acts as (default: the token name).
        #[arg(long = "as")]
        identity: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token at once.
    Revoke {
        /// Token name.
        name: String,
    },
}

fn print(format: output::Format, list: &[pb::ApiToken]) -> Result<()> {
    if format != output::Format::Table {
        return output::print_api_list(format, list);
    }
    let mut t = output::table(&["NAME", "IDENTITY", "ROLE", "CREATED BY", "EXPIRES", "STATE"]);
    for v in list {
        t.add_row(vec![
            v.name.clone(),
            v.identity.clone(),
            if v.own_containers_only {
                format!("{} (own containers)", v.role)
            } else {
                v.role.clone()
            },
            v.created_by.clone(),
            output::time(v.expire_time).unwrap_or_else(|| "-".into()),
            if v.revoke_time.is_some() {
                "revoked".into()
            } else {
                "active".into()
            },
        ]);
    }
    println!("{}", output::render(t));
    Ok(())
}

/// Runs the subcommand.
pub async fn run(client: &mut Client, format: output::Format, args: Args) -> Result<()> {
    match args.command {
        TokensCommand::Create {
            name,
            role,
            ttl,
            identity,
        } => {
            let r = client
                .tokens
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    ttl_seconds: ttl.as_secs() as i64,
                    identity: identity.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if format == output::Format::Table {
                let token = r.token.unwrap_or_default();
                // The secret alone on stdout, so `$(devctl tokens create …)`
                // captures it; the rest on stderr.
                println!("{}", r.secret);
                eprintln!(
                    "token {:?} acts as {} ({}) until {}; it is shown only now: store it as a secret (send it as `authorization: Bearer <token>`)",
                    token.name,
                    token.identity,
                    token.role,
                    output::time(token.expire_time).unwrap_or_default()
                );
                Ok(())
            } else {
                output::print_api(format, &r)
            }
        }
        TokensCommand::Ls => {
            let list = client
                .tokens
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            print(format, &list)
        }
        TokensCommand::Revoke { name } => {
            let t = client
                .tokens
                .revoke_token(pb::RevokeTokenRequest { name })
                .await?
                .into_inner();
            print(format, &[t])
        }
    }
}
