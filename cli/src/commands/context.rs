//! `devctl context ls|use NAME`: the clusters and identities in the
//! configuration file.

use anyhow::{Result, bail};
use serde::Serialize;

use crate::{
    config::{ConfigFile, config_path},
    output,
};

/// Flags of `context`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: ContextCommand,
}

/// `context` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ContextCommand {
    /// List contexts; `*` marks the current one.
    Ls,
    /// Make NAME the current context.
    Use {
        /// Context name.
        name: String,
    },
}

#[derive(Debug, Serialize)]
struct ContextView {
    name: String,
    current: bool,
    server: String,
    identity: String,
    tls_dir: String,
}

/// Runs the subcommand (no connection needed).
pub fn run(format: output::Format, args: Args) -> Result<()> {
    let path = config_path()?;
    let mut file = ConfigFile::load(&path)?;
    match args.command {
        ContextCommand::Ls => {
            let views: Vec<ContextView> = file
                .contexts
                .iter()
                .map(|(name, c)| ContextView {
                    name: name.clone(),
                    current: file.current_context.as_deref() == Some(name),
                    server: c.server.clone(),
                    identity: c.identity.clone(),
                    tls_dir: c.tls_dir.display().to_string(),
                })
                .collect();
            if format != output::Format::Table {
                return output::print_serialized(format, &views);
            }
            let mut t = output::table(&["CURRENT", "NAME", "SERVER", "IDENTITY"]);
            for v in views {
                t.add_row(vec![
                    if v.current { "*" } else { "" }.to_string(),
                    v.name,
                    v.server,
                    v.identity,
                ]);
            }
            println!("{}", output::render(t));
        }
        ContextCommand::Use { name } => {
            if !file.contexts.contains_key(&name) {
                bail!(
                    "no context named {name:?}; `devctl context ls` lists them, `devctl login` makes one"
                );
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            println!("switched to context {name:?}");
        }
    }
    Ok(())
}
