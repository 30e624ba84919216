use std::process::ExitCode;

use clap::Parser;
use devctl_agent::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    devctl_proto::process::init_tracing();
    devctl_proto::pki::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(Command::Join(args)) = cli.command {
        return match devctl_agent::join::join(&args).await {
            Ok(issued) => {
                println!(
                    "joined as node {} (certificate {}, valid until {}); start the agent with --data-dir {}",
                    issued.name,
                    issued.serial,
                    issued
                        .not_after
                        .and_then(|t| std::time::SystemTime::try_from(t).ok())
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
                        .unwrap_or_default(),
                    args.data_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("devctl-agent join: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let Some(config) = cli.run else {
        eprintln!("devctl-agent: --node is required (see --help)");
        return ExitCode::FAILURE;
    };
    match devctl_agent::run(config, devctl_proto::process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "devctl-agent failed");
            eprintln!("devctl-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
