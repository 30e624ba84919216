//! One file per subcommand: parse, call the client, print.

pub mod audit;
pub mod config_ssh;
pub mod context;
pub mod create;
pub mod devcontainer;
pub mod events;
pub mod exec;
pub mod extend;
pub mod get;
pub mod images;
pub mod images_build;
pub mod images_push;
pub mod insights;
pub mod login;
pub mod logs;
pub mod ls;
pub mod nodes;
pub mod open;
pub mod port_forward;
pub mod registries;
pub mod restart;
pub mod rm;
pub mod ssh;
pub mod start;
pub mod stats;
pub mod stop;
pub mod templates;
pub mod templates_lifecycle;
pub mod tokens;
pub mod top;
pub mod watch;
pub mod workspaces;

use anyhow::Result;

use crate::{Cli, Command, client};

/// Connects and runs the chosen subcommand.
pub async fn dispatch(cli: Cli) -> Result<()> {
    // Arguments are checked before connecting, so a typo never waits on the
    // network.
    let create = match &cli.command {
        Command::Create(args) => Some(args.to_request()?),
        _ => None,
    };
    let events = match &cli.command {
        Command::Events(args) => Some(args.to_request()?),
        _ => None,
    };
    let logs = match &cli.command {
        Command::Logs(args) => Some(args.to_request()?),
        _ => None,
    };
    if let Command::Insights(args) = &cli.command {
        let w = match &args.report {
            insights::Report::Images(w)
            | insights::Report::Users(w)
            | insights::Report::Hosts(w) => w,
        };
        if let Some(s) = &w.since {
            events::parse_since(s)?;
        }
    }
    let audit = match &cli.command {
        Command::Audit(args) => Some(args.to_request()?),
        _ => None,
    };
    if let Command::Open(args) = &cli.command {
        open::validate(args)?;
    }
    let flags = client::Flags {
        server: cli.server,
        tls_dir: cli.tls_dir,
        token: cli.api_token,
        ca_file: cli.ca_file,
        context: cli.context,
    };
    let o = cli.output;
    let command = match cli.command {
        Command::Context(args) => return context::run(o, args),
        Command::Login(args) => return login::run(flags, args).await,
        other => other,
    };
    let target = client::resolve(flags)?;
    // What needs no connection.
    match &command {
        Command::ConfigSsh(args) if args.remove => return config_ssh::remove(&target),
        Command::Open(args) if args.print => return open::print(&target, args),
        _ => {}
    }
    let mut client = client::Client::connect(&target).await?;
    match command {
        Command::Context(_) | Command::Login(_) => unreachable!("handled above"),
        Command::Tokens(args) => tokens::run(&mut client, o, args).await,
        Command::Registries(args) => registries::run(&mut client, o, args).await,
        Command::Create(_) => create::run(&mut client, o, create.expect("built above")).await,
        Command::Ls(args) => ls::run(&mut client, o, args).await,
        Command::Get(args) => get::run(&mut client, o, args).await,
        Command::Start(args) => start::run(&mut client, o, args).await,
        Command::Stop(args) => stop::run(&mut client, o, args).await,
        Command::Restart(args) => restart::run(&mut client, o, args).await,
        Command::Rm(args) => rm::run(&mut client, o, args).await,
        Command::Extend(args) => extend::run(&mut client, o, args).await,
        Command::Nodes(args) => nodes::run(&mut client, o, args).await,
        Command::Images(args) => images::run(&mut client, o, args).await,
        Command::Events(_) => events::run(&mut client, o, events.expect("built above")).await,
        Command::Logs(_) => logs::run(&mut client, logs.expect("built above")).await,
        Command::Stats(args) => stats::run(&mut client, o, args).await,
        Command::Exec(args) => {
            let code = exec::run(&mut client, args).await?;
            // The command's exit code is ours.
            std::process::exit(code);
        }
        Command::Top(args) => top::run(&mut client, o, args).await,
        Command::Audit(_) => audit::run(&mut client, o, audit.expect("built above")).await,
        Command::Watch(args) => watch::run(&mut client, o, args).await,
        Command::Ssh(args) => ssh::run(&mut client, &target, args).await,
        Command::ConfigSsh(args) => config_ssh::run(&mut client, &target, args).await,
        Command::PortForward(args) => port_forward::run(&mut client, args).await,
        Command::Open(args) => open::run(&mut client, &target, args).await,
        Command::Up(args) => devcontainer::run(&mut client, args).await,
        Command::Templates(args) => templates::run(&mut client, o, args).await,
        Command::Workspaces(args) => workspaces::run(&mut client, o, args).await,
        Command::Insights(args) => insights::run(&mut client, o, args).await,
        Command::Graph(args) => insights::run_graph(&mut client, o, args).await,
    }
}
