use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    devctl_cli::run(devctl_cli::Cli::parse()).await
}
