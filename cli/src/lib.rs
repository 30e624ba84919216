//! devctl: the command-line client of a devctl cluster.
//!
//! - [`Cli`]: global flags and subcommands;
//! - [`commands`]: one thin file per subcommand (parse, call, print);
//! - [`client`]: the TLS connection to the scheduler and its credentials;
//! - [`config`]: `~/.config/devctl/config.toml` and its contexts;
//! - [`ssh_setup`]: the SSH key, certificate, known_hosts and ~/.ssh/config
//!   block; [`tunnel`]: byte tunnels into containers (ssh, port-forward);
//! - [`output`]: tables, JSON and YAML (sizes and CPUs: `devctl_proto::units`);
//!   [`output::view`] holds the view models they print.

pub mod client;
pub mod commands;
pub mod config;
pub mod output;
pub mod ssh_setup;
pub mod tunnel;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use output::Format;

/// devctl: launch and manage dev containers on a devctl cluster.
#[derive(Debug, Parser)]
#[command(name = "devctl", version, about, long_about = None)]
pub struct Cli {
    /// Scheduler URL (default: the context's, else https://127.0.0.1:7443).
    #[arg(long, global = true, env = "DEVCTL_SERVER")]
    pub server: Option<String>,
    /// Directory holding ca.pem, cert.pem and key.pem (default: the
    /// context's, else ~/.config/devctl/tls).
    #[arg(long, global = true, env = "DEVCTL_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Authenticate with this API token instead of a certificate.
    #[arg(long, global = true, env = "DEVCTL_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The cluster CA certificate, for --api-token without a --tls-dir.
    #[arg(long, global = true, env = "DEVCTL_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Context of ~/.config/devctl/config.toml to use (default: the
    /// current one).
    #[arg(long, global = true, env = "DEVCTL_CONTEXT")]
    pub context: Option<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a dev container and start it; returns once it runs.
    Create(Box<commands::create::Args>),
    /// List containers.
    #[command(visible_alias = "ps")]
    Ls(commands::ls::Args),
    /// Show one container.
    Get(commands::get::Args),
    /// Start a stopped container.
    Start(commands::start::Args),
    /// Stop a running container.
    Stop(commands::stop::Args),
    /// Restart a container.
    Restart(commands::restart::Args),
    /// Remove a container.
    Rm(commands::rm::Args),
    /// Renew a container's lease: it now runs out DURATION from now.
    Extend(commands::extend::Args),
    /// List the cluster's nodes or show one; cordon, uncordon or drain one.
    Nodes(commands::nodes::Args),
    /// Images on the nodes: list them (docs/images.md).
    Images(commands::images::Args),
    /// Show the cluster's events (-f to follow).
    Events(commands::events::Args),
    /// Follow every change to containers and nodes: a snapshot, then each
    /// change as it is committed (like `kubectl get -w`).
    Watch(commands::watch::Args),
    /// Print a container's output (-f to follow).
    Logs(commands::logs::Args),
    /// Run a command in a running container (-it for a shell).
    Exec(commands::exec::Args),
    /// OpenSSH into a dev container (a shell, or `-- COMMAND`), with a
    /// certificate from the cluster's SSH CA.
    Ssh(commands::ssh::Args),
    /// Make `ssh NAME.devctl` work for ssh and IDEs: a managed block in
    /// ~/.ssh/config, a key, a certificate and known_hosts.
    ConfigSsh(commands::config_ssh::Args),
    /// Forward local ports to ports inside a container (like kubectl
    /// port-forward).
    PortForward(commands::port_forward::Args),
    /// Open VS Code or Cursor on a container over Remote-SSH.
    Open(commands::open::Args),
    /// Live resource usage of containers (like docker stats).
    Stats(commands::stats::Args),
    /// The cluster at a glance: nodes with usage and the busiest containers.
    Top(commands::top::Args),
    /// Join a cluster with a one-time token (or renew your certificate).
    Login(commands::login::Args),
    /// List or switch contexts (clusters and identities).
    Context(commands::context::Args),
    /// Create, list and revoke API tokens.
    Tokens(commands::tokens::Args),
    /// The audit log: mutating and refused calls (admin only).
    Audit(commands::audit::Args),
    /// Bring up the dev container of a project's devcontainer.json (create
    /// or reuse it, copy the files in, run its lifecycle commands).
    Up(commands::devcontainer::Args),
    /// Container templates: apply, ls, get, rm (use with `create --template`).
    Templates(commands::templates::Args),
    /// Workspaces: the volumes containers keep their work in (ls, get, rm,
    /// move).
    #[command(visible_alias = "ws")]
    Workspaces(commands::workspaces::Args),
    /// Registry credentials the agents pull images with (admin only).
    Registries(commands::registries::Args),
    /// Analytics from the cluster's graph: images, users, hosts
    /// (docs/graph.md).
    Insights(commands::insights::Args),
    /// The graph projection: status (lag), resync (admin).
    Graph(commands::insights::GraphArgs),
}

/// A status as `MESSAGE: CAUSE… (CODE)`. Transport failures carry their
/// cause (e.g. a TLS alert) only in the source chain.
fn describe(status: &tonic::Status) -> String {
    let mut text = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    let transport = matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled);
    if transport && text.contains("transport error") {
        text.push_str(
            "; the connection to the scheduler failed: check --server and that your certificate (--tls-dir or the context's) was issued by this cluster's CA",
        );
    }
    format!("{text} ({:?})", status.code())
}

/// An error as the CLI prints it (`MESSAGE (CODE)` for a status), escaped
/// for a terminal.
pub(crate) fn error_text(e: &anyhow::Error) -> String {
    match e.downcast_ref::<tonic::Status>() {
        Some(status) => output::escape_text(&describe(status)).into_owned(),
        None => output::escape_text(&format!("{e:#}")).into_owned(),
    }
}

/// Runs the command line and returns the process exit code. Errors are
/// printed to stderr as `devctl: MESSAGE (CODE)`.
pub async fn run(cli: Cli) -> ExitCode {
    match commands::dispatch(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devctl: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}
