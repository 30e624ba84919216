//! The agent's command line: run (the default) or `join`.

use clap::{Parser, Subcommand};

use crate::{Config, join::JoinArgs};

/// devctl-agent: runs dev containers on this host's Docker engine, driven by
/// the scheduler over NATS. Dials out only; opens no port.
#[derive(Debug, Parser)]
#[command(
    name = "devctl-agent",
    version,
    about,
    long_about = None,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    /// `join`, or nothing to run the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the agent itself.
    #[command(flatten)]
    pub run: Option<Config>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Enrol this node with a one-time join token: makes a key pair here,
    /// gets it certified by the scheduler, writes DATA_DIR/tls.
    Join(JoinArgs),
}
