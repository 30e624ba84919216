//! `devctl tokens create|ls|revoke`: API tokens for scripts and generated
//! clients.

use std::time::Duration;

use anyhow::Result;
use devctl_proto::pb;
use serde::Serialize;

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

#[derive(Debug, Serialize)]
struct TokenView {
    name: String,
    id: String,
    identity: String,
    role: String,
    /// Reads only its identity's containers and tokens.
    own_containers_only: bool,
    created_by: String,
    created: Option<String>,
    expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl TokenView {
    fn of(t: &pb::ApiToken, secret: Option<String>) -> Self {
        Self {
            name: t.name.clone(),
            id: t.id.clone(),
            identity: t.identity.clone(),
            role: t.role.clone(),
            own_containers_only: t.own_containers_only,
            created_by: t.created_by.clone(),
            created: output::time(t.create_time),
            expires: output::time(t.expire_time),
            revoked: output::time(t.revoke_time),
            secret,
        }
    }
}

fn print(format: output::Format, list: &[TokenView]) -> Result<()> {
    if format != output::Format::Table {
        return output::print_serialized(format, list);
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
            v.expires.clone().unwrap_or_else(|| "-".into()),
            if v.revoked.is_some() {
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
            let token = r.token.unwrap_or_default();
            if format == output::Format::Table {
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
                output::print_serialized(format, &TokenView::of(&token, Some(r.secret)))
            }
        }
        TokensCommand::Ls => {
            let list = client
                .tokens
                .list_tokens(pb::ListTokensRequest {})
                .await?
                .into_inner()
                .tokens;
            let views: Vec<TokenView> = list.iter().map(|t| TokenView::of(t, None)).collect();
            print(format, &views)
        }
        TokensCommand::Revoke { name } => {
            let t = client
                .tokens
                .revoke_token(pb::RevokeTokenRequest { name })
                .await?
                .into_inner();
            print(format, &[TokenView::of(&t, None)])
        }
    }
}
