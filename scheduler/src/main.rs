use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use devctl_scheduler::{
    cluster::Settings,
    config::{Cli, Command},
    datadir::DataDir,
    placement::Strategy,
    server::{ServeConfig, serve},
};

#[tokio::main]
async fn main() -> ExitCode {
    devctl_proto::process::init_tracing();
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("devctl-scheduler: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    devctl_proto::pki::install_crypto_provider();
    match cli.command {
        Command::Init {
            data_dir,
            sans,
            force,
        } => {
            let dir = DataDir::new(data_dir);
            dir.init(&sans, force)?;
            println!(
                "initialized {}\nadmin client bundle: {}",
                dir.root().display(),
                dir.client_dir("admin").display()
            );
        }
        Command::IssueCert {
            data_dir,
            name,
            role,
            out,
            valid_for,
        } => {
            let role = role.parse().context("--role")?;
            DataDir::new(data_dir).issue_cert(&name, role, &out, valid_for)?;
            println!("wrote {role} bundle for {name} to {}", out.display());
        }
        Command::Serve(args) => {
            let config = ServeConfig {
                data_dir: DataDir::new(args.data_dir),
                listen: args.listen,
                nats: args.nats,
                node_timeout: args.node_timeout,
                event_retention: args.event_retention,
                settings: Settings {
                    command_timeout: args.command_timeout,
                    strategy: if args.placement == "binpack" {
                        Strategy::Binpack
                    } else {
                        Strategy::Spread
                    },
                    memory_threshold_percent: args.memory_threshold,
                    default_milli_cpus: args.default_cpus,
                    default_memory_bytes: args.default_memory,
                    ..Settings::default()
                },
            };
            serve(config, devctl_proto::process::shutdown_signal()).await?;
        }
    }
    Ok(())
}
